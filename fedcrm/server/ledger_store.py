"""The server's copy of every branch's privacy ledger, kept across runs.

One store per federation: ``<server-dir>/ledgers/<branch_id>.jsonl`` in
deployment (the ServerApp's run config names ``server-dir``), the run
directory's ``ledger/`` in simulation. A branch sends its whole ledger when it
joins a job and its new entries with every reply; the store checks that they
extend its copy (hash chain, and each signature against the branch's public
keys when it has them) and never signs anything itself.

A branch whose ledger is *shorter* than the copy, or differs from it, went
backwards (a deleted, truncated or rolled-back ledger): it is left out of the
job with ``ledger-behind-anchor`` until it restores its ledger from this copy
(``fedcrm node restore-ledger``). At the end of a run the ledgers and public
keys of its branches are copied into the run directory, so that the run
directory verifies on its own (``fedcrm privacy verify RUN_DIR``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fedcrm import protocol as P
from fedcrm.errors import LedgerBehindAnchorError, LedgerError
from fedcrm.privacy import signing
from fedcrm.privacy.ledger_copy import append_entries
from fedcrm.privacy.ledger_format import parse_ledger

log = logging.getLogger(__name__)

KeyRing = dict[str, signing.Ed25519PublicKey]
"""Key id -> a branch's Ed25519 public key (current and retired)."""


def keys_from_dir(directory: Path | None) -> Callable[[str], KeyRing | None]:
    """Public keys in ``directory/<branch_id>.pub`` (PEM blocks: current and retired keys)."""

    def lookup(branch_id: str) -> KeyRing | None:
        if directory is None:
            return None
        path = directory / f"{branch_id}.pub"
        if not path.is_file():
            return None
        return {signing.key_id(k): k for k in signing.load_public_keys(path)}

    return lookup


def _parse(branch_id: str, entries: Iterable[str | dict[str, Any]]) -> list[dict[str, Any]]:
    parsed = []
    for i, e in enumerate(entries):
        try:
            parsed.append(json.loads(e) if isinstance(e, str) else e)
        except ValueError:
            raise LedgerError(f"branch {branch_id}: ledger entry {i} is not JSON") from None
    return parsed


class LedgerStore:
    """The server's ledger copies under ``root/<ledger_dir>``.

    Parameters
    ----------
    root
        The server folder (deployment) or the run directory (simulation).
    public_keys
        Branch id -> its public keys, or ``None`` when unknown (signatures are
        then not checked; the chain still is).
    ledger_dir
        Sub-folder of the copies.
    """

    def __init__(
        self,
        root: Path,
        *,
        public_keys: Callable[[str], KeyRing | None] | None = None,
        ledger_dir: str = "ledgers",
    ) -> None:
        self.dir = Path(root) / ledger_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.public_keys = public_keys or (lambda _branch: None)

    def path(self, branch_id: str) -> Path:
        """The copy of ``branch_id``'s ledger."""
        from fedcrm.ids import id_path

        return id_path(self.dir, branch_id, "branch id", suffix=".jsonl")

    def held(self, branch_id: str) -> list[dict[str, Any]]:
        """The entries the copy holds."""
        path = self.path(branch_id)
        return parse_ledger(path.read_bytes(), str(path)) if path.exists() else []

    def join(self, branch_id: str, history: Sequence[str | dict[str, Any]]) -> list[dict[str, Any]]:
        """Take a joining branch's whole ledger; returns it parsed.

        Raises
        ------
        LedgerBehindAnchorError
            The branch's ledger is shorter than the copy (it went backwards).
        LedgerError
            An entry does not extend the copy's chain or is not the branch's.
        """
        parsed = _parse(branch_id, history)
        held = self.held(branch_id)
        if len(parsed) < len(held):
            raise LedgerBehindAnchorError(
                f"{P.REASON_LEDGER_BEHIND}: branch {branch_id} sent {len(parsed)} ledger "
                f"entries, the server's copy holds {len(held)}: its ledger went backwards; "
                "restore it with `fedcrm node restore-ledger`"
            )
        self.extend(branch_id, parsed)
        return parsed

    def extend(
        self, branch_id: str, entries: Sequence[str | dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Add a reply's new entries (already held ones are skipped); returns them parsed."""
        parsed = _parse(branch_id, entries)
        if parsed:
            append_entries(
                self.path(branch_id),
                parsed,
                branch_id=branch_id,
                public_keys=self.public_keys(branch_id),
            )
        return parsed

    def export(self, run_dir: Path, branch_ids: Iterable[str], keys_dir: Path | None) -> None:
        """Copy the ledgers (and public keys) of ``branch_ids`` into ``run_dir``."""
        (run_dir / "ledger").mkdir(parents=True, exist_ok=True)
        for b in branch_ids:
            src = self.path(b)
            dst = run_dir / "ledger" / src.name
            if src.exists() and src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
            key = keys_dir / f"{b}.pub" if keys_dir is not None else None
            if key is not None and key.is_file():
                target = run_dir / "keys" / key.name
                if key.resolve() != target.resolve():
                    target.parent.mkdir(exist_ok=True)
                    shutil.copyfile(key, target)
