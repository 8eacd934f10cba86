"""The result every federated job returns: metrics, per-branch state, privacy, transport."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcrm.models.pooled import pooled_metrics

METRIC_KEYS = (
    "auc",
    "f1",
    "f1_threshold",
    "f1_threshold_from",
    "f1_at_default",
    "logloss",
    "accuracy",
    "brier",
    "ece",
    "top_decile_lift",
    "capture_top_10pct",
)
"""Pooled metrics of every evaluation record (``summary.json`` ``final.*``)."""


def job_result(
    job: Any, final: dict[str, Any], model: list[np.ndarray] | None, rounds_done: int
) -> dict[str, Any]:
    """The federated result of ``job`` (a :class:`~fedcrm.server.job.FederatedJob`).

    ``final`` is the pooled final evaluation, ``model`` the released LSTM
    weights (a tree job puts its artefact under ``weights`` itself).
    """
    per_branch = {}
    for b in sorted(job.branches.values(), key=lambda s: s.branch_id):
        m = pooled_metrics([b.eval_summary]) if b.eval_summary is not None else {}
        per_branch[b.branch_id] = {
            **{k: m.get(k) for k in ("auc", "f1", "logloss", "accuracy")},
            "customers": b.train_customers + b.test_customers,
            "train_customers": b.train_customers,
            "test_customers": b.test_customers,
            "excluded_customers": b.excluded_customers,
            "rounds_trained": b.rounds_trained,
            "failed_rounds": b.failed_rounds,
            "skipped_rounds": b.skipped_rounds,
            "last_problem": b.last_problem,
        }
    privacy: dict[str, Any] = {
        "mode": job.cfg.privacy.mode,
        "stopped_reason": job.stopped_reason,
    }
    if job.cfg.privacy.dp:
        privacy.update(
            accountant=job.cfg.privacy.accountant,
            target_epsilon=job.cfg.privacy.target_epsilon,
            target=job.cfg.privacy.target,
            noise_multiplier=job.cfg.privacy.noise_multiplier,
            max_grad_norm=job.cfg.privacy.max_grad_norm,
            engine=job.cfg.privacy.engine,
            per_branch={
                b.branch_id: {
                    "epsilon": b.epsilon,
                    "delta": b.delta,
                    # As reported by the branch; the server cannot set or raise it.
                    "ceiling": b.extra.get("ceiling"),
                    "rounds_trained": b.rounds_trained,
                    "refused_rounds": b.refused_rounds,
                }
                for b in job.branches.values()
            },
        )
    return {
        "model": job.cfg.model.name,
        "rounds": rounds_done,
        "rounds_planned": job.cfg.federation.rounds,
        "final": {k: final.get(k) for k in METRIC_KEYS},
        "evaluation_releases": list(job.last_releases),
        "evaluation": {
            "mechanism": final.get("evaluation"),
            "customers": final.get("evaluated_customers"),
            "reliability": job.last_reliability,
        },
        "per_branch": per_branch,
        "privacy": privacy,
        "stopped_reason": job.stopped_reason,
        "bytes_uploaded": job.bytes_up,
        "encrypted": job.cfg.privacy.he,
        "timings": job.timings,
        "weights": model,
    }


__all__ = ["METRIC_KEYS", "job_result"]
