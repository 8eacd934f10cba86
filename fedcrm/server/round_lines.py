"""One line per round (per tree) and for the end of a job, the same on every screen.

``fedcrm simulate`` prints these lines (:mod:`fedcrm.simulations.progress`);
the deployed ServerApp logs them at INFO through :func:`logging_reporter`, so
``flwr log RUN fedcrm --show`` shows a job as the console shows a simulation.
An LSTM job counts rounds, a tree job counts trees (its ``rounds.jsonl``
records carry ``round`` = trees done), in every line and on the plots::

    round 2/5    2.3 s  train loss 0.4405  AUC(after round 1) 0.8679  branches 5/5
    round 2/5    2.9 s  test loss(DP) 0.4512  AUC(after round 1) 0.8611  branches 5/5  ε max 1.2
    trees 12/50    0.4 s  branches 3/3  ε max 0.31
    final (after round 5): AUC 0.8746  F1 0.7243 (threshold 0.378, chosen on validation
    customers)  log loss 0.4079
    final (after 50 trees): AUC 0.8713  F1 0.7101  log loss 0.4120
    completed: 5/5 rounds
    stopped early after 1/5 rounds: round 2: only 1 branch update(s) could be aggregated ...

Lines hold metrics, counts and branch ids only, never a customer's data.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedcrm.config import RunConfig
from fedcrm.server.branch_state import Reporter

STATUS_COMPLETED = "completed"
STATUS_STOPPED_EARLY = "stopped_early"


def unit(cfg: RunConfig) -> str:
    """What a job counts: ``"tree"`` for gradient-boosted trees, else ``"round"``."""
    return "tree" if cfg.model.name == "gbdt" else "round"


def planned(cfg: RunConfig) -> int:
    """Rounds (trees) the job plans."""
    n_estimators = getattr(cfg.model, "n_estimators", None)
    return int(n_estimators) if unit(cfg) == "tree" else cfg.federation.rounds


def count(cfg: RunConfig, n: int | None = None) -> str:
    """``"5 rounds"``, ``"50 trees"``: ``n`` (default: the planned number) and the unit."""
    n = planned(cfg) if n is None else n
    return f"{n} {unit(cfg)}{'' if n == 1 else 's'}"


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


@dataclass(frozen=True)
class RoundLine:
    """A round's line; ``problems`` is said apart so a console can colour it."""

    text: str
    problems: str = ""

    def __str__(self) -> str:
        return f"{self.text}  {self.problems}" if self.problems else self.text


def header_line(cfg: RunConfig, branches: int) -> str:
    """``federation: 5 branches, 50 trees, model=gbdt, privacy=dp``."""
    return (
        f"federation: {branches} branches, {count(cfg)}, model={cfg.model.name}, "
        f"privacy={cfg.privacy.mode}"
    )


def loss_text(cfg: RunConfig, rec: Mapping[str, Any]) -> str:
    """The round's loss: the training loss, or under DP the test log loss of the DP release.

    A DP branch never sends its training loss (it would be a release outside
    the ledger); the evaluation release of the previous model is DP and gives
    the test log loss instead, when the job evaluates every round.
    """
    if rec.get("train_loss") is not None or not cfg.privacy.dp:
        return f"train loss {_fmt(rec.get('train_loss'))}"
    if rec.get("logloss") is not None:
        return f"test loss(DP) {_fmt(rec.get('logloss'))}"
    return "loss withheld(DP)"


def round_line(cfg: RunConfig, rec: Mapping[str, Any]) -> RoundLine:
    """The line of one training record (one with ``trained_round``)."""
    n = rec["trained_round"]
    eps = {k: v for k, v in (rec.get("epsilon") or {}).items() if v is not None}
    eps_txt = f"  ε max {max(eps.values()):.3g}" if eps else ""
    problems = rec.get("problems") or {}
    warn = f"{len(problems)} branch problem(s)" if problems else ""
    branches = f"branches {rec.get('branches_aggregated', '-')}/{rec.get('branches_sampled', '-')}"
    seconds = f"{rec.get('seconds') or 0:5.1f} s"
    if unit(cfg) == "tree":
        text = f"trees {n}/{planned(cfg)}  {seconds}  {branches}{eps_txt}"
    else:
        text = (
            f"round {n}/{planned(cfg)}  {seconds}  {loss_text(cfg, rec)}  "
            f"AUC(after round {n - 1}) {_fmt(rec.get('auc'))}  {branches}{eps_txt}"
        )
    return RoundLine(text, warn)


def final_line(cfg: RunConfig, rec: Mapping[str, Any]) -> str:
    """The line of the final evaluation (the record without ``trained_round``)."""
    after = (
        f"after {count(cfg, int(rec['round']))}"
        if unit(cfg) == "tree"
        else f"after round {rec['round']}"
    )
    f1 = f"F1 {_fmt(rec.get('f1'))}"
    if rec.get("f1_threshold_from") == "validation" and rec.get("f1_threshold") is not None:
        f1 += f" (threshold {rec['f1_threshold']:.3g}, chosen on validation customers)"
    return f"final ({after}): AUC {_fmt(rec.get('auc'))}  {f1}  log loss {_fmt(rec.get('logloss'))}"


def run_status(stopped_reason: str | None) -> str:
    """``summary.json`` ``status``: ``completed``, or ``stopped_early`` when a reason is set."""
    return STATUS_STOPPED_EARLY if stopped_reason else STATUS_COMPLETED


def status_line(cfg: RunConfig, summary: Mapping[str, Any]) -> str:
    """``completed: 5/5 rounds`` or ``stopped early after 1/5 rounds: <reason>``."""
    done = f"{summary.get('rounds')}/{count(cfg)}"
    if summary.get("status") == STATUS_STOPPED_EARLY:
        return f"stopped early after {done}: {summary.get('stopped_reason')}"
    return f"completed: {done}"


def line_of(cfg: RunConfig, rec: Mapping[str, Any]) -> str:
    """The line of any record a job reports (a round's, a tree's or the final one)."""
    return str(round_line(cfg, rec)) if "trained_round" in rec else final_line(cfg, rec)


def logging_reporter(cfg: RunConfig, logger: logging.Logger | None = None) -> Reporter:
    """A job reporter logging each record's line at INFO (what ``flwr log`` shows)."""
    out = logger or logging.getLogger(__name__)

    def report(rec: dict[str, Any]) -> None:
        out.info("%s", line_of(cfg, rec))

    return report


def log_progress_to_stderr(name: str = "fedcrm") -> None:
    """Send INFO records of ``name`` to stderr, one ``LEVEL fedcrm: message`` line each.

    Flower's ServerApp process (``flwr-serverapp``) forwards what it writes to
    stdout and stderr to the SuperLink, which ``flwr log`` shows; Python's
    logging shows only warnings without a handler, and a library may have set
    up the root logger with its own format (Opacus calls ``basicConfig`` on
    import). So ``name`` gets its own handler (once) and stops propagating:
    every fedcrm line, warnings included, reads the same.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s fedcrm: %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False


__all__ = [
    "STATUS_COMPLETED",
    "STATUS_STOPPED_EARLY",
    "RoundLine",
    "count",
    "final_line",
    "header_line",
    "line_of",
    "log_progress_to_stderr",
    "logging_reporter",
    "planned",
    "round_line",
    "run_status",
    "status_line",
    "unit",
]
