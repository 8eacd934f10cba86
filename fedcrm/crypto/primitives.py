"""Symmetric primitives and X25519 agreement for secure aggregation (``cryptography``).

* :func:`hkdf`: HKDF-SHA256 (RFC 5869), no salt unless given; every use
  passes an ``info`` built by :func:`context` (a canonical JSON list naming
  the purpose, run, step and parties), so no two purposes share a key.
* :func:`aead_encrypt` / :func:`aead_decrypt`: AES-256-GCM with a random
  96-bit nonce prefixed to the ciphertext; the associated data binds the
  context.
* :func:`agree`: X25519 (RFC 7748) between a private key and a raw 32-byte
  public key; ``cryptography`` refuses low-order points (all-zero output).
* :func:`uniform_mod`: a 32-byte seed expanded by the ChaCha20 keystream
  (RFC 8439, zero nonce; each seed serves one purpose only) into integers
  exactly uniform mod ``m``: 32-bit words are cut to ``bitlen(m - 1)`` bits
  and words ``>= m`` are rejected. Never Flower's ``pseudo_rand_gen`` (a 32-bit
  seed into Mersenne Twister).

Long-term keys and their files live in :mod:`fedcrm.privacy.signing`;
:func:`write_private` writes the secret files of this package (mode 0600,
atomic).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcrm.errors import SecureAggregationError

KEY_BYTES = 32
NONCE_BYTES = 12


def context(*parts: Any) -> bytes:
    """Canonical encoding of a purpose and its parties (a JSON list), for ``info``/AAD."""
    return json.dumps(list(parts), separators=(",", ":"), ensure_ascii=True).encode()


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes of ``obj`` (sorted keys, no spaces): what gets signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, size: int | None = None) -> bytes:
    """Decode base64 text (of exactly ``size`` bytes when given).

    Raises
    ------
    SecureAggregationError
        Not base64 text, or the wrong size.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (AttributeError, binascii.Error, UnicodeEncodeError, ValueError):
        raise SecureAggregationError("a field is not base64 text") from None
    if size is not None and len(raw) != size:
        raise SecureAggregationError(f"a field holds {len(raw)} bytes, expected {size}")
    return raw


def hkdf(secret: bytes, *, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 of ``secret`` for the purpose ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open :func:`aead_encrypt` output.

    Raises
    ------
    SecureAggregationError
        Wrong key, wrong context, or tampered bytes.
    """
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise SecureAggregationError("authenticated decryption failed") from None


def new_agreement_key() -> X25519PrivateKey:
    """A fresh X25519 private key (OS CSPRNG)."""
    return X25519PrivateKey.generate()


def private_raw(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte X25519 private key."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_raw(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """The raw 32-byte X25519 public key."""
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agreement_key_from_raw(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from its raw 32 bytes."""
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519 shared secret with a raw public key.

    Raises
    ------
    SecureAggregationError
        ``public`` is not a valid X25519 public key (wrong size or low order).
    """
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise SecureAggregationError("invalid X25519 public key") from None


def uniform_mod(seed: bytes, count: int, modulus: int) -> np.ndarray:
    """``count`` integers exactly uniform in ``[0, modulus)`` from a 32-byte seed (int64).

    Deterministic: the same seed, count and modulus give the same vector.
    """
    if len(seed) != KEY_BYTES or not 2 <= modulus <= 2**32 or count < 0:
        raise ValueError("uniform_mod needs a 32-byte seed, 2 <= modulus <= 2**32, count >= 0")
    bits = (modulus - 1).bit_length()
    mask = np.uint32((1 << bits) - 1) if bits < 32 else np.uint32(0xFFFFFFFF)
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    parts, have = [], 0
    while have < count:
        need = count - have
        draw = int(need * (1 << bits) / modulus * 1.02) + 64  # expected need plus a margin
        words = np.frombuffer(stream.update(bytes(4 * draw)), dtype="<u4") & mask
        kept = words[words < modulus][:need]
        parts.append(kept)
        have += kept.size
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def write_private(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a secret file: mode 0600 from creation, fsync, then atomic rename over ``path``."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)  # in case the umask removed owner bits
    os.replace(tmp, p)
    return p
