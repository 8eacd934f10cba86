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

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.privacy_gate import branch_delta, budget_refusal, delta_refusal, open_ledger
from fedcrm.config import GBDTModelConfig, JobSpec
from fedcrm.errors import BudgetExhaustedError, ConfigError, FedCRMError, PrivacyError
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
from fedcrm.models.metrics import score_summary

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
    release: np.ndarray | None = None
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
def branch_secret(settings: BranchSettings) -> bytes:
    """Seed material the server cannot know (the branch's signing key) for sampling and noise."""
    h = hashlib.sha256(b"fedcrm-gbdt:" + settings.branch_id.encode())
    if settings.signing_key is not None and settings.signing_key.exists():
        h.update(settings.signing_key.read_bytes())
    return h.digest()


def seeded_rng(secret: bytes, *parts: Any) -> np.random.Generator:
    """A generator fixed by ``secret`` and ``parts``: a repeated release repeats its draws."""
    h = hashlib.sha256(secret + repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:16], "little"))


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
    if margin is None or digests[: len(done)] != done:
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
    cached = _BINNED.get((run_id, branch_id))
    if cached is not None and cached[0] == digest:
        return cached[1]
    if len(_BINNED) > _CACHE_RUNS:
        _BINNED.clear()
    binned = apply_bins(X, edges)
    _BINNED[(run_id, branch_id)] = (digest, binned)
    return binned


def _sample(secret: bytes, run_id: str, unit: int, n: int, rate: float) -> np.ndarray:
    """Poisson sample of customers for one tree or batch (the server never learns it)."""
    if rate >= 1.0:
        return np.ones(n, dtype=bool)
    return seeded_rng(secret, run_id, "sample", unit).random(n) < rate


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
) -> np.ndarray:
    """This branch's histograms of the open nodes, exactly as :func:`local_histograms` makes them.

    ``local_histograms`` keeps state within a tree (row positions, the previous
    level, for the sibling subtraction); a new process replays the tree's
    earlier levels from the message so the sums match the reference bit for bit.
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
        keep = _sample(branch_secret(settings), spec.run_id, t, len(labels), cfg.subsample)
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


def protocol_step(
    spec: JobSpec,
    settings: BranchSettings,
    data: BranchData,
    model: TreeModel,
    aggregate: np.ndarray | None,
    state: dict[str, Any],
) -> StepOutcome:
    """Apply the previous aggregate, then release what the next step needs.

    ``state`` is the branch's per-run memory (Flower's ``context.state``), used
    only to avoid re-deriving the DP noise multiplier.
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
    if cfg.mode == "batched":
        batch, k = batch_plan(cfg, len(model.trees))
        step = {"stage": "batch", "batch": batch, "trees": k, "tree": len(model.trees)}
        release = _leaf_sums(spec, settings, binned, labels, model, n_bins, batch, k)
        unit, round_num = batch, batch + 1
    else:
        step = {"stage": "level", "tree": len(model.trees), "level": model.level}
        release = _histograms(spec, settings, binned, labels, model, n_bins)
        unit, round_num = len(model.trees), len(model.trees) + 1
    step["shape"] = [int(s) for s in release.shape]
    outcome = StepOutcome(model, step=step)
    if spec.privacy.dp:
        try:
            plan = plan_dp(spec, settings, data, state)
        except PrivacyError as exc:
            return StepOutcome(model, step=step, refusal=delta_refusal(exc))
        kind = "batch" if cfg.mode == "batched" else "tree"
        mechanism = plan.mechanism(kind, trees=step.get("trees", 0))
        gate = dp_gate(
            spec,
            settings,
            plan,
            mechanism,
            round_num=round_num,
            extra={"release": kind, "unit": unit},
        )
        if gate.refusal is not None:
            return StepOutcome(model, step=step, refusal=gate.refusal)
        outcome.ledger_entries = gate.entries
        rng = seeded_rng(branch_secret(settings), spec.run_id, "noise", round_num, model.level)
        release = release + rng.normal(0.0, plan.std(kind), size=release.shape)
    outcome.release = release
    return outcome


def _leaf_sums(
    spec: JobSpec,
    settings: BranchSettings,
    binned: np.ndarray,
    labels: np.ndarray,
    model: TreeModel,
    n_bins: int,
    batch: int,
    k: int,
) -> np.ndarray:
    cfg = gbdt_config(spec)
    assert model.edges is not None
    structures = random_split_candidates(
        model.edges, max_depth=cfg.max_depth, n_trees=k, seed=(spec.seed, batch)
    )
    margin = _margin(spec.run_id, settings.branch_id, binned, model.trees, n_bins)
    grad, hess = logistic_grad_hess(margin, labels)
    keep = _sample(branch_secret(settings), spec.run_id, batch, len(labels), cfg.subsample)
    return batched_leaf_sums(binned[keep], grad[keep], hess[keep], structures, missing_bin=n_bins)


def fine_release(
    spec: JobSpec,
    settings: BranchSettings,
    data: BranchData,
    lo: np.ndarray,
    hi: np.ndarray,
    state: dict[str, Any],
) -> StepOutcome:
    """This branch's counts on the fine grid over the agreed ranges (noisy under DP)."""
    counts = fine_histogram(data.train.tabular, lo=lo, hi=hi, n_fine=n_fine_for(spec)).astype(
        np.float64
    )
    model = TreeModel(lo=np.asarray(lo, np.float64), hi=np.asarray(hi, np.float64))
    outcome = StepOutcome(model, step={"stage": "fine", "shape": [int(s) for s in counts.shape]})
    if spec.privacy.dp:
        try:
            plan = plan_dp(spec, settings, data, state)
        except PrivacyError as exc:
            return StepOutcome(model, step=outcome.step, refusal=delta_refusal(exc))
        gate = dp_gate(
            spec,
            settings,
            plan,
            plan.mechanism("edges"),
            round_num=0,
            extra={"release": "bin-edges"},
        )
        if gate.refusal is not None:
            return StepOutcome(model, step=outcome.step, refusal=gate.refusal)
        outcome.ledger_entries = gate.entries
        rng = seeded_rng(branch_secret(settings), spec.run_id, "noise", 0, -1)
        counts = counts + rng.normal(0.0, plan.std("edges"), size=counts.shape)
    outcome.release = counts
    return outcome


