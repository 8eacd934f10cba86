"""One branch's part of the federated tree protocol, as plain functions.

The ClientApp handlers (:mod:`fedcrm.client.gbdt_app`) unpack a Flower message,
call these and pack the reply; no Flower types appear here. Every message
carries the model so far (:class:`TreeModel`: bin edges, finished trees, the
tree being grown) and the aggregate of the previous release, so a branch needs
no memory between messages: in deployment each message may run in a new
process. In-process caches (margins, the per-tree histogram source) only save
work; on a miss everything is recomputed from the message, bit for bit.

A step, as the server's exchange sequence drives it (the same steps as
:func:`fedcrm.models.gbdt_reference.fit_from_partitions`):

1. :func:`branch_ranges` - per-feature min/max (public bounds under DP);
2. :func:`fine_release` - counts on a fine grid over the agreed ranges;
3. :func:`protocol_step` - decode the aggregate of the previous release, turn
   it into edges / splits / leaf values exactly as every other branch does,
   then release the next level's histograms (exact) or the next batch's leaf
   sums (batched);
4. :func:`finish_and_evaluate` - apply the last aggregate, score the test customers.

Differential privacy (``privacy=dp|dp_he``): see :class:`DPPlan` for what is
released, its L2 sensitivity and how the noise is calibrated.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcrm import protocol as P
from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.privacy_gate import PrivacyGate, Step, refusal_of
from fedcrm.config import GBDTModelConfig, JobSpec
from fedcrm.errors import BudgetExhaustedError, ConfigError, FedCRMError, RefusedError
from fedcrm.models.evaluation import dp_release, thresholded_release
from fedcrm.models.gbdt import HistGBDT, base_margin
from fedcrm.models.gbdt_batched import batched_leaf_sums, random_split_candidates, set_leaf_values
from fedcrm.models.gbdt_bins import (
    apply_bins,
    bin_edges_from_fine_histograms,
    feature_ranges,
    fine_histogram,
    n_bins_of,
    n_thresholds_of,
)
from fedcrm.models.gbdt_hist import best_splits, leaf_weight
from fedcrm.models.gbdt_reference import DEFAULT_N_FINE
from fedcrm.models.gbdt_tree import Tree, local_histograms, logistic_grad_hess, split_nodes
from fedcrm.privacy.planning import SpendPlan
from fedcrm.privacy.randomness import release_rng, release_seed

log = logging.getLogger(__name__)

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
        edges = None
        if "edge_sizes" in arrays:
            cuts = np.cumsum(arrays["edge_sizes"])[:-1]
            edges = [np.asarray(e, np.float32) for e in np.split(arrays["edges"], cuts)]
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


@dataclass
class StepOutcome:
    """What a branch answers to one protocol step."""

    model: TreeModel
    release: dict[str, Any] | None = None
    step: dict[str, Any] = field(default_factory=dict)
    ledger_entries: list[dict[str, Any]] = field(default_factory=list)
    refusal: dict[str, Any] | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)


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


def branch_ranges(spec: JobSpec, data: BranchData) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-feature ranges to combine by min/max, and the feature names.

    Without DP these are the branch's own min and max (the server sees them: a
    documented leak of the extreme values, not of any histogram); under DP
    public bounds that depend on no customer.
    """
    names = list(data.train.tabular_names) or [f"f{i}" for i in range(data.n_tabular)]
    if spec.privacy.dp:
        lo, hi = public_bounds(names)
        return lo, hi, names
    lo, hi = feature_ranges(data.train.tabular)
    return lo, hi, names


# ------------------------------------------------------------- seeds and caches
Encrypt = Callable[[np.ndarray], dict[str, Any]]
"""Turns a release into the encrypted payload of an HE job."""


def unit_seed(spec: JobSpec, settings: BranchSettings, gate: PrivacyGate | None, unit: str) -> int:
    """Seed of the customer sample of one tree or batch.

    Under DP a secret the branch draws once per step from the OS and keeps
    (every level of a tree then sees the same sample, in any process); with
    the branch's ``rng-seed`` a value derived from it; without DP the job's seed.
    """
    if gate is not None:
        if settings.rng_seed is not None:
            return release_seed(settings.rng_seed, spec.run_id, "sample", unit)
        return gate.store.step_seed(spec.run_id, unit)
    return int.from_bytes(
        hashlib.sha256(f"{spec.seed}:{spec.run_id}:{unit}".encode()).digest()[:16], "little"
    )


