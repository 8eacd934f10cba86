"""Server-side checks of the tree protocol, on hand-built arrays (no Flower run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedcrm.models.gbdt import HistGBDT
from fedcrm.server.tree_records import TreeArtifact, check_release, model_digest, trees_of


def _model() -> HistGBDT:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = (X[:, 0] + rng.normal(scale=0.5, size=300) > 0).astype(float)
    return HistGBDT(n_estimators=3, max_depth=2).fit(
        X, y, feature_names=["recency", "spend", "visits"]
    )


def _arrays(model: HistGBDT) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "edge_sizes": np.array([len(e) for e in model.bin_edges_]),
        "edges": np.concatenate(model.bin_edges_),
        "tree_sizes": np.array([t.n_nodes for t in model.trees_]),
    }
    per_tree = [t.to_arrays() for t in model.trees_]
    out.update({f"trees.{k}": np.concatenate([a[k] for a in per_tree]) for k in per_tree[0]})
    return out


def test_wrong_shape_and_non_finite_releases_are_rejected_naming_the_branch() -> None:
    shape = (2, 3, 5, 2)
    ok = check_release("b1", np.ones(60), shape)
    assert ok.shape == (60,)
    with pytest.raises(ValueError, match=r"branch b2: histogram has 59 values, expected 60"):
        check_release("b2", np.ones(59), shape)
    bad = np.ones(60)
    bad[7] = np.inf
    with pytest.raises(ValueError, match="branch b3: histogram contains non-finite values") as e:
        check_release("b3", bad, shape)
    assert "inf" not in str(e.value)  # never a value


def test_branches_agree_only_on_identical_models_and_steps() -> None:
    arrays = _arrays(_model())
    step = {"stage": "level", "tree": 3, "level": 0, "shape": [1, 3, 33, 2]}
    same = model_digest({k: v.copy() for k, v in arrays.items()}, dict(step))
    assert model_digest(arrays, step) == same
    moved = dict(arrays)
    moved["trees.value"] = arrays["trees.value"] + np.float32(1e-6)
    assert model_digest(moved, step) != same
    assert model_digest(arrays, {**step, "level": 1}) != same


def test_trees_round_trip_and_the_artifact_writes_xgboost_json_and_card(tmp_path: Path) -> None:
    model = _model()
    trees, edges = trees_of(_arrays(model))
    rebuilt = HistGBDT.from_trees(
        trees, edges, 0.5, model.get_params(), feature_names=["recency", "spend", "visits"]
    )
    X = np.random.default_rng(1).normal(size=(50, 3))
    np.testing.assert_array_equal(rebuilt.predict_proba(X), model.predict_proba(X))

    TreeArtifact(rebuilt, {"trees": 3}).save(tmp_path, {"run_id": "r"})
    doc = json.loads((tmp_path / "model.xgb.json").read_text())
    assert doc["learner"]["objective"]["name"] == "binary:logistic"
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["run_id"] == "r" and card["trees"] == 3
    assert card["feature_importance"]["total_gain"] == rebuilt.feature_importance("total_gain")
    assert "recency" in card["feature_importance"]["total_gain"]
