"""The two places a model bundle is written: the run directory and a branch's model folder.

* :func:`write_server_bundle` (the ServerApp's run-directory writer): the
  released model, signed with the federation's release key
  (``<key_dir>/release.key``, created on first use), with the calibration
  fitted from the branches' pooled evaluation releases when given.
* :func:`write_branch_bundle` (the ClientApp, at the branch): the model the
  branch keeps, signed with the branch's signing key (or a key created on
  first use in ``<model-dir>/keys/``), with the binned distribution of the
  branch's training features for the drift check and a calibration fitted on
  the branch's own test customers. Nothing of it leaves the branch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.config import GBDTModelConfig, LSTMModelConfig, TaskConfig
from fedcrm.data.dataset import FeatureSet
from fedcrm.data.schema import tabular_names
from fedcrm.errors import BundleError
from fedcrm.ids import id_path
from fedcrm.models.bundle import BRANCH_PREFIX, RELEASE_KEY, RUN_BUNDLE, write_bundle
from fedcrm.models.bundle_codec import lstm_tabular_inputs
from fedcrm.models.calibration import Calibration, Method, fit_calibration
from fedcrm.models.drift import drift_reference
from fedcrm.models.evaluation import EvaluationRelease, thresholded_release
from fedcrm.privacy.signing import key_on_first_use, load_private_key

log = logging.getLogger(__name__)

MIN_CALIBRATION_CUSTOMERS = 100
"""A branch calibrates its own copy only with this many test customers ..."""
MIN_CALIBRATION_PER_LABEL = 10
"""... and this many of each label."""


def server_feature_names(
    model: Any, model_config: LSTMModelConfig | GBDTModelConfig, attribute_columns: Sequence[str]
) -> list[str]:
    """Tabular feature names of a released model, as far as the server can know them.

    Trees carry the names the branches agreed on; an LSTM's are fedcrm's
    feature names with the run's declared attribute columns.

    Raises
    ------
    BundleError
        When the model reads another number of features than those names.
    """
    if isinstance(model_config, GBDTModelConfig):
        if hasattr(model, "feature_names_in_"):
            return [str(n) for n in model.feature_names_in_]
        n = int(model.n_features_in_)
    else:
        n = lstm_tabular_inputs(model, model_config)
        if not model_config.use_tabular:
            return tabular_names(attribute_columns)
    for attrs in (tuple(attribute_columns), ()):
        names = tabular_names(attrs)
        if len(names) == n:
            return names
    raise BundleError(
        f"the model reads {n} tabular features; fedcrm's feature names do not fit that count"
    )


def write_server_bundle(
    run_dir: str | os.PathLike[str],
    *,
    model: Any,
    model_config: LSTMModelConfig | GBDTModelConfig,
    task: TaskConfig,
    run_id: str,
    key_dir: str | os.PathLike[str],
    releases: Sequence[EvaluationRelease] | None = None,
    calibration: str = "platt",
    metrics: Mapping[str, Any] | None = None,
    attribute_columns: Sequence[str] = (),
) -> tuple[Path, Calibration | None]:
    """Write ``<run_dir>/bundle/`` signed by the release key in ``key_dir``.

    Parameters
    ----------
    releases
        The branches' evaluation releases of the final model; with
        ``calibration`` other than ``"none"`` a calibration map is fitted
        from them and stored.
    calibration
        ``"platt"``, ``"isotonic"`` or ``"none"``.

    Returns
    -------
    (path, calibration)
        The bundle directory and the calibration stored (or None).
    """
    cal = None
    if releases and calibration != "none":
        cal = fit_calibration(list(releases), _method(calibration))
    key = load_private_key(key_on_first_use(key_dir, RELEASE_KEY))
    path = write_bundle(
        Path(run_dir) / RUN_BUNDLE,
        model=model,
        model_config=model_config,
        task=task,
        feature_names=server_feature_names(model, model_config, attribute_columns),
        signing_key=key,
        origin="server",
        run_id=run_id,
        calibration=cal,
        metrics=metrics,
    )
    return path, cal


def _method(name: str) -> Method:
    if name not in ("platt", "isotonic"):
        raise BundleError(f"calibration must be platt, isotonic or none, not {name!r}")
    return name  # type: ignore[return-value]


def _test_probabilities(
    model: Any, model_config: LSTMModelConfig | GBDTModelConfig, test: FeatureSet
) -> np.ndarray:
    if isinstance(model_config, GBDTModelConfig):
        return np.asarray(model.predict_proba(test.tabular)[:, 1], dtype=np.float64)
    from fedcrm.models.lstm import build_model, set_weights
    from fedcrm.models.train import predict_proba

    lstm = build_model(model_config, lstm_tabular_inputs(model, model_config))
    set_weights(lstm, model)
    return predict_proba(lstm, test)


def branch_calibration(
    model: Any, model_config: LSTMModelConfig | GBDTModelConfig, test: FeatureSet | None
) -> Calibration | None:
    """Platt calibration on the branch's own test customers (None when too few)."""
    if test is None or len(test) < MIN_CALIBRATION_CUSTOMERS:
        return None
    labels = np.asarray(test.labels)
    if min(int((labels == 1).sum()), int((labels == 0).sum())) < MIN_CALIBRATION_PER_LABEL:
        return None
    p = _test_probabilities(model, model_config, test)
    return fit_calibration([thresholded_release(labels, p, min_count=1)], "platt")


def write_branch_bundle(
    model_dir: str | os.PathLike[str],
    *,
    model: Any,
    model_config: LSTMModelConfig | GBDTModelConfig,
    task: TaskConfig,
    run_id: str,
    branch_id: str,
    train: FeatureSet,
    test: FeatureSet | None = None,
    signing_key: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the branch's own copy, ``<model_dir>/bundle-<run_id>/``.

    Parameters
    ----------
    model
        LSTM weights (canonical order) or a fitted ``HistGBDT``.
    train, test
        The branch's training customers (the drift reference) and test
        customers (its own calibration).
    signing_key
        The branch's Ed25519 signing key (node config ``signing-key``); when
        None, ``<model_dir>/keys/<branch_id>.key`` (created on first use).
    """
    model_dir = Path(model_dir)
    key_path = Path(signing_key) if signing_key else key_on_first_use(model_dir / "keys", branch_id)
    names = list(train.tabular_names)
    return write_bundle(
        id_path(model_dir, run_id, "run id", prefix=BRANCH_PREFIX),
        model=model,
        model_config=model_config,
        task=task,
        feature_names=names,
        signing_key=load_private_key(key_path),
        origin="branch",
        run_id=run_id,
        branch_id=branch_id,
        calibration=branch_calibration(model, model_config, test),
        drift_reference=drift_reference(train.tabular, names),
    )


__all__ = [
    "branch_calibration",
    "server_feature_names",
    "write_branch_bundle",
    "write_server_bundle",
]
