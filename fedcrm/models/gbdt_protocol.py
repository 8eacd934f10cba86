"""The federated tree protocol's shared state: what every message carries and how it advances.

Both sides use this module: a branch (:mod:`fedcrm.client.gbdt_round`) and the
server (:mod:`fedcrm.server.gbdt_job`) decode the same :class:`TreeModel` from
a message and, given the sum of a release, advance it the same way (bin edges
from fine histograms, one exact level, or one batch of random trees). Nothing
here reads customer data or knows about Flower.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from fedcrm.config import GBDTModelConfig, JobSpec
from fedcrm.errors import ConfigError, FedCRMError
from fedcrm.models.gbdt_batched import random_split_candidates, set_leaf_values
from fedcrm.models.gbdt_bins import bin_edges_from_fine_histograms, n_bins_of, n_thresholds_of
from fedcrm.models.gbdt_hist import best_splits, leaf_weight
from fedcrm.models.gbdt_reference import DEFAULT_N_FINE
from fedcrm.models.gbdt_tree import Tree, split_nodes

BASE_SCORE = 0.5


# ------------------------------------------------------------------ the model
@dataclass
class TreeModel:
    """The model so far, as every message carries it.

    Attributes
    ----------
    lo, hi
        Agreed feature ranges of the fine grid (until the edges exist).
    edges
        Agreed bin edges, ``None`` before the fine histograms are summed.
    trees
        Finished trees, in boosting order.
    partial
        Exact mode: the tree being grown, ``None`` between trees.
    level
        Split levels of ``partial`` done (its open nodes are the leaves at this depth).
    """

    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    edges: list[np.ndarray] | None = None
    trees: list[Tree] = field(default_factory=list)
    partial: Tree | None = None
    level: int = 0

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for a Flower ArrayRecord.

        Few arrays whatever the model size (each array of a record costs a
        fixed serialization time): ``edges`` + ``edge_sizes``, ``trees.<field>``
        concatenated over the trees + ``tree_sizes``, ``partial.<field>``,
        ``level``, and ``lo``/``hi`` while there are no edges.
        """
        out: dict[str, np.ndarray] = {"level": np.array([self.level], np.int64)}
        if self.lo is not None and self.hi is not None:
            out["lo"], out["hi"] = np.asarray(self.lo, np.float64), np.asarray(self.hi, np.float64)
        if self.edges is not None:
            out["edge_sizes"] = np.array([len(e) for e in self.edges], np.int64)
            out["edges"] = np.concatenate(
                [np.asarray(e, np.float32) for e in self.edges] or [np.zeros(0, np.float32)]
            )
        out.update(pack_trees(self.trees))
        if self.partial is not None:
            out.update({f"partial.{k}": v for k, v in self.partial.to_arrays().items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TreeModel:
        """Inverse of :meth:`to_arrays` (raises ``ValueError`` on a malformed model)."""
        edges = edges_of(arrays)
        partial = None
        if "partial.left" in arrays:
            partial = Tree.from_arrays(
                {k[8:]: v for k, v in arrays.items() if k.startswith("partial.")}
            )
        return cls(
            lo=arrays.get("lo"),
            hi=arrays.get("hi"),
            edges=edges,
            trees=unpack_trees(arrays),
            partial=partial,
            level=int(arrays["level"][0]) if "level" in arrays else 0,
        )


def pack_trees(trees: list[Tree]) -> dict[str, np.ndarray]:
    """Trees as one concatenated array per field plus ``tree_sizes``."""
    out: dict[str, np.ndarray] = {"tree_sizes": np.array([t.n_nodes for t in trees], np.int64)}
    if trees:
        per_tree = [t.to_arrays() for t in trees]
        for name in per_tree[0]:
            out[f"trees.{name}"] = np.concatenate([a[name] for a in per_tree])
    return out


def unpack_trees(arrays: dict[str, np.ndarray]) -> list[Tree]:
    """Inverse of :func:`pack_trees`."""
    sizes = arrays.get("tree_sizes", np.zeros(0, np.int64))
    if len(sizes) == 0:
        return []
    cuts = np.cumsum(sizes)[:-1]
    fields = {k[6:]: np.split(v, cuts) for k, v in arrays.items() if k.startswith("trees.")}
    return [Tree.from_arrays({k: v[i] for k, v in fields.items()}) for i in range(len(sizes))]


def tree_digest(tree: Tree) -> str:
    """SHA-256 of a tree's arrays (what "the same tree" means between branches)."""
    h = hashlib.sha256()
    for name, values in tree.to_arrays().items():
        h.update(name.encode() + np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def edges_of(arrays: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The bin edges of a model record (``edges`` + ``edge_sizes``), ``None`` before any."""
    if "edge_sizes" not in arrays:
        return None
    cuts = np.cumsum(arrays["edge_sizes"])[:-1]
    return [np.asarray(e, np.float32) for e in np.split(arrays["edges"], cuts)]


def gbdt_config(spec: JobSpec) -> GBDTModelConfig:
    """The tree settings of a job (refuses a job for another model family)."""
    if not isinstance(spec.model, GBDTModelConfig):
        raise ConfigError(f"this step grows trees but the job's model is {spec.model.name}")
    return spec.model


def n_fine_for(spec: JobSpec) -> int:
    """Fine-grid cells per feature: 1024 in the clear, fewer under DP (less noise per quantile)."""
    return 64 if spec.privacy.dp else DEFAULT_N_FINE


# Public value ranges of the tabular features (fedcrm.data.features: log1p of counts,
# days and amounts, shares in [0, 1], a log ratio). Under DP the ranges must not
# depend on any customer, so these replace the branches' min/max.
_PUBLIC_BOUNDS = (("share_", 0.0, 1.0), ("log_", 0.0, 16.0), ("purchase_trend", -8.0, 8.0))
_DEFAULT_BOUNDS = (-16.0, 16.0)


def public_bounds(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Data-independent ranges for feature ``names`` (used under DP)."""
    bounds = [
        next(((lo, hi) for p, lo, hi in _PUBLIC_BOUNDS if n.startswith(p)), _DEFAULT_BOUNDS)
        for n in names
    ]
    return np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])


def cfg_rounds(spec: JobSpec) -> int:
    """The trees' billed steps of a run (trees, or batches in batched mode)."""
    cfg = gbdt_config(spec)
    if cfg.mode == "batched":
        return math.ceil(cfg.n_estimators / cfg.trees_per_exchange)
    return cfg.n_estimators


def node_depths(tree: Tree) -> np.ndarray:
    """Depth of every node (parents precede children)."""
    depth = np.zeros(tree.n_nodes, dtype=np.int64)
    for node in range(1, tree.n_nodes):
        depth[node] = depth[tree.parent[node]] + 1
    return depth


def open_nodes_of(tree: Tree | None, level: int) -> list[int]:
    """The nodes whose histograms level ``level`` needs (the newest leaves)."""
    if tree is None or level == 0:
        return [0]
    depth = node_depths(tree)
    return [int(n) for n in np.flatnonzero(tree.is_leaf & (depth == level))]


def truncated(tree: Tree, levels: int) -> Tree:
    """``tree`` after its first ``levels`` split levels (as :func:`grow_tree` passed it)."""
    if levels == 0:
        return Tree.leaf(0.0, 0.0, value=0.0)
    keep = node_depths(tree) <= levels
    arrays = {k: v[keep].copy() for k, v in tree.to_arrays().items()}
    cut = arrays["left"] >= keep.sum()
    arrays["left"][cut], arrays["right"][cut], arrays["bin"][cut] = -1, -1, -1
    arrays["feature"][cut], arrays["gain"][cut] = 0, 0.0
    arrays["threshold"][cut], arrays["default_left"][cut] = np.nan, False
    return Tree.from_arrays(arrays)


def histogram_shape(model: TreeModel) -> tuple[int, ...]:
    """Shape of the histograms the next exact level needs."""
    assert model.edges is not None
    n_open = len(open_nodes_of(model.partial, model.level))
    return (n_open, len(model.edges), n_bins_of(model.edges) + 1, 2)


def apply_level(model: TreeModel, hist: np.ndarray, cfg: GBDTModelConfig) -> TreeModel:
    """Grow the partial tree by one level from the summed histograms (as :func:`grow_tree`)."""
    assert model.edges is not None
    hist = np.asarray(hist, dtype=np.float64).reshape(histogram_shape(model))
    tree = model.partial if model.partial is not None else Tree.leaf(0.0, 0.0, value=0.0)
    if model.level == 0:
        G, H = hist[0, 0].sum(axis=0) if hist.shape[1] else (0.0, 0.0)
        value = leaf_weight(G, H, reg_lambda=cfg.reg_lambda, learning_rate=cfg.learning_rate)
        tree = Tree.leaf(float(G), float(H), value=float(value))
    splits = best_splits(
        hist,
        reg_lambda=cfg.reg_lambda,
        gamma=cfg.gamma,
        min_child_weight=cfg.min_child_weight,
        n_thresholds=n_thresholds_of(model.edges),
    )
    tree, children = split_nodes(
        tree,
        open_nodes_of(model.partial, model.level),
        splits,
        model.edges,
        reg_lambda=cfg.reg_lambda,
        learning_rate=cfg.learning_rate,
    )
    level = model.level + 1
    if not children or level == cfg.max_depth:
        return TreeModel(model.lo, model.hi, model.edges, [*model.trees, tree], None, 0)
    return TreeModel(model.lo, model.hi, model.edges, list(model.trees), tree, level)


def batch_plan(cfg: GBDTModelConfig, n_done: int) -> tuple[int, int]:
    """Index and size of the batch that starts after ``n_done`` trees."""
    return n_done // cfg.trees_per_exchange, min(cfg.trees_per_exchange, cfg.n_estimators - n_done)


def apply_batch(model: TreeModel, sums: np.ndarray, cfg: GBDTModelConfig, seed: int) -> TreeModel:
    """Leaf values of the next batch's random trees from the summed leaf sums."""
    assert model.edges is not None
    batch, k = batch_plan(cfg, len(model.trees))
    structures = random_split_candidates(
        model.edges, max_depth=cfg.max_depth, n_trees=k, seed=(seed, batch)
    )
    total = np.asarray(sums, dtype=np.float64).reshape(k, structures[0].n_nodes, 2)
    trees = [
        set_leaf_values(
            s, total[i], reg_lambda=cfg.reg_lambda, learning_rate=cfg.learning_rate, scale=1.0 / k
        )
        for i, s in enumerate(structures)
    ]
    return TreeModel(model.lo, model.hi, model.edges, [*model.trees, *trees], None, 0)


def apply_aggregate(spec: JobSpec, model: TreeModel, aggregate: np.ndarray) -> TreeModel:
    """Advance the model with the sum of the previous release (edges, a level, or a batch)."""
    cfg = gbdt_config(spec)
    aggregate = np.asarray(aggregate, dtype=np.float64)
    if not np.all(np.isfinite(aggregate)):
        raise FedCRMError("the aggregate from the server holds non-finite values")
    if model.edges is None:
        if model.lo is None or model.hi is None:
            raise FedCRMError("the message carries neither bin edges nor feature ranges")
        n_fine = n_fine_for(spec)
        counts = aggregate.reshape(len(model.lo), n_fine)
        edges = bin_edges_from_fine_histograms(counts, model.lo, model.hi, max_bin=cfg.max_bin)
        return TreeModel(None, None, edges, [], None, 0)
    if cfg.mode == "batched":
        return apply_batch(model, aggregate, cfg, spec.seed)
    expected = int(np.prod(histogram_shape(model)))
    if aggregate.size != expected:
        raise FedCRMError(f"aggregate has {aggregate.size} values, the open nodes need {expected}")
    return apply_level(model, aggregate, cfg)


__all__ = [
    "BASE_SCORE",
    "TreeModel",
    "apply_aggregate",
    "apply_batch",
    "apply_level",
    "batch_plan",
    "cfg_rounds",
    "edges_of",
    "gbdt_config",
    "histogram_shape",
    "n_fine_for",
    "node_depths",
    "open_nodes_of",
    "pack_trees",
    "public_bounds",
    "tree_digest",
    "truncated",
    "unpack_trees",
]
