"""Ledger format 2: reservations, releases, the anchor, restores, parallel composition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcrm.errors import BudgetExhaustedError, LedgerBehindAnchorError, LedgerError
from fedcrm.privacy.accounting import Charge, Mechanism, composed_epsilon, compute_epsilon
from fedcrm.privacy.ledger import Ledger
from fedcrm.privacy.restore import restore_ledger
from fedcrm.privacy.signing import generate_signing_key, load_public_key
from fedcrm.privacy.verify import verify_ledger

from .conftest import DELTA, sgd_round

SPLIT = "0123456789abcdef"


def _eval(sigma: float = 3.0) -> Mechanism:
    return Mechanism("dp-eval", sigma, 1.0, 1, sensitivity=1.0)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path / "keys", "b1")


@pytest.fixture
def ledger(tmp_path: Path, keys: tuple[Path, Path]) -> Ledger:
    return Ledger(
        tmp_path / "ledger.jsonl",
        branch_id="b1",
        signing_key=keys[0],
        anchor_path=tmp_path / "state" / "anchor.json",
    )


def _reserve(ledger: Ledger, step: str, mechanism: Mechanism, purpose: str = "train", **kw):
    return ledger.reserve(
        run_id="r1",
        round=1,
        model="lstm",
        mechanism=mechanism,
        delta=DELTA,
        accountant="rdp",
        purpose=purpose,
        step=step,
        split=SPLIT,
        **kw,
    )


def test_train_and_evaluation_sides_compose_in_parallel(ledger: Ledger, keys) -> None:
    a = _reserve(ledger, "round-1", sgd_round())
    b = _reserve(ledger, "eval-final", _eval(), purpose="evaluation")
    train_only = compute_epsilon([sgd_round()], delta=DELTA, accountant="rdp")
    eval_only = compute_epsilon([_eval()], delta=DELTA, accountant="rdp")
    both = compute_epsilon([sgd_round(), _eval()], delta=DELTA, accountant="rdp")
    assert a["epsilon"] == pytest.approx(train_only)
    assert b["epsilon"] == pytest.approx(max(train_only, eval_only))
    assert b["epsilon"] < both
    assert verify_ledger(ledger.path, keys[1], branch_id="b1").ok
    # Another split, or none, means sequential composition for everything.
    charges = [Charge(sgd_round(), "train", SPLIT), Charge(_eval(), "evaluation", "other")]
    assert composed_epsilon(charges, delta=DELTA, accountant="rdp") == pytest.approx(both)


def test_a_release_records_the_digests_and_costs_nothing(ledger: Ledger, keys) -> None:
    res = _reserve(ledger, "round-1", sgd_round())
    rel = ledger.record_release(reservation=res, request="a" * 64, reply="b" * 64)
    assert rel["kind"] == "release" and rel["reserves"] == res["seq"]
    assert rel["epsilon"] == res["epsilon"]
    assert verify_ledger(ledger.path, keys[1], branch_id="b1").ok
    with pytest.raises(LedgerError, match="not in the ledger"):
        ledger.record_release(
            reservation={**res, "hash": "0" * 64}, request="a" * 64, reply="b" * 64
        )


def test_a_reservation_past_the_ceiling_writes_nothing(ledger: Ledger) -> None:
    _reserve(ledger, "round-1", sgd_round(sigma=0.8))
    before = ledger.path.read_bytes()
    with pytest.raises(BudgetExhaustedError) as exc:
        _reserve(ledger, "round-2", sgd_round(sigma=0.8), ceiling=1.0)
    assert exc.value.would_spend > 1.0
    assert ledger.path.read_bytes() == before


@pytest.mark.parametrize("damage", ["delete", "truncate", "rollback"])
def test_a_ledger_behind_its_anchor_is_refused_and_restored_from_the_servers_copy(
    tmp_path: Path, ledger: Ledger, keys, damage: str
) -> None:
    for r in range(3):
        res = _reserve(ledger, f"round-{r}", sgd_round())
        ledger.record_release(reservation=res, request="a" * 64, reply="b" * 64)
    server_copy = tmp_path / "server-copy.jsonl"
    server_copy.write_bytes(ledger.path.read_bytes())
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    if damage == "delete":
        ledger.path.unlink()
    elif damage == "truncate":
        ledger.path.write_bytes(b"".join(lines[:4]))  # cut at a line boundary: still a chain
    else:
        ledger.path.write_bytes(b"".join(lines[:2]))  # an old backup
    with pytest.raises(LedgerBehindAnchorError, match="ledger-behind-anchor"):
        ledger.check_anchor()
    with pytest.raises(LedgerBehindAnchorError):
        _reserve(ledger, "round-9", sgd_round())  # nothing is appended meanwhile
    anchor = tmp_path / "state" / "anchor.json"
    assert not verify_ledger(ledger.path, keys[1], branch_id="b1", anchor=anchor).ok

    done = restore_ledger(
        ledger.path,
        branch_id="b1",
        public_keys=[load_public_key(keys[1])],
        sources=[server_copy],
        anchor_path=anchor,
    )
    assert done.entries == 6
    ledger.check_anchor()
    assert verify_ledger(ledger.path, keys[1], branch_id="b1", anchor=anchor).ok


def test_a_restore_uses_only_entries_the_branch_signed_and_reaches_the_anchor(
    tmp_path: Path, ledger: Ledger, keys
) -> None:
    for r in range(2):
        _reserve(ledger, f"round-{r}", sgd_round())
    good = ledger.path.read_bytes()
    forged = [json.loads(x) for x in good.splitlines()]
    forged[1]["signature"] = forged[0]["signature"]  # not the branch's signature of entry 1
    copy = tmp_path / "forged.jsonl"
    copy.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in forged))
    ledger.path.unlink()
    anchor = tmp_path / "state" / "anchor.json"
    anchor_data = json.loads(anchor.read_text())
    anchor_data["tail"] = []  # only the forged copy could supply entry 1
    anchor.write_text(json.dumps(anchor_data))
    with pytest.raises(LedgerError, match="seq 1 is missing"):
        restore_ledger(
            ledger.path,
            branch_id="b1",
            public_keys=[load_public_key(keys[1])],
            sources=[copy],
            anchor_path=anchor,
        )
    assert not ledger.path.exists()


def test_the_anchor_tail_restores_entries_the_server_never_received(
    tmp_path: Path, ledger: Ledger, keys
) -> None:
    _reserve(ledger, "round-0", sgd_round())
    server_copy = tmp_path / "copy.jsonl"
    server_copy.write_bytes(ledger.path.read_bytes())  # the server got round 0 only
    _reserve(ledger, "round-1", sgd_round())  # reserved, then the branch lost its disk
    ledger.path.unlink()
    done = restore_ledger(
        ledger.path,
        branch_id="b1",
        public_keys=[load_public_key(keys[1])],
        sources=[server_copy],
        anchor_path=tmp_path / "state" / "anchor.json",
    )
    assert done.entries == 2
