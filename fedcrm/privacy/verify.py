"""Verify branch privacy ledgers with nothing but the branches' public keys.

For each ledger: every line is a complete JSON entry of the right shape, for
the right branch; ``seq`` runs 0, 1, 2, ... with no gap or reorder; each
``prev_hash`` is the previous entry's hash; each ``hash`` matches its entry;
each entry was signed by one of the branch's keys, the one its ``key_id``
names (a branch that rotated its signing key has several: its current and
retired keys; a revoked key verifies nothing); every release entry releases a
reservation; and the cumulative epsilon each entry states is what the
parameters of every charge so far give with the accountant it names
(relative tolerance 1e-6), in parallel across the train and evaluation sides
of one split, sequentially otherwise
(:func:`fedcrm.privacy.accounting.composed_epsilon`). A ledger checked against
its anchor must still hold the head the anchor records. Every problem is
collected, naming the branch and the line and ``seq`` of the entry.

Keys come from a directory of ``<branch_id>.pub`` files (PEM blocks, one per
key) or from the central team's admitted list (``server/admitted.json``, see
:mod:`fedcrm.identity`), which also names revoked keys.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcrm.errors import ConfigError, KeyFileError, LedgerError, PrivacyError
from fedcrm.identity import Roster, load_roster
from fedcrm.privacy import signing
from fedcrm.privacy.accounting import charges_trajectory
from fedcrm.privacy.anchor import Anchor
from fedcrm.privacy.ledger_format import charge_of, charges, read_ledger

#: Relative tolerance between a stated and a recomputed epsilon.
EPSILON_RTOL = 1e-6
LEDGER_SUFFIX = ".jsonl"

PublicKeys = (
    signing.Ed25519PublicKey | Sequence[signing.Ed25519PublicKey] | str | os.PathLike[str] | None
)
"""What :func:`verify_ledger` takes as a branch's keys."""


@dataclass
class BranchVerification:
    """The verification result of one branch's ledger."""

    branch_id: str
    entries: int
    epsilon: float | None
    delta: float | None
    ok: bool
    problems: list[str] = field(default_factory=list)
    accountant: str | None = None
    path: str | None = None
    key_id: str | None = None


def _check_branch_and_signatures(
    parsed: list[tuple[int, dict[str, Any]]],
    branch_id: str,
    keys: Mapping[str, signing.Ed25519PublicKey] | None,
    revoked: Collection[str],
    problems: list[str],
) -> None:
    for number, entry in parsed:
        where = f"line {number} (seq {entry['seq']})"
        if entry["branch_id"] != branch_id:
            problems.append(f"{where}: belongs to branch {entry['branch_id']}")
        if keys is None:
            continue
        key = keys.get(entry["key_id"])
        if entry["key_id"] in revoked:
            problems.append(f"{where}: signed by revoked key {entry['key_id']}")
        elif key is None:
            known = ", ".join(sorted(keys)) or "none"
            problems.append(
                f"{where}: signed by unknown key {entry['key_id']} (branch keys: {known})"
            )
        elif not signing.verify_signature(key, bytes.fromhex(entry["hash"]), entry["signature"]):
            problems.append(f"{where}: bad signature")


def _check_epsilons(parsed: list[tuple[int, dict[str, Any]]], problems: list[str]) -> None:
    if not parsed:
        return
    entries = [entry for _, entry in parsed]
    try:
        recomputed = charges_trajectory(
            [charge_of(e) if charges(e) else None for e in entries],
            deltas=[e["delta"] for e in entries],
            accountants=[e["accountant"] for e in entries],
        )
    except PrivacyError as exc:
        problems.append(f"epsilon cannot be recomputed: {exc}")
        return
    for (number, entry), epsilon in zip(parsed, recomputed, strict=True):
        if not math.isclose(entry["epsilon"], epsilon, rel_tol=EPSILON_RTOL, abs_tol=1e-12):
            problems.append(
                f"line {number} (seq {entry['seq']}): states epsilon {entry['epsilon']:.9g} "
                f"but its parameters give {epsilon:.9g} with the {entry['accountant']} accountant"
            )


def _key_map(public_keys: PublicKeys, problems: list[str], branch: str) -> dict[str, Any] | None:
    """Key id -> key from a key, a list of keys or a PEM file (``None``: no key known)."""
    if public_keys is None:
        problems.append(f"unknown key: no public key for branch {branch}")
        return None
    if isinstance(public_keys, signing.Ed25519PublicKey):
        found = [public_keys]
    elif isinstance(public_keys, (str, os.PathLike)):
        try:
            found = signing.load_public_keys(public_keys)
        except KeyFileError as exc:
            problems.append(f"unknown key: {exc}")
            return None
    else:
        found = list(public_keys)
    return {signing.key_id(k): k for k in found}


def verify_ledger(
    path: str | os.PathLike[str],
    public_key: PublicKeys,
    *,
    branch_id: str | None = None,
    anchor: str | os.PathLike[str] | None = None,
    revoked: Collection[str] = (),
) -> BranchVerification:
    """Verify one branch ledger.

    Parameters
    ----------
    path
        The ledger file (``<branch_id>.jsonl``).
    public_key
        The branch's Ed25519 public key(s): a key, a list of keys, or the path of
        a PEM file (one block per key). Each entry is checked with the key its
        ``key_id`` names. ``None`` (no key known) is itself a failure;
        everything else is still checked.
    branch_id
        The branch the ledger must belong to (default: the file name's stem).
    anchor
        The branch's anchor file: a ledger shorter than (or diverging from)
        the head it records fails.
    revoked
        Key ids whose signatures no longer count (revoked by the central team).

    Returns
    -------
    BranchVerification
        ``ok`` is true only when no problem was found.
    """
    path = Path(path)
    branch = branch_id or path.name.removesuffix(LEDGER_SUFFIX)
    problems: list[str] = []
    keys = _key_map(public_key, problems, branch)
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"cannot read {path}: {exc.strerror}")
        data = b""
    parsed, chain_problems = read_ledger(data)
    problems += chain_problems
    _check_branch_and_signatures(parsed, branch, keys, set(revoked), problems)
    _check_epsilons(parsed, problems)
    if anchor is not None:
        try:
            Anchor(anchor).check([e for _, e in parsed], path)
        except LedgerError as exc:
            problems.append(str(exc))
    last = parsed[-1][1] if parsed else None
    return BranchVerification(
        branch_id=branch,
        entries=len(parsed),
        epsilon=last["epsilon"] if last else None,
        delta=last["delta"] if last else None,
        ok=not problems,
        problems=problems,
        accountant=last["accountant"] if last else None,
        path=str(path),
        key_id=", ".join(sorted(keys)) if keys else None,
    )


