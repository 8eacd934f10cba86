"""A branch's privacy gate: the one place a DP release is decided (no torch, no Flower).

For every billed step (an LSTM round, the trees' bin edges, a tree or a batch
of trees, an evaluation) the gate runs, under a lock per step:

1. **ledger intact?** the ledger must still hold the head its anchor recorded
   (``ledger-behind-anchor`` otherwise);
2. **plan unchanged?** the first reservation of a run pins a digest of the job's
   plan; a later request of the same run with another plan is
   ``outside-plan`` (the caller also refuses steps beyond the plan);
3. **already released?** a repeat of the same request gets the same kept bytes;
   a repeat with any other content is ``release-changed``; a released step
   whose kept reply is gone is ``release-lost`` (never recomputed);
4. **reserve**: the step's epsilon is reserved in the ledger under its lock,
   refused past the branch's ceiling (``budget-exhausted``); a step that fails
   after reserving keeps its reservation (the safe side);
5. **release**: the reply is computed with randomness born at the branch
   (:mod:`fedcrm.privacy.randomness`), kept, and a zero-epsilon ``release``
   entry records its digest before it leaves.

The branch's privacy parameters are its own: its delta (node config, default
below 1/(10 n)); a job asking for a larger delta is refused, a smaller one is
honoured. Under DP the task's cutoff must be a fixed date.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcrm import protocol as P
from fedcrm.client.branch import BranchSettings
from fedcrm.config import JobSpec
from fedcrm.errors import (
    BudgetExhaustedError,
    ConfigError,
    LedgerBehindAnchorError,
    PrivacyError,
    RefusedError,
)
from fedcrm.privacy.accounting import Charge, Mechanism, composed_epsilon
from fedcrm.privacy.ledger import Ledger
from fedcrm.privacy.ledger_format import charge_of, charges, kind_of
from fedcrm.privacy.planning import SpendPlan, spend_plan
from fedcrm.privacy.releases import Payload, ReleaseStore, payload_digest

log = logging.getLogger(__name__)

ANCHOR_FILE = "anchor.json"


def refusal_of(exc: RefusedError | BudgetExhaustedError) -> dict[str, Any]:
    """The typed refusal a branch sends instead of a release."""
    if isinstance(exc, BudgetExhaustedError):
        return {
            "reason": P.REASON_BUDGET,
            "message": str(exc),
            "spent": exc.spent,
            "ceiling": exc.ceiling,
            "would_spend": exc.would_spend,
        }
    return {"reason": exc.reason, "message": str(exc)}


def check_job(spec: JobSpec, settings: BranchSettings) -> None:
    """Refuse a DP job this branch cannot take part in, before reading any data.

    Raises
    ------
    RefusedError
        ``cutoff-not-fixed`` when the job has DP but no fixed ``task.cutoff``
        (a cutoff derived from the data would let one customer's events move
        every other customer's features and labels).
    """
    if spec.privacy.dp and spec.task.cutoff is None:
        raise RefusedError(
            P.REASON_CUTOFF,
            f"branch {settings.branch_id}: a job with differential privacy needs a fixed "
            "task.cutoff (a date chosen before looking at the data); set task.cutoff=YYYY-MM-DD",
        )


def branch_delta(spec: JobSpec, settings: BranchSettings, n_customers: int) -> float:
    """The branch's delta: its own (node config, default below 1/(10 n)); a job may only lower it.

    Raises
    ------
    RefusedError
        ``delta-too-large`` when the job asks for a larger delta than the
        branch's, or the branch's is not below 1/n.
    """
    from fedcrm.privacy.accounting import check_delta, default_delta

    own = settings.delta or default_delta(n_customers)
    try:
        check_delta(own, n_customers, settings.branch_id)
    except PrivacyError as exc:
        raise RefusedError(P.REASON_DELTA, str(exc)) from None
    asked = spec.privacy.delta
    if asked is not None and asked > own:
        raise RefusedError(
            P.REASON_DELTA,
            f"branch {settings.branch_id}: the job asks for delta {asked:g}, larger than the "
            f"branch's {own:g}; a job can only lower a branch's delta",
        )
    return own if asked is None else asked


def plan_digest(spec: JobSpec) -> str:
    """What a run pins at its first reservation: everything the job says, but its run id."""
    body = spec.model_dump_json(exclude={"run_id"})
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Step:
    """One billed step, and the release within it.

    ``name`` is the reservation's step (``round-3``, ``tree-4``, ``eval-final``);
    ``release`` the reply within it (a tree's ``tree-4.level-2``; default: the step).
    """

    name: str
    round: int
    purpose: str = "train"
    release: str | None = None

    @property
    def release_name(self) -> str:
        """The release's name (the step's when it has one release)."""
        return self.release or self.name


@dataclass
class Released:
    """What the gate hands back: the reply to send and the new ledger entries."""

    payload: Payload
    entries: list[dict[str, Any]] = field(default_factory=list)
    replayed: bool = False


@contextlib.contextmanager
def _step_lock(directory: Path, name: str) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _entry(mine: list[dict[str, Any]], kind: str, step: str, purpose: str) -> dict[str, Any] | None:
    """This run's ledger entry of ``kind`` for ``step`` and ``purpose``, if any."""
    return next(
        (e for e in mine if kind_of(e) == kind and e["step"] == step and e["purpose"] == purpose),
        None,
    )


class PrivacyGate:
    """A branch's DP gate for one job.

    Parameters
    ----------
    settings
        The branch's node config.
    spec
        The job as the server sent it.
    n_customers
        Customers of the branch in the task (for its default delta).
    split_id
        Public id of the branch's train/test split (see :mod:`fedcrm.data.split`).
    model, task
        Recorded in the ledger.

    Raises
    ------
    RefusedError
        ``delta-too-large``, ``cutoff-not-fixed``.
    ConfigError
        Without ``ledger-path`` and ``signing-key``.
    """

    def __init__(
        self,
        settings: BranchSettings,
        spec: JobSpec,
        *,
        n_customers: int,
        split_id: str | None,
        model: str,
    ) -> None:
        check_job(spec, settings)
        if settings.ledger_path is None or settings.signing_key is None:
            raise ConfigError(
                "DP runs need `ledger-path` and `signing-key` in the node config "
                "(create the key with `fedcrm node init`)"
            )
        state = settings.private_state
        assert state is not None  # a ledger path gives one
        self.settings = settings
        self.spec = spec
        self.model = model
        self.delta = branch_delta(spec, settings, n_customers)
        self.split_id = split_id
        self.plan = plan_digest(spec)
        self.store = ReleaseStore(state)
        self.ledger = Ledger(
            settings.ledger_path,
            branch_id=settings.branch_id,
            signing_key=settings.signing_key,
            anchor_path=state / ANCHOR_FILE,
        )

    @property
    def rng_seed(self) -> int | None:
        """The branch's reproducibility seed (``None``: OS randomness)."""
        return self.settings.rng_seed

    def release(
        self,
        step: Step,
        mechanism: Mechanism | None,
        request: str,
        compute: Callable[[], Payload],
    ) -> Released:
        """Release ``step`` once (see the module docstring).

        ``mechanism`` is the step's spend, reserved when the step has no
        reservation yet (``None`` for a later release of a reserved step, e.g.
        a tree's next level). ``request`` is the SHA-256 of the request.
        ``compute`` makes the reply (it draws its own branch-born randomness).

        Raises
        ------
        RefusedError
            ``ledger-behind-anchor``, ``outside-plan``, ``release-changed``,
            ``release-lost``.
        BudgetExhaustedError
            The reservation would pass the branch's ceiling.
        """
        run = self.spec.run_id
        with _step_lock(self.store.root / "locks", hashlib.sha256(run.encode()).hexdigest()[:16]):
            entries = self.ledger.entries()
            try:
                self.ledger.check_anchor(entries)
            except LedgerBehindAnchorError as exc:
                raise RefusedError(P.REASON_LEDGER_BEHIND, str(exc)) from None
            mine = [e for e in entries if e["run_id"] == run]
            self._check_plan(mine)
            done = _entry(mine, "release", step.release_name, step.purpose)
            if done is not None:
                return self._replay(done, step, request)
            reservation = _entry(mine, "reservation", step.name, step.purpose)
            new: list[dict[str, Any]] = []
            if reservation is None:
                reservation = self._reserve(step, mechanism)
                new.append(reservation)
            payload = compute()
            digest = self.store.save(run, step.release_name, payload)
            new.append(
                self.ledger.record_release(
                    reservation=reservation, request=request, reply=digest, step=step.release_name
                )
            )
            return Released(payload, new)

    def _check_plan(self, mine: list[dict[str, Any]]) -> None:
        """Refuse a run whose job changed since its first reservation."""
        pinned = {e.get("plan") for e in mine if kind_of(e) == "reservation"} - {None}
        if pinned and pinned != {self.plan}:
            raise RefusedError(
                P.REASON_OUTSIDE_PLAN,
                f"run {self.spec.run_id}: the job's plan changed since its first step; the "
                "branch answers one plan per run",
            )

    def _reserve(self, step: Step, mechanism: Mechanism | None) -> dict[str, Any]:
        """Write the step's reservation (its epsilon, checked against the ceiling)."""
        if mechanism is None:
            raise RefusedError(
                P.REASON_OUTSIDE_PLAN,
                f"run {self.spec.run_id}: {step.release_name} continues a step that was "
                "never started",
            )
        return self.ledger.reserve(
            run_id=self.spec.run_id,
            round=step.round,
            model=self.model,
            task=self.spec.task.name,
            purpose=step.purpose,
            step=step.name,
            mechanism=mechanism,
            delta=self.delta,
            accountant=self.spec.privacy.accountant,
            split=self.split_id,
            plan=self.plan,
            ceiling=self.settings.epsilon_ceiling,
        )

    def _replay(self, done: dict[str, Any], step: Step, request: str) -> Released:
        if done["request"] != request:
            raise RefusedError(
                P.REASON_RELEASE_CHANGED,
                f"run {self.spec.run_id}: {step.release_name} was released for another request; "
                "a branch answers each step once",
            )
        kept = self.store.load(self.spec.run_id, step.release_name)
        if kept is None or payload_digest(kept) != done["reply"]:
            raise RefusedError(
                P.REASON_RELEASE_LOST,
                f"run {self.spec.run_id}: {step.release_name} was released but its kept reply is "
                "gone; it is never computed twice",
            )
        log.info("branch %s: %s answered again from its kept reply", self.ledger.branch_id, step)
        return Released(kept, [], replayed=True)

    def evaluation_charges(self) -> list[tuple[str, Charge]]:
        """Every evaluation charge in the ledger with its run id, in order."""
        return [
            (e["run_id"], charge_of(e))
            for e in self.ledger.entries()
            if charges(e) and e.get("purpose") == "evaluation"
        ]

    def spend_plan(self, evaluation: Sequence[Mechanism] = ()) -> SpendPlan:
        """What this job's training releases may spend here (see :mod:`fedcrm.privacy.planning`)."""
        assert self.spec.privacy.target_epsilon is not None
        run = self.spec.run_id
        return spend_plan(
            mode=self.spec.privacy.target,
            target_epsilon=self.spec.privacy.target_epsilon,
            ceiling=self.settings.epsilon_ceiling,
            others=[
                charge_of(e) for e in self.ledger.entries() if charges(e) and e["run_id"] != run
            ],
            split=self.split_id,
            delta=self.delta,
            accountant=self.spec.privacy.accountant,
            branch_id=self.settings.branch_id,
            evaluation=evaluation,
        )

    def projected(self, mechanism: Mechanism) -> float:
        """The branch's epsilon after also running ``mechanism`` on its training customers."""
        new = Charge(mechanism, purpose="train", split=self.split_id)
        return composed_epsilon(
            [*self.ledger.charges(), new], delta=self.delta, accountant=self.spec.privacy.accountant
        )

    def spent(self) -> float:
        """The branch's epsilon at this job's delta."""
        return self.ledger.epsilon(delta=self.delta, accountant=self.spec.privacy.accountant)
