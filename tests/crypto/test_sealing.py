"""Sealed payloads relayed by the server: only the recipient reads, only the sender writes."""

from __future__ import annotations

import json

import pytest

from fedcrm.crypto import bfv, sealing
from fedcrm.crypto.primitives import b64, canonical, unb64
from fedcrm.crypto.roster import BranchIdentity
from fedcrm.errors import SecureAggregationError

CTX = "bfv-context run=r1"


def _seal(sender: BranchIdentity, recipient: BranchIdentity, payload: bytes = b"secret") -> bytes:
    return sealing.seal(
        payload,
        signing_key=sender.signing_key,
        agreement_key=sender.agreement_key,
        recipient_public=recipient.entry.agreement_public,
        context=CTX,
    )


def _open(blob: bytes, recipient: BranchIdentity, sender: BranchIdentity, ctx: str = CTX) -> bytes:
    return sealing.open_sealed(
        blob,
        agreement_key=recipient.agreement_key,
        sender_signing_public=sender.entry.signing_public,
        sender_agreement_public=sender.entry.agreement_public,
        context=ctx,
    )


def test_bfv_context_travels_sealed(
    identities: dict[str, BranchIdentity], bfv_ctx: bfv.SecretContext
) -> None:
    holder, peer = identities["b1"], identities["b2"]
    blob = _seal(holder, peer, bfv_ctx.to_bytes())
    assert bfv_ctx.to_bytes()[:64] not in blob
    got = bfv.SecretContext.from_bytes(_open(blob, peer, holder))
    assert got.parameters == bfv_ctx.parameters


def test_only_the_recipient_opens(identities: dict[str, BranchIdentity]) -> None:
    holder, peer, other = identities["b1"], identities["b2"], identities["b3"]
    blob = _seal(holder, peer)
    with pytest.raises(SecureAggregationError, match="another sender, recipient or context"):
        _open(blob, other, holder)  # another branch (or the server) cannot read it
    with pytest.raises(SecureAggregationError, match="another sender, recipient or context"):
        _open(blob, peer, holder, ctx="bfv-context run=r2")


def test_server_cannot_forge_or_alter(identities: dict[str, BranchIdentity]) -> None:
    holder, peer, mallory = identities["b1"], identities["b2"], BranchIdentity.generate("b1")
    with pytest.raises(SecureAggregationError, match="not signed by the expected sender"):
        _open(_seal(mallory, peer), peer, holder)  # the server posing as the key holder
    env = json.loads(_seal(holder, peer))
    ct = bytearray(unb64(env["ciphertext"]))
    ct[-1] ^= 1
    env["ciphertext"] = b64(bytes(ct))
    with pytest.raises(SecureAggregationError, match="not signed"):
        _open(canonical(env), peer, holder)
    with pytest.raises(SecureAggregationError, match="not a sealed payload"):
        _open(b"{}", peer, holder)
