"""The noise of a tree job's DP releases at one branch (see :class:`DPPlan`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from fedcrm.config import JobSpec
from fedcrm.models.gbdt_protocol import cfg_rounds, gbdt_config
from fedcrm.privacy.planning import SpendPlan

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


__all__ = ["EDGE_BUDGET_SHARE", "HESSIAN_BOUND", "DPPlan", "plan_dp"]
