"""Population stability of each feature between training and scoring customers."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.models.drift import PSI_MAJOR, DriftCheck, DriftReference, drift_reference, psi


def test_psi_matches_its_definition() -> None:
    expected = np.array([0.5, 0.3, 0.2])
    actual = np.array([0.3, 0.3, 0.4])
    by_hand = (0.3 - 0.5) * np.log(0.3 / 0.5) + (0.4 - 0.2) * np.log(0.4 / 0.2)
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, 1000 * expected) == pytest.approx(0.0)  # counts or shares alike


def test_the_same_population_is_stable_and_a_shifted_one_is_flagged() -> None:
    rng = np.random.default_rng(0)
    train = np.column_stack([rng.normal(size=5000), rng.poisson(2.0, 5000), rng.random(5000)])
    ref = drift_reference(train, ["stable", "counts", "shifted"])

    today = np.column_stack([rng.normal(size=4000), rng.poisson(2.0, 4000), rng.random(4000) + 0.4])
    check = DriftCheck(ref)
    check.add(today[:1500])  # block by block, as scoring does
    check.add(today[1500:])
    report = check.report()

    assert report["psi"]["stable"] < 0.02
    assert report["psi"]["counts"] < 0.02  # a discrete feature with ties
    assert report["psi"]["shifted"] > PSI_MAJOR
    assert report["major_shift"] == ["shifted"]
    assert report["customers"] == 4000 and report["training_customers"] == 5000


def test_the_reference_round_trips_and_refuses_malformed_json() -> None:
    rng = np.random.default_rng(1)
    ref = drift_reference(rng.exponential(size=(800, 2)), ["a", "b"])
    back = DriftReference.from_json(ref.to_json())
    assert back == ref
    assert all(len(s) == len(e) + 1 for e, s in zip(back.edges, back.shares, strict=True))
    doc = ref.to_json()
    doc["features"][0]["edges"] = doc["features"][0]["edges"][::-1]
    with pytest.raises(ValueError, match="increase"):
        DriftReference.from_json(doc)
    with pytest.raises(ValueError, match="malformed"):
        DriftReference.from_json({"features": [{"name": "a"}], "customers": 1})
