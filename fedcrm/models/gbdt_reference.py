"""In-process reference of the federated tree protocol over row partitions.

:func:`fit_from_partitions` plays every branch and the aggregator in one
process, with no Flower, no encryption and no noise: each "exchange" is one
server -> branches -> server round trip in which every branch computes an array
from its own rows and the arrays are summed. The Flower ServerApp / ClientApp
run the same steps across messages; this function is their reference (same
trees, same number of exchanges, same values per branch).

Exact mode: ranges, fine histograms (bin edges), then per tree one exchange of
node histograms per level. Batched mode: trees drawn from a shared seed, one
exchange of leaf sums per batch of ``trees_per_exchange`` trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedcrm.config import GBDTModelConfig
from fedcrm.models.gbdt import HistGBDT, base_margin
from fedcrm.models.gbdt_batched import batched_leaf_sums, random_split_candidates, set_leaf_values
from fedcrm.models.gbdt_bins import (
    apply_bins,
    bin_edges_from_fine_histograms,
    feature_ranges,
    fine_histogram,
    n_bins_of,
)
from fedcrm.models.gbdt_tree import Tree, grow_tree, local_histograms, logistic_grad_hess

DEFAULT_N_FINE = 1024


@dataclass(frozen=True)
class PartitionRun:
    """Result of :func:`fit_from_partitions`.

    Attributes
    ----------
    model
        The assembled model.
    exchanges
        Server -> branches -> server round trips, bin edges included.
    values_per_branch
        Numbers one branch uploaded over the run (multiply by 8 for float64
        bytes in the clear; ciphertexts are larger).
    """

    model: HistGBDT
    exchanges: int
    values_per_branch: int


@dataclass
class _Branch:
    binned: np.ndarray
    labels: np.ndarray
    margin: np.ndarray


def federated_bin_edges(
    parts: Sequence[np.ndarray], *, max_bin: int, n_fine: int = DEFAULT_N_FINE
) -> list[np.ndarray]:
    """Bin edges from per-branch ranges and summed fine histograms (two exchanges)."""
    ranges = [feature_ranges(X) for X in parts]
    lo = np.min([r[0] for r in ranges], axis=0)
    hi = np.max([r[1] for r in ranges], axis=0)
    counts = sum(fine_histogram(X, lo=lo, hi=hi, n_fine=n_fine) for X in parts)
    return bin_edges_from_fine_histograms(np.asarray(counts), lo, hi, max_bin=max_bin)


def fit_from_partitions(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    config: GBDTModelConfig | None = None,
    *,
    base_score: float = 0.5,
    bin_edges: Sequence[np.ndarray] | None = None,
    n_fine: int = DEFAULT_N_FINE,
    seed: int = 0,
    feature_names: Sequence[str] | None = None,
) -> PartitionRun:
    """Train on row partitions ("branches") by summing per-branch arrays only.

    Parameters
    ----------
    parts
        ``(X, y)`` of every branch, same columns everywhere.
    config
        Hyper-parameters and ``mode`` (``exact`` or ``batched``) with
        ``trees_per_exchange``; defaults of :class:`GBDTModelConfig`.
    base_score
        Initial probability of every row.
    bin_edges
        Agreed edges; by default computed with :func:`federated_bin_edges`.
    n_fine
        Fine-histogram cells per feature for the bin edges.
    seed
        Shared seed of the random trees (batched mode).
    feature_names
        Names of the columns.

    Returns
    -------
    PartitionRun
        In exact mode the model equals ``HistGBDT(...).fit(pooled X, pooled y,
        bin_edges=edges)`` up to floating-point summation order.
    """
    config = config or GBDTModelConfig()
    if not parts:
        raise ValueError("need at least one partition")
    exchanges = 0
    values = 0
    n_features = np.shape(parts[0][0])[1]
    if bin_edges is None:
        bin_edges = federated_bin_edges(
            [X for X, _ in parts], max_bin=config.max_bin, n_fine=n_fine
        )
        exchanges += 2
        values += 2 * n_features + n_features * n_fine
    edges = [np.asarray(e, np.float32) for e in bin_edges]
    n_bins = n_bins_of(edges)
    start = base_margin(base_score)
    branches = [
        _Branch(apply_bins(X, edges), np.asarray(y, np.float64), np.full(len(y), start))
        for X, y in parts
    ]
    model = HistGBDT.from_config(config, base_score=base_score)
    if config.mode == "exact":
        trees, more_exchanges, more_values = _exact_trees(branches, edges, n_bins, model)
    else:
        trees, more_exchanges, more_values = _batched_trees(
            branches, edges, n_bins, model, config.trees_per_exchange, seed
        )
    fitted = HistGBDT.from_trees(
        trees, edges, base_score, model.get_params(), feature_names=feature_names
    )
    return PartitionRun(fitted, exchanges + more_exchanges, values + more_values)


def _exact_trees(
    branches: list[_Branch], edges: list[np.ndarray], n_bins: int, model: HistGBDT
) -> tuple[list[Tree], int, int]:
    trees = []
    exchanges = values = 0
    for _ in range(model.n_estimators):
        sources = [
            local_histograms(b.binned, *logistic_grad_hess(b.margin, b.labels), n_bins=n_bins)
            for b in branches
        ]

        def summed(tree: Tree, open_nodes: list[int], sources=sources) -> np.ndarray:
            nonlocal exchanges, values
            hists = [source(tree, open_nodes) for source in sources]
            exchanges += 1
            values += hists[0].size
            return np.sum(hists, axis=0)

        tree = grow_tree(
            summed,
            edges=edges,
            max_depth=model.max_depth,
            reg_lambda=model.reg_lambda,
            gamma=model.gamma,
            min_child_weight=model.min_child_weight,
            learning_rate=model.learning_rate,
        )
        for b in branches:
            b.margin += tree.value[tree.apply_binned(b.binned, missing_bin=n_bins)]
        trees.append(tree)
    return trees, exchanges, values


def _batched_trees(
    branches: list[_Branch],
    edges: list[np.ndarray],
    n_bins: int,
    model: HistGBDT,
    per_exchange: int,
    seed: int,
) -> tuple[list[Tree], int, int]:
    trees: list[Tree] = []
    exchanges = values = 0
    batch = 0
    while len(trees) < model.n_estimators:
        k = min(per_exchange, model.n_estimators - len(trees))
        structures = random_split_candidates(
            edges, max_depth=model.max_depth, n_trees=k, seed=(seed, batch)
        )
        sums = [
            batched_leaf_sums(
                b.binned, *logistic_grad_hess(b.margin, b.labels), structures, missing_bin=n_bins
            )
            for b in branches
        ]
        total = np.sum(sums, axis=0)
        exchanges += 1
        values += 2 * sum(int(t.is_leaf.sum()) for t in structures)  # leaves only
        batch += 1
        for i, structure in enumerate(structures):
            tree = set_leaf_values(
                structure,
                total[i],
                reg_lambda=model.reg_lambda,
                learning_rate=model.learning_rate,
                scale=1.0 / k,
            )
            for b in branches:
                b.margin += tree.value[tree.apply_binned(b.binned, missing_bin=n_bins)]
            trees.append(tree)
    return trees, exchanges, values
