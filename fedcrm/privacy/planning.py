"""What a DP job's training releases may spend at one branch.

``privacy.target`` chooses how a branch plans its noise:

* ``job`` (default): the noise is calibrated so that the job's releases alone
  spend ``privacy.target_epsilon``. A branch that has already spent part of
  its ceiling refuses the rounds that would pass it, so the job may end early
  there (its status says ``stopped_early``).
* ``remaining``: each branch also plans against its own ledger, so that
  everything it has run so far composed with this job's releases stays within
  its ceiling; its noise is the larger of the two plans. The job always
  finishes within the ceiling; a branch with less room left adds more noise,
  and no branch adds less noise than ``target_epsilon`` asks for (a job can
  tighten a branch's privacy, never loosen it).

The plan depends on the ledger's entries of *other* runs only, so every round
of a run derives the same noise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedcrm.errors import BudgetExhaustedError
from fedcrm.privacy.accounting import Accountant, compute_epsilon
from fedcrm.privacy.mechanisms import Charge, Mechanism, parallel_sides

TARGETS = ("job", "remaining")
"""Values of ``privacy.target``."""

CEILING_MARGIN = 0.005
"""Share of the ceiling a ``remaining`` plan keeps free (accountant rounding)."""

MIN_ROOM = 0.01
"""Below this much epsilon of room a ``remaining`` plan refuses to start."""


@dataclass(frozen=True)
class SpendPlan:
    """What a job's training releases may spend at one branch.

    The job's releases alone stay within ``target``; with a ``cap``, ``prior``
    (the mechanisms already run on the same customers) composed with them
    stays within ``cap`` too. ``spent`` is the epsilon of ``prior`` alone.
    """

    target: float
    cap: float | None = None
    prior: tuple[Mechanism, ...] = ()
    spent: float = 0.0


@functools.lru_cache(maxsize=64)
def _epsilon(prior: tuple[Mechanism, ...], delta: float, accountant: Accountant) -> float:
    return compute_epsilon(prior, delta=delta, accountant=accountant)


def spend_plan(
    *,
    mode: str,
    target_epsilon: float,
    ceiling: float | None,
    others: Sequence[Charge],
    split: str | None,
    delta: float,
    accountant: Accountant,
    branch_id: str,
    evaluation: Sequence[Mechanism] = (),
) -> SpendPlan:
    """The training plan of one job at one branch.

    Parameters
    ----------
    mode
        ``privacy.target`` (``job`` or ``remaining``).
    target_epsilon
        ``privacy.target_epsilon``.
    ceiling
        The branch's epsilon ceiling (``None``: none).
    others
        The branch ledger's charges of other runs.
    split
        The branch's split id (training charges name it).
    delta, accountant
        The branch's delta and the job's accountant.
    branch_id
        For the refusal.
    evaluation
        The job's planned evaluation releases; they share the training side's
        budget when the ledger does not compose in parallel.

    Raises
    ------
    BudgetExhaustedError
        ``remaining`` with less than :data:`MIN_ROOM` left under the ceiling.
    """
    if mode not in TARGETS:
        raise ValueError(f"privacy.target must be one of {TARGETS}, got {mode!r}")
    if mode == "job" or ceiling is None:
        return SpendPlan(target_epsilon)
    probe = Charge(Mechanism("gaussian", 1.0, 1.0, 1), purpose="train", split=split)
    if parallel_sides([*others, probe]) is not None:
        prior = tuple(c.mechanism for c in others if c.purpose == "train")
    else:
        prior = (*(c.mechanism for c in others), *evaluation)
    spent = _epsilon(prior, delta, accountant) if prior else 0.0
    cap = ceiling * (1.0 - CEILING_MARGIN)
    if not math.isfinite(spent) or cap - spent < MIN_ROOM:
        raise BudgetExhaustedError(
            branch_id=branch_id, spent=spent, would_spend=spent + MIN_ROOM, ceiling=ceiling
        )
    return SpendPlan(target_epsilon, cap, prior, spent)


__all__ = ["CEILING_MARGIN", "MIN_ROOM", "TARGETS", "SpendPlan", "spend_plan"]
