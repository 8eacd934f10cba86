"""Export a :class:`~fedcrm.models.gbdt.HistGBDT` to XGBoost's JSON model format.

The layout follows what XGBoost 3.2 writes with ``Booster.save_model("m.json")``
(schema: ``doc/model.schema`` in XGBoost's sources), objective
``binary:logistic``. ``xgboost.Booster(model_file=path)`` loads the file and
predicts the same probabilities; xgboost itself is not needed to write it.

Two details make predictions identical rather than close:

* thresholds are the float32 bin edges, and binning compares float32 values, so
  XGBoost's ``x < split_condition`` (in float32) sends every row where we do;
* leaf values are float32 already, so writing them loses nothing.

``base_score`` is written as a plain number (``"5E-1"``), which XGBoost 2.x and
3.x both read (3.x itself writes a one-element vector ``"[5E-1]"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedcrm.models.gbdt import HistGBDT
    from fedcrm.models.gbdt_tree import Tree

XGBOOST_FORMAT_VERSION = (3, 2, 0)
# XGBoost marks the root's parent with the largest int32.
_NO_PARENT = 2147483647


def _floats(values: np.ndarray) -> list[float]:
    # float32 -> Python float is exact, and JSON round-trips doubles exactly.
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


def _tree_json(tree: Tree, tree_id: int, n_features: int) -> dict[str, Any]:
    leaf = tree.is_leaf
    n = tree.n_nodes
    parents = tree.parent.astype(np.int64)
    parents[0] = _NO_PARENT
    conditions = np.where(leaf, tree.value, tree.threshold)
    return {
        "base_weights": _floats(tree.value),
        "categories": [],
        "categories_nodes": [],
        "categories_segments": [],
        "categories_sizes": [],
        "default_left": [int(d and not lf) for d, lf in zip(tree.default_left, leaf, strict=True)],
        "id": tree_id,
        "left_children": [int(c) for c in tree.left],
        "loss_changes": _floats(np.where(leaf, 0.0, tree.gain)),
        "parents": [int(p) for p in parents],
        "right_children": [int(c) for c in tree.right],
        "split_conditions": _floats(conditions),
        "split_indices": [int(f) for f in np.where(leaf, 0, tree.feature)],
        "split_type": [0] * n,
        "sum_hessian": _floats(tree.cover),
        "tree_param": {
            "num_deleted": "0",
            "num_feature": str(n_features),
            "num_nodes": str(n),
            "size_leaf_vector": "1",
        },
    }


def to_xgboost_json(model: HistGBDT) -> dict[str, Any]:
    """The fitted ``model`` as XGBoost's JSON document (a dict)."""
    model._check_fitted()
    n_features = model.n_features_in_
    trees = [_tree_json(t, i, n_features) for i, t in enumerate(model.trees_)]
    names = [str(n) for n in model.feature_names_in_] if hasattr(model, "feature_names_in_") else []
    return {
        "learner": {
            "attributes": {},
            "feature_names": names,
            "feature_types": [],
            "gradient_booster": {
                "model": {
                    "cats": {"enc": [], "feature_segments": [], "sorted_idx": []},
                    "gbtree_model_param": {
                        "num_parallel_tree": "1",
                        "num_trees": str(len(trees)),
                    },
                    "iteration_indptr": list(range(len(trees) + 1)),
                    "tree_info": [0] * len(trees),
                    "trees": trees,
                },
                "name": "gbtree",
            },
            "learner_model_param": {
                "base_score": f"{float(np.float32(model.base_score)):.9E}",
                "boost_from_average": "0",
                "num_class": "0",
                "num_feature": str(n_features),
                "num_target": "1",
            },
            "objective": {
                "name": "binary:logistic",
                "reg_loss_param": {"scale_pos_weight": "1"},
            },
        },
        "version": list(XGBOOST_FORMAT_VERSION),
    }


def export_xgboost_json(model: HistGBDT, path: str | Path) -> Path:
    """Write ``model`` to ``path`` in XGBoost's JSON model format.

    Returns
    -------
    Path
        The file written; load it with ``xgboost.Booster(model_file=path)``.
    """
    path = Path(path)
    path.write_text(json.dumps(to_xgboost_json(model), separators=(",", ":")))
    return path
