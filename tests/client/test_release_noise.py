"""The noise of a branch's tree and evaluation releases, on the branch's real code path.

Each release is a billed step of the branch's privacy gate; fresh steps (new
runs) draw fresh noise from the branch. Over many releases the difference
between what a branch sends and the exact statistic must have the stated
standard deviation, and must not vanish when a step is asked again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import fedcrm.client.gbdt_round as R
from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.lstm_round import evaluation_noise, evaluation_release
from fedcrm.client.privacy_gate import PrivacyGate, Step
from fedcrm.config import JobSpec, LSTMModelConfig, PrivacyConfig, TaskConfig
from fedcrm.models.evaluation import grid_counts
from fedcrm.privacy.signing import generate_signing_key

from .test_gbdt_round import _branches, _features, _spec

PRIVACY = PrivacyConfig(mode="dp", noise_multiplier=1.3, delta=1e-4, accountant="rdp")


@pytest.fixture
def branch(tmp_path: Path) -> tuple[BranchSettings, BranchData]:
    generate_signing_key(tmp_path, "b0")
    settings = BranchSettings(
        branch_id="b0",
        data_path=tmp_path,
        ledger_path=tmp_path / "b0.jsonl",
        signing_key=tmp_path / "b0.key",
    )
    ((X, y),) = _branches(1, n=400)
    fs = _features(X, y)
    return settings, BranchData(fs, fs.subset(np.arange(200)), 0, "0123456789abcdef")


def _dp_spec(run: str) -> JobSpec:
    spec = _spec(privacy=PRIVACY)
    return spec.model_copy(update={"run_id": run, "task": TaskConfig(cutoff="2024-01-01")})


def _request(run: str) -> str:
    return hashlib.sha256(run.encode()).hexdigest()


def test_tree_level_releases_carry_noise_of_the_planned_scale(branch) -> None:
    settings, data = branch
    plain = _spec()
    lo, hi, _ = R.branch_ranges(plain, data)
    fine = R.fine_release(plain, settings, data, lo, hi, request="x" * 64)
    edges_model = R.apply_aggregate(plain, fine.model, fine.release["values"])
    exact = R.protocol_step(plain, settings, data, edges_model, None, request="y" * 64)
    residuals = []
    for i in range(12):
        spec = _dp_spec(f"run{i}")
        out = R.protocol_step(spec, settings, data, edges_model, None, request=_request(f"{i}"))
        assert out.refusal is None
        residuals.append(out.release["values"] - exact.release["values"])
        again = R.protocol_step(spec, settings, data, edges_model, None, request=_request(f"{i}"))
        assert np.array_equal(again.release["values"], out.release["values"])  # kept, not redrawn
    noise = np.concatenate(residuals)
    std = R.plan_dp(_dp_spec("x"), 1e-4, data.n_tabular).std("tree")
    assert noise.size > 3000
    assert noise.std() == pytest.approx(std, rel=0.05)
    assert abs(noise.mean()) < 4 * std / np.sqrt(noise.size)


def test_evaluation_releases_carry_noise_of_the_planned_scale(branch) -> None:
    settings, data = branch
    weights_spec = JobSpec(
        run_id="e",
        model=LSTMModelConfig(hidden_size=4, embedding_dim=2),
        task=TaskConfig(cutoff="2024-01-01"),
        privacy=PRIVACY.model_copy(update={"evaluation_epsilon": 2.0}),
        rounds=1,
        local_epochs=1,
        seed=1,
    )
    from fedcrm.client.lstm_round import initial_weights, predict

    weights = initial_weights(weights_spec, data.n_tabular)
    exact = np.concatenate(grid_counts(data.test.labels, predict(weights_spec, data, weights)))
    residuals, sigmas = [], set()
    for i in range(40):
        spec = weights_spec.model_copy(update={"run_id": f"eval{i}"})
        gate = PrivacyGate(settings, spec, n_customers=400, split_id=data.split_id, model="lstm")
        sigmas.add(round(float(evaluation_noise(spec, gate)), 9))
        record, entries = evaluation_release(
            spec,
            settings,
            data,
            weights,
            gate=gate,
            step=Step("eval-final", 2, "evaluation"),
            request=_request(f"e{i}"),
        )
        assert record is not None and entries[0]["mechanism"] == "dp-eval"
        released = np.concatenate([record["eval.pos.count"], record["eval.neg.count"]])
        residuals.append(released - exact)
    (sigma,) = sigmas
    noise = np.concatenate(residuals)
    assert noise.std() == pytest.approx(sigma, rel=0.07)
    assert sigma > 0.5
