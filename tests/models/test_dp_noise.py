"""The noise itself: every DP engine adds Gaussian noise of the stated scale, and
DP-SGD batches are Poisson samples of customers (Binomial(n, q) sizes).

These are statistical tests over many draws on the real code paths; each
fails when the noise is removed from an engine or Poisson sampling is
replaced by fixed or full batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcrm.models.dp_lstm_fast import FastDPStep, clipped_grad_sum
from fedcrm.models.dp_opacus import OpacusDPStep
from fedcrm.models.lstm import ChurnLSTM
from fedcrm.models.train import DPSettings, feature_tensors, take, train_local

from .test_dp_fast import _features

SIGMA, CLIP = 1.7, 0.5


def _residuals(engine_cls: type, dp_engine: str, steps: int = 4) -> np.ndarray:
    """What each step added beyond the clipped gradient sum, in units of the sum."""
    torch.manual_seed(0)
    model = ChurnLSTM(3, dp_engine=dp_engine, embedding_dim=4, hidden_size=6)
    data = _features(40, 5, seed=1)
    batch = take(feature_tensors(data), torch.arange(len(data)))
    expected = 20.0
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    gen = torch.Generator().manual_seed(123)
    engine = engine_cls(model, optimizer, SIGMA, CLIP, expected, gen)
    out = []
    try:
        for _ in range(steps):
            clipped, _, _ = clipped_grad_sum(model, batch, CLIP)
            before = {n: p.detach().clone() for n, p in model.named_tensors().items()}
            engine.step(batch)
            for name, p in model.named_tensors().items():
                applied = (before[name] - p.detach()) * expected  # SGD, lr 1: the noisy sum
                noise = (applied - clipped[name]).flatten()
                if name.startswith("embeddings."):
                    keep = torch.ones_like(p, dtype=torch.bool)
                    keep[0] = False  # the padding row has no gradient and no noise
                    noise = (applied - clipped[name])[keep].flatten()
                out.append(noise.double().numpy())
    finally:
        engine.close()
    return np.concatenate(out)


@pytest.mark.parametrize(
    ("engine_cls", "dp_engine"), [(FastDPStep, "fast"), (OpacusDPStep, "opacus")]
)
def test_each_dp_sgd_step_adds_gaussian_noise_of_sigma_times_the_clipping_bound(
    engine_cls: type, dp_engine: str
) -> None:
    noise = _residuals(engine_cls, dp_engine)
    assert noise.size > 4000
    assert abs(noise.mean()) < 4 * SIGMA * CLIP / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(SIGMA * CLIP, rel=0.05)
    # Gaussian, not e.g. uniform: the share within one sd.
    assert np.mean(np.abs(noise) < SIGMA * CLIP) == pytest.approx(0.6827, abs=0.03)


@pytest.mark.parametrize("engine", ["fast", "opacus"])
def test_dp_sgd_batches_are_poisson_samples_of_customers(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch sizes over the steps of ``train_local`` follow Binomial(n, batch_size / n)."""
    sizes: list[int] = []
    cls = FastDPStep if engine == "fast" else OpacusDPStep
    original = cls.step

    def record(self: object, batch: dict[str, torch.Tensor]) -> float:
        sizes.append(int(batch["y"].shape[0]))
        return original(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "step", record)
    n, batch_size = 300, 30
    data = _features(n, 4, seed=2)
    model = ChurnLSTM(3, dp_engine=engine, embedding_dim=2, hidden_size=3)
    epochs = 12 if engine == "fast" else 4
    train_local(
        model,
        data,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=0.01,
        seed=7,
        dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, engine=engine),  # type: ignore[arg-type]
    )
    q = batch_size / n
    s = np.array(sizes)
    assert s.size == epochs * (n // batch_size)
    mean, var = n * q, n * q * (1 - q)
    assert abs(s.mean() - mean) < 4 * np.sqrt(var / s.size)
    assert 0.5 < s.var(ddof=1) / var < 1.8  # fixed-size batches have variance 0
    assert s.max() < n  # never the whole branch at once


def test_the_dp_seed_shapes_sampling_and_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two seeds give two different releases; one seed, the same (what the branch controls)."""
    data = _features(60, 4, seed=3)

    def run(seed: int) -> list[np.ndarray]:
        torch.manual_seed(0)
        model = ChurnLSTM(3, dp_engine="fast", embedding_dim=2, hidden_size=3)
        train_local(
            model,
            data,
            epochs=1,
            batch_size=10,
            learning_rate=0.01,
            seed=seed,
            dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0),
        )
        return [p.detach().numpy().copy() for p in model.parameters()]

    a, b, c = run(1), run(1), run(2**100 + 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
