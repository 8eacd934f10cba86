"""The signed, append-only privacy ledger of one branch.

One JSON object per line, one line per mechanism run on the branch's
customers, kept at the branch across runs (its path is in the node config).
Fields (Opacus' names where it has one)::

    branch_id, seq (0-based), run_id, round, model,
    mechanism ("dp-sgd" | "gaussian"), noise_multiplier, sample_rate, steps,
    max_grad_norm, sensitivity, delta, epsilon (cumulative), accountant,
    time (UTC, ISO 8601 with Z), key_id, prev_hash, hash, signature
    [, extra (object, never customer data)]

``hash`` is the SHA-256 (hex) of the canonical JSON of every other field
except ``signature`` (``json.dumps(sort_keys=True, separators=(",", ":"))``);
``prev_hash`` is the previous entry's hash (64 zeros for the first entry);
``signature`` is the branch's Ed25519 signature of the 32 hash bytes, base64.
Lines are written in the same canonical form. Anyone holding the branch's
public key can check the chain and recompute every epsilon from the
parameters alone (:mod:`fedcrm.privacy.verify`).

The server keeps a copy per branch (:func:`append_entries`), which it extends
with the entries each branch sends and never signs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedcrm.errors import LedgerError, PrivacyError
from fedcrm.privacy import signing
from fedcrm.privacy.accounting import ACCOUNTANTS, MECHANISMS, Mechanism, compute_epsilon

GENESIS_HASH = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_NUMBER = (int, float)
# field -> (accepted types, may be null)
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "branch_id": ((str,), False),
    "seq": ((int,), False),
    "run_id": ((str,), False),
    "round": ((int,), False),
    "model": ((str,), False),
    "mechanism": ((str,), False),
    "noise_multiplier": (_NUMBER, False),
    "sample_rate": (_NUMBER, False),
    "steps": ((int,), False),
    "max_grad_norm": (_NUMBER, True),
    "sensitivity": (_NUMBER, True),
    "delta": (_NUMBER, False),
    "epsilon": (_NUMBER, False),
    "accountant": ((str,), False),
    "time": ((str,), False),
    "key_id": ((str,), False),
    "prev_hash": ((str,), False),
    "hash": ((str,), False),
    "signature": ((str,), False),
}
OPTIONAL_FIELDS = ("extra",)


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes the ledger hashes and writes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``entry`` without ``hash`` and ``signature``."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def structure_problems(entry: Any) -> list[str]:
    """What is wrong with the shape of one parsed entry (empty when nothing)."""
    if not isinstance(entry, dict):
        return ["is not a JSON object"]
    problems = [f"field {name!r} is missing" for name in FIELDS if name not in entry]
    unknown = sorted(set(entry) - set(FIELDS) - set(OPTIONAL_FIELDS))
    problems += [f"unknown field {name!r}" for name in unknown]
    for name, (types, nullable) in FIELDS.items():
        value = entry.get(name)
        if name not in entry or (value is None and nullable):
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"field {name!r} has the wrong type")
    if problems:
        return problems
    if entry["mechanism"] not in MECHANISMS:
        problems.append(f"unknown mechanism {entry['mechanism']!r}")
    if entry["accountant"] not in ACCOUNTANTS:
        problems.append(f"unknown accountant {entry['accountant']!r}")
    if not 0 < entry["delta"] < 1:
        problems.append("delta is not in (0, 1)")
    if not (math.isfinite(entry["epsilon"]) and entry["epsilon"] >= 0):
        problems.append("epsilon is not a finite number >= 0")
    for name, pattern, digits in (
        ("hash", _HEX64, 64),
        ("prev_hash", _HEX64, 64),
        ("key_id", _HEX16, 16),
    ):
        if not pattern.fullmatch(entry[name]):
            problems.append(f"field {name!r} is not {digits} lowercase hex digits")
    if "extra" in entry and not isinstance(entry["extra"], dict):
        problems.append("field 'extra' is not an object")
    try:
        mechanism_of(entry)
    except PrivacyError as exc:
        problems.append(str(exc))
    return problems


def mechanism_of(entry: dict[str, Any]) -> Mechanism:
    """The :class:`Mechanism` an entry records."""
    return Mechanism(
        entry["mechanism"],
        noise_multiplier=entry["noise_multiplier"],
        sample_rate=entry["sample_rate"],
        steps=entry["steps"],
        max_grad_norm=entry["max_grad_norm"],
        sensitivity=entry["sensitivity"],
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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """Open ``path`` for appending under an exclusive advisory lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _append_bytes(fd: int, data: bytes, source: str) -> None:
    """Append ``data`` durably; on failure cut the file back to its old length."""
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
            os.fsync(fd)
        raise LedgerError(f"{source}: could not append to the ledger: {exc.strerror}") from None


