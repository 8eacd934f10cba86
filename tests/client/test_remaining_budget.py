"""``privacy.target=remaining``: a branch plans its noise against what its ceiling leaves.

A branch that already spent most of its ceiling on one job refuses a second
job's rounds under the default ``target=job`` (its noise is planned for the
job alone); under ``target=remaining`` the same second job runs every round
and ends within the ceiling, with more noise. Both model families, on the
branch's real code path with real ledgers and accountants.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import fedcrm.client.gbdt_round as R
from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.lstm_round import initial_weights, train_round
from fedcrm.config import JobSpec, LSTMModelConfig, PrivacyConfig, TaskConfig
from fedcrm.errors import BudgetExhaustedError
from fedcrm.privacy.accounting import Charge, Mechanism
from fedcrm.privacy.ledger import Ledger
from fedcrm.privacy.planning import spend_plan
from fedcrm.privacy.signing import generate_signing_key

from .test_gbdt_round import _branches, _features, _spec

CEILING = 4.0


def _branch(home: Path) -> tuple[BranchSettings, BranchData]:
    home.mkdir(parents=True, exist_ok=True)
    generate_signing_key(home, "b0")
    settings = BranchSettings(
        branch_id="b0",
        data_path=home,
        ledger_path=home / "b0.jsonl",
        signing_key=home / "b0.key",
        epsilon_ceiling=CEILING,
    )
    ((X, y),) = _branches(1, n=600)
    fs = _features(X, y)
    return settings, BranchData(fs.subset(np.arange(400)), fs.subset(np.arange(400, 600)), 0, "s1")


@pytest.fixture
def branch(tmp_path: Path) -> tuple[BranchSettings, BranchData]:
    return _branch(tmp_path / "b0")


def _lstm_spec(run: str, target: str, epsilon: float) -> JobSpec:
    return JobSpec(
        run_id=run,
        model=LSTMModelConfig(hidden_size=4, embedding_dim=2, batch_size=64),
        task=TaskConfig(cutoff="2024-01-01"),
        privacy=PrivacyConfig(
            mode="dp", target_epsilon=epsilon, delta=1e-4, accountant="rdp", target=target
        ),
        rounds=3,
        local_epochs=1,
        seed=1,
    )


def _request(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _run_lstm(spec: JobSpec, settings: BranchSettings, data: BranchData) -> list[dict]:
    weights = initial_weights(spec, data.n_tabular)
    outcomes = []
    for r in range(1, spec.rounds + 1):
        out = train_round(spec, r, settings, data, weights, request=_request(f"{spec.run_id}-{r}"))
        outcomes.append(out.refusal or out.metrics)
    return outcomes


def _spent(settings: BranchSettings) -> float:
    assert settings.ledger_path is not None
    return Ledger(settings.ledger_path, branch_id="b0").epsilon(delta=1e-4, accountant="rdp")


def test_second_lstm_job_under_target_remaining_finishes_within_the_ceiling(
    tmp_path: Path,
) -> None:
    # Two identical branches run the same first job, then a second one each.
    (settings, data), (other, _) = _branch(tmp_path / "a"), _branch(tmp_path / "b")
    first = _run_lstm(_lstm_spec("first", "job", 3.0), settings, data)
    assert all("reason" not in o for o in first)
    assert all("reason" not in o for o in _run_lstm(_lstm_spec("first", "job", 3.0), other, data))
    after_first = _spent(settings)
    assert 2.5 < after_first <= 3.0

    # The second job planned for itself alone would pass the ceiling: refused.
    greedy = _run_lstm(_lstm_spec("second", "job", 3.0), other, data)
    assert greedy[0]["plan_passes_ceiling"] == 1.0  # the server is told at round 1
    refused = [o for o in greedy if "reason" in o]
    assert refused and refused[0]["reason"] == "budget-exhausted"
    assert first[0]["plan_passes_ceiling"] == 0.0

    second = _run_lstm(_lstm_spec("second-remaining", "remaining", 3.0), settings, data)
    assert all("reason" not in o for o in second), second
    assert second[0]["plan_passes_ceiling"] == 0.0
    final = _spent(settings)
    assert after_first < final <= CEILING
    assert final > 0.95 * CEILING  # it used the room it had, not far less
    assert second[0]["noise_multiplier"] > first[0]["noise_multiplier"]
    assert len({o["noise_multiplier"] for o in second}) == 1  # one plan for the whole run


def test_a_branch_with_no_room_left_refuses_a_remaining_job() -> None:
    with pytest.raises(BudgetExhaustedError):
        spend_plan(
            mode="remaining",
            target_epsilon=1.0,
            ceiling=1.0,
            others=[Charge(Mechanism("gaussian", 0.5, 1.0, 4), split="s1")],
            split="s1",
            delta=1e-4,
            accountant="rdp",
            branch_id="b0",
        )


def test_remaining_plan_counts_only_the_training_side_when_sides_are_parallel() -> None:
    train = Charge(Mechanism("gaussian", 2.0, 1.0, 1), purpose="train", split="s1")
    evaluation = Charge(Mechanism("gaussian", 0.6, 1.0, 1), purpose="evaluation", split="s1")
    common = {"mode": "remaining", "target_epsilon": 1.0, "ceiling": 10.0, "split": "s1"}
    kw = {**common, "delta": 1e-5, "accountant": "rdp", "branch_id": "b0"}
    parallel = spend_plan(others=[train, evaluation], **kw)
    assert parallel.prior == (train.mechanism,)
    # A charge on another split breaks parallel composition: everything counts.
    moved = Charge(Mechanism("gaussian", 2.0, 1.0, 1), purpose="train", split="s0")
    sequential = spend_plan(others=[moved, evaluation], **kw)
    assert len(sequential.prior) == 2 and sequential.spent > parallel.spent
    assert spend_plan(others=[train], **{**kw, "mode": "job"}).cap is None
    assert spend_plan(others=[train], **{**kw, "ceiling": None}).cap is None


def test_second_tree_job_under_target_remaining_plans_more_noise(branch) -> None:
    _, data = branch
    privacy = PrivacyConfig(
        mode="dp", target_epsilon=2.0, delta=1e-4, accountant="rdp", target="remaining"
    )
    spec = _spec(privacy=privacy).model_copy(
        update={"run_id": "trees", "task": TaskConfig(cutoff="2024-01-01")}
    )
    alone = R.plan_dp(spec, 1e-4, data.n_tabular)
    prior = Charge(Mechanism("gaussian", 1.6, 1.0, 2), split="s1")
    plan = spend_plan(
        mode="remaining",
        target_epsilon=2.0,
        ceiling=CEILING,
        others=[prior],
        split="s1",
        delta=1e-4,
        accountant="rdp",
        branch_id="b0",
    )
    assert plan.cap is not None and plan.cap - plan.spent < 2.0  # less room than the job asks
    tight = R.plan_dp(spec, 1e-4, data.n_tabular, plan)
    assert tight.z_main > alone.z_main and tight.z_edges >= alone.z_edges
    from fedcrm.privacy.accounting import compute_epsilon

    run = [
        *plan.prior,
        tight.mechanism("edges"),
        *[tight.mechanism("tree")] * R.cfg_rounds(spec),
    ]
    assert compute_epsilon(run, delta=1e-4, accountant="rdp") <= CEILING
