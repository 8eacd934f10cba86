"""The privacy ledger's line format, defined once: fields, kinds, hashing, parsing.

One JSON object per line, in canonical form
(``json.dumps(sort_keys=True, separators=(",", ":"))``). Format 2 (``"v": 2``)
entries have a ``kind``:

``reservation``
    A mechanism's privacy spend, written (under the ledger's lock, after the
    ceiling check) *before* the mechanism runs. It charges epsilon.
``release``
    What left the branch for a reserved step (zero epsilon): ``reserves`` (the
    reservation's ``seq``), ``request`` (SHA-256 of the request the branch
    answered) and ``reply`` (SHA-256 of the exact reply). A repeated request
    gets these bytes again; a changed one is refused.
``mechanism``
    A spend recorded in one go (format-1 entries are read as this kind).
``erasure``
    Reserved for recording erasure requests; charges nothing.

Fields of every entry: ``branch_id``, ``seq`` (0-based), ``run_id``,
``round``, ``model``, ``delta``, ``epsilon`` (the branch's cumulative epsilon
at ``delta`` after this entry), ``accountant``, ``time`` (UTC, ISO 8601 with
Z), ``key_id``, ``prev_hash``, ``hash``, ``signature`` and optionally
``extra`` (an object, never customer data). Format 2 adds ``v``, ``kind``,
``purpose`` (``train`` or ``evaluation``), ``task`` and ``step`` (what was
released, e.g. ``round-3``, ``tree-4``, ``eval-final``). Charging kinds add the
mechanism (``mechanism``, ``noise_multiplier``, ``sample_rate``, ``steps``,
``max_grad_norm``, ``sensitivity``: Opacus' names), ``split`` (the public id of
the branch's train/test split, see :mod:`fedcrm.data.split`) and ``plan``
(SHA-256 of the job's plan, pinned by a run's first reservation).

``hash`` is the SHA-256 (hex) of the canonical JSON of every field except
``hash`` and ``signature``; ``prev_hash`` the previous entry's hash (64 zeros
first); ``signature`` the branch's Ed25519 signature of the 32 hash bytes,
base64.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from fedcrm.errors import LedgerError, PrivacyError
from fedcrm.privacy.accounting import ACCOUNTANTS
from fedcrm.privacy.mechanisms import MECHANISMS, Charge, Mechanism

GENESIS_HASH = "0" * 64
FORMAT = 2
KINDS = ("reservation", "release", "mechanism", "erasure")
CHARGING_KINDS = ("reservation", "mechanism")
PURPOSES = ("train", "evaluation")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_NUMBER = (int, float)
_STR = (str,)
# field -> (accepted types, may be null)
COMMON_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "branch_id": (_STR, False),
    "seq": ((int,), False),
    "run_id": (_STR, False),
    "round": ((int,), False),
    "model": (_STR, False),
    "delta": (_NUMBER, False),
    "epsilon": (_NUMBER, False),
    "accountant": (_STR, False),
    "time": (_STR, False),
    "key_id": (_STR, False),
    "prev_hash": (_STR, False),
    "hash": (_STR, False),
    "signature": (_STR, False),
}
MECHANISM_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "mechanism": (_STR, False),
    "noise_multiplier": (_NUMBER, False),
    "sample_rate": (_NUMBER, False),
    "steps": ((int,), False),
    "max_grad_norm": (_NUMBER, True),
    "sensitivity": (_NUMBER, True),
}
V2_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "v": ((int,), False),
    "kind": (_STR, False),
    "purpose": (_STR, False),
    "task": (_STR, False),
    "step": (_STR, False),
}
CHARGE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "split": (_STR, True),
    "plan": (_STR, True),
}
RELEASE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "reserves": ((int,), False),
    "request": (_STR, False),
    "reply": (_STR, False),
}
OPTIONAL_FIELDS = ("extra",)


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes the ledger hashes and writes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``entry`` without ``hash`` and ``signature``."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def kind_of(entry: dict[str, Any]) -> str:
    """An entry's kind (format-1 entries are ``mechanism``)."""
    return str(entry.get("kind", "mechanism"))


def charges(entry: dict[str, Any]) -> bool:
    """Whether the entry spends privacy."""
    return kind_of(entry) in CHARGING_KINDS


def fields_of(entry: dict[str, Any]) -> dict[str, tuple[tuple[type, ...], bool]]:
    """The fields an entry of its format and kind must have."""
    if "v" not in entry:
        return {**COMMON_FIELDS, **MECHANISM_FIELDS}
    fields = {**COMMON_FIELDS, **V2_FIELDS}
    kind = kind_of(entry)
    if kind in CHARGING_KINDS:
        fields.update(MECHANISM_FIELDS)
        fields.update(CHARGE_FIELDS)
    elif kind == "release":
        fields.update(RELEASE_FIELDS)
    return fields


