"""A branch's side of the tree protocol, played in-process without Flower.

Every step starts from the message alone (the caches are cleared before each
call, as in a fresh ClientApp process) and the branches' releases are summed
here as the server would: the trees must equal the in-process reference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import fedcrm.client.gbdt_round as R
from fedcrm import protocol as P
from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.gbdt_local import clear_caches
from fedcrm.config import GBDTModelConfig, JobSpec, PrivacyConfig, TaskConfig
from fedcrm.data.dataset import FeatureSet
from fedcrm.models.gbdt_reference import fit_from_partitions
from fedcrm.privacy.signing import generate_signing_key


def _features(X: np.ndarray, y: np.ndarray) -> FeatureSet:
    n = len(y)
    return FeatureSet(
        customer_ids=np.array([f"c{i}" for i in range(n)]),
        branch_ids=np.array(["b"] * n),
        seq_cat=np.zeros((n, 1, 3), np.int64),
        seq_num=np.zeros((n, 1, 3), np.float32),
        lengths=np.ones(n, np.int64),
        tabular=X.astype(np.float32),
        labels=y.astype(np.int64),
        tabular_names=[f"log_f{i}" for i in range(X.shape[1])],
    )


def _branches(
    n_branches: int = 3, n: int = 300, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    parts = []
    for b in range(n_branches):
        X = rng.normal(size=(n, 5)) + 0.3 * b
        X[:, 3] = 1.0  # constant feature: never split
        y = (X[:, 0] + 0.5 * X[:, 1] * X[:, 2] + rng.normal(scale=0.7, size=n) > 0.3).astype(float)
        parts.append((X.astype(np.float32), y))
    return parts


def _spec(mode: str = "exact", privacy: PrivacyConfig | None = None, **model: object) -> JobSpec:
    cfg = GBDTModelConfig(n_estimators=4, max_depth=3, mode=mode, trees_per_exchange=3, **model)
    return JobSpec(
        run_id="run1",
        model=cfg,
        task=TaskConfig(),
        privacy=privacy or PrivacyConfig(),
        rounds=1,
        local_epochs=1,
        seed=7,
    )


def _setup(tmp_path: Path, parts, *, dp: bool = False, ceiling: float | None = None):
    out = []
    for i, (X, y) in enumerate(parts):
        bid = f"b{i}"
        settings = BranchSettings(branch_id=bid, data_path=tmp_path)
        if dp:
            generate_signing_key(tmp_path, bid)
            settings = BranchSettings(
                branch_id=bid,
                data_path=tmp_path,
                ledger_path=tmp_path / f"{bid}.jsonl",
                signing_key=tmp_path / f"{bid}.key",
                epsilon_ceiling=ceiling,
            )
        fs = _features(X, y)
        out.append((settings, BranchData(fs, fs.subset(np.arange(20)), 0, "0123456789abcdef")))
    return out


def _fresh_process() -> None:
    clear_caches()


def _values(out: R.StepOutcome) -> np.ndarray:
    assert out.release is not None
    return np.asarray(out.release["values"])


def _request(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _step(spec, settings, data, model, pending) -> R.StepOutcome:
    request = _request(model.to_arrays().keys(), model.level, len(model.trees), pending)
    return R.protocol_step(spec, settings, data, model, pending, request=request)


def _play(spec: JobSpec, branches) -> R.TreeModel:
    """The server's loop, summing releases in branch order."""
    ranges = [R.branch_ranges(spec, d) for _, d in branches]
    lo = np.min([r[0] for r in ranges], axis=0)
    hi = np.max([r[1] for r in ranges], axis=0)
    outs = [R.fine_release(spec, s, d, lo, hi, request=_request("bins")) for s, d in branches]
    model, pending = outs[0].model, np.sum([_values(o) for o in outs], axis=0)
    for _ in range(100):
        outs = []
        for s, d in branches:
            _fresh_process()
            outs.append(_step(spec, s, d, model, pending))
        digests = {R.tree_digest(t) for o in outs for t in o.model.trees[-1:]}
        assert len(digests) <= 1, "branches disagree"
        model = outs[0].model
        if outs[0].release is None:
            return model
        pending = np.sum([_values(o) for o in outs], axis=0)
    raise AssertionError("protocol did not finish")


@pytest.mark.parametrize("mode", ["exact", "batched"])
def test_protocol_without_state_reproduces_the_reference(tmp_path: Path, mode: str) -> None:
    parts = _branches()
    spec = _spec(mode)
    model = _play(spec, _setup(tmp_path, parts))
    ref = fit_from_partitions(parts, spec.model, seed=spec.seed).model  # type: ignore[arg-type]

    assert len(model.trees) == len(ref.trees_) == 4
    for mine, theirs in zip(model.trees, ref.trees_, strict=True):
        assert R.tree_digest(mine) == R.tree_digest(theirs)
    X = np.concatenate([X for X, _ in parts])
    ours = R.fitted_model(spec, model).predict_proba(X)
    np.testing.assert_allclose(ours, ref.predict_proba(X), atol=1e-12)
    assert 3 not in {int(f) for t in model.trees for f in t.feature[~t.is_leaf]}  # constant feature


