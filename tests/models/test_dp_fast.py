"""The fast DP engine equals Opacus' DPLSTM clipping, and trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcrm.config import LSTMModelConfig
from fedcrm.data.dataset import SEQ_CAT_CARDINALITIES, FeatureSet
from fedcrm.models.dp_lstm_fast import FastDPStep, clipped_grad_sum
from fedcrm.models.dp_opacus import OpacusDPStep
from fedcrm.models.lstm import ChurnLSTM, build_model, get_weights
from fedcrm.models.train import DPSettings, feature_tensors, take, train_local


def _features(n: int, k: int, d: int = 3, seed: int = 0, zero_cats: bool = False) -> FeatureSet:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, k + 1, size=n)
    lengths[0] = k  # one full-length sequence
    seq_cat = np.stack(
        [rng.integers(0 if zero_cats else 1, c, size=(n, k)) for c in SEQ_CAT_CARDINALITIES], -1
    )
    seq_num = rng.normal(size=(n, k, 3)).astype(np.float32)
    pad = np.arange(k)[None, :] >= lengths[:, None]
    seq_cat[pad] = 0
    seq_num[pad] = 0.0
    labels = (seq_num[np.arange(n), lengths - 1, 2] > 0).astype(np.int64)
    return FeatureSet(
        customer_ids=np.arange(n).astype(str),
        branch_ids=np.array(["b"] * n),
        seq_cat=seq_cat.astype(np.int64),
        seq_num=seq_num,
        lengths=lengths.astype(np.int64),
        tabular=rng.normal(size=(n, d)).astype(np.float32),
        labels=labels,
        tabular_names=[f"t{i}" for i in range(d)],
    )


def _pair(dtype: torch.dtype, seed: int, **kw) -> tuple[ChurnLSTM, ChurnLSTM]:
    torch.manual_seed(seed)
    fast = ChurnLSTM(3, dp_engine="fast", **kw).to(dtype)
    ref = ChurnLSTM(3, dp_engine="opacus", **kw).to(dtype)
    with torch.no_grad():
        for a, b in zip(fast.named_tensors().values(), ref.named_tensors().values(), strict=True):
            b.copy_(a)
    return fast, ref


def _batch(data: FeatureSet, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    t = feature_tensors(data)
    t = {k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()}
    return take(t, torch.arange(len(data)))


@pytest.mark.parametrize(
    ("dtype", "rtol", "kw"),
    [
        (torch.float32, 1e-5, dict(embedding_dim=4, hidden_size=6)),
        (torch.float64, 1e-10, dict(embedding_dim=4, hidden_size=6)),
        (torch.float64, 1e-10, dict(embedding_dim=3, hidden_size=5, num_layers=2, head_hidden=0)),
        (torch.float32, 1e-5, dict(embedding_dim=8, hidden_size=16, num_layers=2)),
    ],
)
def test_clipped_sum_equals_opacus(dtype, rtol, kw):
    data = _features(n=20, k=9, seed=3)
    batch = _batch(data, dtype)
    fast, ref = _pair(dtype, seed=1, **kw)
    _, norms, _ = clipped_grad_sum(fast, batch, 1e9)
    clip_norm = float(norms.median())  # about half clipped, half not
    assert (norms > clip_norm * 1.01).any() and (norms < clip_norm * 0.99).any()
    got, _, _ = clipped_grad_sum(fast, batch, clip_norm)
    engine = OpacusDPStep(
        ref, torch.optim.SGD(ref.parameters(), lr=0.1), 1.0, clip_norm, 20.0, torch.Generator()
    )
    want = engine.clipped_sum(batch)
    engine.close()
    assert list(got) == list(want)
    for name in want:
        err = float((got[name] - want[name]).norm() / want[name].norm())
        assert err < rtol, (name, err)


def test_unclipped_sum_is_the_plain_gradient_and_padding_row_is_excluded():
    data = _features(n=12, k=7, seed=5, zero_cats=True)  # category 0 inside real events
    batch = _batch(data, torch.float64)
    fast, _ = _pair(torch.float64, seed=2, embedding_dim=4, hidden_size=6)
    got, _, loss = clipped_grad_sum(fast, batch, 1e9)
    fast.zero_grad()
    logits = fast(batch["seq_cat"], batch["seq_num"], batch["lengths"], batch["tabular"])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, batch["y"], reduction="sum"
    )
    plain.backward()
    assert loss == pytest.approx(float(plain.detach()))
    for name, p in fast.named_tensors().items():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12)
    for k in range(3):
        assert float(got[f"embeddings.{k}.weight"][0].abs().max()) == 0.0
    # per-customer norms, in the batch's order, against one backward per customer
    _, norms, _ = clipped_grad_sum(fast, batch, 1e9)
    for b in (0, 5, 11):
        fast.zero_grad()
        one = take(batch, torch.tensor([b]))
        logit = fast(one["seq_cat"], one["seq_num"], one["lengths"], one["tabular"])
        torch.nn.functional.binary_cross_entropy_with_logits(logit, one["y"]).backward()
        grads = [p.grad.flatten() for p in fast.named_tensors().values()]
        grads[:3] = [p.grad[1:].flatten() for p in fast.embeddings.parameters()]
        assert float(norms[b]) == pytest.approx(float(torch.cat(grads).norm()), rel=1e-10)


def test_update_is_bounded_by_clipping():
    data = _features(n=16, k=6, seed=1)
    batch = _batch(data, torch.float32)
    model = ChurnLSTM(3, embedding_dim=4, hidden_size=6, dp_engine="fast")
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    clip = 1e-3
    step = FastDPStep(model, torch.optim.SGD(model.parameters(), lr=1.0), 0.0, clip, 16.0, None)
    step.step(batch)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) <= clip * 16 / 16.0 * (1 + 1e-4)
    assert float((after - before).norm()) > 0


def test_fast_dp_training_runs_learns_and_is_deterministic():
    cfg = LSTMModelConfig(embedding_dim=4, hidden_size=8)
    data = _features(n=300, k=10, seed=7)
    dp = DPSettings(noise_multiplier=0.5, max_grad_norm=1.0, engine="fast")
    runs = []
    for _ in range(2):
        model = build_model(cfg, 3, dp_engine="fast", seed=0)
        res = train_local(model, data, epochs=3, batch_size=30, learning_rate=0.02, seed=11, dp=dp)
        runs.append((res, get_weights(model)))
    res = runs[0][0]
    assert res.steps == 30 and res.sample_rate == pytest.approx(0.1)
    assert res.noise_multiplier == 0.5 and res.num_examples == 300
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.all(w[0] == 0) for w in runs[0][1][:3])  # padding rows stay zero
    # low noise: the model learns something
    from fedcrm.models.metrics import binary_metrics
    from fedcrm.models.train import predict_proba

    model = build_model(cfg, 3, dp_engine="fast", seed=0)
    low = DPSettings(noise_multiplier=0.1, max_grad_norm=1.0)
    train_local(model, data, epochs=5, batch_size=30, learning_rate=0.03, seed=1, dp=low)
    assert binary_metrics(data.labels, predict_proba(model, data))["auc"] > 0.75


def test_empty_poisson_batches_are_handled():
    data = _features(n=3, k=4, seed=0)
    for engine in ("fast", "opacus"):
        model = ChurnLSTM(3, embedding_dim=2, hidden_size=3, dp_engine=engine)
        dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, engine=engine)
        res = train_local(model, data, epochs=4, batch_size=1, learning_rate=0.01, seed=0, dp=dp)
        assert res.steps == 12
        assert all(np.isfinite(w).all() for w in get_weights(model))
