"""Gradient histograms and split maths of the GBDT, as pure functions.

Centralized training and the federated tree protocol call the same functions:
a branch computes :func:`node_histograms` on its own binned rows
(:mod:`fedcrm.models.gbdt_bins`); the sum over branches (clear, encrypted and
masked, or DP-noised) goes into :func:`best_splits`, which every branch evaluates
identically. Summing per-branch histograms equals the histogram of the pooled
rows, so federated training without noise is lossless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# XGBoost's kRtEps: a split must gain at least this much.
MIN_SPLIT_GAIN = 1e-6


@dataclass(frozen=True)
class Split:
    """The best split of one open node.

    Attributes
    ----------
    feature, bin
        Rows with ``bin(x[feature]) <= bin`` go left; the threshold is
        ``edges[feature][bin]``.
    default_left
        Where rows with a missing value go.
    gain
        XGBoost's loss change ``GL²/(HL+λ) + GR²/(HR+λ) - G²/(H+λ)`` (no ½ factor,
        so ``gamma`` means what it means in XGBoost).
    grad_left, hess_left, grad_right, hess_right
        Gradient and hessian sums of the two children.
    """

    feature: int
    bin: int
    default_left: bool
    gain: float
    grad_left: float
    hess_left: float
    grad_right: float
    hess_right: float


# ----------------------------------------------------------------- histograms
def node_histograms(
    binned: np.ndarray,
    grad: np.ndarray,
    hess: np.ndarray,
    node_index: np.ndarray,
    n_nodes: int,
    n_bins: int,
) -> np.ndarray:
    """Gradient and hessian sums per open node, feature and bin.

    Parameters
    ----------
    binned : ndarray of int, shape (n, n_features)
        From :func:`apply_bins`; values in ``0..n_bins`` (``n_bins`` = missing).
    grad, hess : ndarray, shape (n,)
    node_index : ndarray of int, shape (n,)
        Position of each row's node among the open nodes, ``-1`` for rows in
        nodes that are not split further.
    n_nodes
        Number of open nodes.
    n_bins
        Number of value bins (the missing bin's index).

    Returns
    -------
    ndarray of float64, shape (n_nodes, n_features, n_bins + 1, 2)
        ``[..., 0]`` gradient sums, ``[..., 1]`` hessian sums.
    """
    n_features = binned.shape[1]
    width = n_bins + 1
    size = n_nodes * width
    g = np.asarray(grad, dtype=np.float64)
    h = np.asarray(hess, dtype=np.float64)
    rows = node_index >= 0
    if not rows.all():
        keep = np.flatnonzero(rows)
        binned, g, h, node_index = binned[keep], g[keep], h[keep], node_index[keep]
    offset = node_index.astype(np.intp) * width
    # One bincount per feature avoids materialising (n, n_features) index and
    # weight copies; a Fortran-ordered ``binned`` (as apply_bins returns) makes
    # each column contiguous.
    hist = np.empty((n_features, size, 2))
    for f in range(n_features):
        flat = offset + binned[:, f]
        hist[f, :, 0] = np.bincount(flat, weights=g, minlength=size)
        hist[f, :, 1] = np.bincount(flat, weights=h, minlength=size)
    return hist.reshape(n_features, n_nodes, width, 2).transpose(1, 0, 2, 3).copy()


def check_histogram(hist: np.ndarray, *, n_nodes: int, n_features: int, n_bins: int) -> None:
    """Raise ``ValueError`` unless ``hist`` has the expected shape and finite values.

    The message says what is wrong, never a value (a caller names the branch).
    """
    expected = (n_nodes, n_features, n_bins + 1, 2)
    shape = tuple(np.shape(hist))
    if shape != expected:
        raise ValueError(f"histogram has shape {shape}, expected {expected}")
    if not np.all(np.isfinite(hist)):
        raise ValueError("histogram contains non-finite values")


# --------------------------------------------------------------------- splits
def _score(G: np.ndarray, H: np.ndarray, reg_lambda: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(H + reg_lambda > 0, G * G / (H + reg_lambda), 0.0)


def best_splits(
    hist: np.ndarray,
    *,
    reg_lambda: float,
    gamma: float,
    min_child_weight: float,
    n_thresholds: Sequence[int] | np.ndarray | None = None,
) -> list[Split | None]:
    """Best split of every open node from its (summed) histogram.

    Both directions for missing values are tried at every threshold. A child
    must have hessian sum ``>= min_child_weight`` and ``> 0`` (noisy sums may be
    negative); a split must gain more than :data:`MIN_SPLIT_GAIN` and at least
    ``gamma``. Ties go to the first candidate in (feature, bin, missing right
    before missing left) order, so identical sums give identical splits at
    every branch.

    Parameters
    ----------
    hist : ndarray, shape (n_nodes, n_features, n_bins + 1, 2)
        From :func:`node_histograms` (or the sum of the branches' ones).
    reg_lambda, gamma, min_child_weight
        As in XGBoost.
    n_thresholds : array of int, shape (n_features,), optional
        Candidate thresholds per feature (:func:`n_thresholds_of`); default
        ``n_bins - 1`` for every feature.

    Returns
    -------
    list of Split or None
        One entry per node; None when the node is not worth splitting.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n_nodes, n_features, width, _ = hist.shape
    n_bins = width - 1
    if n_thresholds is None:
        n_thresholds = np.full(n_features, n_bins - 1)
    n_thresholds = np.asarray(n_thresholds, dtype=np.int64)
    # Node totals from feature 0, so every feature compares against one parent.
    total = hist[:, 0].sum(axis=1)  # (n_nodes, 2)
    G = total[:, 0][:, None, None, None]
    H = total[:, 1][:, None, None, None]
    below = np.cumsum(hist[:, :, : n_bins - 1], axis=2)  # bins <= b, b < n_bins - 1
    missing = hist[:, :, n_bins : n_bins + 1]
    # Axis 3: 0 = missing goes right, 1 = missing goes left.
    left = np.stack([below, below + missing], axis=3)  # (nodes, f, b, 2 dirs, 2)
    GL, HL = left[..., 0], left[..., 1]
    GR, HR = G - GL, H - HL
    gain = _score(GL, HL, reg_lambda) + _score(GR, HR, reg_lambda) - _score(G, H, reg_lambda)
    lighter = np.minimum(HL, HR)
    candidate = np.arange(n_bins - 1)[None, :] < n_thresholds[:, None]  # (f, b)
    valid = (lighter >= min_child_weight) & (lighter > 0) & candidate[None, :, :, None]
    gain = np.where(valid, gain, -np.inf)
    flat = gain.reshape(n_nodes, -1)
    best = np.argmax(flat, axis=1) if flat.shape[1] else np.zeros(n_nodes, dtype=np.int64)
    splits: list[Split | None] = []
    for node in range(n_nodes):
        if flat.shape[1] == 0:
            splits.append(None)
            continue
        score = flat[node, best[node]]
        if not (score > MIN_SPLIT_GAIN and score >= gamma):
            splits.append(None)
            continue
        f, b, d = np.unravel_index(best[node], gain.shape[1:])
        splits.append(
            Split(
                feature=int(f),
                bin=int(b),
                default_left=bool(d),
                gain=float(score),
                grad_left=float(GL[node, f, b, d]),
                hess_left=float(HL[node, f, b, d]),
                grad_right=float(GR[node, f, b, d]),
                hess_right=float(HR[node, f, b, d]),
            )
        )
    return splits


def leaf_weight(
    G: float | np.ndarray, H: float | np.ndarray, *, reg_lambda: float, learning_rate: float
) -> np.ndarray:
    """Leaf value ``-learning_rate * G / (H + λ)``, safe for noisy sums.

    A negative (noisy) hessian sum counts as 0; a zero denominator gives 0.
    """
    G = np.asarray(G, dtype=np.float64)
    denom = np.clip(np.asarray(H, dtype=np.float64), 0.0, None) + reg_lambda
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, -learning_rate * G / denom, 0.0)
