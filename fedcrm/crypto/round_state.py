"""A branch's secure-aggregation state for one step, kept between messages (file mode 0600).

Each message of a step may reach the branch in another ``flwr-clientapp``
process, so :mod:`fedcrm.crypto.masking` saves the state after every change
and before any reply leaves. Until the update is masked the state holds the
round secrets (ephemeral private key, self-mask seed); afterwards only the
branch's shares of its peers' secrets, its ciphertext seeds and the claim it
acted on. Delete the file (:func:`delete_state`) once the step is done.

Format: canonical JSON; bytes as ``{"b64": ...}``; ``version`` 1.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedcrm.crypto import primitives as pr
from fedcrm.crypto import secagg_wire as sw
from fedcrm.crypto.primitives import write_private
from fedcrm.errors import SecureAggregationError

STATE_VERSION = 1


@dataclass
class RoundState:
    """What a branch keeps between the messages of one step (saved with mode 0600)."""

    branch_id: str
    run_id: str
    step: int
    roster: str
    threshold: int
    min_live: int
    advertisement: bytes
    ephemeral_private: bytes | None  # erased once the update is masked
    self_mask_seed: bytes | None  # erased once the update is masked
    peers: dict[str, dict[str, bytes]] | None = None  # advertiser -> ephemeral, share pair
    masked: bool = False
    own_seeds: tuple[bytes, ...] | None = None
    claim: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (live, dropped) decided
    endorsement: bytes | None = None
    reveal: bytes | None = None
    version: int = field(default=STATE_VERSION)

    @property
    def step_id(self) -> sw.Step:
        return sw.Step(self.run_id, self.step, self.roster, self.threshold)

    @property
    def view(self) -> tuple[str, ...]:
        """The advertisers this branch masked with (sorted)."""
        if self.peers is None:
            raise SecureAggregationError("no advertisements accepted yet for this step")
        return tuple(self.peers)


def state_to_bytes(state: RoundState) -> bytes:
    """JSON with base64 bytes (holds round secrets until masking; keep it 0600)."""

    def enc(v: Any) -> Any:
        if isinstance(v, bytes):
            return {"b64": pr.b64(v)}
        if isinstance(v, dict):
            return {k: enc(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [enc(x) for x in v]
        return v

    return pr.canonical(enc(asdict(state)))


def state_from_bytes(data: bytes) -> RoundState:
    """Inverse of :func:`state_to_bytes`."""

    def dec(v: Any) -> Any:
        if isinstance(v, dict):
            return pr.unb64(v["b64"]) if set(v) == {"b64"} else {k: dec(x) for k, x in v.items()}
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v

    try:
        raw = dec(json.loads(data))
        if raw.get("version") != STATE_VERSION:
            raise ValueError
        if raw["own_seeds"] is not None:
            raw["own_seeds"] = tuple(raw["own_seeds"])
        if raw["claim"] is not None:
            raw["claim"] = (tuple(raw["claim"][0]), tuple(raw["claim"][1]))
        return RoundState(**raw)
    except (ValueError, KeyError, TypeError, AttributeError, SecureAggregationError):
        raise SecureAggregationError("not a fedcrm secure-aggregation round state") from None


def save_state(state: RoundState, path: str | os.PathLike[str]) -> Path:
    """Write the state atomically with mode 0600 (fsync before rename)."""
    return write_private(path, state_to_bytes(state))


def load_state(path: str | os.PathLike[str]) -> RoundState:
    """Read a state written by :func:`save_state`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecureAggregationError(f"cannot read round state {path}: {exc.strerror}") from None
    return state_from_bytes(data)


def delete_state(path: str | os.PathLike[str]) -> None:
    """Remove a finished step's state (missing is fine)."""
    Path(path).unlink(missing_ok=True)
