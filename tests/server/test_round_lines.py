"""The lines a job's progress is told in: rounds for the LSTM, trees for trees, one per record."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from fedcrm.config import compose
from fedcrm.server.round_lines import (
    final_line,
    header_line,
    line_of,
    logging_reporter,
    round_line,
    run_status,
    status_line,
)

TREE = {
    "round": 12,
    "trained_round": 12,
    "seconds": 0.4,
    "branches_sampled": 3,
    "branches_aggregated": 3,
    "epsilon": {"b1": 0.31, "b2": 0.2},
    "problems": {},
}
ROUND = {
    "round": 1,
    "trained_round": 2,
    "auc": 0.8679,
    "train_loss": 0.4405,
    "seconds": 2.3,
    "branches_sampled": 5,
    "branches_aggregated": 4,
    "epsilon": {"b1": 1.2},
    "problems": {"b3": "budget-exhausted: ..."},
}


def test_a_tree_job_counts_trees_everywhere() -> None:
    cfg = compose(["model=gbdt", "federation.rounds=5"])
    assert header_line(cfg, 3) == "federation: 3 branches, 50 trees, model=gbdt, privacy=none"
    assert str(round_line(cfg, TREE)) == "trees 12/50    0.4 s  branches 3/3  ε max 0.31"
    final = {"round": 50, "auc": 0.87, "f1": 0.7, "logloss": 0.41}
    assert final_line(cfg, final).startswith("final (after 50 trees): AUC 0.8700")
    summary = {"rounds": 50, "status": run_status(None)}
    assert status_line(cfg, summary) == "completed: 50/50 trees"


def test_an_lstm_job_counts_rounds_and_says_when_it_stopped_early() -> None:
    cfg = compose(["federation.rounds=5"])
    assert header_line(cfg, 5).startswith("federation: 5 branches, 5 rounds, model=lstm")
    line = round_line(cfg, ROUND)
    assert line.text == (
        "round 2/5    2.3 s  train loss 0.4405  AUC(after round 1) 0.8679  branches 4/5  ε max 1.2"
    )
    assert line.problems == "1 branch problem(s)"
    assert line_of(cfg, {"round": 5, "auc": None}).startswith("final (after round 5): AUC -")
    reason = "round 2: only 1 branch update(s) could be aggregated"
    summary = {"rounds": 1, "status": run_status(reason), "stopped_reason": reason}
    assert summary["status"] == "stopped_early"
    assert status_line(cfg, summary) == f"stopped early after 1/5 rounds: {reason}"


def test_the_logging_reporter_logs_one_info_line_per_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = compose(["model=gbdt"])
    report = logging_reporter(cfg)
    with caplog.at_level(logging.INFO, logger="fedcrm"):
        report(dict(TREE))
        report({"round": 50, "auc": 0.87, "f1": 0.7, "logloss": 0.41})
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (logging.INFO, "trees 12/50    0.4 s  branches 3/3  ε max 0.31"),
        (logging.INFO, "final (after 50 trees): AUC 0.8700  F1 0.7000  log loss 0.4100"),
    ]


@pytest.mark.parametrize("root_handlers", ["as imported", "none"])
def test_progress_reaches_stderr_one_line_per_record(root_handlers: str) -> None:
    """What Flower's ServerApp process forwards to ``flwr log``: its stderr.

    Importing the ServerApp gives the root logger a handler of its own format
    (Opacus calls ``basicConfig``); fedcrm's lines keep theirs either way.
    """
    code = (
        "import logging\n"
        "import fedcrm.server.app\n"
        "from fedcrm.server.round_lines import log_progress_to_stderr\n"
        + ("logging.getLogger().handlers.clear()\n" if root_handlers == "none" else "")
        + "logging.getLogger('fedcrm.server.x').info('before')\n"
        "log_progress_to_stderr()\n"
        "log_progress_to_stderr()\n"  # twice: still one line per record
        "logging.getLogger('fedcrm.server.x').info('round 1/2 %s', 'x' * 300)\n"
        "logging.getLogger('fedcrm.server.x').warning('node 7 left out')\n"
    )
    err = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stderr
    lines = [line for line in err.splitlines() if "fedcrm" in line or "before" in line]
    assert lines == ["INFO fedcrm: round 1/2 " + "x" * 300, "WARNING fedcrm: node 7 left out"]


def test_a_dp_round_shows_the_dp_test_loss_or_says_the_loss_is_withheld() -> None:
    cfg = compose(["federation.rounds=5", "privacy=dp"])
    dp_round = {**ROUND, "train_loss": None, "logloss": 0.4512}
    assert "test loss(DP) 0.4512" in round_line(cfg, dp_round).text
    no_eval = {**dp_round, "logloss": None, "auc": None}
    assert "loss withheld(DP)" in round_line(cfg, no_eval).text
    assert "train loss -" in round_line(compose([]), {**ROUND, "train_loss": None}).text


def test_the_final_line_names_the_f1_threshold_chosen_on_validation_customers() -> None:
    cfg = compose([])
    rec = {"round": 5, "auc": 0.85, "f1": 0.61, "logloss": 0.4}
    assert "threshold" not in final_line(cfg, rec)
    chosen = {**rec, "f1_threshold": 0.2689, "f1_threshold_from": "validation"}
    assert "F1 0.6100 (threshold 0.269, chosen on validation customers)" in final_line(cfg, chosen)