def test_cached_and_fresh_processes_release_identical_histograms(tmp_path: Path) -> None:
    parts = _branches(1)
    spec = _spec()
    ((settings, data),) = _setup(tmp_path, parts)
    lo, hi, _ = R.branch_ranges(spec, data)
    fine = R.fine_release(spec, settings, data, lo, hi, request=_request("bins"))
    model, pending = fine.model, _values(fine)
    for _ in range(4):
        warm = _step(spec, settings, data, model, pending)
        _fresh_process()
        cold = _step(spec, settings, data, model, pending)
        assert np.array_equal(_values(warm), _values(cold))
        model, pending = warm.model, _values(warm)


def test_dp_releases_are_noisy_recorded_once_and_refused_past_the_ceiling(tmp_path: Path) -> None:
    parts = _branches(2, n=400)
    privacy = PrivacyConfig(mode="dp", noise_multiplier=2.0, delta=1e-4, accountant="rdp")
    spec = _spec(privacy=privacy)
    spec = spec.model_copy(update={"task": TaskConfig(cutoff="2024-01-01")})
    branches = _setup(tmp_path, parts, dp=True, ceiling=3.6)
    settings, data = branches[0]
    lo, hi, _ = R.branch_ranges(spec, data)
    assert lo.tolist() == [0.0] * 5 and hi.tolist() == [16.0] * 5  # public bounds, not min/max
    fine = R.fine_release(spec, settings, data, lo, hi, request=_request("bins"))
    assert [e["kind"] for e in fine.ledger_entries] == ["reservation", "release"]
    assert fine.ledger_entries[0]["round"] == 0
    assert not np.allclose(_values(fine), np.round(_values(fine)))  # counts plus noise
    again = R.fine_release(spec, settings, data, lo, hi, request=_request("bins"))
    assert again.ledger_entries == [] and np.array_equal(_values(again), _values(fine))
    shifted = R.fine_release(spec, settings, data, lo - 1, hi, request=_request("bins", "shifted"))
    assert shifted.release is None and shifted.refusal["reason"] == P.REASON_RELEASE_CHANGED

    model, pending = fine.model, _values(fine) * 2
    entries, refusal = [], None
    for _ in range(20):
        out = _step(spec, settings, data, model, pending)
        entries += out.ledger_entries
        if out.refusal is not None:
            refusal = out.refusal
            break
        model, pending = out.model, _values(out) * 2
    assert refusal is not None and refusal["reason"] == P.REASON_BUDGET
    assert refusal["would_spend"] > refusal["ceiling"] == 3.6 >= refusal["spent"]
    reservations = [e for e in entries if e["kind"] == "reservation"]
    assert len(reservations) == 2  # 2 trees fit under 3.6 after the edges, the third does not
    releases = [e for e in entries if e["kind"] == "release"]
    # Each tree's levels (up to max_depth 3; noise may stop a tree early) are releases.
    assert 2 <= len(releases) <= 2 * 3 and len(entries) == len(reservations) + len(releases)
    plan = R.plan_dp(spec, 1e-4, 5)
    e = reservations[0]
    assert e["mechanism"] == "gaussian" and e["steps"] == 1 and e["sample_rate"] == 1.0
    assert e["noise_multiplier"] == pytest.approx(2.0)
    assert e["sensitivity"] == pytest.approx(np.sqrt(3 * 5 * (1 + 1 / 16)))
    assert plan.std("level") == pytest.approx(2.0 * e["sensitivity"])


def test_a_job_cannot_loosen_the_branchs_delta(tmp_path: Path) -> None:
    parts = _branches(1, n=50)
    privacy = PrivacyConfig(mode="dp", noise_multiplier=2.0, delta=0.05)
    spec = _spec(privacy=privacy).model_copy(update={"task": TaskConfig(cutoff="2024-01-01")})
    ((settings, data),) = _setup(tmp_path, parts, dp=True)
    lo, hi, _ = R.branch_ranges(spec, data)
    out = R.fine_release(spec, settings, data, lo, hi, request=_request("bins"))
    assert out.release is None and out.refusal is not None
    assert out.refusal["reason"] == P.REASON_DELTA
    assert "can only lower" in out.refusal["message"]


def test_all_missing_or_constant_features_get_no_edges(tmp_path: Path) -> None:
    parts = _branches(2)
    for X, _ in parts:
        X[:, 4] = np.nan
    spec = _spec()
    model = _play(spec, _setup(tmp_path, parts))
    assert model.edges is not None and len(model.edges[3]) == 0 and len(model.edges[4]) == 0
    used = {int(f) for t in model.trees for f in t.feature[~t.is_leaf]}
    assert used and not used & {3, 4}
