"""Per-set metrics and their privacy-friendly pooling across branches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedcrm.models.metrics import (
    auc_from_histograms,
    binary_metrics,
    metrics_from_summaries,
    score_summary,
)


def _branches(seed: int = 0):
    rng = np.random.default_rng(seed)
    parts = []
    for size, shift in ((300, 0.8), (57, 0.3), (1000, 1.2), (5, 0.0)):
        y = rng.integers(0, 2, size=size)
        p = 1 / (1 + np.exp(-(rng.normal(size=size) + shift * (2 * y - 1))))
        parts.append((y, p))
    # exact 0 / 1 / 0.5 scores exercise clipping, the last bin and the threshold
    parts.append((np.array([0, 1, 1, 0]), np.array([0.0, 1.0, 0.5, 0.5])))
    return parts


def test_binary_metrics_values():
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["logloss"] > 0
    one_class = binary_metrics(np.array([1, 1]), np.array([0.2, 0.7]))
    assert math.isnan(one_class["auc"]) and one_class["accuracy"] == 0.5
    assert np.isfinite(binary_metrics(np.array([0, 1]), np.array([1.0, 0.0]))["logloss"])


def test_pooled_summaries_match_sklearn_on_concatenation():
    parts = _branches()
    pooled = metrics_from_summaries([score_summary(y, p) for y, p in parts])
    y = np.concatenate([y for y, _ in parts])
    p = np.concatenate([p for _, p in parts])
    ref = binary_metrics(y, p)
    assert abs(pooled["auc"] - ref["auc"]) < 2e-3
    for key in ("f1", "logloss", "accuracy"):
        assert pooled[key] == pytest.approx(ref[key], abs=1e-9, rel=1e-9)
    assert pooled["n"] == y.size


def test_summaries_add_up():
    parts = _branches(1)
    summaries = [score_summary(y, p, bins=64) for y, p in parts]
    total = {k: sum(np.asarray(s[k]) for s in summaries) for k in summaries[0]}
    assert metrics_from_summaries([total]) == metrics_from_summaries(summaries)


def test_histogram_auc_is_exact_without_ties_within_bins():
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.55, 0.75, 0.95])
    s = score_summary(y, p, bins=10)
    assert auc_from_histograms(s["hist_pos"], s["hist_neg"]) == pytest.approx(roc_auc_score(y, p))
    # all in one bin: every pair is a tie
    s1 = score_summary(y, p, bins=1)
    assert auc_from_histograms(s1["hist_pos"], s1["hist_neg"]) == 0.5


def test_edge_cases():
    one = metrics_from_summaries([score_summary(np.array([1, 1]), np.array([0.3, 0.9]))])
    assert math.isnan(one["auc"])
    with pytest.raises(ValueError):
        metrics_from_summaries([])
    with pytest.raises(ValueError, match="bins"):
        metrics_from_summaries(
            [
                score_summary(np.array([1]), np.array([0.3]), bins=4),
                score_summary(np.array([1]), np.array([0.3])),
            ]
        )
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
