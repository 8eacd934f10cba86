"""Mask expansion (exactly uniform mod t), AEAD and X25519 agreement."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.crypto import primitives as pr
from fedcrm.errors import SecureAggregationError


def test_uniform_mod_is_deterministic_and_in_range() -> None:
    seed = bytes(range(32))
    a = pr.uniform_mod(seed, 50_000, 1785857)
    assert np.array_equal(a, pr.uniform_mod(seed, 50_000, 1785857))
    assert a.min() >= 0 and a.max() < 1785857 and a.dtype == np.int64
    assert not np.array_equal(a, pr.uniform_mod(bytes(31) + b"\x01", 50_000, 1785857))
    assert pr.uniform_mod(seed, 0, 7).size == 0


def test_uniform_mod_has_no_modulo_bias() -> None:
    # m = 3 * 2**29: reducing 31-bit words mod m would make the low third twice as likely;
    # rejection sampling keeps the three thirds equally likely.
    m = 3 * 2**29
    draws = pr.uniform_mod(b"\x07" * 32, 300_000, m)
    counts = np.bincount(draws // 2**29, minlength=3)
    assert np.all(np.abs(counts - 100_000) < 1_500)  # ~5 sigma
    small = np.bincount(pr.uniform_mod(b"\x08" * 32, 90_000, 3), minlength=3)
    assert np.all(np.abs(small - 30_000) < 800)


def test_aead_binds_key_context_and_bytes() -> None:
    key = b"k" * 32
    box = pr.aead_encrypt(key, b"share", b"ctx")
    assert pr.aead_decrypt(key, box, b"ctx") == b"share"
    for k, b, aad in (
        (b"x" * 32, box, b"ctx"),
        (key, box, b"other"),
        (key, box[:-1] + b"\0", b"ctx"),
    ):
        with pytest.raises(SecureAggregationError, match="authenticated decryption failed"):
            pr.aead_decrypt(k, b, aad)


def test_agreement_is_symmetric_and_refuses_bad_points() -> None:
    a, b = pr.new_agreement_key(), pr.new_agreement_key()
    assert pr.agree(a, pr.public_raw(b)) == pr.agree(b, pr.public_raw(a))
    assert pr.public_raw(pr.agreement_key_from_raw(pr.private_raw(a))) == pr.public_raw(a)
    with pytest.raises(SecureAggregationError, match="invalid X25519"):
        pr.agree(a, bytes(32))  # low-order point: all-zero shared secret
    with pytest.raises(SecureAggregationError, match="invalid X25519"):
        pr.agree(a, b"short")
