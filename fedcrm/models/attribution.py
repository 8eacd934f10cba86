"""Scores of a bundle's model and each customer's attributions, in logit units.

Trees: exact TreeSHAP contributions (XGBoost's ``pred_contribs`` on the
exported model): per feature, plus a bias column; they sum to the logit.

LSTM (:class:`~fedcrm.models.lstm.ChurnLSTM`): integrated gradients (Sundararajan
et al., 2017), implemented directly in torch, with midpoint Riemann sums of
``steps`` points:

* tabular features: along the path from a baseline customer (e.g. the scored
  population's medians) to the customer, the event sequence's LSTM state held
  at the customer's own. Only the small head is evaluated along the path, so
  this is cheap for every customer. The attributions sum to
  ``logit(customer) - logit(customer with the baseline's tabular features)``.
* the event sequence: in the LSTM's input space, along the path from baseline
  events (the customer's own events in place, without content, moved in time
  so that the last one lies a typical number of days before the cutoff; see
  :func:`sequence_attributions`) to the customer's events, tabular features
  held at the customer's own; attributions are summed over each input field
  of each event (:data:`SEQUENCE_PARTS`). They sum to
  ``logit(customer) - logit(customer with the baseline events)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedcrm.data.dataset import SEQ_NUM_FIELDS, FeatureSet

SEQUENCE_PARTS: tuple[str, ...] = ("event_type", "channel", "product_category", *SEQ_NUM_FIELDS)
"""Input fields of one event, in the order of :func:`sequence_attributions`' last axis."""
IG_STEPS = 16
"""Default points of the integrated-gradients Riemann sum."""


# ------------------------------------------------------------------- trees
def tree_margins(booster: Any, X: np.ndarray) -> np.ndarray:
    """Logits of the trees for rows ``X`` (float64)."""
    out = booster.inplace_predict(np.asarray(X, dtype=np.float32), predict_type="margin")
    return np.asarray(out, dtype=np.float64)


def tree_contributions(booster: Any, X: np.ndarray) -> np.ndarray:
    """TreeSHAP contributions ``(n, n_features + 1)``; the last column is the bias."""
    import xgboost as xgb

    dm = xgb.DMatrix(np.asarray(X, dtype=np.float32), feature_names=booster.feature_names)
    return np.asarray(booster.predict(dm, pred_contribs=True), dtype=np.float64)


# -------------------------------------------------------------------- LSTM
def _tensors(fs: FeatureSet, rows: np.ndarray | slice) -> tuple[torch.Tensor, ...]:
    lengths = torch.as_tensor(np.asarray(fs.lengths[rows], dtype=np.int64)).clamp(min=1)
    t_max = max(int(lengths.max()), 1) if lengths.numel() else 1
    seq_cat = torch.as_tensor(np.asarray(fs.seq_cat[rows][:, :t_max], dtype=np.int64))
    seq_num = torch.as_tensor(np.asarray(fs.seq_num[rows][:, :t_max], dtype=np.float32))
    tab = torch.as_tensor(np.asarray(fs.tabular[rows], dtype=np.float32))
    return seq_cat, seq_num, lengths, tab


