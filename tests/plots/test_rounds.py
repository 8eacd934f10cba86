"""Per-round plots: rounds for the LSTM, trees for gradient-boosted trees."""

from __future__ import annotations

from pathlib import Path

from fedcrm.plots._figure import plt
from fedcrm.plots.rounds import plot_rounds, rounds_figure


def test_a_tree_run_is_plotted_against_trees_from_zero() -> None:
    # rounds.jsonl of a 50-tree job: per-tree records without metrics, one evaluation.
    records = [{"round": n, "trained_round": n, "seconds": 0.1} for n in range(1, 50)]
    records.append({"round": 50, "auc": 0.87, "logloss": 0.41})

    fig = rounds_figure(records, "auc", "AUC", unit="tree", planned=50)
    ax = fig.axes[0]
    try:
        assert ax.get_xlabel() == "trees in the model"
        left, right = ax.get_xlim()
        assert left <= 0 and right >= 50  # not an axis of 48-52 around one dot
        assert "after the last tree" in ax.get_title()
        assert list(ax.lines[0].get_xdata()) == [50]
    finally:
        plt.close(fig)


def test_an_lstm_run_is_plotted_against_rounds(tmp_path: Path) -> None:
    records = [
        {"round": 0, "auc": 0.5, "logloss": 0.7, "trained_round": 1, "train_loss": 0.6},
        {"round": 1, "auc": 0.8, "logloss": 0.5},
    ]
    fig = rounds_figure(records, "logloss", "loss", baselines={"centralized": {"logloss": 0.45}})
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel() == "round (0 = initial model)"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["federated", "federated (train, mean)", "centralized"]
        assert all(float(t).is_integer() for t in ax.get_xticks())
    finally:
        plt.close(fig)
    paths = plot_rounds(records, tmp_path, unit="round")
    assert [p.name for p in paths] == ["auc_per_round.png", "loss_per_round.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
