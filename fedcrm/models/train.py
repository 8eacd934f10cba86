"""Local training and prediction for :class:`~fedcrm.models.lstm.ChurnLSTM`.

:func:`train_local` runs one branch's local update: plain minibatch Adam, or
DP-SGD-style training (per-customer clipping, Gaussian noise, Poisson sampling
of customers) with the fast engine (:mod:`fedcrm.models.dp_lstm_fast`) or
Opacus (:mod:`fedcrm.models.dp_opacus`). It does not account epsilon: it returns
the mechanism's parameters (noise multiplier, sample rate, steps) for the
privacy module to account.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from fedcrm.data.dataset import FeatureSet
from fedcrm.models.lstm import ChurnLSTM

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD settings of one local update.

    Attributes
    ----------
    noise_multiplier : float
        Noise standard deviation relative to ``max_grad_norm`` (>= 0).
    max_grad_norm : float
        Per-customer L2 clipping bound over all parameters (> 0).
    engine : {"fast", "opacus"}
        How per-customer gradients are clipped; same semantics and results,
        ``fast`` is 15-25x quicker than ``opacus`` (``bench/dp_lstm.py``).
    """

    noise_multiplier: float
    max_grad_norm: float
    engine: Literal["fast", "opacus"] = "fast"

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0:
            raise ValueError("noise_multiplier must be >= 0")
        if not self.max_grad_norm > 0:
            raise ValueError("max_grad_norm must be > 0")
        if self.engine not in ("fast", "opacus"):
            raise ValueError(f"engine must be 'fast' or 'opacus', got {self.engine!r}")


@dataclass(frozen=True)
class TrainResult:
    """What one local update did.

    Attributes
    ----------
    loss : float
        Mean training loss over the examples of every step. Computed from
        customer data without noise: under DP do not send it off the branch.
    num_examples : int
        Customers in the local training set.
    steps : int
        Optimizer steps taken.
    sample_rate : float
        Poisson sampling rate of customers per step (DP); ``batch_size / n``
        capped at 1 for plain training as well.
    noise_multiplier : float or None
        None for plain training.
    seconds : float
        Wall-clock time.
    """

    loss: float
    num_examples: int
    steps: int
    sample_rate: float
    noise_multiplier: float | None
    seconds: float


def feature_tensors(data: FeatureSet, model: ChurnLSTM | None = None) -> Batch:
    """Torch tensors of a feature set (``seq_cat``, ``seq_num``, ``lengths``, ``tabular``, ``y``).

    Raises
    ------
    ValueError
        When ``model`` expects a different number of tabular features.
    """
    if model is not None and model.n_tabular and data.tabular.shape[1] != model.n_tabular:
        raise ValueError(
            f"the model expects {model.n_tabular} tabular features, the data has "
            f"{data.tabular.shape[1]}"
        )
    return {
        "seq_cat": torch.as_tensor(np.asarray(data.seq_cat, dtype=np.int64)),
        "seq_num": torch.as_tensor(np.asarray(data.seq_num, dtype=np.float32)),
        "lengths": torch.as_tensor(np.asarray(data.lengths, dtype=np.int64)),
        "tabular": torch.as_tensor(np.asarray(data.tabular, dtype=np.float32)),
        "y": torch.as_tensor(np.asarray(data.labels, dtype=np.float32)),
    }


def take(tensors: Batch, index: torch.Tensor) -> Batch:
    """Rows ``index`` of every tensor, trimmed to the longest sequence among them."""
    out = {k: v[index] for k, v in tensors.items()}
    if index.numel():
        t_max = int(out["lengths"].max().clamp(min=1))
        out["seq_cat"] = out["seq_cat"][:, :t_max]
        out["seq_num"] = out["seq_num"][:, :t_max]
    return out


def forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Logits of a batch."""
    return model(batch["seq_cat"], batch["seq_num"], batch["lengths"], batch["tabular"])


def train_local(
    model: ChurnLSTM,
    data: FeatureSet,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    dp: DPSettings | None = None,
) -> TrainResult:
    """Train ``model`` in place on one branch's customers.

    Parameters
    ----------
    model : ChurnLSTM
        Built with ``dp_engine="opacus"`` when ``dp.engine == "opacus"``.
    data : FeatureSet
    epochs : int
        Passes over the data (in expectation, under DP).
    batch_size : int
        Minibatch size; under DP the expected batch size.
    learning_rate : float
        Adam step size.
    seed : int
        Seeds shuffling / Poisson sampling and the DP noise (not the global RNG).
        Under DP it must come from the branch (:mod:`fedcrm.privacy.randomness`),
        never from a message: whoever knows it can replay the training.
    dp : DPSettings, optional
        None trains without privacy.

    Returns
    -------
    TrainResult

    Notes
    -----
    Plain: each epoch shuffles the customers into ``ceil(n / batch_size)``
    minibatches; Adam on the mean binary cross-entropy.

    DP: ``steps = epochs * ceil(n / batch_size)``; at each step every customer
    joins the batch independently with probability
    ``sample_rate = min(1, batch_size / n)`` (Poisson sampling; a batch may be
    empty). Each customer's gradient (over all parameters) is clipped to L2 norm
    ``max_grad_norm``, the clipped gradients are summed, Gaussian noise of
    standard deviation ``noise_multiplier * max_grad_norm`` is added to every
    coordinate and the result is divided by the expected batch size
    ``sample_rate * n``, as Opacus does; Adam then steps. The embedding rows of
    the padding index have zero sensitivity and are kept at zero. A customer is
    one row of ``data``, so example-level DP is customer-level DP.
    """
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0")
    n = len(data)
    if n == 0:
        raise ValueError("cannot train on an empty feature set")
    if dp is not None and dp.engine == "opacus" and model.dp_engine != "opacus":
        raise ValueError("engine 'opacus' needs a model built with dp_engine='opacus'")
    tensors = feature_tensors(data, model)
    steps_per_epoch = math.ceil(n / batch_size)
    steps = epochs * steps_per_epoch
    sample_rate = min(1.0, batch_size / n)
    start = time.perf_counter()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    if dp is None:
        loss = _train_plain(model, optimizer, tensors, epochs, batch_size, seed)
    else:
        loss = _train_dp(model, optimizer, tensors, steps, sample_rate, seed, dp)
    model.eval()
    seconds = time.perf_counter() - start
    logger.debug("local training: %d steps in %.2f s", steps, seconds)
    return TrainResult(
        loss=loss,
        num_examples=n,
        steps=steps,
        sample_rate=sample_rate,
        noise_multiplier=None if dp is None else float(dp.noise_multiplier),
        seconds=seconds,
    )


def _train_plain(
    model: ChurnLSTM,
    optimizer: torch.optim.Optimizer,
    tensors: Batch,
    epochs: int,
    batch_size: int,
    seed: int,
) -> float:
    n = tensors["y"].shape[0]
    gen = torch.Generator().manual_seed(int(seed) & (2**64 - 1))
    loss_fn = nn.BCEWithLogitsLoss()
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            batch = take(tensors, order[start : start + batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(model, batch), batch["y"])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch["y"].shape[0]
            count += batch["y"].shape[0]
    return total / max(count, 1)


def _train_dp(
    model: ChurnLSTM,
    optimizer: torch.optim.Optimizer,
    tensors: Batch,
    steps: int,
    sample_rate: float,
    seed: int,
    dp: DPSettings,
) -> float:
    n = tensors["y"].shape[0]
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed) & (2**64 - 1))
    expected = sample_rate * n
    if dp.engine == "fast":
        from fedcrm.models.dp_lstm_fast import FastDPStep

        engine = FastDPStep(model, optimizer, dp.noise_multiplier, dp.max_grad_norm, expected, gen)
    else:
        from fedcrm.models.dp_opacus import OpacusDPStep

        engine = OpacusDPStep(
            model, optimizer, dp.noise_multiplier, dp.max_grad_norm, expected, gen
        )
    total, count = 0.0, 0
    try:
        for _ in range(steps):
            index = torch.as_tensor(np.flatnonzero(rng.random(n) < sample_rate))
            batch = take(tensors, index)
            total += engine.step(batch)
            count += int(index.numel())
    finally:
        engine.close()
    return total / max(count, 1)


@torch.no_grad()
def predict_proba(model: ChurnLSTM, data: FeatureSet, *, batch_size: int = 1024) -> np.ndarray:
    """Churn probabilities, float64 array of shape ``(n,)``."""
    was_training = model.training
    model.eval()
    tensors = feature_tensors(data, model)
    n = len(data)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, batch_size):
        batch = take(tensors, torch.arange(start, min(n, start + batch_size)))
        out[start : start + batch_size] = torch.sigmoid(forward(model, batch)).double().numpy()
    model.train(was_training)
    return out
