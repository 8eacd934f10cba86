"""Self-contained, signed model bundles: a released model as a branch puts it to work.

A bundle is one directory::

    manifest.json    format, kind (lstm | gbdt), origin (server | branch), branch_id,
                     run_id, created (UTC), fedcrm_version, config {model, task},
                     schema (fedcrm.data.schema), calibration (or null),
                     drift_reference (a branch's own copy only, or null), metrics,
                     files {name: {sha256, bytes}}
    weights.npz      LSTM: float32 arrays named as the state dict (no pickle)
    model.xgb.json   trees: XGBoost's JSON model (binary:logistic)
    signature.json   {algorithm: "ed25519", key_id, content_hash, signature}

``content_hash`` is the SHA-256 of ``manifest.json``'s bytes, which name the
SHA-256 of the model file, so it covers the whole bundle. ``signature`` is an
Ed25519 signature (:mod:`fedcrm.privacy.signing`, base64) of those bytes by
the federation's release key (``release.key``; the server's copy, in the run
directory's ``bundle/``) or by the branch's signing key (its own copy,
``<model-dir>/bundle-<run_id>/``).

:func:`load_bundle` reads each file once and no more than its size limit
(:data:`MAX_MANIFEST_BYTES`, :data:`MAX_MODEL_BYTES`), checks the content
hash, the signature against trusted public keys and the model file's hash on
the bytes it read, and decodes those same bytes (JSON; numpy without pickle;
XGBoost JSON) with :mod:`fedcrm.models.bundle_codec`. It needs nothing else.
:mod:`fedcrm.models.bundle_find` locates bundles and their default trusted keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedcrm.config import GBDTModelConfig, LSTMModelConfig, TaskConfig
from fedcrm.data.schema import feature_schema, schema_names
from fedcrm.errors import BundleError
from fedcrm.models.bundle_codec import (
    LSTM_FILE,
    TREES_FILE,
    decode_lstm,
    decode_trees,
    encode_lstm,
    encode_trees,
    lstm_tabular_inputs,
)
from fedcrm.models.calibration import Calibration
from fedcrm.models.drift import DriftReference
from fedcrm.privacy.signing import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    key_id,
    sign,
    verify_signature,
)

log = logging.getLogger(__name__)

FORMAT = "fedcrm-model-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
RUN_BUNDLE = "bundle"
"""The bundle's directory name inside a run directory."""
BRANCH_PREFIX = "bundle-"
"""A branch's copies are ``<model-dir>/bundle-<run_id>/``."""
RELEASE_KEY = "release"
"""The federation's release key is ``release.key`` / ``release.pub``."""
MAX_SIGNATURE_BYTES = 64 << 10
MAX_MANIFEST_BYTES = 8 << 20
MAX_MODEL_BYTES = 256 << 20
_MODEL_FILES = {"lstm": LSTM_FILE, "gbdt": TREES_FILE}


def fedcrm_version() -> str:
    """The installed fedcrm version (``0+unknown`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedcrm")
    except PackageNotFoundError:
        return "0+unknown"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, the decoded model and who signed it.

    Attributes
    ----------
    path
        The bundle directory.
    manifest
        ``manifest.json`` as parsed.
    model
        A :class:`~fedcrm.models.lstm.ChurnLSTM` (eval mode) or an ``xgboost.Booster``.
    key_id
        The key that signed it (:func:`fedcrm.privacy.signing.key_id`).
    content_hash
        SHA-256 of ``manifest.json``.
    """

    path: Path
    manifest: dict[str, Any]
    model: Any
    key_id: str
    content_hash: str

    @property
    def kind(self) -> str:
        """``"lstm"`` or ``"gbdt"``."""
        return str(self.manifest["kind"])

    @property
    def model_config(self) -> LSTMModelConfig | GBDTModelConfig:
        """The model's configuration."""
        return _model_config(self.manifest)

    @property
    def task(self) -> TaskConfig:
        """The task it was trained for (``max_events`` sets the sequence length)."""
        return TaskConfig.model_validate(self.manifest["config"]["task"])

    @property
    def feature_names(self) -> list[str]:
        """Tabular feature names, in column order."""
        return schema_names(self.manifest["schema"])

    @property
    def calibration(self) -> Calibration | None:
        """The stored calibration map, if any."""
        doc = self.manifest.get("calibration")
        return None if doc is None else Calibration.from_json(doc)

    @property
    def drift_reference(self) -> DriftReference | None:
        """The training distribution (a branch's own copy only)."""
        doc = self.manifest.get("drift_reference")
        return None if doc is None else DriftReference.from_json(doc)


