"""What the tree job's messages carry and what it saves: records, checks, the model artefact.

The model record's codec is the protocol's own
(:class:`~fedcrm.models.gbdt_protocol.TreeModel`); here are the server's checks
of a branch's plaintext release, the digest two branches must agree on, and
the saved XGBoost artefact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedcrm.models.gbdt import HistGBDT
from fedcrm.models.gbdt_protocol import TreeModel
from fedcrm.models.gbdt_tree import Tree


def record_of(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named arrays as a Flower ArrayRecord (contiguous copies where needed)."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def arrays_of(record: Any) -> dict[str, np.ndarray]:
    """Inverse of :func:`record_of`."""
    return {k: v.numpy() for k, v in record.items()}


def model_digest(arrays: Mapping[str, np.ndarray], step: Mapping[str, Any]) -> str:
    """What two branches must agree on: the advanced model and the release it asks for."""
    h = hashlib.sha256(json.dumps(dict(step), sort_keys=True, default=str).encode())
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype}:{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


def trees_of(arrays: Mapping[str, np.ndarray]) -> tuple[list[Tree], list[np.ndarray]]:
    """Finished trees and bin edges of a model record (the protocol's one codec)."""
    model = TreeModel.from_arrays(dict(arrays))
    return model.trees, model.edges or []


def check_release(branch_id: str, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A branch's plaintext release, or ``ValueError`` naming what is wrong (never a value)."""
    values = np.asarray(values, dtype=np.float64)
    expected = int(np.prod(shape))
    if values.size != expected:
        raise ValueError(
            f"branch {branch_id}: histogram has {values.size} values, expected {expected} {shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"branch {branch_id}: histogram contains non-finite values")
    return values.reshape(-1)


class TreeArtifact:
    """The federated trees, saved as ``model.xgb.json`` and ``model_card.json``."""

    def __init__(self, model: HistGBDT, summary: dict[str, Any]) -> None:
        self.model = model
        self.summary = summary

    def save(self, out_dir: Path, card: dict[str, Any]) -> None:
        """Write the XGBoost JSON model and the card (with feature importances by total gain)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.export_xgboost_json(out_dir / "model.xgb.json")
        card = {
            **card,
            **self.summary,
            "format": "XGBoost JSON (binary:logistic); load with xgboost.Booster(model_file=...)",
            "file": "model.xgb.json",
            "feature_importance": {
                "total_gain": self.model.feature_importance("total_gain"),
                "weight": self.model.feature_importance("weight"),
            },
        }
        (out_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=float))


__all__ = ["TreeArtifact", "arrays_of", "check_release", "model_digest", "record_of", "trees_of"]