def _last_state(model: Any, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The LSTM state after each customer's last real event (as ``ChurnLSTM.forward``)."""
    out, _ = model.lstm(x)
    return out[torch.arange(out.shape[0]), (lengths - 1).clamp(max=x.shape[1] - 1)]


def _tabular_input(model: Any, tab: torch.Tensor) -> torch.Tensor | None:
    return tab if model.n_tabular else None


@torch.no_grad()
def lstm_margins(
    model: Any, fs: FeatureSet, *, batch_size: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and last LSTM states of every customer of ``fs``.

    Returns
    -------
    (logits, states)
        float64 ``(n,)`` and float32 ``(n, hidden_size)``.
    """
    n = len(fs)
    logits = np.empty(n, dtype=np.float64)
    states = np.empty((n, model.hidden_size), dtype=np.float32)
    # Batches of similar lengths: the LSTM runs up to each batch's longest sequence.
    order = np.argsort(np.asarray(fs.lengths), kind="stable")
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        seq_cat, seq_num, lengths, tab = _tensors(fs, rows)
        h = _last_state(model, model.embed(seq_cat, seq_num), lengths)
        z = model.head(model.head_input(h, _tabular_input(model, tab))).squeeze(-1)
        logits[rows] = z.double().numpy()
        states[rows] = h.numpy()
    return logits, states


def head_attributions(
    model: Any,
    states: np.ndarray,
    tabular: np.ndarray,
    baseline: np.ndarray,
    *,
    steps: int = IG_STEPS,
    batch_size: int = 4096,
) -> np.ndarray:
    """Integrated gradients of the tabular features ``(n, n_features)``, states held fixed.

    A model without tabular inputs gives zeros.
    """
    n, d = np.shape(tabular)
    out = np.zeros((n, d), dtype=np.float64)
    if not model.n_tabular:
        return out
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    base = torch.as_tensor(np.asarray(baseline, dtype=np.float32))
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        h = torch.as_tensor(states[rows])
        x = torch.as_tensor(np.asarray(tabular[rows], dtype=np.float32))
        delta = x - base
        path = (base + alphas[:, None, None] * delta).reshape(-1, d).requires_grad_(True)
        h_rep = h.repeat(steps, 1)
        z = model.head(model.head_input(h_rep, path)).sum()
        (grad,) = torch.autograd.grad(z, path)
        mean_grad = grad.reshape(steps, -1, d).mean(dim=0)
        out[rows] = (delta * mean_grad).double().numpy()
    return out


def _sequence_baseline(
    x: torch.Tensor, seq_num: torch.Tensor, lengths: torch.Tensor, e: int, typical: float | None
) -> torch.Tensor:
    """Baseline events: no content (zero embeddings and amount), the customer's own gaps,
    and every event moved so that the last one lies ``typical`` days before the cutoff."""
    base = torch.zeros_like(x)
    real = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    gap = seq_num[..., 1]
    base[..., 3 * e + 1] = torch.where(real, gap, torch.zeros_like(gap))
    if typical is not None:
        days = torch.expm1(seq_num[..., 2].double())
        last = days[torch.arange(x.shape[0]), lengths - 1]
        moved = torch.log1p((days - last[:, None] + typical).clamp(min=0.0)).float()
        base[..., 3 * e + 2] = torch.where(real, moved, torch.zeros_like(moved))
    return base


def sequence_attributions(
    model: Any,
    fs: FeatureSet,
    *,
    typical_recency_days: float | None = None,
    steps: int = IG_STEPS,
    batch_size: int = 128,
) -> np.ndarray:
    """Integrated gradients of every event's input fields ``(n, K, len(SEQUENCE_PARTS))``.

    The baseline keeps each event's place and gap but takes its content away
    (zero embeddings, zero amount) and, with ``typical_recency_days``, moves
    the whole sequence in time so that the last event lies that many days
    before the cutoff: the time fields then tell how the customer's recency,
    against the typical one, moves the risk. Padding slots get 0; the tabular
    features are held at the customer's own.
    """
    n, K = len(fs), fs.seq_cat.shape[1]
    out = np.zeros((n, K, len(SEQUENCE_PARTS)), dtype=np.float64)
    e = model.embedding_dim
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    order = np.argsort(np.asarray(fs.lengths), kind="stable")  # similar lengths per batch
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        seq_cat, seq_num, lengths, tab = _tensors(fs, rows)
        b, t = seq_cat.shape[:2]
        with torch.no_grad():
            x = model.embed(seq_cat, seq_num)
            x0 = _sequence_baseline(x, seq_num, lengths, e, typical_recency_days)
        a = alphas[:, None, None, None]
        path = (x0 + a * (x - x0)).reshape(steps * b, t, -1).requires_grad_(True)
        h = _last_state(model, path, lengths.repeat(steps))
        z = model.head(model.head_input(h, _tabular_input(model, tab.repeat(steps, 1)))).sum()
        (grad,) = torch.autograd.grad(z, path)
        ig = ((x - x0) * grad.reshape(steps, b, t, -1).mean(dim=0)).double()
        parts = [ig[..., i * e : (i + 1) * e].sum(-1) for i in range(3)]
        parts += [ig[..., 3 * e + j] for j in range(ig.shape[-1] - 3 * e)]
        out[rows, :t] = torch.stack(parts, dim=-1).numpy()
    return out


@torch.no_grad()
def head_weight_importance(model: Any, feature_names: list[str]) -> dict[str, float]:
    """Importance of the head's inputs from its weights alone (Olden & Jackson, 2002).

    For input ``i``: ``|sum_j W1[j, i] * W2[j]|`` (one linear layer: ``|W[i]|``).
    The LSTM state's units are summed into one input, ``event sequence``. It
    needs no data (the server has none) and ignores the inputs' spread, so it
    ranks coarsely; ``fedcrm explain`` at a branch gives data-based attributions.
    """
    layers = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    weight = layers[0].weight.double()
    if len(layers) > 1:
        weight = layers[1].weight.double() @ weight
    per_input = weight.abs().sum(dim=0).numpy()
    out = {"event sequence": float(per_input[: model.hidden_size].sum())}
    for name, v in zip(feature_names, per_input[model.hidden_size :], strict=False):
        out[str(name)] = float(v)
    return out


__all__ = [
    "IG_STEPS",
    "SEQUENCE_PARTS",
    "head_attributions",
    "head_weight_importance",
    "lstm_margins",
    "sequence_attributions",
    "tree_contributions",
    "tree_margins",
]
