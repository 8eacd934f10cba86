"""The simulation console: a tree job says trees from header to status line."""

from __future__ import annotations

import io

from rich.console import Console

from fedcrm.config import compose
from fedcrm.simulations.progress import RoundPrinter


def test_a_tree_run_prints_trees_and_how_it_ended() -> None:
    buffer = io.StringIO()
    printer = RoundPrinter(
        compose(["model=gbdt", "model.n_estimators=3"]),
        Console(file=buffer, width=10_000, color_system=None),
    )
    for n in (1, 2):
        printer.round({"round": n, "trained_round": n, "seconds": 0.5, "branches_sampled": 2,
                       "branches_aggregated": 2})  # fmt: skip
    printer.round({"round": 3, "auc": 0.8, "f1": 0.6, "logloss": 0.5})
    reason = "round 3: only 1 branch release(s) could be aggregated"
    printer.final(
        {"model": "gbdt", "final": {"auc": 0.8}, "rounds": 2, "status": "stopped_early",
         "stopped_reason": reason, "privacy": {}, "timings": {"total_s": 1.0}}
    )  # fmt: skip
    lines = buffer.getvalue().splitlines()
    assert lines[:3] == [
        "trees 1/3    0.5 s  branches 2/2",
        "trees 2/3    0.5 s  branches 2/2",
        "final (after 3 trees): AUC 0.8000  F1 0.6000  log loss 0.5000",
    ]
    assert f"stopped early after 2/3 trees: {reason}" in lines
    assert "round" not in "\n".join(lines[:3])
