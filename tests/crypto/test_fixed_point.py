"""Fixed-point range: sums of up to K contributions never wrap modulo t."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.crypto import fixed_point as fp
from fedcrm.crypto.bfv_params import PLAIN_MODULUS
from fedcrm.errors import EncryptionError

T, K, SCALE = PLAIN_MODULUS, 64, 256.0


def test_range_arithmetic() -> None:
    bound = fp.max_abs_quantized(plain_modulus=T, max_contributors=K)
    assert bound == (T - 1) // (2 * K) == 13952
    assert K * bound <= (T - 1) // 2 < K * (bound + 1)
    assert fp.max_abs_value(scale=SCALE, plain_modulus=T, max_contributors=K) == bound / SCALE


@pytest.mark.parametrize("sign", [1, -1])
def test_sum_of_k_extreme_contributions_decodes_exactly(sign: int) -> None:
    limit = fp.max_abs_value(scale=SCALE, plain_modulus=T, max_contributors=K)
    x = np.full(3, sign * limit)
    total = sum(fp.quantize(x, scale=SCALE, plain_modulus=T, max_contributors=K) for _ in range(K))
    assert np.array_equal(fp.dequantize(total % T, scale=SCALE, plain_modulus=T), K * x)
    # One more contribution would wrap: that is why K bounds the range.
    wrapped = (total + fp.quantize(x, scale=SCALE, plain_modulus=T, max_contributors=K)) % T
    assert np.all(np.sign(fp.dequantize(wrapped, scale=SCALE, plain_modulus=T)) == -sign)


def test_round_to_nearest_and_clip(caplog: pytest.LogCaptureFixture) -> None:
    x = np.array([0.0, 1.0 / 512 + 1e-9, -0.3, 1e6, -1e6, 2.5 / 256])
    q = fp.quantize(x, scale=SCALE, plain_modulus=T, max_contributors=K)
    assert q.dtype == np.int64 and q.min() >= 0 and q.max() < T
    back = fp.dequantize(q, scale=SCALE, plain_modulus=T)
    limit = fp.max_abs_value(scale=SCALE, plain_modulus=T, max_contributors=K)
    assert np.allclose(back[:3], x[:3], atol=0.5 / SCALE)
    assert back[3] == limit and back[4] == -limit  # clipped, never wrapped
    assert back[5] == 2.0 / 256  # ties to even
    assert "2 of 6 values clipped" in caplog.text


def test_random_sums_round_trip() -> None:
    rng = np.random.default_rng(3)
    xs = [rng.normal(0, 5, 1000) for _ in range(10)]
    total = sum(fp.quantize(x, scale=SCALE, plain_modulus=T, max_contributors=10) for x in xs) % T
    got = fp.dequantize(total, scale=SCALE, plain_modulus=T)
    assert np.max(np.abs(got - sum(xs))) <= 10 * 0.5 / SCALE


@pytest.mark.parametrize(
    ("kwargs", "values", "match"),
    [
        ({"scale": 0.0}, [1.0], "scale"),
        ({"scale": SCALE}, [np.nan], "NaN"),
        ({"scale": SCALE}, [[1.0]], "flat vector"),
        ({"scale": SCALE, "max_contributors": 0}, [1.0], "max_contributors"),
        ({"scale": SCALE, "max_contributors": T}, [1.0], "too small"),
    ],
)
def test_quantize_validates(kwargs: dict, values: list, match: str) -> None:
    kwargs = {"plain_modulus": T, "max_contributors": K, **kwargs}
    with pytest.raises(EncryptionError, match=match):
        fp.quantize(np.array(values), **kwargs)


def test_dequantize_refuses_values_outside_the_residues() -> None:
    with pytest.raises(EncryptionError, match="residues"):
        fp.dequantize(np.array([T]), scale=SCALE, plain_modulus=T)
