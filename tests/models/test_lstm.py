"""ChurnLSTM: shapes, padding invariance, weights exchange, plain training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcrm.config import LSTMModelConfig
from fedcrm.data.dataset import SEQ_CAT_CARDINALITIES, FeatureSet
from fedcrm.models.lstm import ChurnLSTM, build_model, get_weights, set_weights
from fedcrm.models.metrics import binary_metrics
from fedcrm.models.train import feature_tensors, predict_proba, train_local

CFG = LSTMModelConfig(embedding_dim=4, hidden_size=8, batch_size=32)


def toy_features(n: int = 200, k: int = 12, d: int = 3, seed: int = 0) -> FeatureSet:
    """A learnable toy set: churn iff the last event is old or a 'return'."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, k + 1, size=n)
    seq_cat = np.zeros((n, k, 3), dtype=np.int64)
    seq_num = np.zeros((n, k, 3), dtype=np.float32)
    for j, card in enumerate(SEQ_CAT_CARDINALITIES):
        seq_cat[..., j] = rng.integers(1, card, size=(n, k))
    seq_num[:] = rng.normal(size=(n, k, 3)).astype(np.float32)
    mask = np.arange(k)[None, :] < lengths[:, None]
    seq_cat[~mask] = 0
    seq_num[~mask] = 0.0
    last = lengths - 1
    recency = seq_num[np.arange(n), last, 2]
    is_return = seq_cat[np.arange(n), last, 0] == 3
    labels = ((recency > 0.3) | is_return).astype(np.int64)
    return FeatureSet(
        customer_ids=np.array([f"c{i}" for i in range(n)]),
        branch_ids=np.array(["b0"] * n),
        seq_cat=seq_cat,
        seq_num=seq_num,
        lengths=lengths.astype(np.int64),
        tabular=rng.normal(size=(n, d)).astype(np.float32),
        labels=labels,
        tabular_names=[f"t{i}" for i in range(d)],
    )


@pytest.mark.parametrize("engine", [None, "opacus", "fast"])
def test_forward_shape_and_padding_invariance(engine):
    data = toy_features(n=16)
    model = build_model(CFG, 3, dp_engine=engine, seed=1).eval()
    t = feature_tensors(data, model)
    out = model(t["seq_cat"], t["seq_num"], t["lengths"], t["tabular"])
    assert out.shape == (16,) and out.dtype == torch.float32
    # Garbage in the padded positions must not change anything.
    pad = torch.arange(t["seq_cat"].shape[1])[None, :] >= t["lengths"][:, None]
    cat2, num2 = t["seq_cat"].clone(), t["seq_num"].clone()
    cat2[pad] = 1
    num2[pad] = 123.0
    out2 = model(cat2, num2, t["lengths"], t["tabular"])
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    # Extra padding columns change nothing either.
    wide_cat = torch.cat([t["seq_cat"], torch.zeros(16, 5, 3, dtype=torch.long)], 1)
    wide_num = torch.cat([t["seq_num"], torch.ones(16, 5, 3)], 1)
    torch.testing.assert_close(model(wide_cat, wide_num, t["lengths"], t["tabular"]), out)


def test_no_tabular_and_head_without_hidden():
    cfg = CFG.model_copy(update={"use_tabular": False})
    model = build_model(cfg, 3, seed=0)
    assert model.n_tabular == 0
    data = toy_features(n=8)
    assert predict_proba(model, data).shape == (8,)
    single = ChurnLSTM(0, embedding_dim=4, hidden_size=8, head_hidden=0)
    assert len(single.head) == 1


def test_weights_round_trip_and_engines_share_layout():
    plain = build_model(CFG, 3, seed=3)
    weights = get_weights(plain)
    assert all(w.dtype == np.float32 for w in weights)
    assert [w.shape for w in weights] == [tuple(p.shape) for p in plain.state_dict().values()]
    for engine in ("opacus", "fast"):
        other = build_model(CFG, 3, dp_engine=engine, seed=3)
        # Same seed -> same initial weights on every engine.
        for a, b in zip(get_weights(other), weights, strict=True):
            np.testing.assert_array_equal(a, b)
    fresh = build_model(CFG, 3, dp_engine="opacus", seed=4)
    set_weights(fresh, weights)
    data = toy_features(n=20)
    np.testing.assert_allclose(predict_proba(fresh, data), predict_proba(plain, data), atol=1e-6)
    for a, b in zip(get_weights(fresh), weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_set_weights_mismatch_names_index():
    model = build_model(CFG, 3, seed=0)
    weights = get_weights(model)
    with pytest.raises(ValueError, match="expected"):
        set_weights(model, weights[:-1])
    bad = list(weights)
    bad[2] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"weight 2 \(.*\).*\(3, 3\)"):
        set_weights(model, bad)


def test_tabular_width_checked():
    model = build_model(CFG, 5, seed=0)
    with pytest.raises(ValueError, match="tabular"):
        predict_proba(model, toy_features(n=4, d=3))


def test_plain_training_learns_and_is_deterministic():
    train, test = toy_features(n=400, seed=1), toy_features(n=200, seed=2)
    model = build_model(CFG, 3, seed=0)
    before = binary_metrics(test.labels, predict_proba(model, test))
    res = train_local(model, train, epochs=6, batch_size=32, learning_rate=0.02, seed=0)
    after = binary_metrics(test.labels, predict_proba(model, test))
    assert res.steps == 6 * 13 and res.num_examples == 400 and res.noise_multiplier is None
    assert after["logloss"] < before["logloss"] - 0.1
    assert after["auc"] > 0.8
    again = build_model(CFG, 3, seed=0)
    res2 = train_local(again, train, epochs=6, batch_size=32, learning_rate=0.02, seed=0)
    assert res2.loss == res.loss
    for a, b in zip(get_weights(model), get_weights(again), strict=True):
        np.testing.assert_array_equal(a, b)
