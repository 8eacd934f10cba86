"""A branch's privacy gate, shared by the LSTM and tree rounds (no torch here).

Its delta, its signed ledger, and the typed refusals a branch sends instead of
an update when a release would break its delta or its epsilon ceiling.
"""

from __future__ import annotations

from typing import Any

from fedcrm import protocol as P
from fedcrm.client.branch import BranchSettings
from fedcrm.config import JobSpec
from fedcrm.errors import BudgetExhaustedError, ConfigError, PrivacyError


def branch_delta(spec: JobSpec, settings: BranchSettings, n_train: int) -> float:
    """The branch's delta: its own node config wins, then the job's, then a default below 1/n."""
    from fedcrm.privacy.accounting import check_delta, default_delta

    delta = settings.delta or spec.privacy.delta or default_delta(n_train)
    check_delta(delta, n_train, settings.branch_id)
    return delta


def open_ledger(settings: BranchSettings) -> Any:
    """The branch's signed ledger (needs ``ledger-path`` and ``signing-key``)."""
    from fedcrm.privacy.ledger import Ledger
    from fedcrm.privacy.signing import load_private_key

    if settings.ledger_path is None or settings.signing_key is None:
        raise ConfigError(
            "DP runs need `ledger-path` and `signing-key` in the node config "
            "(create the key with `fedcrm node init`)"
        )
    return Ledger(
        settings.ledger_path,
        branch_id=settings.branch_id,
        signing_key=load_private_key(settings.signing_key),
    )


def budget_refusal(exc: BudgetExhaustedError) -> dict[str, Any]:
    """The typed refusal of a release that would exceed the branch's ceiling."""
    return {
        "reason": P.REASON_BUDGET,
        "message": str(exc),
        "spent": exc.spent,
        "ceiling": exc.ceiling,
        "would_spend": exc.would_spend,
    }


def delta_refusal(exc: PrivacyError) -> dict[str, Any]:
    """The typed refusal of a branch too small for its delta."""
    return {"reason": P.REASON_DELTA, "message": str(exc)}
