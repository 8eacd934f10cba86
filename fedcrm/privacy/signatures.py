"""Branch keys in memory: their raw form, their ids, and Ed25519 signatures.

A roster carries public keys in their raw form, 32 bytes each (Ed25519 for
signing, X25519 for key agreement). A key is named by :func:`key_id`, the
first 16 hex digits of the SHA-256 of its raw public key. Signatures are raw
64-byte Ed25519 signatures (RFC 8032) carried as base64 text: :func:`sign`
makes one and :func:`verify_signature` checks one without raising. Key files
are read and written by :mod:`fedcrm.privacy.signing`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedcrm.errors import KeyFileError


def raw_public_bytes(
    key: Ed25519PrivateKey | X25519PrivateKey | Ed25519PublicKey | X25519PublicKey,
) -> bytes:
    """The raw 32-byte public key (Ed25519 or X25519) of ``key``."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey | X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_public_from_raw(raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its raw 32 bytes.

    Raises
    ------
    KeyFileError
        Not 32 bytes.
    """
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError("an Ed25519 public key is 32 raw bytes") from None


def agreement_public_from_raw(raw: bytes) -> X25519PublicKey:
    """An X25519 public key from its raw 32 bytes.

    Raises
    ------
    KeyFileError
        Not 32 bytes.
    """
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError("an X25519 public key is 32 raw bytes") from None


def public_key_of(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    """The public half of ``key`` (``key`` itself when it is public)."""
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey | X25519PrivateKey | X25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key (Ed25519 or X25519)."""
    if isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)):
        key = key.public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """Ed25519 signature of ``data``, base64 text."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify_signature(public_key: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s signature of ``data``."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        public_key.verify(raw, data)
    except (InvalidSignature, binascii.Error, ValueError, UnicodeEncodeError, AttributeError):
        return False
    return True