def finish_and_evaluate(
    spec: JobSpec,
    data: BranchData,
    model: TreeModel,
    aggregate: np.ndarray | None,
    feature_names: list[str] | None = None,
) -> StepOutcome:
    """Apply the last aggregate and score the finished model on the branch's test customers."""
    if aggregate is not None:
        model = apply_aggregate(spec, model, aggregate)
    gbdt = fitted_model(spec, model, feature_names)
    proba = gbdt.predict_proba(data.test.tabular)[:, 1]
    return StepOutcome(
        model, step={"stage": "evaluate"}, evaluation=score_summary(data.test.labels, proba)
    )


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
_PLANS: dict[tuple[str, str], DPPlan] = {}


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
      entry per tree, ``steps=1``. Each level gets noise of standard deviation
      ``z * sqrt(L * F * (1 + 1/16))``;
    * batched mode, one batch of ``k`` random trees: one leaf per tree,
      ``sqrt(k * (1 + 1/16))``; one ledger entry per batch.

    ``noise_multiplier`` in the ledger is always noise std / L2 sensitivity of
    the entry's release, so the accountant recomputes epsilon from the entry
    alone. With ``privacy.target_epsilon`` the bin edges get
    :data:`EDGE_BUDGET_SHARE` of the budget and the trees the rest, over every
    planned release of the run.
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


def plan_dp(
    spec: JobSpec, settings: BranchSettings, data: BranchData, state: dict[str, Any]
) -> DPPlan:
    """The run's noise at this branch (derived once; ``state`` keeps it across messages).

    Raises
    ------
    PrivacyError
        The branch's delta is not below 1 / its number of customers.
    """
    from fedcrm.privacy.accounting import Mechanism, noise_multiplier_for

    cfg = gbdt_config(spec)
    n_train = len(data.train)
    delta = branch_delta(spec, settings, n_train)
    key = (spec.run_id, settings.branch_id)
    stored = f"gbdt_noise:{spec.run_id}"
    if key in _PLANS and _PLANS[key].delta == delta:
        return _PLANS[key]
    if stored in state:
        z_edges, z_main = (float(x) for x in str(state[stored]).split(","))
    elif spec.privacy.noise_multiplier is not None:
        z_edges = z_main = float(spec.privacy.noise_multiplier)
    else:
        assert spec.privacy.target_epsilon is not None
        eps, acc = spec.privacy.target_epsilon, spec.privacy.accountant
        z_edges = noise_multiplier_for(
            target_epsilon=EDGE_BUDGET_SHARE * eps,
            delta=delta,
            sample_rate=1.0,
            steps=1,
            accountant=acc,
            name="gaussian",
        )
        units = (
            math.ceil(cfg.n_estimators / cfg.trees_per_exchange)
            if cfg.mode == "batched"
            else cfg.n_estimators
        )
        z_main = noise_multiplier_for(
            target_epsilon=eps,
            delta=delta,
            sample_rate=cfg.subsample,
            steps=units,
            accountant=acc,
            name="gaussian",
            prior=[Mechanism("gaussian", z_edges, 1.0, 1)],
        )
    state[stored] = f"{z_edges!r},{z_main!r}"
    plan = DPPlan(
        z_edges,
        z_main,
        delta,
        data.n_tabular,
        cfg.max_depth,
        min(cfg.trees_per_exchange, cfg.n_estimators),
        cfg.subsample,
    )
    _PLANS[key] = plan
    return plan


@dataclass
class _Gate:
    entries: list[dict[str, Any]]
    refusal: dict[str, Any] | None


def dp_gate(
    spec: JobSpec,
    settings: BranchSettings,
    plan: DPPlan,
    mechanism: Any,
    *,
    round_num: int,
    extra: dict[str, Any],
) -> _Gate:
    """Check the ceiling, then record the release in the signed ledger (before it leaves).

    A release already in the ledger (same run and round: a retried message)
    is not paid twice; its noise is seeded by the branch's secret, so the
    repeated release is the same numbers and tells nothing new.
    """
    from fedcrm.privacy.budget import BranchBudget

    ledger = open_ledger(settings)
    done = [
        e
        for e in ledger.entries()
        if e.get("run_id") == spec.run_id
        and e.get("model") == "gbdt"
        and e.get("round") == round_num
    ]
    if done:
        return _Gate([], None)
    budget = BranchBudget(
        ledger,
        ceiling=settings.epsilon_ceiling,
        delta=plan.delta,
        accountant=spec.privacy.accountant,
    )
    try:
        budget.check(mechanism)
    except BudgetExhaustedError as exc:
        log.warning("gbdt release refused: %s", exc)
        return _Gate([], budget_refusal(exc))
    entry = ledger.append(
        run_id=spec.run_id,
        round=round_num,
        model="gbdt",
        mechanism=mechanism,
        delta=plan.delta,
        accountant=spec.privacy.accountant,
        extra=extra,
    )
    return _Gate([entry], None)


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
