"""Plots of a run (matplotlib, headless). Inputs are metrics only, never customer data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_BASELINE_STYLE = {"centralized": ("tab:green", "--"), "local_only": ("tab:red", ":")}


def plot_rounds(
    rounds: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Path]:
    """AUC and loss of the federated model per round, with baselines as lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, label, name in (
        ("auc", "ROC AUC (pooled test customers)", "auc_per_round.png"),
        ("logloss", "log loss (pooled test customers)", "loss_per_round.png"),
    ):
        xs = [r["round"] for r in rounds if r.get(metric) is not None]
        ys = [r[metric] for r in rounds if r.get(metric) is not None]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, ys, marker="o", label="federated")
        if metric == "logloss":
            tx = [r["round"] for r in rounds if r.get("train_loss") is not None]
            ty = [r["train_loss"] for r in rounds if r.get("train_loss") is not None]
            if tx:
                ax.plot(tx, ty, marker=".", alpha=0.6, label="federated (train, mean)")
        for base, values in (baselines or {}).items():
            if values.get(metric) is not None:
                color, style = _BASELINE_STYLE.get(base, ("gray", "-."))
                ax.axhline(values[metric], color=color, ls=style, label=base.replace("_", "-"))
        ax.set_xlabel("round (0 = initial model)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


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
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_privacy_utility(
    points: Sequence[tuple[float, float]],
    out_path: Path,
    *,
    non_private_auc: float | None = None,
    title: str = "",
) -> Path:
    """AUC against per-branch epsilon, with the non-private AUC as a line."""
    pts = sorted(points)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="DP (per-branch ε)")
    if non_private_auc is not None:
        ax.axhline(non_private_auc, color="tab:green", ls="--", label="non-private")
    ax.set_xscale("log")
    ax.set_xlabel("ε spent per branch (δ fixed)")
    ax.set_ylabel("ROC AUC (pooled test customers)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
