"""Aggregation and reply checks as plain functions (tested with hand-built arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcrm.errors import UpdateRejectedError


def check_update(branch_id: str, update: Sequence[np.ndarray], like: Sequence[np.ndarray]) -> None:
    """Reject an update of the wrong structure, shape or with non-finite values.

    Raises
    ------
    UpdateRejectedError
        Naming the branch and what is wrong.
    """
    if len(update) != len(like):
        raise UpdateRejectedError(
            branch_id, f"{len(update)} weight arrays, the model has {len(like)}"
        )
    for i, (u, w) in enumerate(zip(update, like, strict=True)):
        if u.shape != w.shape:
            raise UpdateRejectedError(
                branch_id, f"weight array {i} has shape {u.shape}, expected {w.shape}"
            )
        if not np.isfinite(u).all():
            raise UpdateRejectedError(branch_id, f"weight array {i} holds non-finite values")


def weighted_average(
    updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> list[np.ndarray]:
    """FedAvg: the example-weighted mean of the updates."""
    if not updates:
        raise ValueError("no updates to average")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out = [np.zeros_like(np.asarray(a, dtype=np.float64)) for a in updates[0]]
    for update, w in zip(updates, weights, strict=True):
        for acc, a in zip(out, update, strict=True):
            acc += np.asarray(a, dtype=np.float64) * (w / total)
    return [a.astype(np.float32) for a in out]
