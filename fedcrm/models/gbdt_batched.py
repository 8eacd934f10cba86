"""Communication-light trees: structure fixed without data, only leaf sums aggregated.

In the ``batched`` mode (Maddock et al., "Federated Boosted Decision Trees with
Differential Privacy", CCS 2022: random split candidates and batched updates)
every branch draws the same complete trees from a shared seed with
:func:`random_split_candidates` - features and thresholds uniform over the
agreed bin edges, no data involved - so a tree needs no split exchange. For a
batch of ``k`` trees each branch computes :func:`batched_leaf_sums` with the
gradients of the model at the start of the batch, the sums are aggregated once,
and :func:`set_leaf_values` turns them into leaf values. ``k`` trees then cost
one exchange instead of ``k * (max_depth + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcrm.models.gbdt_bins import n_thresholds_of
from fedcrm.models.gbdt_hist import leaf_weight
from fedcrm.models.gbdt_tree import Tree, with_values


def random_split_candidates(
    edges: Sequence[np.ndarray], *, max_depth: int, n_trees: int, seed: int | Sequence[int]
) -> list[Tree]:
    """Complete trees of depth ``max_depth`` with random splits, identical for one seed.

    Each internal node splits on a feature drawn uniformly among those with
    at least one edge, at a uniformly drawn edge, with a random default
    direction. Nodes are numbered breadth-first (children of ``i`` are
    ``2i + 1`` and ``2i + 2``). Values, covers and gains are 0 until
    :func:`set_leaf_values`.

    Parameters
    ----------
    edges
        The agreed bin edges.
    max_depth, n_trees
        Depth and number of trees to draw.
    seed
        Shared by all branches, e.g. ``(run_seed, batch)``; numpy's PCG64
        gives the same draws on every platform.
    """
    rng = np.random.default_rng(seed)
    thresholds = n_thresholds_of(edges)
    splittable = np.flatnonzero(thresholds > 0)
    depth = max_depth if splittable.size else 0
    n_internal = 2**depth - 1
    n_nodes = 2 ** (depth + 1) - 1
    ids = np.arange(n_nodes)
    internal = ids < n_internal
    trees = []
    for _ in range(n_trees):
        feature = np.zeros(n_nodes, dtype=np.int64)
        split_bin = np.full(n_nodes, -1, dtype=np.int64)
        default_left = np.zeros(n_nodes, dtype=bool)
        if n_internal:
            feature[:n_internal] = rng.choice(splittable, size=n_internal)
            split_bin[:n_internal] = rng.integers(0, thresholds[feature[:n_internal]])
            default_left[:n_internal] = rng.integers(0, 2, size=n_internal).astype(bool)
        threshold = np.full(n_nodes, np.nan, dtype=np.float32)
        for node in range(n_internal):
            threshold[node] = edges[feature[node]][split_bin[node]]
        trees.append(
            Tree.from_arrays(
                {
                    "left": np.where(internal, 2 * ids + 1, -1),
                    "right": np.where(internal, 2 * ids + 2, -1),
                    "parent": np.where(ids > 0, (ids - 1) // 2, -1),
                    "feature": feature,
                    "bin": split_bin,
                    "threshold": threshold,
                    "default_left": default_left,
                    "value": np.zeros(n_nodes),
                    "gain": np.zeros(n_nodes),
                    "cover": np.zeros(n_nodes),
                }
            )
        )
    return trees


def batched_leaf_sums(
    binned: np.ndarray,
    grad: np.ndarray,
    hess: np.ndarray,
    trees_structure: Sequence[Tree],
    *,
    missing_bin: int,
) -> np.ndarray:
    """Gradient and hessian sums of every leaf of every tree of a batch.

    Parameters
    ----------
    binned : ndarray, shape (n, n_features)
    grad, hess : ndarray, shape (n,)
        From the model at the start of the batch (the same for every tree).
    trees_structure
        Trees from :func:`random_split_candidates`.
    missing_bin
        Index of the missing bin (``n_bins_of(edges)``).

    Returns
    -------
    ndarray of float64, shape (k, n_nodes, 2)
        Sums per node id (non-zero at leaves only), zero-padded to the largest
        tree; sum over branches before :func:`set_leaf_values`.
    """
    width = max((t.n_nodes for t in trees_structure), default=1)
    sums = np.zeros((len(trees_structure), width, 2))
    g = np.asarray(grad, dtype=np.float64)
    h = np.asarray(hess, dtype=np.float64)
    for i, tree in enumerate(trees_structure):
        leaf = tree.apply_binned(binned, missing_bin=missing_bin)
        sums[i, :, 0] = np.bincount(leaf, weights=g, minlength=width)
        sums[i, :, 1] = np.bincount(leaf, weights=h, minlength=width)
    return sums


def set_leaf_values(
    tree: Tree,
    leaf_sums: np.ndarray,
    *,
    reg_lambda: float,
    learning_rate: float,
    scale: float = 1.0,
) -> Tree:
    """Fill ``tree``'s values, covers and gains from aggregated leaf sums.

    Internal nodes get the sums of their subtrees (for covers, gains and
    feature importances). ``scale`` multiplies every value: ``1 / k`` averages
    the ``k`` trees of a batch, which all chase the same gradients.

    Parameters
    ----------
    tree
        A tree structure (children numbered after parents).
    leaf_sums : ndarray, shape (>= n_nodes, 2)
        This tree's row of :func:`batched_leaf_sums`, summed over branches.
    """
    sums = np.array(leaf_sums[: tree.n_nodes], dtype=np.float64)
    sums[~tree.is_leaf] = 0.0
    for node in range(tree.n_nodes - 1, 0, -1):
        sums[tree.parent[node]] += sums[node]
    G, H = sums[:, 0], sums[:, 1]
    value = scale * leaf_weight(G, H, reg_lambda=reg_lambda, learning_rate=learning_rate)
    internal = ~tree.is_leaf
    gain = np.zeros(tree.n_nodes)
    if internal.any():
        Hc = np.clip(H, 0.0, None) + reg_lambda
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(Hc > 0, G * G / Hc, 0.0)
        left, right = tree.left[internal], tree.right[internal]
        # Random splits can lose; importances count only what they gain.
        gain[internal] = np.maximum(score[left] + score[right] - score[internal], 0.0)
    return with_values(tree, value, np.clip(H, 0.0, None), gain)
