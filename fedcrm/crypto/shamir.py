"""Shamir secret sharing of 32-byte secrets over the prime field of ``2**521 - 1``.

A secret ``s < 2**256`` is the constant term of a random polynomial of degree
``threshold - 1`` over GF(p), ``p = 2**521 - 1`` (a Mersenne prime, larger
than any secret, so the secret is shared whole and exactly). Holder ``x``
(1-based) gets ``f(x)``, 66 bytes big endian. Any ``threshold`` shares give
back ``s`` by Lagrange interpolation at 0; fewer reveal nothing about it (every
secret is equally likely). Coefficients come from the OS CSPRNG (``secrets``).

Flower's SecAgg+ helpers share on pycryptodome's 16-byte GF(2^128) scheme and
live in ``flwr`` (which this package may not import), hence this small module.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from fedcrm.errors import SecureAggregationError

PRIME = 2**521 - 1
SHARE_BYTES = 66
SECRET_BYTES = 32


def split(secret: bytes, *, n: int, threshold: int) -> list[bytes]:
    """Shares of ``secret`` (32 bytes) for holders 1..n; any ``threshold`` reconstruct it.

    Raises
    ------
    ValueError
        ``secret`` is not 32 bytes, or not ``1 <= threshold <= n``.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes")
    if not 1 <= threshold <= n:
        raise ValueError(f"need 1 <= threshold <= n, got threshold={threshold}, n={n}")
    coeffs = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(y.to_bytes(SHARE_BYTES, "big"))
    return shares


def combine(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from ``threshold`` shares (holder index -> share); extra shares are ignored.

    A wrong share gives a wrong secret (or an error when the result does not
    fit in 32 bytes); callers check the result against a commitment.

    Raises
    ------
    SecureAggregationError
        Fewer than ``threshold`` shares, a malformed share, or a result that is
        not a 32-byte secret.
    """
    picked = sorted(shares.items())[:threshold]
    if len(picked) < threshold:
        raise SecureAggregationError(f"{len(picked)} shares, {threshold} needed")
    points = []
    for x, share in picked:
        y = int.from_bytes(share, "big") if len(share) == SHARE_BYTES else PRIME
        if not 1 <= x < PRIME or y >= PRIME:
            raise SecureAggregationError(f"malformed share from holder {x}")
        points.append((x, y))
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise SecureAggregationError("shares do not combine to a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
