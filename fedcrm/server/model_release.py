"""The released model in the run directory: its signed bundle, calibration and plots.

Called by the run-directory writer (:mod:`fedcrm.server.outputs`) once the
model is released:

* ``bundle/`` (:mod:`fedcrm.models.bundle`), signed with the federation's
  release key ``release.key`` in the key directory: the ServerApp's run
  config ``server-dir`` in deployment, the run directory's ``keys/`` in
  simulation; created there on first use, with ``release.pub`` for the
  branches;
* a calibration map fitted from the branches' pooled evaluation releases
  (``calibration`` in the summary: method, ECE before and after);
* ``plots/importance.png`` (trees: total gain; LSTM: the head's connection
  weights), and with evaluation releases ``plots/reliability.png`` and
  ``plots/gains.png``.

Everything here reads the model, the configuration and released statistics,
never customer data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcrm.config import RunConfig
from fedcrm.models.evaluation import EvaluationRelease
from fedcrm.models.pooled import pooled_metrics
from fedcrm.plots.evaluation import plot_gains, plot_importance, plot_reliability

log = logging.getLogger(__name__)


def releases_of(raw: Sequence[Any] | None) -> list[EvaluationRelease]:
    """Evaluation releases as objects (given as objects or as their records)."""
    out = []
    for r in raw or ():
        out.append(r if isinstance(r, EvaluationRelease) else EvaluationRelease.from_record(r))
    return out


def _attribute_columns(cfg: RunConfig) -> tuple[str, ...]:
    return tuple(getattr(cfg.data, "attribute_columns", ()))


def _importance(model: Any, cfg: RunConfig, names: list[str]) -> tuple[dict[str, float], str]:
    if cfg.model.name == "gbdt":
        return model.feature_importance("total_gain"), "Trees: total gain of each feature's splits"
    from fedcrm.models.attribution import head_weight_importance
    from fedcrm.models.bundle_codec import lstm_tabular_inputs
    from fedcrm.models.lstm import build_model, set_weights

    lstm = build_model(cfg.model, lstm_tabular_inputs(model, cfg.model))  # type: ignore[arg-type]
    set_weights(lstm, model)
    title = "LSTM: head connection weights (Olden; no data at the server)"
    return head_weight_importance(lstm, names if lstm.n_tabular else []), title


def write_model_release(
    out_dir: Path,
    cfg: RunConfig,
    model: Any,
    *,
    run_id: str,
    key_dir: Path | None = None,
    releases: Sequence[Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle and plots of a released model; returns summary entries.

    Parameters
    ----------
    model
        LSTM weights (a list of arrays) or a fitted ``HistGBDT``.
    key_dir
        Where the release key lives (default: ``<out_dir>/keys``).
    releases
        The branches' evaluation releases of the final model (objects or records).

    Returns
    -------
    dict
        ``bundle`` (path, content hash, key id) and ``calibration`` (method,
        ECE before/after, customers, in_sample; null without releases).
    """
    from fedcrm.models.bundle_writers import server_feature_names, write_server_bundle

    key_dir = Path(key_dir) if key_dir else out_dir / "keys"
    evaluated = releases_of(releases)
    path, cal = write_server_bundle(
        out_dir,
        model=model,
        model_config=cfg.model,
        task=cfg.task,
        run_id=run_id,
        key_dir=key_dir,
        releases=evaluated,
        calibration=cfg.calibration,
        metrics=metrics,
        attribute_columns=_attribute_columns(cfg),
    )
    sig = json.loads((path / "signature.json").read_text())
    entries: dict[str, Any] = {
        "bundle": {
            "path": str(path.relative_to(out_dir)),
            "content_hash": sig["content_hash"],
            "key_id": sig["key_id"],
            "release_key": str(key_dir / "release.pub"),
        },
        "calibration": None,
    }
    if cal is not None:
        entries["calibration"] = {
            k: v for k, v in cal.to_json().items() if k not in ("knots_logit", "knots_prob")
        }
    plots = out_dir / "plots"
    names = server_feature_names(model, cfg.model, _attribute_columns(cfg))
    importance, title = _importance(model, cfg, names)
    plot_importance(importance, plots / "importance.png", title=title)
    if evaluated:
        pooled = pooled_metrics(evaluated)
        after = None
        if cal is not None:
            from fedcrm.models.calibration import recalibrated_metrics

            after = recalibrated_metrics(evaluated, cal)
        plot_reliability(pooled, plots / "reliability.png", calibrated=after)
        plot_gains(evaluated, plots / "gains.png")
    log.info("model bundle %s signed with key %s", path, sig["key_id"])
    return entries


__all__ = ["releases_of", "write_model_release"]
