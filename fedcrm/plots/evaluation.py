"""Plots of a model's evaluation: reliability, cumulative gains and lift, feature importance.

Pure plotting functions (matplotlib, headless). Their inputs are pooled
metrics, evaluation releases (score groups, never a customer's score) or
importances: nothing that identifies a customer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.models.calibration import gains_curve
from fedcrm.models.evaluation import EvaluationRelease
from fedcrm.plots._figure import plt
from fedcrm.plots._figure import save as _save


def plot_reliability(
    pooled: Mapping[str, Any],
    out_path: Path,
    *,
    calibrated: Mapping[str, Any] | None = None,
) -> Path:
    """Reliability diagram: observed churn rate against mean predicted probability per bin.

    Parameters
    ----------
    pooled
        :func:`fedcrm.models.evaluation.pooled_metrics` output (``reliability``,
        ``ece``, ``brier``).
    calibrated
        The same for the calibrated probabilities, drawn alongside.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="perfectly calibrated")
    series = [("model", pooled, "tab:blue")]
    if calibrated is not None:
        series.append(("calibrated", calibrated, "tab:orange"))
    for label, metrics, color in series:
        table = metrics.get("reliability") or []
        if not table:
            continue
        x = [row["predicted"] for row in table]
        y = [row["observed"] for row in table]
        size = np.asarray([row["customers"] for row in table], dtype=float)
        size = 20 + 180 * size / max(size.max(), 1.0)
        ece, brier = metrics.get("ece"), metrics.get("brier")
        text = f"{label}: ECE {ece:.3f}" if ece is not None else label
        if brier is not None:
            text += f", Brier {brier:.3f}"
        ax.plot(x, y, color=color, marker=None, lw=1.2)
        ax.scatter(x, y, s=size, color=color, alpha=0.7, label=text)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted churn probability (bin)")
    ax.set_ylabel("observed churn rate")
    ax.set_title("Reliability (pooled test customers; dot size = customers)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, out_path)


def plot_gains(releases: Sequence[EvaluationRelease], out_path: Path) -> Path:
    """Cumulative gains and lift over the share of customers contacted, highest scores first."""
    curve = gains_curve(releases)
    sc, sp, lift = curve["share_customers"], curve["share_positives"], curve["lift"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot(sc, sp, color="tab:blue", label="model")
    left.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="random")
    left.set_xlabel("share of customers (highest risk first)")
    left.set_ylabel("share of churners reached")
    left.set_title("Cumulative gains")
    left.grid(alpha=0.3)
    left.legend()
    keep = sc > 0.01
    right.plot(sc[keep], lift[keep], color="tab:blue")
    right.axhline(1.0, color="gray", ls="--", lw=1)
    right.set_xlabel("share of customers (highest risk first)")
    right.set_ylabel("lift (churn rate / base rate)")
    right.set_title("Lift")
    right.grid(alpha=0.3)
    return _save(fig, out_path)


def plot_importance(
    importance: Mapping[str, float], out_path: Path, *, title: str, top: int = 20
) -> Path:
    """Horizontal bars of the ``top`` largest importances."""
    items = sorted(importance.items(), key=lambda kv: -abs(kv[1]))[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(items), 4) + 1.2))
    if items:
        ax.barh([k for k, _ in items], [abs(v) for _, v in items], color="tab:blue")
    ax.set_xlabel("importance")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, out_path)


__all__ = ["plot_gains", "plot_importance", "plot_reliability"]
