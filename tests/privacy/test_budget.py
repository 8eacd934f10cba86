"""Branch ceilings: a round that would exceed the ceiling is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcrm.errors import BudgetExhaustedError, PrivacyError
from fedcrm.privacy.budget import BranchBudget, validate_ceiling
from fedcrm.privacy.ledger import Ledger
from fedcrm.privacy.signing import generate_signing_key

from .conftest import DELTA, sgd_round


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_rounds_stop_before_the_ceiling_and_never_exceed_it(
    tmp_path: Path, accountant: str
) -> None:
    key, _ = generate_signing_key(tmp_path, "b1")
    ledger = Ledger(tmp_path / "b1.jsonl", branch_id="b1", signing_key=key)
    budget = BranchBudget(ledger, ceiling=3.0, delta=DELTA, accountant=accountant)  # type: ignore[arg-type]
    refused = None

    for r in range(40):
        try:
            budget.check(sgd_round())
        except BudgetExhaustedError as exc:
            refused = exc
            break
        ledger.append(
            run_id="r",
            round=r,
            model="lstm",
            mechanism=sgd_round(),
            delta=DELTA,
            accountant=accountant,
        )

    assert refused is not None
    assert refused.branch_id == "b1" and refused.ceiling == 3.0
    assert refused.would_spend > 3.0 >= refused.spent
    assert refused.spent == pytest.approx(budget.spent())
    assert "budget-exhausted" in str(refused)
    assert all(e["epsilon"] <= 3.0 for e in ledger.entries())
    assert 1 <= len(ledger.entries()) < 40


def test_no_ceiling_never_refuses(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "b1.jsonl", branch_id="b1")
    budget = BranchBudget(ledger, ceiling=None, delta=DELTA, accountant="rdp")

    assert budget.check(sgd_round(sigma=0.5, steps=1000)) > 10
    assert budget.spent() == 0.0
    assert budget.remaining() is None


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", 0.0, -2, True, [1]])
def test_bad_ceilings_name_the_setting(value: object) -> None:
    with pytest.raises(PrivacyError, match="epsilon-ceiling"):
        validate_ceiling(value)


def test_ceilings_from_node_config_strings() -> None:
    assert validate_ceiling("4") == 4.0
    assert validate_ceiling(" 2.5 ") == 2.5
    assert validate_ceiling(8) == 8.0
    assert validate_ceiling(None) is None
    assert validate_ceiling("") is None