_MARGINS: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}
_SOURCES: dict[tuple[str, str, int, str], tuple[Any, int, str]] = {}
_CACHE_RUNS = 4


def _margin(
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


def _binned(run_id: str, branch_id: str, X: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
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


def _sample(seed: int, n: int, rate: float) -> np.ndarray:
    """Poisson sample of customers for one tree or batch (the server never learns it)."""
    if rate >= 1.0:
        return np.ones(n, dtype=bool)
    return np.random.Generator(np.random.PCG64(seed)).random(n) < rate


# ------------------------------------------------------------------ tree steps
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


def _histograms(
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
        margin = _margin(spec.run_id, settings.branch_id, binned, model.trees, n_bins)
        grad, hess = logistic_grad_hess(margin, labels)
        keep = _sample(seed, len(labels), cfg.subsample)
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


def _outside_plan(text: str) -> RefusedError:
    return RefusedError(P.REASON_OUTSIDE_PLAN, text)


def _gate(spec: JobSpec, settings: BranchSettings, data: BranchData) -> PrivacyGate | None:
    if not spec.privacy.dp:
        return None
    return PrivacyGate(
        settings, spec, n_customers=data.n_customers, split_id=data.split_id, model="gbdt"
    )


def _spend(spec: JobSpec, gate: PrivacyGate) -> SpendPlan | None:
    """The branch's plan under ``privacy.target=remaining`` (``None``: the job's target)."""
    if spec.privacy.noise_multiplier is not None or spec.privacy.target == "job":
        return None
    from fedcrm.client.lstm_round import planned_evaluation

    return gate.spend_plan(planned_evaluation(spec, gate.delta))


def _payload(values: np.ndarray, encrypt: Encrypt | None) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64).ravel()
    return encrypt(values) if encrypt is not None else {"values": values}


def protocol_step(
    spec: JobSpec,
    settings: BranchSettings,
    data: BranchData,
    model: TreeModel,
    aggregate: np.ndarray | None,
    *,
    request: str,
    encrypt: Encrypt | None = None,
) -> StepOutcome:
    """Apply the previous aggregate, then release what the next step needs.

    Under DP each tree (exact mode; its levels are its releases) or batch is a
    billed step of the branch's :class:`PrivacyGate`: in the job's plan, reserved
    within the ceiling, released once with branch-born noise.
    """
    cfg = gbdt_config(spec)
    if aggregate is not None:
        model = apply_aggregate(spec, model, aggregate)
    if model.edges is None:
        raise FedCRMError("no bin edges yet: the fine-histogram aggregate must come first")
    if len(model.trees) >= cfg.n_estimators:
        return StepOutcome(model, step={"stage": "done"})
    n_bins = n_bins_of(model.edges)
    binned = _binned(spec.run_id, settings.branch_id, data.train.tabular, model.edges)
    labels = np.asarray(data.train.labels, dtype=np.float64)
    t = len(model.trees)
    if cfg.mode == "batched":
        batch, k = batch_plan(cfg, t)
        info = {"stage": "batch", "batch": batch, "trees": k, "tree": t}
        unit = f"batch-{batch}"
        step = Step(unit, batch + 1, "train")
    else:
        if model.level >= cfg.max_depth:
            raise _outside_plan(f"level {model.level} is beyond max_depth {cfg.max_depth}")
        info = {"stage": "level", "tree": t, "level": model.level}
        unit = f"tree-{t}"
        step = Step(unit, t + 1, "train", release=f"{unit}.level-{model.level}")
    try:
        gate = _gate(spec, settings, data)
        seed = unit_seed(spec, settings, gate, unit)

        def compute() -> np.ndarray:
            if cfg.mode == "batched":
                return _leaf_sums(spec, settings, binned, labels, model, n_bins, batch, k, seed)
            return _histograms(spec, settings, binned, labels, model, n_bins, seed)

        if gate is None:
            release = compute()
            info["shape"] = [int(x) for x in release.shape]
            return StepOutcome(model, release=_payload(release, encrypt), step=info)
        plan = plan_dp(spec, gate.delta, data.n_tabular, _spend(spec, gate))
        kind = "batch" if cfg.mode == "batched" else "tree"
        mechanism = plan.mechanism(kind, trees=info.get("trees", 0))

        def noisy() -> dict[str, Any]:
            release = compute()
            rng = release_rng(settings.rng_seed, spec.run_id, step.release_name)
            return _payload(release + rng.normal(0.0, plan.std(kind), release.shape), encrypt)

        shape = _release_shape(cfg, model, info)
        info["shape"] = shape
        released = gate.release(step, mechanism, request, noisy)
    except (RefusedError, BudgetExhaustedError) as exc:
        return StepOutcome(model, step=info, refusal=refusal_of(exc))
    return StepOutcome(
        model, release=dict(released.payload), step=info, ledger_entries=released.entries
    )


def _release_shape(cfg: GBDTModelConfig, model: TreeModel, info: dict[str, Any]) -> list[int]:
    """The shape of the next release, from the model alone (the same at every branch)."""
    if cfg.mode == "batched":
        assert model.edges is not None
        nodes = 2 ** (cfg.max_depth + 1) - 1
        return [int(info["trees"]), nodes, 2]
    return [int(x) for x in histogram_shape(model)]


def _leaf_sums(
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
    cfg = gbdt_config(spec)
    assert model.edges is not None
    structures = random_split_candidates(
        model.edges, max_depth=cfg.max_depth, n_trees=k, seed=(spec.seed, batch)
    )
    margin = _margin(spec.run_id, settings.branch_id, binned, model.trees, n_bins)
    grad, hess = logistic_grad_hess(margin, labels)
    keep = _sample(seed, len(labels), cfg.subsample)
    return batched_leaf_sums(binned[keep], grad[keep], hess[keep], structures, missing_bin=n_bins)


def fine_release(
    spec: JobSpec,
    settings: BranchSettings,
    data: BranchData,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    request: str,
    encrypt: Encrypt | None = None,
) -> StepOutcome:
    """This branch's counts on the fine grid over the agreed ranges (noisy under DP)."""
    model = TreeModel(lo=np.asarray(lo, np.float64), hi=np.asarray(hi, np.float64))
    n_fine = n_fine_for(spec)
    info = {"stage": "fine", "shape": [len(lo), n_fine]}

    def counts() -> np.ndarray:
        return fine_histogram(data.train.tabular, lo=lo, hi=hi, n_fine=n_fine).astype(np.float64)

    try:
        gate = _gate(spec, settings, data)
        if gate is None:
            return StepOutcome(model, release=_payload(counts(), encrypt), step=info)
        plan = plan_dp(spec, gate.delta, data.n_tabular, _spend(spec, gate))

        def noisy() -> dict[str, Any]:
            c = counts()
            rng = release_rng(settings.rng_seed, spec.run_id, "bins")
            return _payload(c + rng.normal(0.0, plan.std("edges"), size=c.shape), encrypt)

        released = gate.release(Step("bins", 0, "train"), plan.mechanism("edges"), request, noisy)
    except (RefusedError, BudgetExhaustedError) as exc:
        return StepOutcome(model, step=info, refusal=refusal_of(exc))
    return StepOutcome(
        model, release=dict(released.payload), step=info, ledger_entries=released.entries
    )


def finish_and_evaluate(
    spec: JobSpec,
    settings: BranchSettings,
    data: BranchData,
    model: TreeModel,
    aggregate: np.ndarray | None,
    *,
    request: str,
    feature_names: list[str] | None = None,
) -> StepOutcome:
    """Apply the last aggregate and release the finished model's evaluation statistics.

    Without DP: score groups of at least ``min-cell-count`` customers. Under DP:
    a ``dp-eval`` release through the branch's gate (omitted, with a warning,
    when the gate refuses it).
    """
    if aggregate is not None:
        model = apply_aggregate(spec, model, aggregate)
    gbdt = fitted_model(spec, model, feature_names)
    info = {"stage": "evaluate"}

    def proba() -> np.ndarray:
        return gbdt.predict_proba(data.test.tabular)[:, 1]

    gate = _gate(spec, settings, data)
    if gate is None:
        rel = thresholded_release(
            data.test.labels, proba(), min_count=settings.min_cell_count, validation=data.validation
        )
        return StepOutcome(model, step=info, evaluation=rel.to_record())
    from fedcrm.client.lstm_round import evaluation_noise
    from fedcrm.privacy.accounting import Mechanism

    sigma = evaluation_noise(spec, gate)
    if sigma is None:
        log.warning("evaluation not released: no evaluation budget left")
        return StepOutcome(model, step=info)

    def noisy() -> dict[str, Any]:
        rng = release_rng(settings.rng_seed, spec.run_id, "eval-final")
        return dp_release(
            data.test.labels, proba(), noise_std=sigma, rng=rng, validation=data.validation
        ).to_record()

    try:
        released = gate.release(
            Step("eval-final", cfg_rounds(spec) + 1, "evaluation"),
            Mechanism("dp-eval", sigma, 1.0, 1, sensitivity=1.0),
            request,
            noisy,
        )
    except (RefusedError, BudgetExhaustedError) as exc:
        log.warning("evaluation not released: %s", exc)
        return StepOutcome(model, step=info)
    return StepOutcome(
        model, step=info, evaluation=dict(released.payload), ledger_entries=released.entries
    )


def cfg_rounds(spec: JobSpec) -> int:
    """The trees' billed steps of a run (trees, or batches in batched mode)."""
    cfg = gbdt_config(spec)
    if cfg.mode == "batched":
        return math.ceil(cfg.n_estimators / cfg.trees_per_exchange)
    return cfg.n_estimators


def fitted_model(
    spec: JobSpec, model: TreeModel, feature_names: list[str] | None = None
) -> HistGBDT:
    """The :class:`HistGBDT` of the trees so far."""
    if model.edges is None:
        raise FedCRMError("the model has no bin edges yet")
    params = HistGBDT.from_config(gbdt_config(spec), base_score=BASE_SCORE).get_params()
    return HistGBDT.from_trees(
        model.trees, model.edges, BASE_SCORE, params, feature_names=feature_names
    )


# ----------------------------------------------------------------------- DP
HESSIAN_BOUND = 0.25
EDGE_BUDGET_SHARE = 0.1


@dataclass(frozen=True)
class DPPlan:
    """Noise of every DP release of one run at one branch.

    Releases and their L2 sensitivity (add/remove one customer; logistic
    gradients ``g`` in [-1, 1], hessians ``h`` in (0, 1/4]):

    * fine histogram (bin edges), once: a customer adds 1 to one cell of each
      of the ``F`` features, ``sqrt(F)``;
    * exact mode, one tree level: the customer is in at most one open node and
      adds ``(g, h)`` to one bin of each feature, ``sqrt(F * (1 + 1/16))``. A
      tree's ``L = max_depth`` level releases (leaf values come from the last
      level's sums) are accounted as one Gaussian release of their
      concatenation, sensitivity ``sqrt(L * F * (1 + 1/16))``, with the
      customer sample of that tree (``model.subsample``, Poisson): one ledger
      reservation per tree, one release entry per level. Each level gets noise
      of standard deviation ``z * sqrt(L * F * (1 + 1/16))``;
    * batched mode, one batch of ``k`` random trees: one leaf per tree,
      ``sqrt(k * (1 + 1/16))``; one reservation per batch.

    ``noise_multiplier`` in the ledger is always noise std / L2 sensitivity of
    the entry's release, so the accountant recomputes epsilon from the entry
    alone. With ``privacy.target_epsilon`` the bin edges get
    :data:`EDGE_BUDGET_SHARE` of the budget and the trees the rest, over every
    planned release of the run. The plan depends only on the job and the
    branch's delta: every message of a run derives the same noise.
    """

    z_edges: float
    z_main: float
    delta: float
    n_features: int
    max_depth: int
    trees_per_exchange: int
    sample_rate: float

    def sensitivity(self, kind: str, *, trees: int = 0) -> float:
        """L2 sensitivity of a release of ``kind`` (``edges``, ``tree``, ``level``, ``batch``)."""
        pair = 1.0 + HESSIAN_BOUND**2
        if kind == "edges":
            return math.sqrt(self.n_features)
        if kind == "level":
            return math.sqrt(self.n_features * pair)
        if kind == "tree":
            return math.sqrt(self.max_depth * self.n_features * pair)
        return math.sqrt(max(trees, 1) * pair)

    def std(self, kind: str, *, trees: int = 0) -> float:
        """Noise standard deviation added to every value of one release."""
        if kind == "edges":
            return self.z_edges * self.sensitivity("edges")
        if kind in ("tree", "level"):
            return self.z_main * self.sensitivity("tree")
        return self.z_main * self.sensitivity("batch", trees=self.trees_per_exchange)

    def mechanism(self, kind: str, *, trees: int = 0) -> Any:
        """The ledger's :class:`~fedcrm.privacy.accounting.Mechanism` of one release."""
        from fedcrm.privacy.accounting import Mechanism

        if kind == "edges":
            return Mechanism(
                "gaussian", self.z_edges, 1.0, 1, sensitivity=self.sensitivity("edges")
            )
        sens = self.sensitivity(kind, trees=trees)
        return Mechanism("gaussian", self.std(kind) / sens, self.sample_rate, 1, sensitivity=sens)


def plan_dp(spec: JobSpec, delta: float, n_features: int, spend: SpendPlan | None = None) -> DPPlan:
    """The run's noise at a branch with ``delta``.

    A pure function of the job and ``spend`` (the branch's plan under
    ``privacy.target=remaining``, from its ledger's other runs; ``None``: the
    job's ``target_epsilon`` alone).
    """
    cfg = gbdt_config(spec)
    if spec.privacy.noise_multiplier is not None:
        z_edges = z_main = float(spec.privacy.noise_multiplier)
    else:
        assert spec.privacy.target_epsilon is not None
        acc, units = spec.privacy.accountant, cfg_rounds(spec)
        z_edges, z_main = _calibrate(spec.privacy.target_epsilon, delta, acc, units, cfg.subsample)
        if spend is not None and spend.cap is not None:
            # Never less noise than the job asks for; more where the ceiling needs it.
            capped = _calibrate(
                spend.cap, delta, acc, units, cfg.subsample, spend.prior, spend.spent
            )
            z_edges, z_main = max(z_edges, capped[0]), max(z_main, capped[1])
    return DPPlan(
        z_edges,
        z_main,
        delta,
        n_features,
        cfg.max_depth,
        min(cfg.trees_per_exchange, cfg.n_estimators),
        cfg.subsample,
    )


@functools.lru_cache(maxsize=32)
def _calibrate(
    eps: float,
    delta: float,
    acc: str,
    units: int,
    rate: float,
    prior: tuple[Any, ...] = (),
    spent: float = 0.0,
) -> tuple[float, float]:
    """Edge and tree noise so that ``prior`` + the run compose to ``eps``.

    The edges get :data:`EDGE_BUDGET_SHARE` of the room above ``spent``.
    """
    from fedcrm.privacy.accounting import Mechanism, noise_multiplier_for

    z_edges = noise_multiplier_for(
        target_epsilon=spent + EDGE_BUDGET_SHARE * (eps - spent),
        delta=delta,
        sample_rate=1.0,
        steps=1,
        accountant=acc,  # type: ignore[arg-type]
        name="gaussian",
        prior=prior,
    )
    z_main = noise_multiplier_for(
        target_epsilon=eps,
        delta=delta,
        sample_rate=rate,
        steps=units,
        accountant=acc,  # type: ignore[arg-type]
        name="gaussian",
        prior=[*prior, Mechanism("gaussian", z_edges, 1.0, 1)],
    )
    return z_edges, z_main


__all__ = [
    "DPPlan",
    "StepOutcome",
    "TreeModel",
    "branch_ranges",
    "fine_release",
    "finish_and_evaluate",
    "plan_dp",
    "protocol_step",
    "tree_digest",
]
