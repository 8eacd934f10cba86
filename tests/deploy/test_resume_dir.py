"""The deployment ServerApp's run directory, and which one ``resume=true`` continues."""

from __future__ import annotations

import os
from pathlib import Path

from fedcrm.server.app import resolve_run_dir


def _checkpoint(run_dir: Path, mtime: float) -> None:
    state = run_dir / "checkpoint" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{}")
    os.utime(state, (mtime, mtime))


def test_each_run_gets_its_own_directory(tmp_path: Path) -> None:
    assert resolve_run_dir(str(tmp_path), "7") == str(tmp_path / "run-7")
    assert resolve_run_dir(str(tmp_path / "x-{run_id}"), "7") == str(tmp_path / "x-7")


def test_resume_continues_the_latest_checkpointed_run_under_output_dir(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "run-1", 1_000)
    _checkpoint(tmp_path / "run-2", 2_000)
    assert resolve_run_dir(str(tmp_path), "9", resume=True) == str(tmp_path / "run-2")


def test_resume_accepts_the_run_directory_itself(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "run-1", 1_000)
    assert resolve_run_dir(str(tmp_path / "run-1"), "9", resume=True) == str(tmp_path / "run-1")


def test_resume_without_checkpoint_starts_a_new_directory(tmp_path: Path) -> None:
    assert resolve_run_dir(str(tmp_path), "9", resume=True) == str(tmp_path / "run-9")
