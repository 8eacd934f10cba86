"""FedAvg and reply checks with hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.errors import UpdateRejectedError
from fedcrm.server.aggregate import check_update, weighted_average


def test_weighted_average_weights_by_examples() -> None:
    a = [np.array([1.0, 1.0]), np.array([[2.0]])]
    b = [np.array([3.0, 5.0]), np.array([[4.0]])]
    avg = weighted_average([a, b], [1, 3])
    np.testing.assert_allclose(avg[0], [2.5, 4.0])
    np.testing.assert_allclose(avg[1], [[3.5]])


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ([np.zeros(2)], "1 weight arrays"),
        ([np.zeros(3), np.zeros((1, 1))], "shape"),
        ([np.array([0.0, np.nan]), np.zeros((1, 1))], "non-finite"),
        ([np.array([0.0, np.inf]), np.zeros((1, 1))], "non-finite"),
    ],
)
def test_bad_updates_are_rejected_with_the_branch_named(update: list, match: str) -> None:
    like = [np.zeros(2), np.zeros((1, 1))]
    with pytest.raises(UpdateRejectedError, match=f"branch b7.*{match}"):
        check_update("b7", update, like)
