"""A branch's local tree statistics: margins, binned features, histograms and leaf sums.

Everything here is computed from the branch's own customers and the model a
message carries. In-process caches (margins after the trees so far, binned
features, the per-tree histogram source) only save work between messages; on
a miss everything is recomputed from the message, bit for bit.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from fedcrm.client.branch import BranchSettings
from fedcrm.config import JobSpec
from fedcrm.models.gbdt import base_margin
from fedcrm.models.gbdt_batched import batched_leaf_sums, random_split_candidates
from fedcrm.models.gbdt_bins import apply_bins
from fedcrm.models.gbdt_protocol import (
    BASE_SCORE,
    TreeModel,
    gbdt_config,
    open_nodes_of,
    tree_digest,
    truncated,
)
from fedcrm.models.gbdt_tree import Tree, local_histograms, logistic_grad_hess

_MARGINS: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}
_SOURCES: dict[tuple[str, str, int, str], tuple[Any, int, str]] = {}
_CACHE_RUNS = 4


def margin_after(
    run_id: str, branch_id: str, binned: np.ndarray, trees: list[Tree], n_bins: int
) -> np.ndarray:
    """Margins after ``trees``, in the reference's summation order (cached across messages)."""
    digests = [tree_digest(t) for t in trees]
    key = (run_id, branch_id)
    done, margin = _MARGINS.get(key, ([], None))
    if margin is None or margin.shape[0] != binned.shape[0] or digests[: len(done)] != done:
        done, margin = [], np.full(binned.shape[0], base_margin(BASE_SCORE))
    margin = margin.copy()
    for tree in trees[len(done) :]:
        margin += tree.value[tree.apply_binned(binned, missing_bin=n_bins)]
    if len(_MARGINS) > _CACHE_RUNS:
        _MARGINS.clear()
    _MARGINS[key] = (digests, margin)
    return margin


_BINNED: dict[tuple[str, str], tuple[str, np.ndarray]] = {}


def binned_features(
    run_id: str, branch_id: str, X: np.ndarray, edges: list[np.ndarray]
) -> np.ndarray:
    """``X`` binned with the agreed ``edges`` (cached across messages of a run)."""
    digest = hashlib.sha256(
        b"".join(np.asarray(e, np.float32).tobytes() + b"|" for e in edges)
    ).hexdigest()
    digest += f":{id(X)}:{X.shape}"  # the branch's data of this process, not another's
    cached = _BINNED.get((run_id, branch_id))
    if cached is not None and cached[0] == digest:
        return cached[1]
    if len(_BINNED) > _CACHE_RUNS:
        _BINNED.clear()
    binned = apply_bins(X, edges)
    _BINNED[(run_id, branch_id)] = (digest, binned)
    return binned


def customer_sample(seed: int, n: int, rate: float) -> np.ndarray:
    """Poisson sample of customers for one tree or batch (the server never learns it)."""
    if rate >= 1.0:
        return np.ones(n, dtype=bool)
    return np.random.Generator(np.random.PCG64(seed)).random(n) < rate


def level_histograms(
    spec: JobSpec,
    settings: BranchSettings,
    binned: np.ndarray,
    labels: np.ndarray,
    model: TreeModel,
    n_bins: int,
    seed: int,
) -> np.ndarray:
    """This branch's histograms of the open nodes, exactly as :func:`local_histograms` makes them.

    ``local_histograms`` keeps state within a tree (row positions, the previous
    level, for the sibling subtraction); a new process replays the tree's
    earlier levels from the message so the sums match the reference bit for bit.
    ``seed`` fixes the tree's customer sample.
    """
    cfg = gbdt_config(spec)
    t = len(model.trees)
    trees_key = hashlib.sha256("".join(tree_digest(x) for x in model.trees).encode()).hexdigest()
    key = (spec.run_id, settings.branch_id, t, trees_key)
    tree = model.partial if model.partial is not None else Tree.leaf(0.0, 0.0, value=0.0)
    before = tree_digest(truncated(tree, model.level - 1)) if model.level > 0 else ""
    cached = _SOURCES.get(key)
    if cached is not None and model.level > 0 and cached[1] == model.level and cached[2] == before:
        source = cached[0]
    else:  # a new process or a new tree: replay the tree's earlier levels
        margin = margin_after(spec.run_id, settings.branch_id, binned, model.trees, n_bins)
        grad, hess = logistic_grad_hess(margin, labels)
        keep = customer_sample(seed, len(labels), cfg.subsample)
        source = local_histograms(binned[keep], grad[keep], hess[keep], n_bins=n_bins)
        for k in range(model.level):
            earlier = truncated(tree, k)
            source(earlier, open_nodes_of(earlier, k))
    current = truncated(tree, model.level)
    hist = source(current, open_nodes_of(current, model.level))
    if len(_SOURCES) > 64:
        _SOURCES.clear()
    _SOURCES[key] = (source, model.level + 1, tree_digest(current))
    return hist


def leaf_sums(
    spec: JobSpec,
    settings: BranchSettings,
    binned: np.ndarray,
    labels: np.ndarray,
    model: TreeModel,
    n_bins: int,
    batch: int,
    k: int,
    seed: int,
) -> np.ndarray:
    """This branch's leaf sums of batch ``batch``'s ``k`` random trees (batched mode)."""
    cfg = gbdt_config(spec)
    assert model.edges is not None
    structures = random_split_candidates(
        model.edges, max_depth=cfg.max_depth, n_trees=k, seed=(spec.seed, batch)
    )
    margin = margin_after(spec.run_id, settings.branch_id, binned, model.trees, n_bins)
    grad, hess = logistic_grad_hess(margin, labels)
    keep = customer_sample(seed, len(labels), cfg.subsample)
    return batched_leaf_sums(binned[keep], grad[keep], hess[keep], structures, missing_bin=n_bins)


def clear_caches() -> None:
    """Forget every cached margin, binned feature set and histogram source (a fresh process)."""
    for cache in (_MARGINS, _SOURCES, _BINNED):
        cache.clear()


__all__ = [
    "binned_features",
    "clear_caches",
    "customer_sample",
    "leaf_sums",
    "level_histograms",
    "margin_after",
]