def _ledgers_and_keys(target: Path, keys_dir: Path | None) -> tuple[list[Path], list[Path]]:
    """Ledger files under ``target`` and the directories to look for keys in."""
    if target.is_file():
        ledgers, around = [target], [target.parent / "keys", target.parent.parent / "keys"]
        around.append(target.parent)
    elif (target / "ledger").is_dir():  # a run directory
        ledgers, around = sorted((target / "ledger").glob(f"*{LEDGER_SUFFIX}")), [target / "keys"]
    elif target.is_dir():
        ledgers = sorted(target.glob(f"*{LEDGER_SUFFIX}"))
        around = [target / "keys", target.parent / "keys", target]
    else:
        raise LedgerError(f"{target} does not exist; give a ledger file or a run directory")
    if not ledgers:
        raise LedgerError(
            f"no ledger (*{LEDGER_SUFFIX}) in {target}; give a ledger file, a directory of "
            "ledgers or a run directory with ledger/"
        )
    return ledgers, [keys_dir] if keys_dir is not None else around


def _roster_keys(roster: Roster, branch: str) -> tuple[list[Any] | None, set[str]]:
    identity = roster.get(branch)
    if identity is None:
        return None, set()
    keys = [
        signing.signing_public_key_from_pem(k.public_key, f"admitted list: {branch} {k.key_id}")
        for k in identity.verifying_keys().values()
    ]
    revoked = {k.key_id for k in identity.signing_keys} - set(identity.verifying_keys())
    return keys, revoked


def verify_path(
    ledger_or_run_dir: str | os.PathLike[str],
    *,
    keys_dir: str | os.PathLike[str] | None = None,
    anchor: str | os.PathLike[str] | None = None,
) -> list[BranchVerification]:
    """Verify a ledger file, a directory of ledgers, or a run directory.

    A run directory holds ``ledger/<branch_id>.jsonl`` and
    ``keys/<branch_id>.pub``. Elsewhere keys are looked for in ``keys_dir``
    when given (a directory of ``<branch_id>.pub`` files, or an admitted list
    ``admitted.json``), else in a ``keys/`` directory beside or above the
    ledgers, else beside them. A branch whose public key is not found fails
    verification.

    Raises
    ------
    LedgerError
        When ``ledger_or_run_dir`` holds no ledger.
    ConfigError
        When ``keys_dir`` is a JSON file but not an admitted list.
    """
    roster = None
    if keys_dir is not None and Path(keys_dir).is_file():
        roster = load_roster(keys_dir)
        if not roster.branches:
            raise ConfigError(f"--keys {keys_dir}: the admitted list names no branch")
    ledgers, key_dirs = _ledgers_and_keys(
        Path(ledger_or_run_dir), Path(keys_dir) if keys_dir is not None else None
    )
    results = []
    for ledger in ledgers:
        branch = ledger.name.removesuffix(LEDGER_SUFFIX)
        found = anchor
        if found is None and len(ledgers) == 1 and Path(ledger_or_run_dir).is_file():
            beside = ledger.parent / "state" / "anchor.json"
            found = beside if beside.exists() else None
        if roster is not None:
            keys, revoked = _roster_keys(roster, branch)
            result = verify_ledger(ledger, keys, branch_id=branch, revoked=revoked, anchor=found)
            if keys is None:
                result.problems[0] = f"unknown key: branch {branch} is not in {keys_dir}"
            results.append(result)
            continue
        candidates = [d / f"{branch}{signing.PUBLIC_SUFFIX}" for d in key_dirs]
        key_path = next((p for p in candidates if p.is_file()), None)
        result = verify_ledger(ledger, key_path, branch_id=branch, anchor=found)
        if key_path is None:
            looked = ", ".join(str(p) for p in candidates)
            result.problems[0] = (
                f"unknown key: no public key for branch {branch} (looked for {looked})"
            )
        results.append(result)
    return results


def format_table(results: list[BranchVerification], *, max_problems: int = 5) -> str:
    """Plain-text per-branch table, then the problems of each failing branch."""
    header = ("branch", "entries", "epsilon", "delta", "accountant", "result")
    rows = [header] + [
        (
            r.branch_id,
            str(r.entries),
            "-" if r.epsilon is None else f"{r.epsilon:.4g}",
            "-" if r.delta is None else f"{r.delta:.3g}",
            r.accountant or "-",
            "ok" if r.ok else f"FAILED ({len(r.problems)} problem(s))",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.ok:
            continue
        lines.append("")
        lines.append(f"branch {r.branch_id} ({r.path}):")
        lines += [f"  - {p}" for p in r.problems[:max_problems]]
        if len(r.problems) > max_problems:
            lines.append(f"  ... and {len(r.problems) - max_problems} more")
    return "\n".join(lines).rstrip() + "\n"