def _model_config(manifest: Mapping[str, Any]) -> LSTMModelConfig | GBDTModelConfig:
    doc = manifest["config"]["model"]
    cls = LSTMModelConfig if manifest["kind"] == "lstm" else GBDTModelConfig
    return cls.model_validate(doc)


# ----------------------------------------------------------------- writing
def _finite(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers and NaN / infinity as null (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _encode_model(
    model: Any, model_config: LSTMModelConfig | GBDTModelConfig, feature_names: Sequence[str]
) -> bytes:
    """The model file's bytes (LSTM weights or trees), checked against the feature names."""
    if model_config.name == "lstm":
        assert isinstance(model_config, LSTMModelConfig)
        n_tab = lstm_tabular_inputs(model, model_config)
        if model_config.use_tabular and n_tab != len(feature_names):
            raise BundleError(
                f"the LSTM reads {n_tab} tabular features but {len(feature_names)} names were given"
            )
        return encode_lstm(model, model_config, n_tab)
    return encode_trees(model)


def _put_in_place(
    out: Path, name: str, payload: bytes, manifest_bytes: bytes, signature: Mapping[str, Any]
) -> None:
    """Write the bundle's files to a fresh directory and swap it in for ``out`` as a whole."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / name).write_bytes(payload)
    (tmp / MANIFEST).write_bytes(manifest_bytes)
    (tmp / SIGNATURE).write_text(json.dumps(signature, indent=1) + "\n")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old)
    else:
        tmp.replace(out)


def write_bundle(
    out_dir: str | os.PathLike[str],
    *,
    model: Any,
    model_config: LSTMModelConfig | GBDTModelConfig,
    task: TaskConfig,
    feature_names: Sequence[str],
    signing_key: Ed25519PrivateKey,
    origin: str,
    run_id: str,
    branch_id: str | None = None,
    calibration: Calibration | None = None,
    drift_reference: DriftReference | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write a signed bundle to ``out_dir`` (replaced as a whole if it exists).

    Parameters
    ----------
    model
        LSTM: its weights in :func:`fedcrm.models.lstm.get_weights` order;
        trees: a fitted :class:`~fedcrm.models.gbdt.HistGBDT`.
    model_config, task
        The configuration the model was trained with.
    feature_names
        The tabular feature names of the data it was trained on.
    signing_key
        The release key (server) or the branch's signing key.
    origin
        ``"server"`` or ``"branch"``.
    """
    out = Path(out_dir)
    kind = model_config.name
    payload = _encode_model(model, model_config, feature_names)
    name = _MODEL_FILES[kind]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "origin": origin,
        "branch_id": branch_id,
        "run_id": run_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "fedcrm_version": fedcrm_version(),
        "config": {
            "model": model_config.model_dump(mode="json"),
            "task": task.model_dump(mode="json"),
        },
        "schema": feature_schema(feature_names, max_events=task.max_events),
        "calibration": None if calibration is None else calibration.to_json(),
        "drift_reference": None if drift_reference is None else drift_reference.to_json(),
        "metrics": _finite(dict(metrics or {})),
        "files": {name: {"sha256": _sha256(payload), "bytes": len(payload)}},
    }
    manifest_bytes = (
        json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n"
    ).encode()
    signature = {
        "algorithm": "ed25519",
        "key_id": key_id(signing_key),
        "content_hash": _sha256(manifest_bytes),
        "signature": sign(signing_key, manifest_bytes),
    }
    _put_in_place(out, name, payload, manifest_bytes, signature)
    log.info("model bundle written to %s (content hash %s)", out, signature["content_hash"][:16])
    return out


# ----------------------------------------------------------------- reading
def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refusing a file over ``limit`` bytes before reading it all.

    Raises
    ------
    BundleError
        When the file is missing, not a regular file or too large.
    """
    try:
        if not path.is_file():
            raise BundleError(f"the bundle has no {what} ({path.name})")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise BundleError(f"cannot read the bundle's {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise BundleError(f"the bundle's {what} {path.name} is larger than {limit} bytes; refused")
    return data


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise BundleError(f"the bundle's {what} is not JSON") from None
    if not isinstance(doc, dict):
        raise BundleError(f"the bundle's {what} must be a JSON object")
    return doc


def load_bundle(
    path: str | os.PathLike[str], *, trusted_keys: Sequence[Ed25519PublicKey]
) -> Bundle:
    """Verify and load a bundle directory.

    Parameters
    ----------
    path
        The bundle directory (see :func:`find_bundle` for run and model folders).
    trusted_keys
        Public keys a valid signature may come from (at least one).

    Raises
    ------
    BundleError
        On a missing or oversize file, a content-hash or file-hash mismatch, a
        signature no trusted key verifies, or a manifest or model file that
        does not fit the format.
    """
    root = Path(path)
    if not trusted_keys:
        raise BundleError("no trusted public key to verify the bundle with; pass --trusted-key")
    sig = _json(read_limited(root / SIGNATURE, MAX_SIGNATURE_BYTES, "signature"), "signature")
    manifest_bytes = read_limited(root / MANIFEST, MAX_MANIFEST_BYTES, "manifest")
    content_hash = _sha256(manifest_bytes)
    if sig.get("content_hash") != content_hash:
        raise BundleError(
            "the bundle's manifest does not match its content hash: it was changed after signing"
        )
    signer = None
    ordered = sorted(trusted_keys, key=lambda k: key_id(k) != sig.get("key_id"))
    for key in ordered:
        if verify_signature(key, manifest_bytes, str(sig.get("signature", ""))):
            signer = key_id(key)
            break
    if signer is None:
        ids = ", ".join(key_id(k) for k in trusted_keys)
        raise BundleError(
            f"the bundle's signature (key {sig.get('key_id')!s:.16}) does not verify against the "
            f"trusted key(s) {ids}; refused"
        )
    manifest = _json(manifest_bytes, "manifest")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root} is not a fedcrm model bundle of format {FORMAT_VERSION}")
    kind = manifest.get("kind")
    if kind not in _MODEL_FILES:
        raise BundleError(f"the bundle's model kind must be one of {sorted(_MODEL_FILES)}")
    name = _MODEL_FILES[kind]
    entry = manifest.get("files", {}).get(name)
    if not isinstance(entry, dict) or set(manifest["files"]) != {name}:
        raise BundleError(f"the bundle's manifest must list exactly its model file {name}")
    payload = read_limited(root / name, MAX_MODEL_BYTES, "model file")
    if len(payload) != entry.get("bytes") or _sha256(payload) != entry.get("sha256"):
        raise BundleError(f"the bundle's model file {name} does not match its hash: refused")
    try:
        cfg = _model_config(manifest)
        TaskConfig.model_validate(manifest["config"]["task"])
        names = schema_names(manifest["schema"])
        for key, parse in (
            ("calibration", Calibration.from_json),
            ("drift_reference", DriftReference.from_json),
        ):
            if manifest.get(key) is not None:
                parse(manifest[key])
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        detail = type(exc).__name__ if not isinstance(exc, ValueError) else str(exc)[:200]
        raise BundleError(f"the bundle's manifest is malformed ({detail})") from None
    if isinstance(cfg, LSTMModelConfig):
        model = decode_lstm(payload, cfg, len(names) if cfg.use_tabular else 0)
    else:
        model = decode_trees(payload, len(names), names)
    return Bundle(root, manifest, model, signer, content_hash)


__all__ = [
    "BRANCH_PREFIX",
    "MAX_MANIFEST_BYTES",
    "MAX_MODEL_BYTES",
    "RELEASE_KEY",
    "RUN_BUNDLE",
    "Bundle",
    "load_bundle",
    "read_limited",
    "write_bundle",
]
