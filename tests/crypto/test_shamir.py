"""Shamir sharing of 32-byte secrets over GF(2**521 - 1)."""

from __future__ import annotations

import itertools
import secrets

import pytest

from fedcrm.crypto import shamir
from fedcrm.errors import SecureAggregationError


def test_any_threshold_shares_rebuild_the_secret() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, n=5, threshold=3)
    assert len(shares) == 5 and all(len(s) == shamir.SHARE_BYTES for s in shares)
    for holders in itertools.combinations(range(1, 6), 3):
        assert shamir.combine({x: shares[x - 1] for x in holders}, threshold=3) == secret


def test_extreme_secrets_and_fresh_randomness() -> None:
    for secret in (bytes(32), b"\xff" * 32):
        shares = shamir.split(secret, n=3, threshold=2)
        assert shamir.combine({1: shares[0], 3: shares[2]}, threshold=2) == secret
    again = shamir.split(b"\x01" * 32, n=3, threshold=2)
    assert again != shamir.split(b"\x01" * 32, n=3, threshold=2)


def test_fewer_shares_fail_and_a_wrong_share_changes_the_result() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, n=4, threshold=3)
    with pytest.raises(SecureAggregationError, match="3 needed"):
        shamir.combine({1: shares[0], 2: shares[1]}, threshold=3)
    bad = bytearray(shares[1])
    bad[-1] ^= 1
    try:
        got = shamir.combine({1: shares[0], 2: bytes(bad), 3: shares[2]}, threshold=3)
    except SecureAggregationError:
        return  # the wrong point does not even give a 32-byte value
    assert got != secret


def test_threshold_minus_one_shares_fit_every_secret() -> None:
    # Information-theoretic hiding: for T-1 shares and ANY candidate secret there is a
    # polynomial of degree T-1 through them; here T = 2: the line through (0, s) and (1, y1).
    shares = shamir.split(secrets.token_bytes(32), n=3, threshold=2)
    y1 = int.from_bytes(shares[0], "big")
    for candidate in (bytes(32), b"\x42" * 32):
        s = int.from_bytes(candidate, "big")
        y2 = (s + 2 * (y1 - s)) % shamir.PRIME  # the line's value at x = 2
        fake = {1: shares[0], 2: y2.to_bytes(shamir.SHARE_BYTES, "big")}
        assert shamir.combine(fake, threshold=2) == candidate


@pytest.mark.parametrize(("n", "threshold"), [(3, 0), (3, 4)])
def test_split_validates(n: int, threshold: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(bytes(32), n=n, threshold=threshold)
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(bytes(31), n=3, threshold=2)
