"""Keys shared by the crypto tests (real TenSEAL and cryptography; read-only once made)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedcrm.crypto import bfv, bfv_aggregate, masking, unmasking
from fedcrm.crypto.bfv_wire import EncryptedVector
from fedcrm.crypto.roster import BranchIdentity, Roster, default_threshold
from fedcrm.crypto.round_state import RoundState, load_state, save_state


@pytest.fixture(scope="session")
def bfv_ctx() -> bfv.SecretContext:
    return bfv.generate()


@pytest.fixture(scope="session")
def bfv_other() -> bfv.SecretContext:
    """Same parameters, another secret key."""
    return bfv.generate()


BRANCHES = ("b1", "b2", "b3", "b4", "b5")


@pytest.fixture(scope="session")
def identities() -> dict[str, BranchIdentity]:
    return {b: BranchIdentity.generate(b) for b in BRANCHES}


@pytest.fixture(scope="session")
def roster(identities: dict[str, BranchIdentity]) -> Roster:
    return Roster({b: i.entry for b, i in identities.items()})


class Federation:
    """Drives one secure-aggregation step for the tests, through files as in deployment.

    Every branch action loads the branch's round state from its file and the
    protocol functions save it again, as separate ``flwr-clientapp`` processes would.
    """

    def __init__(
        self,
        ctx: bfv.SecretContext,
        roster: Roster,
        identities: dict[str, BranchIdentity],
        tmp: Path,
        *,
        run_id: str = "run-1",
        step: int = 1,
        threshold: int | None = None,
    ) -> None:
        self.ctx, self.roster, self.identities, self.tmp = ctx, roster, identities, tmp
        self.run_id, self.step = run_id, step
        self.threshold = threshold or default_threshold(roster.n)
        self.ads: dict[str, bytes] = {}
        for b, ident in identities.items():
            state, self.ads[b] = masking.start_round(
                ident, roster, run_id=run_id, step=step, threshold=self.threshold
            )
            save_state(state, self.path(b))

    def path(self, branch: str) -> Path:
        return self.tmp / f"{self.run_id}-{self.step}-{branch}.json"

    def state(self, branch: str) -> RoundState:
        return load_state(self.path(branch))

    def receive(self, ads: list[bytes] | None = None) -> None:
        for b, ident in self.identities.items():
            state = self.state(b)
            masking.receive_advertisements(
                state, ident, self.roster, ads or list(self.ads.values())
            )
            save_state(state, self.path(b))

    def submit(self, quantized: dict[str, np.ndarray]) -> dict[str, EncryptedVector]:
        return {
            b: masking.submit(self.state(b), self.ctx, q, state_path=self.path(b))
            for b, q in quantized.items()
        }

    def endorse(self, branch: str, live: list[str], dropped: list[str]) -> bytes:
        return masking.endorse(
            self.state(branch), self.identities[branch], live, dropped, state_path=self.path(branch)
        )

    def request(self, live: list[str], dropped: list[str], endorsements: list[bytes] = ()) -> bytes:
        return unmasking.reveal_request(
            self.roster,
            run_id=self.run_id,
            step=self.step,
            threshold=self.threshold,
            live=live,
            dropped=dropped,
            endorsements=list(endorsements),
        )

    def reveal(self, branch: str, request: bytes) -> bytes:
        return masking.reveal(
            self.state(branch), self.roster, request, state_path=self.path(branch)
        )

    def correction(
        self, reveals: dict[str, bytes], live: list[str], dropped: list[str], length: int
    ) -> np.ndarray:
        return unmasking.correction(
            self.roster,
            self.ads,
            reveals,
            run_id=self.run_id,
            step=self.step,
            threshold=self.threshold,
            live=live,
            dropped=dropped,
            length=length,
            plain_modulus=self.ctx.plain_modulus,
        )

    def run(
        self, quantized: dict[str, np.ndarray], dropped: list[str] = ()
    ) -> tuple[EncryptedVector, np.ndarray, list[str], dict[str, EncryptedVector]]:
        """A whole honest step; returns (aggregate, correction, live, uploads)."""
        self.receive()
        live = sorted(b for b in quantized if b not in dropped)
        uploads = self.submit({b: quantized[b] for b in live})
        agg, rejected = bfv_aggregate.aggregate(self.ctx.parameters, uploads)
        assert rejected == {}
        dropped = sorted(dropped)
        endorsements = [self.endorse(b, live, dropped) for b in live] if dropped else []
        request = self.request(live, dropped, endorsements)
        reveals = {b: self.reveal(b, request) for b in live}
        length = next(iter(quantized.values())).size
        return agg, self.correction(reveals, live, dropped, length), live, uploads


@pytest.fixture
def federation(
    bfv_ctx: bfv.SecretContext,
    roster: Roster,
    identities: dict[str, BranchIdentity],
    tmp_path: Path,
) -> Callable[..., Federation]:
    def make(**kw: object) -> Federation:
        return Federation(bfv_ctx, roster, identities, tmp_path, **kw)

    return make