def _utc_now() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Ledger:
    """A branch's privacy ledger file.

    Parameters
    ----------
    path
        The JSON-lines file; created on the first append.
    branch_id
        The branch the ledger belongs to; every entry must carry it.
    signing_key
        The branch's Ed25519 private key (or the path of its PEM file), needed
        to append. Without it the ledger is read-only.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        branch_id: str,
        signing_key: signing.Ed25519PrivateKey | str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.branch_id = branch_id
        if signing_key is not None and not isinstance(signing_key, signing.Ed25519PrivateKey):
            signing_key = signing.load_private_key(signing_key)
        self._key = signing_key

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, branch_id={self.branch_id!r})"

    def _check(self, data: bytes) -> list[dict[str, Any]]:
        entries = parse_ledger(data, str(self.path))
        for number, entry in enumerate(entries, start=1):
            if entry["branch_id"] != self.branch_id:
                raise LedgerError(
                    f"{self.path}: line {number} belongs to branch {entry['branch_id']}, "
                    f"not {self.branch_id}; each branch needs its own ledger file"
                )
        if self._key is not None:
            own = signing.key_id(self._key)
            public = self._key.public_key()
            for number, entry in enumerate(entries, start=1):
                hash_bytes = bytes.fromhex(entry["hash"])
                if entry["key_id"] == own and not signing.verify_signature(
                    public, hash_bytes, entry["signature"]
                ):
                    raise LedgerError(f"{self.path}: line {number} has a bad signature")
        return entries

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, after checking their shape, branch, hash chain and own signatures.

        Raises
        ------
        LedgerError
            Naming the line of the first problem.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {self.path}: {exc.strerror}") from None
        return self._check(data)

    def entries_since(self, seq: int) -> list[dict[str, Any]]:
        """Entries numbered ``seq`` and later (pass how many entries the receiver holds)."""
        return [e for e in self.entries() if e["seq"] >= seq]

    def mechanisms(self) -> list[Mechanism]:
        """Every mechanism recorded, in order."""
        return [mechanism_of(e) for e in self.entries()]

    def epsilon(self, delta: float | None = None, accountant: str | None = None) -> float:
        """Epsilon of everything recorded (the last entry's delta and accountant by default)."""
        entries = self.entries()
        if not entries:
            return 0.0
        last = entries[-1]
        return compute_epsilon(
            [mechanism_of(e) for e in entries],
            delta=last["delta"] if delta is None else delta,
            accountant=last["accountant"] if accountant is None else accountant,  # type: ignore[arg-type]
        )

    def append(
        self,
        *,
        run_id: str,
        round: int,
        model: str,
        mechanism: Mechanism,
        delta: float,
        accountant: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record one mechanism run and return the signed entry.

        The cumulative epsilon composes every mechanism in the ledger and this
        one at ``delta`` with ``accountant``. The existing file is checked
        first (nothing is appended to a corrupt ledger) and the entry is
        written with one append + fsync once everything is computed: a failed
        append leaves the file as it was.

        Raises
        ------
        LedgerError
            Without a signing key, or when the existing ledger does not check.
        PrivacyError
            When the parameters are invalid or epsilon cannot be bounded.
        """
        if self._key is None:
            raise LedgerError(
                f"{self.path}: no signing key; open the ledger with the branch's key to append"
            )
        if not isinstance(mechanism, Mechanism):
            raise PrivacyError("mechanism must be a fedcrm.privacy.accounting.Mechanism")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise LedgerError(f"round must be a whole number >= 0, got {round!r}")
        with _locked(self.path) as fd:
            entries = self._check(_read_all(fd))
            mechanisms = [mechanism_of(e) for e in entries] + [mechanism]
            epsilon = compute_epsilon(mechanisms, delta=delta, accountant=accountant)  # type: ignore[arg-type]
            if not math.isfinite(epsilon):
                raise PrivacyError("epsilon is unbounded; add noise or run fewer steps")
            entry: dict[str, Any] = {
                "branch_id": self.branch_id,
                "seq": len(entries),
                "run_id": str(run_id),
                "round": round,
                "model": str(model),
                "mechanism": mechanism.name,
                "noise_multiplier": mechanism.noise_multiplier,
                "sample_rate": mechanism.sample_rate,
                "steps": mechanism.steps,
                "max_grad_norm": mechanism.max_grad_norm,
                "sensitivity": mechanism.sensitivity,
                "delta": float(delta),
                "epsilon": epsilon,
                "accountant": accountant,
                "time": _utc_now(),
                "key_id": signing.key_id(self._key),
                "prev_hash": entries[-1]["hash"] if entries else GENESIS_HASH,
            }
            if extra is not None:
                entry["extra"] = dict(extra)
            try:
                entry["hash"] = entry_hash(entry)
            except (TypeError, ValueError):
                raise LedgerError(
                    "extra must hold only JSON numbers, strings, lists and objects"
                ) from None
            entry["signature"] = signing.sign(self._key, bytes.fromhex(entry["hash"]))
            _append_bytes(fd, canonical_json(entry) + b"\n", str(self.path))
        return entry


def append_entries(
    path: str | os.PathLike[str], entries: Sequence[dict[str, Any]], *, branch_id: str | None = None
) -> int:
    """Extend the server's copy of a branch ledger with entries the branch sent.

    Each entry must extend the chain (next ``seq``, ``prev_hash`` equal to the
    last hash, ``hash`` matching its content) and belong to one branch. An
    entry the copy already holds (same ``seq`` and ``hash``) is skipped, so a
    branch may resend. The copy is never re-signed; its first entry must be
    ``seq`` 0, so a branch sends its whole ledger on the first reply of a run
    (:meth:`Ledger.entries_since` with 0) and new entries afterwards.

    Returns
    -------
    int
        How many entries were appended.

    Raises
    ------
    LedgerError
        Naming the branch and seq of the first entry that does not fit; nothing
        is written then.
    """
    path = Path(path)
    with _locked(path) as fd:
        held = parse_ledger(_read_all(fd), str(path))
        expected_branch = branch_id or (held[0]["branch_id"] if held else None)
        new: list[dict[str, Any]] = []
        chain = list(held)
        for entry in entries:
            problems = structure_problems(entry)
            where = f"{path}: entry seq {entry.get('seq') if isinstance(entry, dict) else '?'}"
            if problems:
                raise LedgerError(f"{where}: {'; '.join(problems)}")
            expected_branch = expected_branch or entry["branch_id"]
            if entry["branch_id"] != expected_branch:
                raise LedgerError(
                    f"{where}: from branch {entry['branch_id']}, copy of branch {expected_branch}"
                )
            if entry["seq"] < len(chain) and chain[entry["seq"]]["hash"] == entry["hash"]:
                continue  # already held
            if entry["seq"] != len(chain):
                raise LedgerError(
                    f"{where} (branch {entry['branch_id']}): expected seq {len(chain)}; "
                    "entries are missing or differ from the copy"
                )
            prev = chain[-1]["hash"] if chain else GENESIS_HASH
            if entry["prev_hash"] != prev or entry_hash(entry) != entry["hash"]:
                raise LedgerError(
                    f"{where} (branch {entry['branch_id']}): does not extend the hash chain"
                )
            chain.append(entry)
            new.append(entry)
        if new:
            _append_bytes(fd, b"".join(canonical_json(e) + b"\n" for e in new), str(path))
    return len(new)
