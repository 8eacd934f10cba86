"""A branch's validation customers: a fixed half of its test customers, or none when few."""

from __future__ import annotations

import numpy as np

from fedcrm.data.split import MIN_VALIDATION_TEST, holdout_mask, validation_mask

KEY = b"k" * 32


def _ids(n: int) -> np.ndarray:
    return np.array([f"c{i}" for i in range(n)])


def test_validation_is_about_half_of_the_test_customers_and_stable() -> None:
    ids = _ids(20_000)
    test = ids[holdout_mask(ids, "b1", KEY, 0.2)]
    mask = validation_mask(test, "b1", KEY, 0.2)
    assert len(test) > MIN_VALIDATION_TEST
    assert 0.45 < mask.mean() < 0.55
    assert np.array_equal(mask, validation_mask(test, "b1", KEY, 0.2))
    # Another branch's key draws other halves.
    assert not np.array_equal(mask, validation_mask(test, "b1", b"x" * 32, 0.2))


def test_a_small_test_set_sets_no_validation_customers_aside() -> None:
    test = _ids(MIN_VALIDATION_TEST - 1)
    assert not validation_mask(test, "b1", KEY, 0.2).any()
