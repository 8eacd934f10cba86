"""Resume from the run directory's checkpoint: no round lost or repeated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcrm.config import compose
from fedcrm.simulations.simulate import simulate

pytestmark = pytest.mark.slow

TINY = [
    "data.branches=3",
    "data.customers=120",
    "model.hidden_size=8",
    "model.embedding_dim=4",
    "task.max_events=10",
    "baseline=false",
]


def test_resume_continues_at_the_next_round(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = simulate(compose([*TINY, "federation.rounds=2", f"output_dir={out}"]), out)
    assert first["rounds"] == 2
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["round"] == 2

    second = simulate(
        compose([*TINY, "federation.rounds=3", "resume=true", f"output_dir={out}"]), out
    )
    assert second["rounds"] == 3
    assert second["run_id"] == first["run_id"]
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    trained = [r["trained_round"] for r in rounds if "trained_round" in r]
    assert trained == [1, 2, 3]
    for b in second["per_branch"].values():
        assert b["rounds_trained"] == 3
