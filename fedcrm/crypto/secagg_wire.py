"""Secure-aggregation messages and the derivations both sides compute (no Flower, no state).

Every message is canonical JSON bytes (binary fields in base64), so it fits a
Flower ``ConfigRecord`` as ``bytes``. Signed messages use
:func:`fedcrm.crypto.roster.sign_message`; every derivation's context names
the purpose, run, step, roster digest and parties (:meth:`Step.context`), so
nothing derived for one step, pair or purpose serves another.

=================  ======  ==================================================
message            signed  body
=================  ======  ==================================================
advertisement      yes     run_id, step, roster, threshold; ``ephemeral``
                           (X25519 public key, 32 bytes); ``commitment``
                           (SHA-256 binding the self-mask seed); ``shares``:
                           for every roster branch j, AES-GCM of (share of the
                           self-mask seed || share of the ephemeral private
                           key) under HKDF(X25519(ephemeral, j's agreement
                           key))
endorsement        yes     run_id, step, roster, threshold, ``live``,
                           ``dropped`` (sorted branch ids)
reveal request     no      the same fields plus ``endorsements`` (signed
                           endorsement blobs; needed when ``dropped`` is
                           not empty)
reveal             no      run_id, step, ``revealer``; ``self_mask``: owner ->
                           share, for live owners; ``ephemeral``: owner ->
                           share, for dropped owners
=================  ======  ==================================================
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedcrm.crypto import primitives as pr
from fedcrm.crypto import shamir
from fedcrm.crypto.roster import Roster, open_message
from fedcrm.errors import SecureAggregationError

SHARE_PLAIN_BYTES = 2 * shamir.SHARE_BYTES
SHARE_BOX_BYTES = pr.NONCE_BYTES + SHARE_PLAIN_BYTES + 16


@dataclass(frozen=True)
class Step:
    """What binds a message to one aggregation step."""

    run_id: str
    step: int
    roster: str  # Roster.digest
    threshold: int

    def context(self, purpose: str, *parties: str) -> bytes:
        """HKDF info / AES-GCM associated data for ``purpose`` between ``parties``."""
        return pr.context(
            f"fedcrm/secagg/{purpose}/v1",
            self.run_id,
            self.step,
            self.roster,
            self.threshold,
            *parties,
        )

    def header(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "step": self.step,
            "roster": self.roster,
            "threshold": self.threshold,
        }

    def check(self, body: Mapping[str, Any], what: str) -> None:
        """Refuse a message body made for another run, step, roster or threshold."""
        if any(body.get(k) != v for k, v in self.header().items()):
            raise SecureAggregationError(
                f"{what} was made for another run, step, roster or threshold"
            )


def share_key(step: Step, shared: bytes, sender: str, recipient: str) -> bytes:
    """AES key for the shares ``sender`` encrypts to ``recipient``."""
    return pr.hkdf(shared, info=step.context("share", sender, recipient))


def pairwise_seed(step: Step, shared: bytes, a: str, b: str) -> bytes:
    """The pairwise mask seed of branches ``a`` and ``b`` (symmetric in a, b)."""
    lo, hi = sorted((a, b))
    return pr.hkdf(shared, info=step.context("pairwise", lo, hi))


def self_mask_key(step: Step, seed: bytes, owner: str) -> bytes:
    """The key that expands to ``owner``'s self-mask."""
    return pr.hkdf(seed, info=step.context("self-mask", owner))


def commitment(step: Step, seed: bytes, owner: str) -> bytes:
    """SHA-256 commitment to a self-mask seed (the seed has 256 bits of entropy)."""
    return hashlib.sha256(step.context("commitment", owner) + seed).digest()


def mask_sign(owner: str, peer: str) -> int:
    """+1 when ``owner`` adds the pairwise mask with ``peer`` (peer sorts after), else -1."""
    return 1 if peer > owner else -1


@dataclass(frozen=True)
class Advertisement:
    """A verified advertisement."""

    branch_id: str
    ephemeral_public: bytes
    commitment: bytes
    shares: Mapping[str, bytes]  # recipient -> encrypted share box
    raw: bytes


def advertisement_body(
    step: Step, ephemeral_public: bytes, commitment_: bytes, shares: Mapping[str, bytes]
) -> dict[str, Any]:
    return {
        **step.header(),
        "ephemeral": pr.b64(ephemeral_public),
        "commitment": pr.b64(commitment_),
        "shares": {j: pr.b64(box) for j, box in sorted(shares.items())},
    }


