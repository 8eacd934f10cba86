"""DP end to end: real Opacus-accounted DP-SGD at every branch, ceilings, ledgers, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcrm.cli import main
from fedcrm.cli.simulate import check_overrides as _check_overrides
from fedcrm.config import compose
from fedcrm.privacy.accounting import Mechanism, compute_epsilon
from fedcrm.simulations.simulate import simulate

pytestmark = pytest.mark.slow

TINY = [
    "data.branches=3",
    "data.customers=150",
    "federation.rounds=3",
    "model.hidden_size=8",
    "model.embedding_dim=4",
    "task.max_events=10",
    "baseline=false",
    "privacy=dp",
    "privacy.target_epsilon=2",
]


def _entries(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_dp_run_with_one_branch_hitting_its_ceiling(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    overrides = _check_overrides(
        [*TINY, "branch.epsilon_ceilings.branch_00=1.4", f"output_dir={out}"]
    )
    summary = simulate(compose(overrides), out)

    priv = summary["privacy"]["per_branch"]
    assert priv["branch_00"]["ceiling"] == 1.4
    assert priv["branch_00"]["refused_rounds"] == 1
    assert priv["branch_00"]["rounds_trained"] == 1
    assert priv["branch_00"]["epsilon"] <= 1.4
    for b in ("branch_01", "branch_02"):
        assert priv[b]["rounds_trained"] == 3
        assert priv[b]["epsilon"] == pytest.approx(2.0, rel=0.05)
        assert priv[b]["epsilon"] <= 2.0
    assert summary["privacy"]["stopped_reason"] is None
    assert summary["rounds"] == 3

    # The branch's own ledger and the server's copy agree, and epsilon is what an
    # accountant gives for the recorded parameters.
    for b in priv:
        home = _entries(out / "branches" / b / "ledger.jsonl")
        copy = _entries(out / "ledger" / f"{b}.jsonl")
        assert home == copy
        mechanisms = [
            Mechanism(
                name=e["mechanism"],
                noise_multiplier=e["noise_multiplier"],
                sample_rate=e["sample_rate"],
                steps=e["steps"],
            )
            for e in home
        ]
        eps = compute_epsilon(mechanisms, delta=home[-1]["delta"], accountant="rdp")
        assert eps >= home[-1]["epsilon"] * 0.95  # RDP is looser than PRV, never much tighter
        assert home[-1]["delta"] < 1 / summary["per_branch"][b]["train_customers"]

    assert main(["privacy", "verify", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert 'id="branch-table"' in html and "branch_00" in html

    # Tampering with one entry of the server's copy is detected and named.
    copy = out / "ledger" / "branch_01.jsonl"
    lines = copy.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["epsilon"] = entry["epsilon"] / 2
    lines[1] = json.dumps(entry, sort_keys=True)
    copy.write_text("\n".join(lines) + "\n")
    assert main(["privacy", "verify", str(out)]) == 1


def test_all_branches_exhausted_stops_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "stop"
    cfg = compose([*TINY, "branch.epsilon_ceiling=1.4", f"output_dir={out}"])
    summary = simulate(cfg, out)
    assert summary["privacy"]["stopped_reason"]
    assert summary["rounds"] == 1
    for v in summary["privacy"]["per_branch"].values():
        assert v["epsilon"] <= 1.4 and v["refused_rounds"] == 1
    assert 0 <= summary["final"]["auc"] <= 1
