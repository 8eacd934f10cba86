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

The model state and how an aggregate advances it are shared with the server
(:mod:`fedcrm.models.gbdt_protocol`). Differential privacy
(``privacy=dp|dp_he``): see :class:`~fedcrm.models.gbdt_noise.DPPlan` for what
is released, its L2 sensitivity and how the noise is calibrated.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcrm import protocol as P
from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.gbdt_local import binned_features, leaf_sums, level_histograms
from fedcrm.client.privacy_gate import PrivacyGate, Step, refusal_of
from fedcrm.config import GBDTModelConfig, JobSpec
from fedcrm.errors import BudgetExhaustedError, FedCRMError, RefusedError
from fedcrm.models.evaluation import dp_release, thresholded_release
from fedcrm.models.gbdt import HistGBDT
from fedcrm.models.gbdt_bins import (
    feature_ranges,
    fine_histogram,
    n_bins_of,
)
from fedcrm.models.gbdt_noise import DPPlan, plan_dp
from fedcrm.models.gbdt_protocol import (
    BASE_SCORE,
    TreeModel,
    apply_aggregate,
    batch_plan,
    cfg_rounds,
    gbdt_config,
    histogram_shape,
    n_fine_for,
    public_bounds,
    tree_digest,
)
from fedcrm.privacy.planning import SpendPlan
from fedcrm.privacy.randomness import release_rng, release_seed

log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    """What a branch answers to one protocol step."""

    model: TreeModel
    release: dict[str, Any] | None = None
    step: dict[str, Any] = field(default_factory=dict)
    ledger_entries: list[dict[str, Any]] = field(default_factory=list)
    refusal: dict[str, Any] | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)


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
    binned = binned_features(spec.run_id, settings.branch_id, data.train.tabular, model.edges)
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
                return leaf_sums(spec, settings, binned, labels, model, n_bins, batch, k, seed)
            return level_histograms(spec, settings, binned, labels, model, n_bins, seed)

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
