"""XGBoost JSON export: xgboost.Booster loads the file and predicts the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification

from fedcrm.config import GBDTModelConfig
from fedcrm.models.gbdt import HistGBDT
from fedcrm.models.gbdt_reference import fit_from_partitions

xgb = pytest.importorskip("xgboost")


def _data_with_missing(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=3000, n_features=10, n_informative=5, random_state=seed)
    rng = np.random.default_rng(seed)
    X[rng.random(X.shape) < 0.15] = np.nan
    X[:, 3] *= 1e4  # large magnitudes stress float32 thresholds
    return X, y


@pytest.mark.parametrize("base_score", [0.5, 0.3])
def test_booster_predicts_the_same_probabilities(tmp_path: Path, base_score: float) -> None:
    X, y = _data_with_missing()
    model = HistGBDT(n_estimators=30, max_depth=4, base_score=base_score).fit(X[:2000], y[:2000])

    path = model.export_xgboost_json(tmp_path / "model.xgb.json")
    booster = xgb.Booster(model_file=str(path))

    # Training rows sit exactly on bin edges: the hardest case for thresholds.
    for rows in (X[:2000], X[2000:]):
        expected = model.predict_proba(rows)[:, 1]
        got = booster.predict(xgb.DMatrix(rows))
        assert np.abs(got - expected).max() <= 1e-6
        margin = booster.predict(xgb.DMatrix(rows), output_margin=True)
        assert np.abs(margin - model.predict_margin(rows)).max() <= 1e-5


def test_feature_names_and_tree_fields_are_written(tmp_path: Path) -> None:
    X, y = _data_with_missing(1)
    names = [f"feat_{i}" for i in range(X.shape[1])]
    model = HistGBDT(n_estimators=3, max_depth=2).fit(X, y, feature_names=names)

    path = model.export_xgboost_json(tmp_path / "m.json")
    doc = json.loads(path.read_text())
    booster = xgb.Booster(model_file=str(path))

    assert booster.feature_names == names
    learner = doc["learner"]
    assert learner["objective"]["name"] == "binary:logistic"
    tree = learner["gradient_booster"]["model"]["trees"][0]
    assert tree["parents"][0] == 2147483647
    assert len(tree["split_conditions"]) == int(tree["tree_param"]["num_nodes"])
    # Gain importances as XGBoost computes them from the file.
    ours = model.feature_importance("total_gain")
    theirs = booster.get_score(importance_type="total_gain")
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert theirs[name] == pytest.approx(value, rel=1e-5)
    predictions = booster.predict(xgb.DMatrix(X, feature_names=names))
    assert np.abs(predictions - model.predict_proba(X)[:, 1]).max() <= 1e-6


@pytest.mark.parametrize("mode", ["exact", "batched"])
def test_federated_models_export_too(tmp_path: Path, mode: str) -> None:
    X, y = _data_with_missing(2)
    parts = [(X[i:2000:3], y[i:2000:3]) for i in range(3)]
    config = GBDTModelConfig(n_estimators=12, max_depth=3, mode=mode, trees_per_exchange=4)
    model = fit_from_partitions(parts, config).model

    booster = xgb.Booster(model_file=str(model.export_xgboost_json(tmp_path / "fed.json")))

    got = booster.predict(xgb.DMatrix(X))
    assert np.abs(got - model.predict_proba(X)[:, 1]).max() <= 1e-6
