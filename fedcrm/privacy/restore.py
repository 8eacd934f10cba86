"""Restore a branch's lost or rolled-back ledger from copies it signed itself.

Sources: the server's copy (``<server-dir>/ledgers/<branch>.jsonl``, or a run
directory's ``ledger/<branch>.jsonl``), backups of the branch's own ledger,
and the entries its anchor keeps in full. Each entry must carry the branch's
id, extend the chain from the genesis hash, and verify against one of the
branch's public signing keys: nobody but the branch can have made it. The
longest chain found is written (atomically) in place of the ledger, and it
must reach the head the anchor records, so a restore can only move a branch
forward, never give back budget.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcrm.errors import LedgerError
from fedcrm.privacy import signing
from fedcrm.privacy.anchor import Anchor
from fedcrm.privacy.ledger_format import (
    GENESIS_HASH,
    canonical_json,
    entry_hash,
    read_ledger,
    structure_problems,
)


@dataclass(frozen=True)
class Restored:
    """What a restore wrote."""

    entries: int
    epsilon: float
    sources: list[str]


def _candidates(sources: Sequence[Path], anchor: Anchor | None) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for source in sources:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise LedgerError(f"cannot read {source}: {exc.strerror}") from None
        parsed, _problems = read_ledger(data)  # a damaged copy still offers its good lines
        out += [(str(source), e) for _, e in parsed]
    if anchor is not None:
        out += [(str(anchor.path), e) for e in anchor.tail()]
    return out


def restore_ledger(
    ledger_path: str | os.PathLike[str],
    *,
    branch_id: str,
    public_keys: Sequence[signing.Ed25519PublicKey],
    sources: Sequence[str | os.PathLike[str]],
    anchor_path: str | os.PathLike[str] | None = None,
) -> Restored:
    """Rebuild ``ledger_path`` from ``sources`` (see the module docstring).

    Raises
    ------
    LedgerError
        No source yields a chain that reaches the anchor's head (naming the
        first missing ``seq``), or the result would be shorter than the ledger
        as it is (a restore never moves a ledger backwards).
    """
    ledger_path = Path(ledger_path)
    keys: Mapping[str, signing.Ed25519PublicKey] = {signing.key_id(k): k for k in public_keys}
    anchor = Anchor(anchor_path) if anchor_path is not None else None
    pool = _candidates([Path(s) for s in sources], anchor)
    if ledger_path.exists():
        pool += [(str(ledger_path), e) for _, e in read_ledger(ledger_path.read_bytes())[0]]
    chain, used = _signed_chain(_verified_by_seq(pool, branch_id, keys))
    head = anchor.read() if anchor is not None else None
    if head is not None and (
        len(chain) <= int(head["seq"]) or chain[int(head["seq"])]["hash"] != head["hash"]
    ):
        raise LedgerError(
            f"the sources hold a signed chain of {len(chain)} entries, but the anchor records "
            f"entry seq {head['seq']}: entry seq {len(chain)} is missing from every source. "
            "Add the server's copy of this branch's ledger, or a newer backup, with --from"
        )
    current = read_ledger(ledger_path.read_bytes())[0] if ledger_path.exists() else []
    if len(chain) < len(current):
        raise LedgerError(
            f"the restored chain ({len(chain)} entries) would be shorter than {ledger_path} "
            f"({len(current)}): nothing was written"
        )
    _replace_ledger(ledger_path, chain)
    if anchor is not None and chain:
        anchor.write(chain)
    epsilon = float(chain[-1]["epsilon"]) if chain else 0.0
    return Restored(len(chain), epsilon, sorted(used))


def _verified_by_seq(
    pool: Sequence[tuple[str, dict[str, Any]]],
    branch_id: str,
    keys: Mapping[str, signing.Ed25519PublicKey],
) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    """The pool's well-formed entries of ``branch_id`` whose hash and signature verify, by seq."""
    by_seq: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for source, entry in pool:
        if structure_problems(entry) or entry["branch_id"] != branch_id:
            continue
        key = keys.get(entry["key_id"])
        if key is None or entry_hash(entry) != entry["hash"]:
            continue
        if not signing.verify_signature(key, bytes.fromhex(entry["hash"]), entry["signature"]):
            continue
        by_seq.setdefault(entry["seq"], []).append((source, entry))
    return by_seq


def _signed_chain(
    by_seq: Mapping[int, list[tuple[str, dict[str, Any]]]],
) -> tuple[list[dict[str, Any]], set[str]]:
    """The longest hash chain from genesis through ``by_seq``, and the sources it used."""
    chain: list[dict[str, Any]] = []
    used: set[str] = set()
    prev = GENESIS_HASH
    while True:
        nxt = next(((s, e) for s, e in by_seq.get(len(chain), []) if e["prev_hash"] == prev), None)
        if nxt is None:
            break
        used.add(nxt[0])
        chain.append(nxt[1])
        prev = nxt[1]["hash"]
    return chain, used


def _replace_ledger(ledger_path: Path, chain: list[dict[str, Any]]) -> None:
    """Write ``chain`` as the ledger file in one atomic replace (fsynced first)."""
    tmp = ledger_path.with_name(ledger_path.name + ".restore.tmp")
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"".join(canonical_json(e) + b"\n" for e in chain))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, ledger_path)


def describe(restored: Restored) -> str:
    """One line for the command's output."""
    return json.dumps(
        {"entries": restored.entries, "epsilon": restored.epsilon, "sources": restored.sources}
    )
