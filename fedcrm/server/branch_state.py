"""What the server knows about each branch, and what it reads from a branch's reply.

Sizes and privacy status only, never customer data: the per-branch state a job
keeps, the evaluation release inside a reply and its ``branch`` record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedcrm import protocol as P
from fedcrm.models.evaluation import EvaluationRelease
from fedcrm.server.exchange import Reply

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any]], None]


@dataclass
class BranchState:
    """What the server knows about one branch (sizes and privacy status, no data)."""

    node_id: int
    branch_id: str
    train_customers: int
    test_customers: int
    excluded_customers: int
    n_tabular: int
    rounds_trained: int = 0
    refused_rounds: int = 0
    failed_rounds: int = 0
    skipped_rounds: int = 0  # encrypted jobs: rounds sat out to rejoin the masked sums
    exhausted: bool = False
    epsilon: float | None = None
    delta: float | None = None
    last_problem: str | None = None
    eval_summary: EvaluationRelease | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def unpack_summary(metrics: Any) -> EvaluationRelease | None:
    """The evaluation release inside a reply's MetricRecord (``eval.*`` keys), if any.

    A malformed release is ignored with a warning (it never stops a round).
    """
    values = dict(metrics)
    if not any(k.startswith("eval.") for k in values):
        return None
    try:
        return EvaluationRelease.from_record(values)
    except ValueError as exc:
        log.warning("evaluation release ignored: %s", exc)
        return None


def reply_branch(reply: Reply) -> dict[str, Any]:
    """The `branch` record of a reply (branch id, status, refusal, ledger entries)."""
    assert reply.message is not None
    return dict(reply.message.content[P.BRANCH])


__all__ = ["BranchState", "Reporter", "reply_branch", "unpack_summary"]
