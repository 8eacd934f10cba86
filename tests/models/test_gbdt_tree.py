"""Growing one tree: histogram source, level-wise splits, tree arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.models.gbdt_bins import apply_bins, compute_bin_edges, n_bins_of
from fedcrm.models.gbdt_hist import node_histograms
from fedcrm.models.gbdt_tree import (
    Tree,
    grow_tree,
    local_histograms,
    logistic_grad_hess,
    open_positions,
)

PARAMS = {"reg_lambda": 1.0, "gamma": 0.0, "min_child_weight": 1.0, "learning_rate": 0.3}


def _problem() -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1200, 5))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) ** 2 > 0.8).astype(float)
    edges = compute_bin_edges(X, max_bin=16)
    grad, hess = logistic_grad_hess(np.zeros(len(y)), y)
    return X, edges, grad, hess


def test_sibling_subtraction_equals_direct_histograms() -> None:
    X, edges, grad, hess = _problem()
    binned, n_bins = apply_bins(X, edges), n_bins_of(edges)
    source = local_histograms(binned, grad, hess, n_bins=n_bins)
    seen = []

    def checked(tree: Tree, open_nodes: list[int]) -> np.ndarray:
        hist = source(tree, open_nodes)
        position = open_positions(
            tree.apply_binned(binned, missing_bin=n_bins), open_nodes, tree.n_nodes
        )
        direct = node_histograms(binned, grad, hess, position, len(open_nodes), n_bins)
        np.testing.assert_allclose(hist, direct, rtol=0, atol=1e-9)
        seen.append(len(open_nodes))
        return hist

    tree = grow_tree(checked, edges=edges, max_depth=4, **PARAMS)

    assert seen[0] == 1 and len(seen) == 4 and tree.depth == 4


def test_children_sums_add_up_to_parents_and_leaves_hold_newton_steps() -> None:
    X, edges, grad, hess = _problem()
    binned = apply_bins(X, edges)

    tree = grow_tree(
        local_histograms(binned, grad, hess, n_bins=n_bins_of(edges)),
        edges=edges,
        max_depth=3,
        **PARAMS,
    )

    internal = np.flatnonzero(~tree.is_leaf)
    np.testing.assert_allclose(
        tree.cover[internal], tree.cover[tree.left[internal]] + tree.cover[tree.right[internal]]
    )
    assert tree.cover[0] == pytest.approx(hess.sum())
    leaf = tree.apply(X)
    for node in np.flatnonzero(tree.is_leaf):
        rows = leaf == node
        expected = -0.3 * grad[rows].sum() / (hess[rows].sum() + 1.0)
        assert tree.value[node] == pytest.approx(expected, rel=1e-6)
    for node in internal:
        assert tree.threshold[node] == edges[tree.feature[node]][tree.bin[node]]


def test_tree_arrays_round_trip_and_are_checked() -> None:
    X, edges, grad, hess = _problem()
    tree = grow_tree(
        local_histograms(apply_bins(X, edges), grad, hess, n_bins=n_bins_of(edges)),
        edges=edges,
        max_depth=2,
        **PARAMS,
    )

    again = Tree.from_arrays(tree.to_arrays())

    np.testing.assert_array_equal(again.predict_margin(X), tree.predict_margin(X))
    broken = tree.to_arrays()
    del broken["gain"]
    with pytest.raises(ValueError, match="gain"):
        Tree.from_arrays(broken)
