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
    # The final evaluation is a release too: branch_00 spends only what its ceiling allows.
    final = [json.loads(x) for x in (out / "branches" / "branch_00" / "ledger.jsonl").open()][-2]
    assert final["purpose"] == "evaluation" and final["epsilon"] <= 1.4

    # The branch's own ledger and the server's copy agree, and epsilon is what an
    # accountant gives for the recorded parameters.
    for b in priv:
        home = _entries(out / "branches" / b / "ledger.jsonl")
        copy = _entries(out / "ledger" / f"{b}.jsonl")
        assert home == copy
        # Every reservation is followed by the release it paid for, before the next step.
        kinds = [e["kind"] for e in home]
        assert kinds[::2] == ["reservation"] * (len(home) // 2)
        assert kinds[1::2] == ["release"] * (len(home) // 2)
        sides: dict[str, list[Mechanism]] = {}
        for e in home:
            if e["kind"] == "reservation":
                sides.setdefault(e["purpose"], []).append(
                    Mechanism(
                        name=e["mechanism"],
                        noise_multiplier=e["noise_multiplier"],
                        sample_rate=e["sample_rate"],
                        steps=e["steps"],
                    )
                )
        assert set(sides) == {"train", "evaluation"}
        # Train and test customers are disjoint: the two sides compose in parallel.
        eps = max(
            compute_epsilon(m, delta=home[-1]["delta"], accountant="rdp") for m in sides.values()
        )
        assert eps >= home[-1]["epsilon"] * 0.95  # RDP is looser than PRV, never much tighter
        customers = summary["per_branch"][b]["customers"]
        assert home[-1]["delta"] < 1 / (10 * customers)

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
    # Thirty noisy test customers per branch may leave no positive mass at all.
    assert summary["final"]["auc"] is None or 0 <= summary["final"]["auc"] <= 1
