"""A ledger's head anchor, kept apart from the ledger: deletion and rollback show.

The anchor file (JSON, written atomically after every append, under the
ledger's lock) holds the head's ``seq``, ``hash`` and cumulative ``epsilon``
and the last :data:`TAIL` entries in full. A ledger is *behind* its anchor when
it has no entry at the anchor's ``seq`` or that entry's hash differs: it was
deleted, truncated, rolled back to a backup, or replaced. The branch then
refuses every DP step until the ledger is restored: from the server's copy
(every entry a branch sent with its replies) and the anchor's own tail (the
entries of steps whose reply never reached the server), each checked against
the branch's signature (:func:`fedcrm.privacy.restore.restore_ledger`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcrm.errors import LedgerBehindAnchorError, LedgerError

TAIL = 64
"""Entries kept in full in the anchor (more than one step's worth of a lost ledger)."""


class Anchor:
    """The anchor file of one ledger."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        """The anchor, or ``None`` when none was written yet.

        Raises
        ------
        LedgerError
            When the file exists but is not an anchor.
        """
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise LedgerError(
                f"{self.path}: the ledger anchor is unreadable; restore it with the ledger "
                "(`fedcrm node restore-ledger`)"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("seq"), int):
            raise LedgerError(f"{self.path}: not a ledger anchor")
        return data

    def write(self, entries: Sequence[dict[str, Any]]) -> None:
        """Record ``entries``' head (call under the ledger's lock)."""
        if not entries:
            return
        head = entries[-1]
        data = {
            "branch_id": head["branch_id"],
            "seq": head["seq"],
            "hash": head["hash"],
            "epsilon": head["epsilon"],
            "tail": list(entries[-TAIL:]),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(data, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def check(self, entries: Sequence[dict[str, Any]], ledger: Path | str = "the ledger") -> None:
        """Raise :class:`LedgerBehindAnchorError` unless ``entries`` hold the anchor's head."""
        data = self.read()
        if data is None:
            return
        seq = int(data["seq"])
        if len(entries) <= seq:
            raise LedgerBehindAnchorError(
                f"ledger-behind-anchor: {ledger} has {len(entries)} entries but its anchor "
                f"({self.path}) records entry seq {seq}: the ledger was deleted, truncated or "
                "rolled back. Every DP step is refused until it is restored: "
                "`fedcrm node restore-ledger`"
            )
        if entries[seq]["hash"] != data["hash"]:
            raise LedgerBehindAnchorError(
                f"ledger-behind-anchor: entry seq {seq} of {ledger} differs from the one its "
                f"anchor ({self.path}) records: the ledger was replaced. Restore it with "
                "`fedcrm node restore-ledger`"
            )

    def tail(self) -> list[dict[str, Any]]:
        """The entries kept in full."""
        data = self.read()
        return list(data.get("tail", [])) if data else []
