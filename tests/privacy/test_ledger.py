"""The signed ledger: persistence across runs, chain checks, safe appends, server copy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fedcrm.errors import LedgerError
from fedcrm.privacy.accounting import Mechanism, compute_epsilon
from fedcrm.privacy.ledger import (
    GENESIS_HASH,
    Ledger,
    append_entries,
    canonical_json,
    entry_hash,
)
from fedcrm.privacy.signing import generate_signing_key, load_public_key, verify_signature

from .conftest import DELTA, fill, sgd_round


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return generate_signing_key(tmp_path / "keys", "b1")[0]


def test_entries_persist_across_runs_and_epsilon_composes_all(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    fill(Ledger(path, branch_id="b1", signing_key=key), 2, run_id="run-1")

    # A second run opens the same ledger in a new Ledger object (new process).
    second = Ledger(path, branch_id="b1", signing_key=key)
    entry = second.append(
        run_id="run-2",
        round=0,
        model="gbdt",
        mechanism=Mechanism.gaussian(noise_multiplier=20.0, sensitivity=1.25, steps=4),
        delta=DELTA,
        accountant="rdp",
        extra={"trees": 1},
    )

    entries = Ledger(path, branch_id="b1").entries()
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert [e["run_id"] for e in entries] == ["run-1", "run-1", "run-2"]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    assert entries[2]["prev_hash"] == entries[1]["hash"]
    assert entry == entries[2]
    assert entry["epsilon"] == pytest.approx(
        compute_epsilon(second.mechanisms(), delta=DELTA, accountant="rdp")
    )
    assert entry["epsilon"] > entries[1]["epsilon"]
    assert entry["sensitivity"] == 1.25 and entry["max_grad_norm"] is None
    assert entry["time"].endswith("Z")
    assert second.epsilon() == pytest.approx(entry["epsilon"])
    assert [e["seq"] for e in second.entries_since(1)] == [1, 2]


def test_entry_is_hashed_and_signed_as_documented(tmp_path: Path, key: Path) -> None:
    ledger = Ledger(tmp_path / "l.jsonl", branch_id="b1", signing_key=key)
    fill(ledger, 1)
    line = (tmp_path / "l.jsonl").read_bytes()
    entry = json.loads(line)

    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    assert line == canonical_json(entry) + b"\n"
    assert entry["hash"] == entry_hash(entry)
    assert entry["hash"] == hashlib.sha256(canonical_json(body)).hexdigest()
    public = load_public_key(key.with_suffix(".pub"))
    assert verify_signature(public, bytes.fromhex(entry["hash"]), entry["signature"])


def _tamper_cases(path: Path) -> dict[str, bytes]:
    lines = path.read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[1])
    edited["noise_multiplier"] = 3.0
    return {
        "edited": lines[0] + canonical_json(edited) + b"\n" + b"".join(lines[2:]),
        "truncated": b"".join(lines[:-1]) + lines[-1][:40],
        "deleted": lines[0] + b"".join(lines[2:]),
        "swapped": lines[1] + lines[0] + b"".join(lines[2:]),
    }


@pytest.mark.parametrize("case", ["edited", "truncated", "deleted", "swapped"])
def test_never_appends_to_a_corrupt_ledger(tmp_path: Path, key: Path, case: str) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, branch_id="b1", signing_key=key)
    fill(ledger, 3)
    path.write_bytes(_tamper_cases(path)[case])
    before = path.read_bytes()

    with pytest.raises(LedgerError, match=r"line \d"):
        fill(ledger, 1)

    assert path.read_bytes() == before


def test_failed_append_leaves_the_file_unchanged(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, branch_id="b1", signing_key=key)
    fill(ledger, 2)
    before = path.read_bytes()

    with pytest.raises(LedgerError, match="only JSON"):
        ledger.append(
            run_id="r",
            round=2,
            model="lstm",
            mechanism=sgd_round(),
            delta=DELTA,
            accountant="rdp",
            extra={"bad": object()},
        )
    with pytest.raises(Exception, match="delta"):
        ledger.append(
            run_id="r", round=2, model="lstm", mechanism=sgd_round(), delta=2.0, accountant="rdp"
        )
    with pytest.raises(LedgerError, match="no signing key"):
        fill(Ledger(path, branch_id="b1"), 1)
    with pytest.raises(LedgerError, match="belongs to branch b1"):
        fill(Ledger(path, branch_id="b2", signing_key=key), 1)

    assert path.read_bytes() == before


def test_server_copy_extends_the_chain_and_refuses_forks(tmp_path: Path, key: Path) -> None:
    branch = Ledger(tmp_path / "branch.jsonl", branch_id="b1", signing_key=key)
    copy = tmp_path / "run" / "ledger" / "b1.jsonl"
    fill(branch, 2)

    assert append_entries(copy, branch.entries_since(0)) == 2
    fill(branch, 2, run_id="run-2")
    assert append_entries(copy, branch.entries_since(1)) == 2  # seq 1 resent: skipped
    assert copy.read_bytes() == (tmp_path / "branch.jsonl").read_bytes()

    forged = dict(branch.entries()[-1], seq=4, prev_hash=branch.entries()[-1]["hash"])
    forged["epsilon"] = 0.1
    before = copy.read_bytes()
    with pytest.raises(LedgerError, match=r"seq 4.*does not extend the hash chain"):
        append_entries(copy, [forged])
    with pytest.raises(LedgerError, match="expected seq 4"):
        append_entries(copy, [dict(branch.entries()[0], seq=6)])
    assert copy.read_bytes() == before


def test_copy_starts_at_the_first_entry(tmp_path: Path, key: Path) -> None:
    branch = Ledger(tmp_path / "branch.jsonl", branch_id="b1", signing_key=key)
    fill(branch, 3)

    with pytest.raises(LedgerError, match="expected seq 0"):
        append_entries(tmp_path / "copy.jsonl", branch.entries_since(2))
