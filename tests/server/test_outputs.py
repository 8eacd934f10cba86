"""The run directory's summary and model card agree on what ran and how it ended."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedcrm.config import RunConfig, TaskConfig
from fedcrm.server.outputs import write_outputs


def _result(weights: Any, stopped_reason: str | None = None) -> dict[str, Any]:
    return {
        "model": "lstm",
        "run_id": "r1",
        "rounds": 1 if stopped_reason else 2,
        "rounds_planned": 2,
        "final": {"auc": 0.8},
        "per_branch": {"b1": {"auc": 0.8, "excluded_customers": 3}},
        "privacy": {"mode": "none", "stopped_reason": stopped_reason},
        "stopped_reason": stopped_reason,
        "weights": weights,
    }


def test_the_card_carries_the_cutoff_resolved_from_the_data(scoring_world, tmp_path: Path) -> None:
    cfg = RunConfig(model=scoring_world.lstm_cfg, task=TaskConfig(cutoff=None, max_events=20))
    summary = write_outputs(
        tmp_path,
        cfg,
        _result(list(scoring_world.lstm_weights)),
        extra={"cutoff": "2024-09-30", "data": "synthetic"},
    )
    card = json.loads((tmp_path / "model_card.json").read_text())
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert card["task"]["cutoff"] == on_disk["cutoff"] == summary["cutoff"] == "2024-09-30"
    assert on_disk["status"] == "completed" and on_disk["stopped_reason"] is None


def test_a_deployed_run_stopped_early_says_so_with_the_jobs_cutoff(tmp_path: Path) -> None:
    cfg = RunConfig(task=TaskConfig(cutoff="2024-10-02"))
    reason = "round 2: only 1 branch update(s) could be aggregated (1 refused: budget-exhausted)"
    write_outputs(tmp_path, cfg, _result(None, reason))  # no `extra`, as the ServerApp calls it
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped_early"
    assert summary["stopped_reason"] == reason
    assert summary["cutoff"] == "2024-10-02"
