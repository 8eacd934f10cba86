"""Calibration maps fitted from pooled evaluation releases, and gains curves."""

from __future__ import annotations

import numpy as np
import pytest

from fedcrm.models.calibration import (
    Calibration,
    calibration_error,
    fit_calibration,
    gains_curve,
)
from fedcrm.models.evaluation import dp_release, sigmoid, thresholded_release
from fedcrm.models.pooled import pooled_metrics


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(2 z - 0.5) while the model says sigmoid(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < sigmoid(2.0 * z - 0.5)).astype(int)
    return y, sigmoid(z), z


def _releases(y: np.ndarray, p: np.ndarray, branches: int = 4) -> list:
    parts = np.array_split(np.arange(y.size), branches)
    return [thresholded_release(y[i], p[i], min_count=10) for i in parts]


def test_platt_recovers_the_true_slope_and_intercept() -> None:
    y, p, _ = _miscalibrated(40_000, 0)
    cal = fit_calibration(_releases(y, p), "platt")

    assert cal is not None and cal.method == "platt"
    assert cal.a == pytest.approx(2.0, abs=0.15)
    assert cal.b == pytest.approx(-0.5, abs=0.1)
    assert cal.ece_after < 0.02 < cal.ece_before
    assert cal.customers == pytest.approx(40_000)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_fitted_on_one_half_helps_the_other(method: str) -> None:
    y, p, _ = _miscalibrated(30_000, 1)
    fit, held = slice(0, 15_000), slice(15_000, None)
    cal = fit_calibration(_releases(y[fit], p[fit]), method)  # type: ignore[arg-type]
    assert cal is not None

    before = pooled_metrics([thresholded_release(y[held], p[held], min_count=1)])["ece"]
    after = pooled_metrics([thresholded_release(y[held], cal.apply(p[held]), min_count=1)])["ece"]
    assert after < 0.5 * before
    assert np.all(np.diff(cal.apply(np.linspace(0.001, 0.999, 200))) >= 0)  # monotone


def test_dp_grid_releases_calibrate_too() -> None:
    y, p, _ = _miscalibrated(20_000, 2)
    rng = np.random.default_rng(0)
    releases = [dp_release(y[i::2], p[i::2], noise_std=2.0, rng=rng) for i in range(2)]
    cal = fit_calibration(releases, "platt")
    assert cal is not None
    assert calibration_error(releases, cal) < calibration_error(releases)


def test_nothing_to_calibrate_against_without_both_labels() -> None:
    p = np.linspace(0.1, 0.9, 100)
    assert fit_calibration([thresholded_release(np.ones(100), p)], "platt") is None


def test_json_round_trip_and_malformed_maps() -> None:
    y, p, _ = _miscalibrated(5_000, 3)
    for method in ("platt", "isotonic"):
        cal = fit_calibration(_releases(y, p), method)  # type: ignore[arg-type]
        assert cal is not None
        back = Calibration.from_json(cal.to_json())
        np.testing.assert_allclose(back.apply(p), cal.apply(p))
    with pytest.raises(ValueError, match="increase"):
        Calibration("isotonic", knots_logit=(0.0, -1.0), knots_prob=(0.2, 0.3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Calibration("isotonic", knots_logit=(0.0, 1.0), knots_prob=(0.2, 1.3))
    with pytest.raises(ValueError, match="method"):
        Calibration.from_json({"method": "magic"})


def test_gains_curve_agrees_with_the_pooled_lift_and_capture() -> None:
    y, p, _ = _miscalibrated(20_000, 4)
    releases = _releases(y, p)
    curve = gains_curve(releases)
    pooled = pooled_metrics(releases)

    sc, sp = curve["share_customers"], curve["share_positives"]
    assert (sc[0], sp[0], sc[-1], sp[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(sc) >= 0) and np.all(np.diff(sp) >= 0)
    assert np.interp(0.1, sc, sp) == pytest.approx(pooled["capture_top_10pct"], abs=0.005)
    lift_at_10 = np.interp(0.1, sc, sp) / 0.1
    assert lift_at_10 == pytest.approx(pooled["top_decile_lift"], rel=0.01)
