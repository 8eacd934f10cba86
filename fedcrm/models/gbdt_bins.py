"""Bin edges (centralized and federated) and binning of the GBDT's features.

Centralized training takes quantiles of the pooled values
(:func:`compute_bin_edges`). In federation no branch shows its values: branches
agree on per-feature ranges (:func:`feature_ranges`, combined by min / max),
count their values on a fixed fine grid over those ranges
(:func:`fine_histogram`), and the summed counts - clear, encrypted or DP-noised -
give quantile edges every branch computes identically
(:func:`bin_edges_from_fine_histograms`).

Binning contract (shared with XGBoost's predictor): values are compared as
float32; a feature with edges ``e`` puts ``x`` in bin ``#{e_k <= x}``, so
``bin(x) <= b`` exactly when ``x < e_b`` - the split "go left if x < threshold"
with ``threshold = e_b``. NaN goes to the dedicated missing bin ``n_bins``
(:func:`n_bins_of`), the same index for every feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_float32_matrix(X: np.ndarray) -> np.ndarray:
    X32 = np.asarray(X, dtype=np.float32)
    if X32.ndim != 2:
        raise ValueError(f"expected a 2-D feature matrix, got {X32.ndim} dimension(s)")
    return X32


def n_bins_of(edges: Sequence[np.ndarray]) -> int:
    """Number of value bins (the missing bin's index) for ``edges``: max over features."""
    return 1 + max((len(e) for e in edges), default=0)


def n_thresholds_of(edges: Sequence[np.ndarray]) -> np.ndarray:
    """Number of candidate thresholds per feature (one per edge)."""
    return np.array([len(e) for e in edges], dtype=np.int64)


# ------------------------------------------------------------------ bin edges
def compute_bin_edges(X: np.ndarray, *, max_bin: int) -> list[np.ndarray]:
    """Quantile bin edges of every feature of the pooled rows (centralized path).

    Parameters
    ----------
    X : ndarray, shape (n, n_features)
        NaN marks a missing value.
    max_bin
        At most this many value bins per feature (plus the missing bin).

    Returns
    -------
    list of ndarray of float32
        Increasing edges per feature, at most ``max_bin - 1`` of them; edges are
        observed values, so every value bin holds at least one row. Constant or
        all-missing features get no edge (they are never split).
    """
    X32 = _as_float32_matrix(X)
    if max_bin < 2:
        raise ValueError("max_bin must be at least 2")
    # NaN sorts last, so the first n_valid entries of each column are its values.
    ordered = np.sort(X32, axis=0)
    n_valid = np.sum(~np.isnan(X32), axis=0)
    levels = np.arange(1, max_bin) / max_bin
    edges = []
    for f in range(X32.shape[1]):
        values = ordered[: n_valid[f], f]
        if values.size == 0:
            edges.append(np.empty(0, dtype=np.float32))
            continue
        distinct = np.unique(values)
        if distinct.size <= max_bin:
            cut = distinct[1:]
        else:
            # Lower empirical quantiles are observed values; the smallest value
            # cannot be an edge (its bin 0 would be empty).
            at = np.minimum(np.ceil(levels * values.size).astype(np.int64), values.size - 1)
            cut = np.unique(values[at])
            cut = cut[cut > values[0]]
        # An infinite edge is no threshold (and not valid JSON); +inf rows
        # land in the last bin, as XGBoost sends them right.
        edges.append(cut[np.isfinite(cut)].astype(np.float32))
    return edges


def feature_ranges(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature minimum and maximum of one branch's rows.

    Branches' ranges combine by element-wise min of ``lo`` and max of ``hi``; an
    all-missing feature yields ``(+inf, -inf)``, the neutral elements. Infinite
    values are left out (they fall into the end cells of the fine grid). The
    extremes leak a little about the branch's most extreme customers; under DP
    use configured or public ranges instead (values outside are clipped into the
    end bins of :func:`fine_histogram`).

    Returns
    -------
    lo, hi : ndarray of float64, shape (n_features,)
    """
    X32 = _as_float32_matrix(X)
    valid = np.isfinite(X32)
    lo = np.where(valid, X32, np.inf).min(axis=0, initial=np.inf)
    hi = np.where(valid, X32, -np.inf).max(axis=0, initial=-np.inf)
    return lo.astype(np.float64), hi.astype(np.float64)


def fine_histogram(X: np.ndarray, *, lo: np.ndarray, hi: np.ndarray, n_fine: int) -> np.ndarray:
    """Counts of one branch's values on a fixed fine grid over agreed ranges.

    Parameters
    ----------
    X : ndarray, shape (n, n_features)
    lo, hi : ndarray, shape (n_features,)
        Agreed ranges (aggregated :func:`feature_ranges`, or public bounds).
        Values outside are counted in the end cells; NaN is not counted.
    n_fine
        Cells per feature, each ``(hi - lo) / n_fine`` wide.

    Returns
    -------
    ndarray of int64, shape (n_features, n_fine)
        Sum these over branches and pass to :func:`bin_edges_from_fine_histograms`.
        A customer adds 1 to one cell of every feature with a value, so the
        L2 sensitivity of the whole array is ``sqrt(n_features)``.
    """
    X32 = _as_float32_matrix(X)
    lo, width, _ = _grid(lo, hi, n_fine, X32.shape[1])
    valid = ~np.isnan(X32)
    with np.errstate(invalid="ignore"):
        cell = np.floor((X32.astype(np.float64) - lo) / width)
    cell = np.clip(np.nan_to_num(cell, nan=0.0, posinf=n_fine - 1, neginf=0), 0, n_fine - 1)
    flat = (np.arange(X32.shape[1]) * n_fine + cell.astype(np.int64))[valid]
    counts = np.bincount(flat, minlength=X32.shape[1] * n_fine)
    return counts.reshape(X32.shape[1], n_fine)


def _grid(
    lo: np.ndarray, hi: np.ndarray, n_fine: int, n_features: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid origin, cell width and whether the range is usable, per feature."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.shape != (n_features,) or hi.shape != (n_features,):
        raise ValueError(f"lo and hi must have shape ({n_features},)")
    if n_fine < 2:
        raise ValueError("n_fine must be at least 2")
    finite = np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
    lo = np.where(finite, lo, 0.0)
    width = np.where(finite, (hi - lo) / n_fine, 1.0)
    return lo, width, finite


def bin_edges_from_fine_histograms(
    summed_counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, max_bin: int
) -> list[np.ndarray]:
    """Quantile bin edges from the branches' summed fine histograms (federated path).

    Parameters
    ----------
    summed_counts : ndarray, shape (n_features, n_fine)
        Sum over branches of :func:`fine_histogram`; may carry DP noise
        (negative cells count as empty).
    lo, hi : ndarray, shape (n_features,)
        The ranges the fine histograms were made with.
    max_bin
        At most this many value bins per feature.

    Returns
    -------
    list of ndarray of float32
        Edges on fine-cell boundaries near the ``k / max_bin`` quantiles; a
        feature with a single occupied cell (constant, all missing, or an
        empty range) gets no edge.
    """
    counts = np.clip(np.asarray(summed_counts, dtype=np.float64), 0.0, None)
    if counts.ndim != 2:
        raise ValueError("summed_counts must have shape (n_features, n_fine)")
    if max_bin < 2:
        raise ValueError("max_bin must be at least 2")
    n_features, n_fine = counts.shape
    lo, width, usable = _grid(lo, hi, n_fine, n_features)
    cum = np.cumsum(counts, axis=1)
    levels = np.arange(1, max_bin) / max_bin
    edges = []
    for f in range(n_features):
        total = cum[f, -1]
        if total <= 0 or not usable[f]:
            edges.append(np.empty(0, dtype=np.float32))
            continue
        # First cell whose cumulative count reaches each quantile; the edge is
        # that cell's upper boundary.
        cell = np.searchsorted(cum[f], levels * total, side="left")
        occupied = np.flatnonzero(counts[f] > 0)
        # An edge is useful only with occupied cells on both sides of it.
        cells = np.unique(cell)
        cells = cells[(cells >= occupied[0]) & (cells < occupied[-1])]
        edge = (lo[f] + (cells + 1) * width[f]).astype(np.float32)
        edges.append(np.unique(edge))
    return edges


def apply_bins(X: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Bin index of every value; NaN goes to the missing bin ``n_bins_of(edges)``.

    Returns
    -------
    ndarray of uint8 (uint16 beyond 255 bins), shape (n, n_features)
        Fortran-ordered, so that :func:`node_histograms` reads columns fast.
    """
    X32 = _as_float32_matrix(X)
    if X32.shape[1] != len(edges):
        raise ValueError(f"X has {X32.shape[1]} features, the bin edges {len(edges)}")
    missing = n_bins_of(edges)
    dtype = np.uint8 if missing <= np.iinfo(np.uint8).max else np.uint16
    binned = np.empty(X32.shape, dtype=dtype, order="F")
    for f, e in enumerate(edges):
        column = X32[:, f]
        b = np.searchsorted(np.asarray(e, dtype=np.float32), column, side="right")
        binned[:, f] = np.where(np.isnan(column), missing, b)
    return binned
