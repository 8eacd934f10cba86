"""AUC and loss of the federated model over a run, with the baselines as lines.

The x axis counts what the job does: rounds for the LSTM (round 0 is the
initial model) and trees for gradient-boosted trees (``rounds.jsonl`` records
of a tree job carry ``round`` = trees done). A tree job is evaluated once,
after its last tree, so its curves hold one point, drawn on an axis from 0
to the trees planned and said so on the plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from fedcrm.plots._figure import plt, save

BASELINE_STYLE = {"centralized": ("tab:green", "--"), "local_only": ("tab:red", ":")}
AXIS_LABEL = {"round": "round (0 = initial model)", "tree": "trees in the model"}
METRICS = (
    ("auc", "ROC AUC (pooled test customers)", "auc_per_round.png"),
    ("logloss", "log loss (pooled test customers)", "loss_per_round.png"),
)
"""``(metric, y label, file name)`` of each plot; the names are the same for trees."""


def _points(rounds: Sequence[Mapping[str, Any]], key: str) -> tuple[list[Any], list[Any]]:
    kept = [r for r in rounds if r.get(key) is not None]
    return [r["round"] for r in kept], [r[key] for r in kept]


def rounds_figure(
    rounds: Sequence[Mapping[str, Any]],
    metric: str,
    label: str,
    *,
    unit: str = "round",
    planned: int | None = None,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """One metric of the federated model against rounds (or trees), as a matplotlib figure.

    Parameters
    ----------
    rounds
        ``rounds.jsonl`` records (``round`` and the metric).
    metric, label
        The record key plotted and its axis label.
    unit
        ``"round"`` (LSTM) or ``"tree"`` (trees: ``round`` counts trees).
    planned
        Rounds (trees) the job planned: the axis reaches at least that far.
    baselines
        Per baseline the same metric, drawn as a horizontal line.
    """
    if unit not in AXIS_LABEL:
        raise ValueError(f"unit must be one of {sorted(AXIS_LABEL)}, got {unit!r}")
    xs, ys = _points(rounds, metric)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o", label="federated")
    if metric == "logloss":
        tx, ty = _points(rounds, "train_loss")
        if tx:
            ax.plot(tx, ty, marker=".", alpha=0.6, label="federated (train, mean)")
    for base, values in (baselines or {}).items():
        if values.get(metric) is not None:
            color, style = BASELINE_STYLE.get(base, ("gray", "-."))
            ax.axhline(values[metric], color=color, ls=style, label=base.replace("_", "-"))
    # Whole rounds (trees) from 0: a lone point must not sit on an axis of 48-52.
    right = max([*xs, planned or 0, 1])
    ax.set_xlim(-0.03 * right, right * 1.03)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(AXIS_LABEL[unit])
    ax.set_ylabel(label)
    if unit == "tree" and len(xs) == 1:
        ax.set_title(f"evaluated once, after the last tree ({xs[0]})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_rounds(
    rounds: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    unit: str = "round",
    planned: int | None = None,
) -> list[Path]:
    """Write ``auc_per_round.png`` and ``loss_per_round.png`` (see :func:`rounds_figure`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        save(
            rounds_figure(rounds, metric, label, unit=unit, planned=planned, baselines=baselines),
            out_dir / name,
        )
        for metric, label, name in METRICS
    ]


__all__ = ["AXIS_LABEL", "plot_rounds", "rounds_figure"]
