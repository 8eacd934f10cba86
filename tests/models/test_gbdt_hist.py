"""The pure binning, histogram and split maths shared by centralized and federated training."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.models.gbdt_bins import (
    apply_bins,
    bin_edges_from_fine_histograms,
    compute_bin_edges,
    feature_ranges,
    fine_histogram,
    n_bins_of,
)
from fedcrm.models.gbdt_hist import best_splits, check_histogram, leaf_weight, node_histograms


def test_bins_follow_the_xgboost_threshold_rule() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)).astype(np.float32)
    X[::10, 1] = np.nan
    edges = compute_bin_edges(X, max_bin=8)

    binned = apply_bins(X, edges)

    assert binned.dtype == np.uint8
    missing = n_bins_of(edges)
    assert (binned[::10, 1] == missing).all()
    for f, e in enumerate(edges):
        assert len(e) <= 7 and e.dtype == np.float32
        present = ~np.isnan(X[:, f])
        for b, threshold in enumerate(e):
            np.testing.assert_array_equal(binned[present, f] <= b, X[present, f] < threshold)


def test_quantile_edges_balance_bins_and_keep_few_distinct_values_apart() -> None:
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=4000), rng.integers(0, 3, 4000)])

    edges = compute_bin_edges(X, max_bin=16)

    counts = np.bincount(apply_bins(X, edges)[:, 0], minlength=16)
    assert len(edges[0]) == 15 and counts.min() > 0.5 * 4000 / 16
    np.testing.assert_array_equal(edges[1], [1.0, 2.0])


def test_fine_histograms_of_branches_sum_to_the_pooled_edges() -> None:
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.exponential(size=3000), rng.normal(size=3000)])
    X[rng.random(3000) < 0.1, 0] = np.nan
    parts = np.array_split(X, 3)
    ranges = [feature_ranges(p) for p in parts]
    lo = np.min([r[0] for r in ranges], axis=0)
    hi = np.max([r[1] for r in ranges], axis=0)

    summed = sum(fine_histogram(p, lo=lo, hi=hi, n_fine=256) for p in parts)
    edges = bin_edges_from_fine_histograms(summed, lo, hi, max_bin=8)

    np.testing.assert_array_equal(summed, fine_histogram(X, lo=lo, hi=hi, n_fine=256))
    assert summed.sum() == np.sum(~np.isnan(X))
    for f, e in enumerate(edges):
        assert 4 <= len(e) <= 7 and np.all(np.diff(e) > 0)
        assert lo[f] < e[0] and e[-1] < hi[f]
        counts = np.bincount(apply_bins(X, edges)[:, f], minlength=9)[: len(e) + 1]
        assert counts.max() < 3 * 3000 / 8


def test_ranges_of_an_all_missing_feature_are_neutral() -> None:
    X = np.array([[1.0, np.nan], [3.0, np.nan]])

    lo, hi = feature_ranges(X)

    assert lo[0] == 1.0 and hi[0] == 3.0
    assert lo[1] == np.inf and hi[1] == -np.inf
    counts = fine_histogram(X, lo=lo, hi=hi, n_fine=4)
    assert counts[1].sum() == 0
    assert len(bin_edges_from_fine_histograms(counts, lo, hi, max_bin=4)[1]) == 0


def test_noisy_fine_histograms_are_tolerated() -> None:
    counts = np.array([[5.0, -2.0, 3.0, 0.5]])

    edges = bin_edges_from_fine_histograms(counts, np.array([0.0]), np.array([4.0]), max_bin=4)

    assert np.all(np.isfinite(edges[0])) and np.all((edges[0] > 0) & (edges[0] < 4))


def test_node_histograms_equal_a_row_by_row_sum() -> None:
    rng = np.random.default_rng(3)
    binned = rng.integers(0, 5, size=(300, 3)).astype(np.uint8)  # 4 bins + missing
    grad, hess = rng.normal(size=300), rng.random(300)
    node = rng.integers(-1, 2, size=300)

    hist = node_histograms(binned, grad, hess, node, 2, 4)

    expected = np.zeros((2, 3, 5, 2))
    for i in range(300):
        if node[i] >= 0:
            for f in range(3):
                expected[node[i], f, binned[i, f]] += grad[i], hess[i]
    np.testing.assert_allclose(hist, expected, atol=1e-12)
    check_histogram(hist, n_nodes=2, n_features=3, n_bins=4)


def test_check_histogram_rejects_wrong_shape_and_non_finite() -> None:
    hist = np.zeros((1, 2, 5, 2))
    with pytest.raises(ValueError, match="shape"):
        check_histogram(hist, n_nodes=2, n_features=2, n_bins=4)
    hist[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        check_histogram(hist, n_nodes=1, n_features=2, n_bins=4)


def _one_node(bins: list[tuple[float, float]]) -> np.ndarray:
    return np.array(bins, dtype=np.float64)[None, None]  # 1 node, 1 feature


def test_best_split_uses_second_order_gain_and_learns_missing_direction() -> None:
    # Bins 0, 1, 2 and the missing bin: negative gradients on the left and
    # among the missing rows.
    hist = _one_node([(-4.0, 2.0), (-3.0, 2.0), (5.0, 2.0), (-2.0, 2.0)])

    (split,) = best_splits(hist, reg_lambda=1.0, gamma=0.0, min_child_weight=1.0)

    assert split is not None
    assert (split.feature, split.bin, split.default_left) == (0, 1, True)
    GL, HL, GR, HR = -9.0, 6.0, 5.0, 2.0
    assert split.gain == pytest.approx(GL**2 / (HL + 1) + GR**2 / (HR + 1) - 16.0 / 9.0)
    assert (split.grad_left, split.hess_left) == (GL, HL)
    assert (split.grad_right, split.hess_right) == (GR, HR)


def test_ties_break_to_the_first_candidate() -> None:
    # Two identical features: the first wins; no missing rows: missing goes right.
    one = np.array([(-4.0, 2.0), (4.0, 2.0), (0.0, 0.0)])
    hist = np.stack([one, one])[None]

    (split,) = best_splits(hist, reg_lambda=1.0, gamma=0.0, min_child_weight=0.0)

    assert split is not None and (split.feature, split.default_left) == (0, False)


def test_gamma_min_child_weight_and_noisy_hessians_block_splits() -> None:
    hist = _one_node([(-4.0, 2.0), (4.0, 2.0), (0.0, 0.0)])
    kwargs = {"reg_lambda": 1.0}

    assert best_splits(hist, gamma=0.0, min_child_weight=1.0, **kwargs)[0] is not None
    assert best_splits(hist, gamma=100.0, min_child_weight=1.0, **kwargs)[0] is None
    assert best_splits(hist, gamma=0.0, min_child_weight=2.5, **kwargs)[0] is None
    noisy = _one_node([(-4.0, -0.5), (4.0, 2.0), (0.0, 0.0)])
    assert best_splits(noisy, gamma=0.0, min_child_weight=0.0, **kwargs)[0] is None


def test_leaf_weight_is_the_newton_step_and_clamps_noisy_hessians() -> None:
    w = leaf_weight(
        np.array([-3.0, 2.0, 1.0]), np.array([2.0, -5.0, 0.0]), reg_lambda=1.0, learning_rate=0.5
    )

    np.testing.assert_allclose(w, [0.5, -1.0, -0.5])
    assert leaf_weight(1.0, 0.0, reg_lambda=0.0, learning_rate=0.3) == 0.0