def parse_advertisement(roster: Roster, step: Step, blob: Any) -> Advertisement:
    """Verify an advertisement against the roster and the step.

    Raises
    ------
    SecureAggregationError
        Bad signature, a signer outside the roster, another step, or malformed fields.
    """
    signer, body = open_message(roster, "advertisement", blob)
    step.check(body, f"advertisement of branch {signer}")
    shares = body.get("shares")
    if not isinstance(shares, dict) or set(shares) != set(roster.ids):
        raise SecureAggregationError(
            f"advertisement of branch {signer} does not carry one share per roster branch"
        )
    return Advertisement(
        branch_id=signer,
        ephemeral_public=pr.unb64(body.get("ephemeral"), 32),
        commitment=pr.unb64(body.get("commitment"), 32),
        shares={j: pr.unb64(box, SHARE_BOX_BYTES) for j, box in shares.items()},
        raw=bytes(blob) if isinstance(blob, bytes) else blob.encode(),
    )


def parse_advertisements(
    roster: Roster, step: Step, blobs: Sequence[Any]
) -> dict[str, Advertisement]:
    """Verify every advertisement; refuse two different ones from one branch (equivocation)."""
    out: dict[str, Advertisement] = {}
    for blob in blobs:
        ad = parse_advertisement(roster, step, blob)
        if ad.branch_id in out and out[ad.branch_id].raw != ad.raw:
            raise SecureAggregationError(f"branch {ad.branch_id} advertised twice, differently")
        out[ad.branch_id] = ad
    return dict(sorted(out.items()))


def _ids(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SecureAggregationError(f"{what} must be a list of branch ids")
    if value != sorted(set(value)):
        raise SecureAggregationError(f"{what} must be sorted and without repeats")
    return tuple(value)


def claim_body(step: Step, live: Sequence[str], dropped: Sequence[str]) -> dict[str, Any]:
    """Body of an endorsement (and the claim part of a reveal request)."""
    return {**step.header(), "live": sorted(set(live)), "dropped": sorted(set(dropped))}


def parse_claim(
    step: Step, body: Mapping[str, Any], what: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(live, dropped) of a claim body made for ``step``."""
    step.check(body, what)
    live, dropped = _ids(body.get("live"), "live"), _ids(body.get("dropped"), "dropped")
    if set(live) & set(dropped):
        raise SecureAggregationError(f"{what} declares a branch both live and dropped")
    return live, dropped


def reveal_request(
    step: Step, live: Sequence[str], dropped: Sequence[str], endorsements: Sequence[bytes] = ()
) -> bytes:
    """What the server sends live branches to ask for their shares."""
    body = {
        **claim_body(step, live, dropped),
        "kind": "reveal-request",
        "endorsements": [pr.b64(e) for e in endorsements],
    }
    return pr.canonical(body)


def parse_reveal_request(
    step: Step, blob: Any
) -> tuple[tuple[str, ...], tuple[str, ...], list[bytes]]:
    """(live, dropped, endorsement blobs) of a reveal request."""
    try:
        body = json.loads(blob)
        if body.pop("kind") != "reveal-request":
            raise ValueError
        endorsements = [pr.unb64(e) for e in body.pop("endorsements")]
    except (ValueError, KeyError, TypeError, AttributeError, SecureAggregationError):
        raise SecureAggregationError("malformed reveal request") from None
    live, dropped = parse_claim(step, body, "reveal request")
    return live, dropped, endorsements


@dataclass(frozen=True)
class Reveal:
    """One branch's revealed shares."""

    revealer: str
    self_mask: Mapping[str, bytes]  # live owner -> share of its self-mask seed
    ephemeral: Mapping[str, bytes]  # dropped owner -> share of its ephemeral private key


def reveal_reply(step: Step, reveal: Reveal) -> bytes:
    """Serialize a reveal (canonical JSON)."""
    return pr.canonical(
        {
            "kind": "reveal",
            "run_id": step.run_id,
            "step": step.step,
            "revealer": reveal.revealer,
            "self_mask": {j: pr.b64(s) for j, s in sorted(reveal.self_mask.items())},
            "ephemeral": {j: pr.b64(s) for j, s in sorted(reveal.ephemeral.items())},
        }
    )


def parse_reveal_reply(step: Step, blob: Any) -> Reveal:
    """Parse a reveal made for ``step``."""
    try:
        body = json.loads(blob)
        if body["kind"] != "reveal" or (body["run_id"], body["step"]) != (step.run_id, step.step):
            raise ValueError
        return Reveal(
            revealer=str(body["revealer"]),
            self_mask={j: pr.unb64(s, shamir.SHARE_BYTES) for j, s in body["self_mask"].items()},
            ephemeral={j: pr.unb64(s, shamir.SHARE_BYTES) for j, s in body["ephemeral"].items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError, SecureAggregationError):
        raise SecureAggregationError("malformed reveal (or one made for another step)") from None
