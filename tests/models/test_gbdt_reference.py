"""Federation over row partitions: lossless exact trees, and the batched mode."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from fedcrm.config import GBDTModelConfig
from fedcrm.models.gbdt import HistGBDT
from fedcrm.models.gbdt_batched import batched_leaf_sums, random_split_candidates
from fedcrm.models.gbdt_bins import apply_bins, compute_bin_edges, n_bins_of
from fedcrm.models.gbdt_reference import fit_from_partitions


def _branches() -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=2400, n_features=8, n_informative=4, random_state=3)
    rng = np.random.default_rng(3)
    X[rng.random(X.shape) < 0.1] = np.nan
    # Three branches of unequal size and label balance.
    order = np.argsort(X[:, 0] + rng.normal(size=len(X)))
    cuts = np.split(order[:2000], [400, 1100])
    return [(X[c], y[c]) for c in cuts], X[order[2000:]], y[order[2000:]]


def test_summed_branch_histograms_grow_the_centralized_trees() -> None:
    parts, X_test, _ = _branches()
    config = GBDTModelConfig(n_estimators=12, max_depth=4)

    run = fit_from_partitions(parts, config)
    pooled_X = np.concatenate([X for X, _ in parts])
    pooled_y = np.concatenate([y for _, y in parts])
    central = HistGBDT.from_config(config).fit(pooled_X, pooled_y, bin_edges=run.model.bin_edges_)

    for fed, cen in zip(run.model.trees_, central.trees_, strict=True):
        for name in ("left", "right", "feature", "bin", "default_left"):
            np.testing.assert_array_equal(getattr(fed, name), getattr(cen, name))
        np.testing.assert_array_equal(fed.threshold, cen.threshold)
        np.testing.assert_allclose(fed.value, cen.value, rtol=0, atol=1e-9)
    for X in (pooled_X, X_test):
        diff = run.model.predict_proba(X) - central.predict_proba(X)
        assert np.abs(diff).max() <= 1e-9
    # 2 exchanges for the bin edges, then one per level of every tree.
    assert run.exchanges == 2 + sum(min(t.depth + 1, 4) for t in run.model.trees_)


def test_federated_bin_edges_are_close_to_centralized_quantiles() -> None:
    parts, X_test, y_test = _branches()
    config = GBDTModelConfig(n_estimators=20, max_depth=3)
    pooled_X = np.concatenate([X for X, _ in parts])
    pooled_y = np.concatenate([y for _, y in parts])

    fed = fit_from_partitions(parts, config).model
    central = HistGBDT.from_config(config).fit(pooled_X, pooled_y)

    auc_fed = roc_auc_score(y_test, fed.predict_proba(X_test)[:, 1])
    auc_central = roc_auc_score(y_test, central.predict_proba(X_test)[:, 1])
    assert abs(auc_fed - auc_central) < 0.02


def test_random_trees_are_identical_at_every_branch_and_sums_add_up() -> None:
    parts, _, _ = _branches()
    edges = compute_bin_edges(np.concatenate([X for X, _ in parts]), max_bin=16)

    a = random_split_candidates(edges, max_depth=3, n_trees=4, seed=(7, 0))
    b = random_split_candidates(edges, max_depth=3, n_trees=4, seed=(7, 0))
    sums = [
        batched_leaf_sums(
            apply_bins(X, edges),
            np.ones(len(y)),
            np.full(len(y), 0.25),
            a,
            missing_bin=n_bins_of(edges),
        )
        for X, y in parts
    ]

    for s, t in zip(a, b, strict=True):
        np.testing.assert_array_equal(s.feature, t.feature)
        np.testing.assert_array_equal(s.threshold, t.threshold)
        assert s.depth == 3 and s.is_leaf.sum() == 8
    total = np.sum(sums, axis=0)
    assert total.shape == (4, 15, 2)
    np.testing.assert_allclose(total[:, :, 0].sum(axis=1), sum(len(y) for _, y in parts))


def test_batched_mode_needs_few_exchanges_and_still_learns() -> None:
    parts, X_test, y_test = _branches()
    config = GBDTModelConfig(n_estimators=40, max_depth=3, mode="batched", trees_per_exchange=10)

    run = fit_from_partitions(parts, config, seed=1)

    assert run.exchanges == 2 + 4
    assert len(run.model.trees_) == 40
    assert roc_auc_score(y_test, run.model.predict_proba(X_test)[:, 1]) > 0.8
