"""Evaluation releases: what leaves a branch, and the pooled metrics computed from it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from fedcrm.models.evaluation import (
    EvaluationRelease,
    dp_release,
    grid_counts,
    pooled_metrics,
    thresholded_release,
)


def _branch(rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.25).astype(int)
    z = rng.normal(-1.8, 1.3, n) + 2.2 * y
    return y, 1 / (1 + np.exp(-z))


def test_thresholded_groups_each_hold_at_least_k_customers_and_carry_no_score() -> None:
    rng = np.random.default_rng(0)
    y, p = _branch(rng, 137)
    rel = thresholded_release(y, p, min_count=10)
    for groups, label in ((rel.positives, 1), (rel.negatives, 0)):
        assert np.all(groups.count >= 10)
        assert groups.count.sum() == np.sum(y == label)
    # No released location equals a customer's own logit (they are means of >= 10).
    own = np.log(p / (1 - p))
    locs = np.concatenate([rel.positives.logit, rel.negatives.logit])
    assert not np.any(np.isclose(locs[:, None], own[None, :], rtol=0, atol=1e-12))


def test_pooled_thresholded_metrics_match_the_exact_ones() -> None:
    rng = np.random.default_rng(1)
    parts = [_branch(rng) for _ in range(5)]
    pooled = pooled_metrics([thresholded_release(y, p) for y, p in parts])
    y = np.concatenate([a for a, _ in parts])
    p = np.concatenate([b for _, b in parts])
    assert pooled["n"] == y.size
    assert pooled["auc"] == pytest.approx(roc_auc_score(y, p), abs=0.003)
    assert pooled["logloss"] == pytest.approx(log_loss(y, p), rel=1e-9)
    assert pooled["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-9)
    pred = p >= 0.5
    assert pooled["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)


def test_a_label_with_fewer_than_k_customers_is_withheld() -> None:
    y = np.array([1, 1, 1] + [0] * 30)
    p = np.linspace(0.05, 0.95, y.size)
    rel = thresholded_release(y, p, min_count=10)
    assert rel.positives.count.size == 0
    assert rel.negatives.count.sum() == 30


def test_lift_and_capture_of_a_perfect_ranking() -> None:
    y = np.array([1] * 20 + [0] * 180)
    p = np.concatenate([np.linspace(0.9, 0.99, 20), np.linspace(0.01, 0.4, 180)])
    m = pooled_metrics([thresholded_release(y, p, min_count=5)])
    assert m["capture_top_10pct"] == pytest.approx(1.0)
    assert m["top_decile_lift"] == pytest.approx(10.0)
    assert m["auc"] == pytest.approx(1.0)


def test_dp_release_counts_carry_noise_of_the_stated_scale() -> None:
    rng = np.random.default_rng(2)
    y, p = _branch(rng)
    exact_pos, exact_neg = grid_counts(y, p)
    draws = np.array(
        [
            np.concatenate([r.positives.count - exact_pos, r.negatives.count - exact_neg])
            for r in (dp_release(y, p, noise_std=3.0, rng=rng) for _ in range(400))
        ]
    )
    assert abs(draws.mean()) < 0.1
    assert draws.std() == pytest.approx(3.0, rel=0.05)


def test_release_round_trips_through_a_record_and_rejects_malformed_ones() -> None:
    rng = np.random.default_rng(3)
    y, p = _branch(rng)
    rel = thresholded_release(y, p)
    back = EvaluationRelease.from_record(rel.to_record())
    assert pooled_metrics([back])["auc"] == pooled_metrics([rel])["auc"]
    record = rel.to_record()
    record["eval.pos.logit"] = record["eval.pos.logit"][:-1]
    with pytest.raises(ValueError, match="another length"):
        EvaluationRelease.from_record(record)
    record = rel.to_record()
    del record["eval.neg.loss"]
    with pytest.raises(ValueError, match="group sums"):
        EvaluationRelease.from_record(record)
