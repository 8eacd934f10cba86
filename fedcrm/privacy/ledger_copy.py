"""The server's copy of a branch ledger, extended with the entries the branch sends.

The server keeps one copy per branch. Each entry a branch sends must extend
the copy's hash chain and belong to that branch; when the server holds the
branch's public keys, every signature must verify too. Entries already held
are skipped, so a branch may resend, and nothing is written unless every new
entry fits. The server never signs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcrm.errors import LedgerError
from fedcrm.privacy import signing
from fedcrm.privacy.ledger_file import append_bytes, locked, read_all
from fedcrm.privacy.ledger_format import (
    GENESIS_HASH,
    canonical_json,
    entry_hash,
    parse_ledger,
    structure_problems,
)


def append_entries(
    path: str | os.PathLike[str],
    entries: Sequence[dict[str, Any]],
    *,
    branch_id: str | None = None,
    public_keys: Mapping[str, signing.Ed25519PublicKey] | None = None,
) -> int:
    """Extend the server's copy of a branch ledger with entries the branch sent.

    Each entry must extend the chain (next ``seq``, ``prev_hash`` equal to the
    last hash, ``hash`` matching its content) and belong to one branch; with
    ``public_keys`` (key id -> the branch's Ed25519 public keys, current and
    retired) every entry's signature must verify. An entry the copy already
    holds (same ``seq`` and ``hash``) is skipped, so a branch may resend. The
    copy is never re-signed; its first entry must be ``seq`` 0.

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
    with locked(path) as fd:
        held = parse_ledger(read_all(fd), str(path))
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
            if public_keys is not None:
                key = public_keys.get(entry["key_id"])
                if key is None or not signing.verify_signature(
                    key, bytes.fromhex(entry["hash"]), entry["signature"]
                ):
                    raise LedgerError(
                        f"{where} (branch {entry['branch_id']}): not signed by the branch's key"
                    )
            chain.append(entry)
            new.append(entry)
        if new:
            append_bytes(fd, b"".join(canonical_json(e) + b"\n" for e in new), str(path))
    return len(new)
