"""Verification names the branch and entry of every kind of tampering."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedcrm.errors import LedgerError
from fedcrm.privacy import signing
from fedcrm.privacy.ledger import Ledger, canonical_json, entry_hash
from fedcrm.privacy.verify import format_table, verify_ledger, verify_path

from .conftest import fill


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _resign(entry: dict, key_path: Path) -> bytes:
    entry["hash"] = entry_hash(entry)
    key = signing.load_private_key(key_path)
    entry["signature"] = signing.sign(key, bytes.fromhex(entry["hash"]))
    return canonical_json(entry) + b"\n"


def test_untouched_run_verifies(run_dir: Path) -> None:
    results = verify_path(run_dir)

    assert [(r.branch_id, r.ok, r.entries) for r in results] == [("b1", True, 4), ("b2", True, 3)]
    assert all(r.problems == [] and r.epsilon and r.delta == 1e-5 for r in results)
    table = format_table(results)
    assert "b1" in table and "ok" in table and "FAILED" not in table
    # A single ledger file and the ledger directory work too.
    assert verify_path(run_dir / "ledger" / "b1.jsonl")[0].ok
    assert all(r.ok for r in verify_path(run_dir / "ledger"))


def _tamper(run_dir: Path, case: str) -> None:
    path = run_dir / "ledger" / "b1.jsonl"
    lines = _lines(path)
    key = run_dir / "branches" / "b1" / "b1.key"
    if case == "edit a number":
        lines[2] = lines[2].replace(b'"noise_multiplier":1.5', b'"noise_multiplier":2.5')
    elif case == "delete a line":
        del lines[2]
    elif case == "swap two lines":
        lines[1], lines[2] = lines[2], lines[1]
    elif case == "truncate last line":
        lines[-1] = lines[-1][:50]
    elif case == "forged signature":
        entry = json.loads(lines[2])
        entry["epsilon"] = 0.01  # under-report, rehash, but the branch key is not at hand
        entry["hash"] = entry_hash(entry)
        lines[2] = canonical_json(entry) + b"\n"
    elif case == "epsilon mismatch":
        entry = json.loads(lines[2])
        entry["epsilon"] *= 0.9  # the branch itself signs a wrong epsilon
        lines[2] = _resign(entry, key)
    elif case == "wrong key":
        other, _ = signing.generate_signing_key(run_dir / "elsewhere", "b1")
        entry = json.loads(lines[2])
        entry["key_id"] = signing.key_id(signing.load_private_key(other))
        lines[2] = _resign(entry, other)
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("edit a number", r"line 3 \(seq 2\): content does not match its hash"),
        ("delete a line", r"line 3 \(seq 3\): expected seq 2"),
        ("swap two lines", r"line 2 \(seq 2\): expected seq 1"),
        ("truncate last line", r"line 4 is truncated"),
        ("forged signature", r"line 3 \(seq 2\): bad signature"),
        ("epsilon mismatch", r"line 3 \(seq 2\): states epsilon .* but its parameters give"),
        ("wrong key", r"line 3 \(seq 2\): signed by unknown key"),
    ],
)
def test_tampering_is_detected_naming_branch_and_entry(
    run_dir: Path, case: str, expected: str
) -> None:
    _tamper(run_dir, case)

    results = {r.branch_id: r for r in verify_path(run_dir)}

    assert results["b2"].ok
    assert not results["b1"].ok
    assert any(re.search(expected, p) for p in results["b1"].problems), results["b1"].problems
    assert "FAILED" in format_table(list(results.values()))


def test_unknown_key_fails_naming_the_branch(run_dir: Path) -> None:
    (run_dir / "keys" / "b2.pub").unlink()

    results = {r.branch_id: r for r in verify_path(run_dir)}

    assert results["b1"].ok
    assert not results["b2"].ok
    assert results["b2"].problems[0].startswith("unknown key: no public key for branch b2")


def test_another_branch_key_fails_every_entry(run_dir: Path) -> None:
    result = verify_ledger(run_dir / "ledger" / "b1.jsonl", run_dir / "keys" / "b2.pub")

    assert not result.ok
    assert len([p for p in result.problems if "signed by unknown key" in p]) == 4


def test_private_key_given_as_public_key_fails(run_dir: Path) -> None:
    result = verify_ledger(run_dir / "ledger" / "b1.jsonl", run_dir / "branches" / "b1" / "b1.key")

    assert not result.ok
    assert "holds a private key" in result.problems[0]


def test_keys_dir_option_and_missing_ledgers(run_dir: Path, tmp_path: Path) -> None:
    keys = run_dir / "keys"
    moved = tmp_path / "officer-keys"
    keys.rename(moved)

    assert not any(r.ok for r in verify_path(run_dir))
    assert all(r.ok for r in verify_path(run_dir, keys_dir=moved))
    with pytest.raises(LedgerError, match="no ledger"):
        verify_path(moved)


def _rotated_ledger(tmp_path: Path) -> tuple[Path, Path, Path]:
    """b1's ledger: 2 entries signed with its old key, then 2 with its new one."""
    old_priv, old_pub = signing.generate_signing_key(tmp_path / "old", "b1")
    new_priv, new_pub = signing.generate_signing_key(tmp_path / "new", "b1")
    path = tmp_path / "ledger" / "b1.jsonl"
    fill(Ledger(path, branch_id="b1", signing_key=old_priv), 2)
    fill(Ledger(path, branch_id="b1", signing_key=new_priv), 2, run_id="run-2")
    return path, old_pub, new_pub


def test_a_rotated_key_verifies_with_every_key_of_the_branch(tmp_path: Path) -> None:
    path, old_pub, new_pub = _rotated_ledger(tmp_path)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "b1.pub").write_text(new_pub.read_text() + old_pub.read_text())

    (result,) = verify_path(path.parent, keys_dir=keys)

    assert result.ok, result.problems
    only_new = verify_ledger(path, new_pub)
    assert [p.split(":")[0] for p in only_new.problems] == ["line 1 (seq 0)", "line 2 (seq 1)"]
    assert all("signed by unknown key" in p for p in only_new.problems)


def test_the_admitted_list_verifies_retired_keys_and_refuses_revoked_ones(tmp_path: Path) -> None:
    from fedcrm.identity import BranchIdentity, Roster, SigningKey, save_roster

    path, old_pub, new_pub = _rotated_ledger(tmp_path)
    old_id = signing.key_id(signing.load_public_key(old_pub))
    new_id = signing.key_id(signing.load_public_key(new_pub))

    def roster_with(old_status: str) -> Path:
        keys = (
            SigningKey(old_id, old_pub.read_text(), old_status),
            SigningKey(new_id, new_pub.read_text()),
        )
        identity = BranchIdentity("b1", "ecdsa-sha2-nistp384 AAAA", keys, "x", node_id=1)
        return save_roster(Roster({"b1": identity}), tmp_path / f"admitted-{old_status}.json")

    (retired,) = verify_path(path, keys_dir=roster_with("retired"))
    assert retired.ok, retired.problems
    (revoked,) = verify_path(path, keys_dir=roster_with("revoked"))
    assert not revoked.ok
    assert revoked.problems == [
        f"line 1 (seq 0): signed by revoked key {old_id}",
        f"line 2 (seq 1): signed by revoked key {old_id}",
    ]
