"""Per-branch test AUC of the federated model, beside each branch's own model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcrm.plots._figure import plt, save


def plot_per_branch(
    per_branch: Mapping[str, Mapping[str, Any]],
    out_path: Path,
    *,
    local_only: Mapping[str, float] | None = None,
) -> Path:
    """Per-branch test AUC of the federated model (and of each branch alone)."""
    branches = sorted(per_branch)
    fed = [per_branch[b].get("auc") or 0.0 for b in branches]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(branches) + 2), 4))
    x = range(len(branches))
    width = 0.4 if local_only else 0.8
    ax.bar([i - (width / 2 if local_only else 0) for i in x], fed, width, label="federated")
    if local_only:
        loc = [local_only.get(b) or 0.0 for b in branches]
        ax.bar([i + width / 2 for i in x], loc, width, label="local-only")
    ax.set_xticks(list(x))
    rotated = len(branches) > 8
    ax.set_xticklabels(branches, rotation=45 if rotated else 0, ha="right" if rotated else "center")
    ax.set_ylabel("ROC AUC (branch's test customers)")
    ax.set_ylim(0.4, 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return save(fig, out_path)


__all__ = ["plot_per_branch"]
