"""Run directory: checkpoints, resume truncation, ledger copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcrm.server.run_dir import RunDir, TreeState, load_records, save_records


def test_checkpoint_round_trip_plaintext(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)]
    rd.save_checkpoint({"round": 3, "run_id": "r1", "branches": {}}, weights)
    rd.save_checkpoint({"round": 4, "run_id": "r1", "branches": {}}, weights)  # replaces
    state, loaded = rd.load_checkpoint()  # type: ignore[misc]
    assert state["round"] == 4 and state["global"] == "plaintext"
    for a, b in zip(weights, loaded, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "checkpoint.tmp").exists()


@pytest.mark.parametrize("pending", [None, np.linspace(-1, 1, 12)])
def test_checkpoint_round_trip_trees(tmp_path: Path, pending: np.ndarray | None) -> None:
    rd = RunDir(tmp_path)
    arrays = {"edges": np.arange(5.0), "tree_sizes": np.array([3, 3]), "level": np.array([1])}
    step = {"stage": "level", "tree": 2, "level": 1, "shape": [3, 4]}
    rd.save_checkpoint(
        {"round": 2, "run_id": "r1", "branches": {}}, TreeState(arrays, pending, step)
    )
    state, loaded = rd.load_checkpoint()  # type: ignore[misc]
    assert state["global"] == "trees" and isinstance(loaded, TreeState)
    assert loaded.step == step and sorted(loaded.arrays) == sorted(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded.arrays[k], v)
    if pending is None:
        assert loaded.pending is None
    else:
        np.testing.assert_array_equal(loaded.pending, pending)


def test_no_checkpoint(tmp_path: Path) -> None:
    assert RunDir(tmp_path).load_checkpoint() is None


def test_records_round_trip_without_pickle(tmp_path: Path) -> None:
    rec = {"a": b"\x00\x01", "chunks": [b"x", b"yz"], "n": 5, "ctx": "abc"}
    save_records(tmp_path / "r", rec)
    assert load_records(tmp_path / "r") == rec


def test_truncate_rounds_drops_rounds_after_the_checkpoint(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    for r in (1, 2, 3):
        rd.append_round({"round": r - 1, "trained_round": r})
    rd.append_round({"round": 3})  # a final evaluation
    rd.truncate_rounds(2)
    assert [r["trained_round"] for r in rd.rounds()] == [1, 2]
