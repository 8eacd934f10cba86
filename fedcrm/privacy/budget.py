"""A branch's epsilon ceiling, checked before every mechanism it runs.

The ceiling lives in the branch's own node config (``epsilon-ceiling``); the
server cannot raise it. The binding check happens when a step's spend is
reserved in the ledger (:meth:`fedcrm.privacy.ledger.Ledger.reserve`, under the
ledger's lock, so concurrent steps cannot pass the ceiling together);
:class:`BranchBudget` answers questions about it beforehand (what was spent,
what a mechanism would bring, what remains), composing everything in the
ledger with the new mechanism.
"""

from __future__ import annotations

import math

from fedcrm.errors import BudgetExhaustedError, PrivacyError
from fedcrm.privacy.accounting import Accountant, Charge, Mechanism, composed_epsilon
from fedcrm.privacy.ledger import Ledger

CEILING_KEY = "epsilon-ceiling"


def validate_ceiling(value: object) -> float | None:
    """Parse an ``epsilon-ceiling`` value from a node config.

    ``None`` and the empty string mean no ceiling. Numbers and numeric
    strings must be finite and > 0.

    Raises
    ------
    PrivacyError
        Naming ``epsilon-ceiling`` when the value is not a number, <= 0, nan or infinite.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise PrivacyError(f"{CEILING_KEY} must be a number > 0, got {value!r}")
    try:
        ceiling = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PrivacyError(
            f"{CEILING_KEY} must be a number > 0 (for example 4.0), got {value!r}"
        ) from None
    if not math.isfinite(ceiling) or ceiling <= 0:
        raise PrivacyError(
            f"{CEILING_KEY} must be a finite number > 0, got {value!r}; leave it out for no ceiling"
        )
    return ceiling


class BranchBudget:
    """Epsilon spent by a branch against its ceiling.

    Parameters
    ----------
    ledger
        The branch's ledger (everything it ever ran on these customers).
    ceiling
        Largest epsilon the branch accepts, or ``None`` for no ceiling.
    delta
        The branch's delta.
    accountant
        ``"prv"`` or ``"rdp"``; the ledger uses the same.
    """

    def __init__(
        self, ledger: Ledger, *, ceiling: float | None, delta: float, accountant: Accountant
    ) -> None:
        self.ledger = ledger
        self.ceiling = validate_ceiling(ceiling)
        self.delta = delta
        self.accountant = accountant

    def spent(self) -> float:
        """Epsilon of everything in the ledger at this budget's delta."""
        charges = self.ledger.charges()
        if not charges:
            return 0.0
        return composed_epsilon(charges, delta=self.delta, accountant=self.accountant)

    def projected(self, mechanism: Mechanism | Charge) -> float:
        """Epsilon the branch would have after also running ``mechanism``."""
        new = mechanism if isinstance(mechanism, Charge) else Charge(mechanism)
        return composed_epsilon(
            [*self.ledger.charges(), new], delta=self.delta, accountant=self.accountant
        )

    def remaining(self) -> float | None:
        """Ceiling minus spent (``None`` without a ceiling)."""
        return None if self.ceiling is None else self.ceiling - self.spent()

    def check(self, mechanism: Mechanism | Charge) -> float:
        """The projected epsilon, if it stays within the ceiling.

        Raises
        ------
        BudgetExhaustedError
            When running ``mechanism`` would take the branch past its ceiling;
            carries ``branch_id``, ``spent``, ``would_spend`` and ``ceiling``
            for the typed ``budget-exhausted`` reply.
        """
        projected = self.projected(mechanism)
        if self.ceiling is not None and projected > self.ceiling:
            raise BudgetExhaustedError(
                branch_id=self.ledger.branch_id,
                spent=self.spent(),
                would_spend=projected,
                ceiling=self.ceiling,
            )
        return projected
