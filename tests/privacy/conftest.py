"""Branch keys and ledgers for the privacy tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcrm.privacy.accounting import Mechanism
from fedcrm.privacy.ledger import Ledger
from fedcrm.privacy.signing import generate_signing_key

DELTA = 1e-5


def sgd_round(sigma: float = 1.5, steps: int = 25) -> Mechanism:
    return Mechanism(
        "dp-sgd", noise_multiplier=sigma, sample_rate=0.04, steps=steps, max_grad_norm=1.0
    )


def fill(ledger: Ledger, rounds: int, *, run_id: str = "run-1", accountant: str = "rdp") -> None:
    for r in range(rounds):
        ledger.append(
            run_id=run_id,
            round=r,
            model="lstm",
            mechanism=sgd_round(),
            delta=DELTA,
            accountant=accountant,
        )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory: keys/<b>.pub and ledger/<b>.jsonl for branches b1 and b2."""
    for branch, rounds in (("b1", 4), ("b2", 3)):
        private, _ = generate_signing_key(tmp_path / "keys", branch)
        # Private keys stay at the branch, not in the run directory.
        key = tmp_path / "branches" / branch / private.name
        key.parent.mkdir(parents=True)
        private.rename(key)
        fill(
            Ledger(tmp_path / "ledger" / f"{branch}.jsonl", branch_id=branch, signing_key=key),
            rounds,
        )
    return tmp_path
