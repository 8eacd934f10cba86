"""Seal a payload from one branch to another through an untrusted relay (the server).

Used to hand the BFV secret context from the elected key-holder branch to
each peer: the server relays the sealed bytes but can neither read nor forge
nor redirect them.

Construction (``seal``): a fresh ephemeral X25519 key ``k``; the AES-256-GCM
key is HKDF-SHA256 over ``X25519(k, R) || X25519(S, R)`` (``R`` the
recipient's long-term agreement key, ``S`` the sender's), with an ``info``
naming the purpose, the caller's ``context`` string, and both public keys;
the associated data repeats it. The whole envelope (version, context, both
agreement public keys, the ephemeral public key, the ciphertext) is signed
with the sender's Ed25519 key. Reading needs ``R``'s private key; forging
needs ``S``'s signing key; a payload sealed for one recipient or context does
not open for another. Compromise of the sender's agreement key later does
not expose past payloads (the ephemeral key is gone).
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature

from fedcrm.crypto import primitives as pr
from fedcrm.errors import SecureAggregationError
from fedcrm.privacy import signing

_DOMAIN = b"fedcrm/sealed/v1\0"


def _key(shared: bytes, context: str, sender: bytes, recipient: bytes, eph: bytes) -> bytes:
    info = pr.context("fedcrm/sealed/v1", context, pr.b64(sender), pr.b64(recipient), pr.b64(eph))
    return pr.hkdf(shared, info=info)


def seal(
    payload: bytes,
    *,
    signing_key: signing.Ed25519PrivateKey,
    agreement_key: signing.X25519PrivateKey,
    recipient_public: bytes | signing.X25519PublicKey,
    context: str,
) -> bytes:
    """Encrypt ``payload`` to ``recipient_public`` and sign it as the sender.

    Parameters
    ----------
    payload
        The bytes to hand over (e.g. ``bfv.SecretContext.to_bytes()``).
    signing_key, agreement_key
        The sender's long-term Ed25519 and X25519 private keys.
    recipient_public
        The recipient's X25519 agreement public key (raw 32 bytes or key).
    context
        What the payload is for, e.g. ``"bfv-context run=42"``; opening
        requires the same string.

    Returns
    -------
    bytes
        Canonical JSON envelope.
    """
    recipient = (
        signing.raw_public_bytes(recipient_public)
        if not isinstance(recipient_public, bytes)
        else recipient_public
    )
    sender = signing.raw_public_bytes(agreement_key)
    eph = pr.new_agreement_key()
    eph_pub = pr.public_raw(eph)
    shared = pr.agree(eph, recipient) + pr.agree(agreement_key, recipient)
    key = _key(shared, context, sender, recipient, eph_pub)
    aad = pr.context("fedcrm/sealed/v1", context, pr.b64(sender), pr.b64(recipient))
    body = {
        "version": 1,
        "context": context,
        "sender": pr.b64(sender),
        "recipient": pr.b64(recipient),
        "ephemeral": pr.b64(eph_pub),
        "ciphertext": pr.b64(pr.aead_encrypt(key, payload, aad)),
    }
    signature = signing_key.sign(_DOMAIN + pr.canonical(body))
    return pr.canonical({**body, "signature": pr.b64(signature)})


def open_sealed(
    sealed: Any,
    *,
    agreement_key: signing.X25519PrivateKey,
    sender_signing_public: bytes | signing.Ed25519PublicKey,
    sender_agreement_public: bytes | signing.X25519PublicKey,
    context: str,
) -> bytes:
    """Verify and decrypt :func:`seal` output addressed to ``agreement_key``.

    Parameters
    ----------
    sealed
        The envelope.
    agreement_key
        The recipient's X25519 private key.
    sender_signing_public, sender_agreement_public
        The sender's long-term public keys, from the recipient's own roster.
    context
        The purpose string the sender used.

    Raises
    ------
    SecureAggregationError
        Malformed envelope, a signature that does not verify with the sender's
        key, another sender, recipient or context, or tampered ciphertext.
    """

    def raw(key: Any) -> bytes:
        return key if isinstance(key, bytes) else signing.raw_public_bytes(key)

    try:
        env = json.loads(sealed)
        signature = pr.unb64(env.pop("signature"), 64)
        if set(env) != {"version", "context", "sender", "recipient", "ephemeral", "ciphertext"}:
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError, SecureAggregationError):
        raise SecureAggregationError("not a sealed payload") from None
    verify_key = signing.signing_public_from_raw(raw(sender_signing_public))
    try:
        verify_key.verify(signature, _DOMAIN + pr.canonical(env))
    except InvalidSignature:
        raise SecureAggregationError("sealed payload not signed by the expected sender") from None
    sender, recipient = raw(sender_agreement_public), signing.raw_public_bytes(agreement_key)
    if (env["version"], env["context"]) != (1, context) or (
        pr.unb64(env["sender"], 32),
        pr.unb64(env["recipient"], 32),
    ) != (sender, recipient):
        raise SecureAggregationError("sealed payload made for another sender, recipient or context")
    eph_pub = pr.unb64(env["ephemeral"], 32)
    shared = pr.agree(agreement_key, eph_pub) + pr.agree(agreement_key, sender)
    key = _key(shared, context, sender, recipient, eph_pub)
    aad = pr.context("fedcrm/sealed/v1", context, pr.b64(sender), pr.b64(recipient))
    return pr.aead_decrypt(key, pr.unb64(env["ciphertext"]), aad)
