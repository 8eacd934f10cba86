"""HistGBDT: scikit-learn-like API, missing values, degenerate features, importances."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from fedcrm.config import GBDTModelConfig
from fedcrm.models.gbdt import HistGBDT
from fedcrm.models.gbdt_bins import apply_bins, n_bins_of


def _data(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=n, n_features=8, n_informative=4, n_redundant=2, random_state=seed
    )
    return X, y


def test_fit_predict_proba_like_sklearn() -> None:
    X, y = _data()
    model = HistGBDT(n_estimators=20, max_depth=3)

    returned = model.fit(X[:1000], y[:1000])
    proba = model.predict_proba(X[1000:])

    assert returned is model
    assert proba.shape == (500, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert roc_auc_score(y[1000:], proba[:, 1]) > 0.9
    np.testing.assert_array_equal(model.predict(X[1000:]), (proba[:, 1] >= 0.5).astype(int))
    assert len(model.trees_) == 20
    assert len(model.bin_edges_) == model.n_features_in_ == 8
    assert all(t.depth <= 3 for t in model.trees_)
    np.testing.assert_array_equal(model.classes_, [0, 1])
    assert model.get_params()["max_depth"] == 3


def test_unfitted_and_bad_input_raise() -> None:
    X, y = _data(200)
    with pytest.raises(ValueError, match="not fitted"):
        HistGBDT().predict_proba(X)
    with pytest.raises(ValueError, match="binary"):
        HistGBDT(n_estimators=1).fit(X, y + 1)
    model = HistGBDT(n_estimators=1).fit(X, y)
    with pytest.raises(ValueError, match="shape"):
        model.predict_proba(X[:, :3])


def test_from_config_reads_hyper_parameters() -> None:
    cfg = GBDTModelConfig(n_estimators=7, max_depth=2, learning_rate=0.1, max_bin=16)

    model = HistGBDT.from_config(cfg)

    assert (model.n_estimators, model.max_depth, model.learning_rate, model.max_bin) == (
        7,
        2,
        0.1,
        16,
    )


def test_missing_value_direction_is_learned() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 3))
    # Feature 0 carries no signal in its values, only in being missing.
    X[(y == 1) & (rng.random(n) < 0.7), 0] = np.nan

    model = HistGBDT(n_estimators=10, max_depth=1).fit(X, y)

    root = model.trees_[0]
    assert root.feature[0] == 0
    missing_child = root.left[0] if root.default_left[0] else root.right[0]
    other_child = root.right[0] if root.default_left[0] else root.left[0]
    assert root.value[missing_child] > 0 > root.value[other_child]
    p = model.predict_proba(X)[:, 1]
    assert p[np.isnan(X[:, 0])].min() > p[~np.isnan(X[:, 0])].max()


def test_constant_and_all_missing_features_are_never_split() -> None:
    X, y = _data(800)
    X = np.column_stack([X, np.full(len(X), 3.0), np.full(len(X), np.nan)])

    model = HistGBDT(n_estimators=10, max_depth=3).fit(X, y)

    assert len(model.bin_edges_[8]) == 0 and len(model.bin_edges_[9]) == 0
    used = np.concatenate([t.feature[~t.is_leaf] for t in model.trees_])
    assert not np.isin(used, [8, 9]).any()
    assert np.isfinite(model.predict_proba(X)).all()


def test_no_usable_feature_gives_single_leaf_trees() -> None:
    X = np.full((50, 2), np.nan)
    y = np.r_[np.zeros(10), np.ones(40)]

    model = HistGBDT(n_estimators=5).fit(X, y)

    assert all(t.n_nodes == 1 for t in model.trees_)
    p = model.predict_proba(X)[:, 1]
    assert np.ptp(p) == 0 and p[0] > 0.5


def test_feature_importances_follow_the_signal() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1500, 4))
    y = (X[:, 2] + 0.2 * X[:, 0] + 0.1 * rng.normal(size=1500) > 0).astype(int)
    names = ["recency", "frequency", "monetary", "tenure"]

    model = HistGBDT(n_estimators=15, max_depth=3).fit(X, y, feature_names=names)

    assert model.feature_importances_.sum() == pytest.approx(1.0)
    assert np.argmax(model.feature_importances_) == 2
    total = model.feature_importance("total_gain")
    assert max(total, key=total.get) == "monetary"
    weights = model.feature_importance("weight")
    assert set(weights) <= set(names) and all(v >= 1 for v in weights.values())
    gains = model.feature_importance("gain")
    assert gains["monetary"] == pytest.approx(total["monetary"] / weights["monetary"])
    with pytest.raises(ValueError, match="kind"):
        model.feature_importance("bogus")  # type: ignore[arg-type]


def test_default_feature_names_are_xgboost_style() -> None:
    X, y = _data(300)

    model = HistGBDT(n_estimators=3).fit(X, y)

    assert all(k.startswith("f") for k in model.feature_importance())
    assert not hasattr(model, "feature_names_in_")


def test_binned_and_raw_routing_agree_on_training_rows() -> None:
    X, y = _data(600)
    X[::7, 1] = np.nan

    model = HistGBDT(n_estimators=5, max_depth=3).fit(X, y)

    # Binned routing during training and float32 routing at prediction agree.
    binned = apply_bins(X, model.bin_edges_)
    for tree in model.trees_:
        np.testing.assert_array_equal(
            tree.apply_binned(binned, missing_bin=n_bins_of(model.bin_edges_)), tree.apply(X)
        )


def test_from_trees_rebuilds_the_same_model() -> None:
    X, y = _data(500)
    model = HistGBDT(n_estimators=4, max_depth=2).fit(X, y)

    again = HistGBDT.from_trees(
        model.trees_, model.bin_edges_, model.base_score, model.get_params()
    )

    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))


def test_infinite_values_route_like_xgboost() -> None:
    X, y = _data(600)
    X[::11, 0] = np.inf
    X[::13, 0] = -np.inf

    model = HistGBDT(n_estimators=5, max_depth=3).fit(X, y)

    assert np.isfinite(model.bin_edges_[0]).all()
    assert np.isfinite(model.predict_proba(X)).all()
