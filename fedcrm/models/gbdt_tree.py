"""One regression tree of the GBDT, grown level by level from histograms.

:func:`grow_tree` is written once for every setting: it asks a callback for the
histograms of the open nodes of the current level - computed on local rows in
centralized training, summed over branches in federation - and turns them into
splits with :func:`~fedcrm.models.gbdt_hist.best_splits` and
:func:`split_nodes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedcrm.models.gbdt_bins import n_thresholds_of
from fedcrm.models.gbdt_hist import Split, best_splits, leaf_weight, node_histograms

# Callback of grow_tree: (tree so far, open node ids) -> summed histograms of
# those nodes, shape (len(open), n_features, n_bins + 1, 2).
HistogramSource = Callable[["Tree", list[int]], np.ndarray]

_ARRAYS: dict[str, type[np.generic]] = {
    "left": np.int32,
    "right": np.int32,
    "parent": np.int32,
    "feature": np.int32,
    "bin": np.int32,
    "threshold": np.float32,
    "default_left": np.bool_,
    "value": np.float32,
    "gain": np.float64,
    "cover": np.float64,
}


@dataclass(frozen=True)
class Tree:
    """A binary tree in flat arrays, node 0 the root (XGBoost's layout).

    Attributes
    ----------
    left, right, parent : ndarray of int32
        Child and parent ids, ``-1`` where there is none.
    feature : ndarray of int32
        Split feature (0 at leaves).
    bin : ndarray of int32
        Split bin: rows with ``bin <= bin[node]`` go left (``-1`` at leaves).
    threshold : ndarray of float32
        ``edges[feature][bin]``: rows with ``x < threshold`` go left (NaN at leaves).
    default_left : ndarray of bool
        Where rows with a missing value go.
    value : ndarray of float32
        Learning-rate-scaled weight of every node; a leaf's is its prediction.
    gain : ndarray of float64
        Loss change of the split (0 at leaves).
    cover : ndarray of float64
        Hessian sum of the node.
    """

    left: np.ndarray
    right: np.ndarray
    parent: np.ndarray
    feature: np.ndarray
    bin: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    value: np.ndarray
    gain: np.ndarray
    cover: np.ndarray

    @classmethod
    def leaf(cls, grad_sum: float, hess_sum: float, *, value: float) -> Tree:
        """A tree that is a single leaf."""
        return cls(
            left=np.array([-1], np.int32),
            right=np.array([-1], np.int32),
            parent=np.array([-1], np.int32),
            feature=np.array([0], np.int32),
            bin=np.array([-1], np.int32),
            threshold=np.array([np.nan], np.float32),
            default_left=np.array([False]),
            value=np.array([value], np.float32),
            gain=np.array([0.0]),
            cover=np.array([hess_sum], np.float64),
        )

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.left.shape[0])

    @property
    def is_leaf(self) -> np.ndarray:
        """Boolean mask of the leaves."""
        return self.left < 0

    @property
    def depth(self) -> int:
        """Length of the longest root-to-leaf path."""
        level = np.zeros(self.n_nodes, dtype=np.int64)
        for node in range(1, self.n_nodes):  # parents precede children
            level[node] = level[self.parent[node]] + 1
        return int(level.max())

    def apply_binned(self, binned: np.ndarray, *, missing_bin: int) -> np.ndarray:
        """Node each binned row ends in (its leaf, for a finished tree)."""
        start = np.zeros(binned.shape[0], dtype=np.int64)
        return self.descend_binned(binned, start, missing_bin=missing_bin, steps=self.depth)

    def descend_binned(
        self, binned: np.ndarray, node: np.ndarray, *, missing_bin: int, steps: int = 1
    ) -> np.ndarray:
        """Move rows at ``node`` down by up to ``steps`` levels (leaves stay put)."""
        rows = np.arange(binned.shape[0])
        for _ in range(steps):
            left = self.left[node]
            b = binned[rows, self.feature[node]]
            go_left = np.where(b == missing_bin, self.default_left[node], b <= self.bin[node])
            node = np.where(left >= 0, np.where(go_left, left, self.right[node]), node)
        return node

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Leaf each row of raw features ends in (float32 comparisons, as XGBoost)."""
        X32 = np.asarray(X, dtype=np.float32)
        rows = np.arange(X32.shape[0])
        node = np.zeros(X32.shape[0], dtype=np.int64)
        for _ in range(self.depth):
            left = self.left[node]
            x = X32[rows, self.feature[node]]
            with np.errstate(invalid="ignore"):
                go_left = np.where(np.isnan(x), self.default_left[node], x < self.threshold[node])
            node = np.where(left >= 0, np.where(go_left, left, self.right[node]), node)
        return node

    def predict_margin(self, X: np.ndarray) -> np.ndarray:
        """This tree's contribution to the margin (log-odds) of every row."""
        return self.value[self.apply(X)].astype(np.float64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The tree as named arrays (for messages and checkpoints)."""
        return {name: getattr(self, name).copy() for name in _ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Tree:
        """Inverse of :meth:`to_arrays`; checks names and lengths."""
        missing = set(_ARRAYS) - set(arrays)
        if missing:
            raise ValueError(f"tree arrays lack {sorted(missing)}")
        lengths = {np.shape(arrays[name]) for name in _ARRAYS}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ValueError("tree arrays must be 1-D and of equal length")
        return cls(**{n: np.asarray(arrays[n], dtype=t) for n, t in _ARRAYS.items()})


def open_positions(node: np.ndarray, open_nodes: Sequence[int], n_nodes: int) -> np.ndarray:
    """Position of each row's node among ``open_nodes`` (``-1`` if not open)."""
    lookup = np.full(n_nodes, -1, dtype=np.int64)
    lookup[np.asarray(open_nodes, dtype=np.int64)] = np.arange(len(open_nodes))
    return lookup[node]


def split_nodes(
    tree: Tree,
    open_nodes: Sequence[int],
    splits: Sequence[Split | None],
    edges: Sequence[np.ndarray],
    *,
    reg_lambda: float,
    learning_rate: float,
) -> tuple[Tree, list[int]]:
    """Apply one level's splits: each split node gets two new leaf children.

    Returns
    -------
    tree
        A new tree; children are appended (left, right) in ``open_nodes`` order.
    children
        Ids of the new nodes, the next level's candidates.
    """
    chosen = [(node, s) for node, s in zip(open_nodes, splits, strict=True) if s is not None]
    if not chosen:
        return tree, []
    arrays = tree.to_arrays()
    first = tree.n_nodes
    k = len(chosen)
    nodes = np.array([node for node, _ in chosen], dtype=np.int64)
    children = first + np.arange(2 * k)
    grad = np.array([[s.grad_left, s.grad_right] for _, s in chosen]).ravel()
    hess = np.array([[s.hess_left, s.hess_right] for _, s in chosen]).ravel()
    arrays["left"][nodes] = children[0::2]
    arrays["right"][nodes] = children[1::2]
    arrays["feature"][nodes] = [s.feature for _, s in chosen]
    arrays["bin"][nodes] = [s.bin for _, s in chosen]
    arrays["threshold"][nodes] = [edges[s.feature][s.bin] for _, s in chosen]
    arrays["default_left"][nodes] = [s.default_left for _, s in chosen]
    arrays["gain"][nodes] = [s.gain for _, s in chosen]
    new = {
        "left": np.full(2 * k, -1),
        "right": np.full(2 * k, -1),
        "parent": np.repeat(nodes, 2),
        "feature": np.zeros(2 * k),
        "bin": np.full(2 * k, -1),
        "threshold": np.full(2 * k, np.nan),
        "default_left": np.zeros(2 * k, dtype=bool),
        "value": leaf_weight(grad, hess, reg_lambda=reg_lambda, learning_rate=learning_rate),
        "gain": np.zeros(2 * k),
        "cover": hess,
    }
    grown = {name: np.concatenate([arrays[name], new[name]]) for name in arrays}
    return Tree.from_arrays(grown), [int(c) for c in children]


def grow_tree(
    histograms: HistogramSource,
    *,
    edges: Sequence[np.ndarray],
    max_depth: int,
    reg_lambda: float,
    gamma: float,
    min_child_weight: float,
    learning_rate: float,
) -> Tree:
    """Grow one tree level by level; one call of ``histograms`` per level.

    Parameters
    ----------
    histograms
        ``histograms(tree, open_nodes)`` returns the (summed) histograms of the
        open nodes of ``tree``; see :data:`HistogramSource`.
    edges
        Bin edges the histograms were computed with (for the thresholds).
    max_depth, reg_lambda, gamma, min_child_weight, learning_rate
        As in XGBoost.
    """
    tree = Tree.leaf(0.0, 0.0, value=0.0)
    open_nodes = [0]
    thresholds = n_thresholds_of(edges)
    for depth in range(max_depth):
        hist = histograms(tree, open_nodes)
        if depth == 0:
            G, H = hist[0, 0].sum(axis=0) if hist.shape[1] else (0.0, 0.0)
            value = leaf_weight(G, H, reg_lambda=reg_lambda, learning_rate=learning_rate)
            tree = Tree.leaf(float(G), float(H), value=float(value))
        splits = best_splits(
            hist,
            reg_lambda=reg_lambda,
            gamma=gamma,
            min_child_weight=min_child_weight,
            n_thresholds=thresholds,
        )
        tree, open_nodes = split_nodes(
            tree, open_nodes, splits, edges, reg_lambda=reg_lambda, learning_rate=learning_rate
        )
        if not open_nodes:
            break
    return tree


def local_histograms(
    binned: np.ndarray, grad: np.ndarray, hess: np.ndarray, *, n_bins: int
) -> HistogramSource:
    """A :data:`HistogramSource` over one set of rows (a branch's, or all of them).

    For one tree grown level by level: it remembers each row's node and the
    previous level's histograms, computes only the smaller child of every
    split and derives its sibling as parent minus child (the sums sent are
    the same; the work roughly halves).
    """
    node = np.zeros(binned.shape[0], dtype=np.int64)
    previous: dict[int, np.ndarray] = {}

    def histograms(tree: Tree, open_nodes: list[int]) -> np.ndarray:
        nonlocal node, previous
        if tree.n_nodes > 1:
            node = tree.descend_binned(binned, node, missing_bin=n_bins)
        rows = np.bincount(node, minlength=tree.n_nodes)
        is_open = set(open_nodes)
        derived = set()
        for n in open_nodes:
            parent, sibling = int(tree.parent[n]), _sibling(tree, n)
            # Derive the larger of two open siblings (the right one on a tie).
            if (
                parent in previous
                and sibling in is_open
                and (
                    rows[n] > rows[sibling]
                    or (rows[n] == rows[sibling] and n == tree.right[parent])
                )
            ):
                derived.add(n)
        direct = [n for n in open_nodes if n not in derived]
        computed = node_histograms(
            binned, grad, hess, open_positions(node, direct, tree.n_nodes), len(direct), n_bins
        )
        known = dict(zip(direct, computed, strict=True))
        for n in derived:
            known[n] = previous[int(tree.parent[n])] - known[_sibling(tree, n)]
        previous = known
        return np.stack([known[n] for n in open_nodes])

    return histograms


def _sibling(tree: Tree, node: int) -> int:
    parent = tree.parent[node]
    if parent < 0:
        return -1
    return int(tree.left[parent] + tree.right[parent] - node)


def logistic_grad_hess(margin: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient ``p - y`` in [-1, 1] and hessian ``p(1 - p)`` in (0, 0.25] of the log loss."""
    p = 1.0 / (1.0 + np.exp(-np.clip(margin, -500.0, 500.0)))
    return p - y, np.maximum(p * (1.0 - p), 1e-16)


def with_values(tree: Tree, value: np.ndarray, cover: np.ndarray, gain: np.ndarray) -> Tree:
    """``tree`` with new node values, covers and gains (same structure)."""
    return replace(
        tree,
        value=np.asarray(value, np.float32),
        cover=np.asarray(cover, np.float64),
        gain=np.asarray(gain, np.float64),
    )


__all__ = [
    "HistogramSource",
    "Tree",
    "grow_tree",
    "local_histograms",
    "logistic_grad_hess",
    "open_positions",
    "split_nodes",
    "with_values",
]