def structure_problems(entry: Any) -> list[str]:
    """What is wrong with the shape of one parsed entry (empty when nothing)."""
    if not isinstance(entry, dict):
        return ["is not a JSON object"]
    if "v" in entry and (entry["v"] != FORMAT or entry.get("kind") not in KINDS):
        return [f"unknown format {entry.get('v')!r} or kind {entry.get('kind')!r}"]
    fields = fields_of(entry)
    problems = [f"field {name!r} is missing" for name in fields if name not in entry]
    unknown = sorted(set(entry) - set(fields) - set(OPTIONAL_FIELDS))
    problems += [f"unknown field {name!r}" for name in unknown]
    for name, (types, nullable) in fields.items():
        value = entry.get(name)
        if name not in entry or (value is None and nullable):
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"field {name!r} has the wrong type")
    if problems:
        return problems
    if entry["accountant"] not in ACCOUNTANTS:
        problems.append(f"unknown accountant {entry['accountant']!r}")
    if not 0 < entry["delta"] < 1:
        problems.append("delta is not in (0, 1)")
    if not (math.isfinite(entry["epsilon"]) and entry["epsilon"] >= 0):
        problems.append("epsilon is not a finite number >= 0")
    hexes = [("hash", _HEX64, 64), ("prev_hash", _HEX64, 64), ("key_id", _HEX16, 16)]
    if kind_of(entry) == "release":
        hexes += [("request", _HEX64, 64), ("reply", _HEX64, 64)]
    for name, pattern, digits in hexes:
        if not pattern.fullmatch(entry[name]):
            problems.append(f"field {name!r} is not {digits} lowercase hex digits")
    if "v" in entry and entry["purpose"] not in PURPOSES:
        problems.append(f"unknown purpose {entry['purpose']!r}")
    if "extra" in entry and not isinstance(entry["extra"], dict):
        problems.append("field 'extra' is not an object")
    if charges(entry):
        if entry["mechanism"] not in MECHANISMS:
            problems.append(f"unknown mechanism {entry['mechanism']!r}")
        try:
            mechanism_of(entry)
        except PrivacyError as exc:
            problems.append(str(exc))
    return problems


def mechanism_of(entry: dict[str, Any]) -> Mechanism:
    """The :class:`Mechanism` a charging entry records."""
    return Mechanism(
        entry["mechanism"],
        noise_multiplier=entry["noise_multiplier"],
        sample_rate=entry["sample_rate"],
        steps=entry["steps"],
        max_grad_norm=entry["max_grad_norm"],
        sensitivity=entry["sensitivity"],
    )


def charge_of(entry: dict[str, Any]) -> Charge:
    """The :class:`Charge` of a charging entry (purpose and split included)."""
    return Charge(
        mechanism_of(entry),
        purpose=str(entry.get("purpose", "train")),
        split=entry.get("split"),
    )


def _where(number: int, entry: Any) -> str:
    seq = entry.get("seq") if isinstance(entry, dict) else None
    return f"line {number}" + (f" (seq {seq})" if isinstance(seq, int) else "")


def read_ledger(data: bytes) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Parse ledger bytes, checking each entry's shape and the hash chain.

    Returns
    -------
    tuple
        The well-formed ``(line number, entry)`` pairs, and every problem found,
        each naming its line (and ``seq``).
    """
    lines = data.split(b"\n")
    parsed: list[tuple[int, dict[str, Any]]] = []
    problems: list[str] = []
    prev_hash = GENESIS_HASH
    for number, line in enumerate(lines[:-1], start=1):
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            problems.append(f"line {number} is not valid JSON")
            continue
        where = _where(number, entry)
        shape = structure_problems(entry)
        if shape:
            problems.append(f"{where}: {'; '.join(shape)}")
            continue
        if entry["seq"] != len(parsed):
            problems.append(
                f"{where}: expected seq {len(parsed)}; an entry is missing, duplicated "
                "or out of order"
            )
        if entry["prev_hash"] != prev_hash:
            problems.append(f"{where}: prev_hash is not the previous entry's hash (chain broken)")
        if entry_hash(entry) != entry["hash"]:
            problems.append(f"{where}: content does not match its hash (entry edited)")
        if kind_of(entry) == "release":
            reserved = (
                parsed[entry["reserves"]][1] if 0 <= entry["reserves"] < len(parsed) else None
            )
            if reserved is None or kind_of(reserved) != "reservation":
                problems.append(f"{where}: releases seq {entry['reserves']}, not a reservation")
        parsed.append((number, entry))
        prev_hash = entry["hash"]
    if lines[-1]:
        problems.append(
            f"line {len(lines)} is truncated (no newline at the end of the file): "
            "an interrupted write or a cut file"
        )
    return parsed, problems


def parse_ledger(data: bytes, source: str) -> list[dict[str, Any]]:
    """The entries of ledger bytes whose shape and hash chain check.

    Raises
    ------
    LedgerError
        Naming ``source`` and the line of the first problem; nothing is
        appended to such a ledger until it is restored from a good copy.
    """
    parsed, problems = read_ledger(data)
    if problems:
        raise LedgerError(
            f"{source}: {problems[0]}. Nothing will be appended until the ledger is restored "
            "(`fedcrm privacy verify` lists every problem)"
        )
    return [entry for _, entry in parsed]
