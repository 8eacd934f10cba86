"""Fixed-point limbs: sums of encoded vectors decode exactly to the sum of the values."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.crypto.limbs import LimbCodec
from fedcrm.errors import EncryptionError

T = 1785857


@pytest.mark.parametrize(("k", "bound", "bits"), [(3, 64.0, 24), (64, 64.0, 16), (5, 2.0**22, 8)])
def test_sums_of_encodings_decode_to_the_sum_of_values(k: int, bound: float, bits: int) -> None:
    codec = LimbCodec.plan(plain_modulus=T, max_contributors=k, bound=bound, precision_bits=bits)
    assert codec.scale_bits >= bits
    rng = np.random.default_rng(0)
    values = [rng.uniform(-bound, bound, 500) for _ in range(k)]
    digits = [codec.encode(v)[0] for v in values]
    assert all(d.min() >= 0 and d.max() < T for d in digits)
    total = np.sum(digits, axis=0)
    assert total.max() < T  # the slot sums never wrap modulo t
    decoded = codec.decode(total % T, k)
    np.testing.assert_allclose(decoded, np.sum(values, axis=0), atol=k * codec.precision)


def test_values_beyond_the_bound_are_clipped_and_counted() -> None:
    codec = LimbCodec.plan(plain_modulus=T, max_contributors=2, bound=1.0, precision_bits=10)
    digits, clipped = codec.encode(np.array([0.5, 3.0, -7.0]))
    assert clipped == 2
    np.testing.assert_allclose(codec.decode(digits, 1), [0.5, 1.0, -1.0], atol=codec.precision)


def test_an_aggregate_that_cannot_be_a_sum_is_refused() -> None:
    codec = LimbCodec.plan(plain_modulus=T, max_contributors=3, bound=1.0, precision_bits=10)
    digits, _ = codec.encode(np.zeros(4))
    with pytest.raises(EncryptionError, match="out of range"):
        codec.decode(digits + (1 << codec.limb_bits), 1)
    with pytest.raises(EncryptionError, match="length or contributors"):
        codec.decode(digits, 4)  # more contributors than the codec was planned for
