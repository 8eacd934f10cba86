"""The signed, append-only privacy ledger of one branch (format: :mod:`.ledger_format`).

One JSON line per entry, kept at the branch across runs (its path is in the
node config). Appends happen under an exclusive file lock: the ceiling check
and the append of a reservation are one step (:meth:`Ledger.reserve`), so
concurrent tasks of one branch can never pass its ceiling together.

Each append also rewrites the branch's *anchor* (:mod:`.anchor`, kept apart
from the ledger): the head's ``seq`` and hash and the last entries. A ledger
that was deleted, truncated or rolled back no longer contains its anchor's
head; :meth:`Ledger.check_anchor` then refuses, and nothing is appended until
the ledger is restored (``fedcrm node restore-ledger``), so a lost ledger is
never read as a fresh budget.

The server keeps a copy per branch (:func:`append_entries`), which it extends
with the entries each branch sends, checking the chain and, when it has the
branch's public keys, every signature. It never signs.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from fedcrm.errors import BudgetExhaustedError, LedgerError, PrivacyError
from fedcrm.privacy import signing
from fedcrm.privacy.accounting import Charge, Mechanism, composed_epsilon
from fedcrm.privacy.anchor import Anchor
from fedcrm.privacy.ledger_copy import append_entries
from fedcrm.privacy.ledger_file import append_bytes, locked, read_all
from fedcrm.privacy.ledger_format import (
    FORMAT,
    GENESIS_HASH,
    canonical_json,
    charge_of,
    charges,
    entry_hash,
    kind_of,
    mechanism_of,
    parse_ledger,
    read_ledger,
    structure_problems,
)

__all__ = [
    "GENESIS_HASH",
    "Ledger",
    "append_entries",
    "canonical_json",
    "entry_hash",
    "kind_of",
    "mechanism_of",
    "read_ledger",
    "structure_problems",
]


def _utc_now() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_mechanism_entry(mechanism: object, round: object, kind: str) -> None:
    """Refuse an entry with a non-mechanism, a bad round number or an unknown kind."""
    if not isinstance(mechanism, Mechanism):
        raise PrivacyError("mechanism must be a fedcrm.privacy.accounting.Mechanism")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise LedgerError(f"round must be a whole number >= 0, got {round!r}")
    if kind not in ("mechanism", "reservation"):
        raise LedgerError(f"a mechanism is recorded as mechanism or reservation, not {kind}")


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
    anchor_path
        Where the branch keeps the ledger's head anchor (apart from the
        ledger). ``None``: no anchor is kept or checked.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        branch_id: str,
        signing_key: signing.Ed25519PrivateKey | str | os.PathLike[str] | None = None,
        anchor_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.branch_id = branch_id
        if signing_key is not None and not isinstance(signing_key, signing.Ed25519PrivateKey):
            signing_key = signing.load_private_key(signing_key)
        self._key = signing_key
        self.anchor = Anchor(anchor_path) if anchor_path is not None else None

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

    def check_anchor(self, entries: Sequence[dict[str, Any]] | None = None) -> None:
        """Refuse a ledger that no longer holds the head its anchor recorded.

        Raises
        ------
        LedgerBehindAnchorError
            The ledger was deleted, truncated or rolled back (restore it with
            ``fedcrm node restore-ledger``).
        """
        if self.anchor is not None:
            self.anchor.check(self.entries() if entries is None else entries, self.path)

    def entries_since(self, seq: int) -> list[dict[str, Any]]:
        """Entries numbered ``seq`` and later (pass how many entries the receiver holds)."""
        return [e for e in self.entries() if e["seq"] >= seq]

    def charges(self) -> list[Charge]:
        """Every privacy charge recorded, in order."""
        return [charge_of(e) for e in self.entries() if charges(e)]

    def mechanisms(self) -> list[Mechanism]:
        """Every mechanism recorded, in order."""
        return [c.mechanism for c in self.charges()]

    def epsilon(self, delta: float | None = None, accountant: str | None = None) -> float:
        """Epsilon of everything recorded (the last entry's delta and accountant by default)."""
        entries = self.entries()
        if not entries:
            return 0.0
        last = entries[-1]
        return composed_epsilon(
            [charge_of(e) for e in entries if charges(e)],
            delta=last["delta"] if delta is None else delta,
            accountant=last["accountant"] if accountant is None else accountant,  # type: ignore[arg-type]
        )

    # ---------------------------------------------------------------- appends
    def _locked_entries(self, fd: int) -> list[dict[str, Any]]:
        entries = self._check(read_all(fd))
        self.check_anchor(entries)
        return entries

    def _write(self, fd: int, entries: list[dict[str, Any]], entry: dict[str, Any]) -> dict:
        assert self._key is not None
        entry.update(
            branch_id=self.branch_id,
            seq=len(entries),
            time=_utc_now(),
            key_id=signing.key_id(self._key),
            prev_hash=entries[-1]["hash"] if entries else GENESIS_HASH,
        )
        try:
            entry["hash"] = entry_hash(entry)
        except (TypeError, ValueError):
            raise LedgerError(
                "extra must hold only JSON numbers, strings, lists and objects"
            ) from None
        entry["signature"] = signing.sign(self._key, bytes.fromhex(entry["hash"]))
        problems = structure_problems(entry)
        if problems:
            raise LedgerError(f"{self.path}: refusing a malformed entry: {'; '.join(problems)}")
        append_bytes(fd, canonical_json(entry) + b"\n", str(self.path))
        if self.anchor is not None:
            self.anchor.write([*entries, entry])
        return entry

    def _need_key(self) -> None:
        if self._key is None:
            raise LedgerError(
                f"{self.path}: no signing key; open the ledger with the branch's key to append"
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
        kind: str = "mechanism",
        purpose: str = "train",
        task: str = "churn",
        step: str | None = None,
        split: str | None = None,
        plan: str | None = None,
        ceiling: float | None = None,
    ) -> dict[str, Any]:
        """Record one mechanism (``kind`` mechanism or reservation) and return the signed entry.

        The cumulative epsilon composes every charge in the ledger and this one
        at ``delta`` with ``accountant`` (:func:`composed_epsilon`). Under the
        ledger's lock: the existing file and its anchor are checked (nothing
        is appended to a corrupt or rolled-back ledger), the ceiling is
        checked, and the entry is written with one append + fsync: a failed
        append leaves the file as it was.

        Raises
        ------
        BudgetExhaustedError
            When ``ceiling`` is given and the entry would pass it (nothing written).
        LedgerError
            Without a signing key, or when the existing ledger does not check.
        PrivacyError
            When the parameters are invalid or epsilon cannot be bounded.
        """
        self._need_key()
        _check_mechanism_entry(mechanism, round, kind)
        new = Charge(mechanism, purpose=purpose, split=split)
        with locked(self.path) as fd:
            entries = self._locked_entries(fd)
            prior = [charge_of(e) for e in entries if charges(e)]
            epsilon = composed_epsilon([*prior, new], delta=delta, accountant=accountant)  # type: ignore[arg-type]
            if not math.isfinite(epsilon):
                raise PrivacyError("epsilon is unbounded; add noise or run fewer steps")
            if ceiling is not None and epsilon > ceiling:
                self._exhausted(prior, epsilon, delta, accountant, ceiling)
            entry: dict[str, Any] = {
                "v": FORMAT,
                "kind": kind,
                "run_id": str(run_id),
                "round": round,
                "model": str(model),
                "task": str(task),
                "purpose": purpose,
                "step": step or f"round-{round}",
                "mechanism": mechanism.name,
                "noise_multiplier": mechanism.noise_multiplier,
                "sample_rate": mechanism.sample_rate,
                "steps": mechanism.steps,
                "max_grad_norm": mechanism.max_grad_norm,
                "sensitivity": mechanism.sensitivity,
                "split": split,
                "plan": plan,
                "delta": float(delta),
                "epsilon": epsilon,
                "accountant": accountant,
            }
            if extra is not None:
                entry["extra"] = dict(extra)
            return self._write(fd, entries, entry)

    def _exhausted(
        self, prior: list[Charge], epsilon: float, delta: float, accountant: str, ceiling: float
    ) -> NoReturn:
        """Refuse an entry that would take the branch to ``epsilon`` past ``ceiling``."""
        spent = (
            composed_epsilon(prior, delta=delta, accountant=accountant)  # type: ignore[arg-type]
            if prior
            else 0.0
        )
        raise BudgetExhaustedError(
            branch_id=self.branch_id, spent=spent, would_spend=epsilon, ceiling=ceiling
        )

    def reserve(self, **kwargs: Any) -> dict[str, Any]:
        """:meth:`append` a ``reservation``: spend recorded before the mechanism runs."""
        return self.append(kind="reservation", **kwargs)

    def record_release(
        self, *, reservation: Mapping[str, Any], request: str, reply: str, step: str | None = None
    ) -> dict[str, Any]:
        """Record what left the branch for ``reservation`` (zero epsilon).

        ``request`` and ``reply`` are SHA-256 hex digests; ``step`` defaults to
        the reservation's (a tree's levels are releases of one reservation).
        """
        self._need_key()
        with locked(self.path) as fd:
            entries = self._locked_entries(fd)
            seq = int(reservation["seq"])
            if seq >= len(entries) or entries[seq]["hash"] != reservation.get("hash"):
                raise LedgerError(f"{self.path}: the reservation seq {seq} is not in the ledger")
            prior = [charge_of(e) for e in entries if charges(e)]
            res = entries[seq]
            entry = {
                "v": FORMAT,
                "kind": "release",
                "run_id": res["run_id"],
                "round": res["round"],
                "model": res["model"],
                "task": res.get("task", "churn"),
                "purpose": res.get("purpose", "train"),
                "step": step or res.get("step", ""),
                "reserves": seq,
                "request": request,
                "reply": reply,
                "delta": res["delta"],
                "epsilon": composed_epsilon(
                    prior, delta=res["delta"], accountant=res["accountant"]
                ),
                "accountant": res["accountant"],
            }
            return self._write(fd, entries, entry)
