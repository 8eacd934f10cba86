"""DP-SGD through Opacus (the reference engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcrm.config import LSTMModelConfig
from fedcrm.data.dataset import SEQ_CAT_CARDINALITIES, FeatureSet
from fedcrm.models.dp_opacus import OpacusDPStep
from fedcrm.models.lstm import ChurnLSTM, build_model, get_weights
from fedcrm.models.train import DPSettings, feature_tensors, predict_proba, take, train_local

CFG = LSTMModelConfig(embedding_dim=4, hidden_size=8)


def _features(n: int, k: int = 8, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, k + 1, size=n)
    seq_cat = np.stack([rng.integers(1, c, size=(n, k)) for c in SEQ_CAT_CARDINALITIES], -1)
    seq_num = rng.normal(size=(n, k, 3)).astype(np.float32)
    pad = np.arange(k)[None, :] >= lengths[:, None]
    seq_cat[pad] = 0
    seq_num[pad] = 0.0
    return FeatureSet(
        customer_ids=np.arange(n).astype(str),
        branch_ids=np.array(["b"] * n),
        seq_cat=seq_cat.astype(np.int64),
        seq_num=seq_num,
        lengths=lengths.astype(np.int64),
        tabular=rng.normal(size=(n, 2)).astype(np.float32),
        labels=(seq_num[np.arange(n), lengths - 1, 2] > 0).astype(np.int64),
        tabular_names=["a", "b"],
    )


def test_opacus_training_runs_is_deterministic_and_cleans_up():
    data = _features(120)
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, engine="opacus")
    weights = []
    for _ in range(2):
        model = build_model(CFG, 2, dp_engine="opacus", seed=0)
        res = train_local(model, data, epochs=2, batch_size=20, learning_rate=0.01, seed=5, dp=dp)
        weights.append(get_weights(model))
    assert res.steps == 12 and res.sample_rate == pytest.approx(20 / 120)
    assert res.noise_multiplier == 1.0 and np.isfinite(res.loss)
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
    start = get_weights(build_model(CFG, 2, dp_engine="opacus", seed=0))
    assert any(not np.array_equal(a, b) for a, b in zip(start, weights[0], strict=True))
    assert all(np.all(w[0] == 0) for w in weights[0][:3])  # padding rows stay zero
    # Opacus' hooks and attributes are gone: the model predicts and trains plainly.
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert predict_proba(model, data).shape == (120,)
    train_local(model, data, epochs=1, batch_size=20, learning_rate=0.01, seed=0)


def test_opacus_update_is_bounded_by_clipping():
    data = _features(16, seed=2)
    batch = take(feature_tensors(data), torch.arange(16))
    model = ChurnLSTM(2, embedding_dim=4, hidden_size=6, dp_engine="opacus")
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    clip = 1e-3
    step = OpacusDPStep(
        model, torch.optim.SGD(model.parameters(), lr=1.0), 0.0, clip, 16.0, torch.Generator()
    )
    step.step(batch)
    step.close()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    delta = float((after - before).norm())
    assert 0 < delta <= clip * (1 + 1e-4)


def test_engine_and_model_must_match():
    model = build_model(CFG, 2, seed=0)
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, engine="opacus")
    with pytest.raises(ValueError, match="opacus"):
        train_local(model, _features(10), epochs=1, batch_size=5, learning_rate=0.1, seed=0, dp=dp)
    with pytest.raises(ValueError):
        DPSettings(noise_multiplier=-1.0, max_grad_norm=1.0)
    with pytest.raises(ValueError):
        DPSettings(noise_multiplier=1.0, max_grad_norm=0.0)
