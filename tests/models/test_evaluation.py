"""Evaluation releases: what leaves a branch, and the pooled metrics computed from it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from fedcrm.models.evaluation import EvaluationRelease, dp_release, grid_counts, thresholded_release
from fedcrm.models.pooled import pooled_metrics


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


def _rare(rng: np.random.Generator, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Rare positives whose scores mostly stay below 0.5: the best F1 threshold is lower."""
    y = (rng.random(n) < 0.08).astype(int)
    z = rng.normal(-3.0, 1.0, n) + 2.0 * y
    return y, 1 / (1 + np.exp(-z))


def test_f1_threshold_is_chosen_on_the_validation_half_and_scored_on_the_other() -> None:
    from sklearn.metrics import f1_score

    from fedcrm.models.pooled import threshold_candidates

    rng = np.random.default_rng(3)
    y, p = _rare(rng)
    half = rng.random(y.size) < 0.5
    release = thresholded_release(y, p, min_count=1, validation=half)
    assert [part.n for part in release.parts()] == [float((~half).sum()), float(half.sum())]
    m = pooled_metrics([release])
    assert m["f1_threshold_from"] == "validation" and m["f1_threshold"] < 0.5
    # The threshold is the validation half's best candidate ...
    best = max(threshold_candidates(), key=lambda t: f1_score(y[half], p[half] >= t))
    assert m["f1_threshold"] == pytest.approx(best)
    # ... F1 is that threshold's on the other half, and beats 0.5 there.
    rest = ~half
    assert m["f1"] == pytest.approx(f1_score(y[rest], p[rest] >= best), abs=1e-12)
    assert m["f1"] > f1_score(y[rest], p[rest] >= 0.5)
    assert m["f1_at_default"] == pytest.approx(f1_score(y, p >= 0.5), abs=1e-12)
    # Every other metric covers both halves.
    assert m["n"] == y.size
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    # Without validation parts, F1 stays at 0.5.
    plain = pooled_metrics([thresholded_release(y, p, min_count=1)])
    assert plain["f1_threshold_from"] == "default" and plain["f1_threshold"] == 0.5
    assert plain["f1"] == pytest.approx(f1_score(y, p >= 0.5), abs=1e-12)


def test_a_dp_release_with_a_validation_half_moves_one_count_per_customer() -> None:
    """Halves are disjoint: sensitivity 1, so one mechanism's charge covers both."""
    rng = np.random.default_rng(4)
    y, p = _rare(rng, 500)
    half = rng.random(y.size) < 0.5

    def counts(mask_out: int | None) -> np.ndarray:
        keep = np.ones(y.size, bool) if mask_out is None else np.arange(y.size) != mask_out
        r = dp_release(
            y[keep], p[keep], noise_std=1e-9, rng=np.random.default_rng(0), validation=half[keep]
        )
        return np.concatenate(
            [np.concatenate([x.positives.count, x.negatives.count]) for x in r.parts()]
        )

    full = counts(None)
    for i in (0, 7, 123):
        diff = np.abs(full - counts(i))
        assert np.isclose(diff.sum(), 1.0, atol=1e-6) and np.isclose(diff.max(), 1.0, atol=1e-6)
    record = dp_release(y, p, noise_std=2.0, rng=rng, validation=half).to_record()
    back = EvaluationRelease.from_record(record)
    assert back.validation is not None and back.validation.mechanism == "dp"
    assert back.to_record() == record
