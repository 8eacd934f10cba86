"""The model file of a bundle: encode a model to bytes, decode bytes that were verified.

LSTM: ``weights.npz``, numpy's zip of ``.npy`` files, one float32 array per
parameter named as in the state dict (``embeddings.0.weight``,
``lstm.weight_ih_l0``, ``head.0.weight`` ...), uncompressed. Decoding reads
every array header first and compares names, dtypes and shapes with the model
the configuration describes (built on PyTorch's ``meta`` device, which
allocates nothing), so a crafted file cannot make us allocate more than it
holds; then ``np.load(..., allow_pickle=False)``.

Trees: ``model.xgb.json``, XGBoost's JSON model (:mod:`fedcrm.models.gbdt_export`).
Decoding checks the document's shape (objective, feature count, every tree's
arrays and child indices) before XGBoost parses the same bytes.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcrm.config import LSTMModelConfig
from fedcrm.errors import BundleError

LSTM_FILE = "weights.npz"
TREES_FILE = "model.xgb.json"
MAX_TREES = 10_000
MAX_NODES_PER_TREE = 1 << 16


# ------------------------------------------------------------------- LSTM
def _lstm_names_shapes(cfg: LSTMModelConfig, n_tabular: int) -> dict[str, tuple[int, ...]]:
    import torch

    from fedcrm.models.lstm import build_model

    with torch.device("meta"):
        model = build_model(cfg, n_tabular)
    return {name: tuple(p.shape) for name, p in model.named_tensors().items()}


def lstm_tabular_inputs(weights: Sequence[np.ndarray], cfg: LSTMModelConfig) -> int:
    """Tabular features the head of these LSTM weights reads (0 without ``use_tabular``)."""
    if not cfg.use_tabular:
        return 0
    # Canonical order: 3 embeddings, 4 arrays per LSTM layer, then the head's first weight.
    head = np.shape(weights[3 + 4 * cfg.num_layers])
    return int(head[1]) - cfg.hidden_size


def encode_lstm(weights: Sequence[np.ndarray], cfg: LSTMModelConfig, n_tabular: int) -> bytes:
    """``weights`` (canonical order) as named ``.npz`` bytes.

    Raises
    ------
    BundleError
        When the weights do not fit the configuration.
    """
    shapes = _lstm_names_shapes(cfg, n_tabular)
    if len(weights) != len(shapes):
        raise BundleError(f"the LSTM has {len(shapes)} parameters, got {len(weights)} arrays")
    arrays = {}
    for (name, shape), w in zip(shapes.items(), weights, strict=True):
        if tuple(np.shape(w)) != shape:
            raise BundleError(f"parameter {name}: shape {np.shape(w)} does not fit {shape}")
        arrays[name] = np.ascontiguousarray(w, dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_headers(raw: bytes) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    out = {}
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise BundleError(f"{LSTM_FILE} holds a member that is not an array")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise BundleError(f"{LSTM_FILE}: unsupported array format {version}")
                out[info.filename[: -len(".npy")]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise BundleError(f"{LSTM_FILE} is not a readable numpy archive") from None
    return out


def decode_lstm(raw: bytes, cfg: LSTMModelConfig, n_tabular: int) -> Any:
    """A :class:`~fedcrm.models.lstm.ChurnLSTM` (eval mode) from verified ``.npz`` bytes.

    Raises
    ------
    BundleError
        When names, dtypes or shapes differ from the configured model.
    """
    from fedcrm.models.lstm import build_model, set_weights

    shapes = _lstm_names_shapes(cfg, n_tabular)
    headers = _npz_headers(raw)
    if set(headers) != set(shapes):
        raise BundleError(
            f"{LSTM_FILE} does not hold the configured LSTM's parameters "
            f"(missing {sorted(set(shapes) - set(headers))[:3]}, "
            f"unexpected {sorted(set(headers) - set(shapes))[:3]})"
        )
    for name, shape in shapes.items():
        got_shape, dtype = headers[name]
        if got_shape != shape or dtype != np.dtype(np.float32):
            raise BundleError(
                f"{LSTM_FILE}: parameter {name} is {dtype}{list(got_shape)}, the configuration "
                f"needs float32{list(shape)}"
            )
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            weights = [z[name] for name in shapes]
    except (ValueError, OSError, EOFError):
        raise BundleError(f"{LSTM_FILE} is not a readable numpy archive") from None
    if not all(np.all(np.isfinite(w)) for w in weights):
        raise BundleError(f"{LSTM_FILE} holds non-finite weights")
    model = build_model(cfg, n_tabular)
    set_weights(model, weights)
    model.eval()
    return model


# ------------------------------------------------------------------ trees
def encode_trees(model: Any) -> bytes:
    """A fitted :class:`~fedcrm.models.gbdt.HistGBDT` as XGBoost JSON bytes."""
    from fedcrm.models.gbdt_export import to_xgboost_json

    return json.dumps(to_xgboost_json(model), separators=(",", ":")).encode("utf-8")


def _check_tree(tree: Any, i: int, n_features: int) -> None:
    if not isinstance(tree, dict):
        raise BundleError(f"{TREES_FILE}: tree {i} is not an object")
    try:
        n = int(tree["tree_param"]["num_nodes"])
        left = np.asarray(tree["left_children"], dtype=np.int64)
        right = np.asarray(tree["right_children"], dtype=np.int64)
        feature = np.asarray(tree["split_indices"], dtype=np.int64)
        cond = np.asarray(tree["split_conditions"], dtype=np.float64)
        lengths = {left.size, right.size, feature.size, cond.size, len(tree["default_left"])}
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{TREES_FILE}: tree {i} lacks or mistypes its node arrays") from None
    if not 1 <= n <= MAX_NODES_PER_TREE or lengths != {n}:
        raise BundleError(f"{TREES_FILE}: tree {i} has inconsistent node arrays")
    inner = left >= 0
    ok = (
        np.all((left == -1) | ((left > 0) & (left < n)))
        and np.all((right == -1) | ((right > 0) & (right < n)))
        and np.array_equal(inner, right >= 0)
        and np.all((feature[inner] >= 0) & (feature[inner] < n_features))
        and np.all(np.isfinite(cond))
    )
    if not ok:
        raise BundleError(f"{TREES_FILE}: tree {i} has out-of-range children, features or values")


def decode_trees(raw: bytes, n_features: int, feature_names: Sequence[str]) -> Any:
    """An ``xgboost.Booster`` from verified XGBoost-JSON bytes, after checking their shape.

    Raises
    ------
    BundleError
        When the document is not a binary-logistic tree model over ``n_features``.
    """
    try:
        doc = json.loads(raw)
        learner = doc["learner"]
        objective = learner["objective"]["name"]
        num_feature = int(learner["learner_model_param"]["num_feature"])
        trees = learner["gradient_booster"]["model"]["trees"]
        names = list(learner.get("feature_names") or [])
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{TREES_FILE} is not an XGBoost JSON model") from None
    if objective != "binary:logistic":
        raise BundleError(f"{TREES_FILE}: objective must be binary:logistic")
    if num_feature != n_features:
        raise BundleError(
            f"{TREES_FILE} reads {num_feature} features, the feature schema has {n_features}"
        )
    if names and names != list(feature_names):
        raise BundleError(f"{TREES_FILE}: its feature names differ from the feature schema's")
    if not isinstance(trees, list) or not 1 <= len(trees) <= MAX_TREES:
        raise BundleError(f"{TREES_FILE} must hold 1..{MAX_TREES} trees")
    for i, tree in enumerate(trees):
        _check_tree(tree, i, n_features)
    import xgboost as xgb

    try:
        return xgb.Booster(model_file=bytearray(raw))
    except xgb.core.XGBoostError:
        raise BundleError(f"XGBoost could not load {TREES_FILE}") from None


__all__ = [
    "LSTM_FILE",
    "TREES_FILE",
    "decode_lstm",
    "decode_trees",
    "encode_lstm",
    "encode_trees",
    "lstm_tabular_inputs",
]
