"""Turn a federated result into the run directory's summary, model card and plots."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import yaml

from fedcrm.config import RunConfig
from fedcrm.plots.branches import plot_per_branch
from fedcrm.plots.rounds import plot_rounds
from fedcrm.server.round_lines import run_status, unit
from fedcrm.server.run_dir import RunDir

log = logging.getLogger(__name__)


def config_hash(cfg: RunConfig) -> str:
    """A stable fingerprint of the resolved configuration (for the model card)."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def write_outputs(
    out_dir: Path,
    cfg: RunConfig,
    result: dict[str, Any],
    *,
    baselines: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    release_key_dir: Path | None = None,
) -> dict[str, Any]:
    """Write ``config.yaml``, ``summary.json``, the model + card + bundle, plots and report.

    ``release_key_dir`` holds the federation's release key (default: the run
    directory's ``keys/``). Returns the summary written.
    """
    run_dir = RunDir(out_dir)
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    weights = result.pop("weights", None)
    summary = _summary(cfg, result, weights is not None, baselines, extra)
    if weights is not None:
        bundle = _save_model(out_dir, run_dir, cfg, weights, summary, result, release_key_dir)
        summary.update(bundle)
    _plots(out_dir, run_dir, cfg, summary, result, baselines)
    run_dir.write_json("summary.json", summary)
    if cfg.privacy.dp:
        try:
            from fedcrm.privacy.report import write_report

            write_report(out_dir, out_dir / "report.html", summary=summary)
        except Exception as exc:  # noqa: BLE001 - the run's results must still be kept
            log.error("could not write the privacy report: %s", exc)
    return summary


def _save_model(
    out_dir: Path,
    run_dir: RunDir,
    cfg: RunConfig,
    weights: Any,
    summary: dict[str, Any],
    result: dict[str, Any],
    release_key_dir: Path | None,
) -> dict[str, Any]:
    """Save the released model and its card, then its signed bundle; the bundle's summary keys."""
    card = {
        "model": cfg.model.model_dump(mode="json"),
        # The cutoff the features were built with (resolved from the data when unset).
        "task": {**cfg.task.model_dump(mode="json"), "cutoff": summary.get("cutoff")},
        "metrics": summary["final"],
        "privacy": {
            "mode": cfg.privacy.mode,
            "epsilon_per_branch": {
                b: v.get("epsilon") for b, v in summary["privacy"].get("per_branch", {}).items()
            },
            "accountant": cfg.privacy.accountant if cfg.privacy.dp else None,
        },
        "branches": sorted(summary["per_branch"]),
        "config_hash": summary["config_hash"],
        "run_id": summary["run_id"],
        "format": "numpy .npz of state_dict arrays in fedcrm.models.lstm.get_weights order",
    }
    if isinstance(weights, list):
        run_dir.save_model(weights, card)
    else:  # a model object that saves itself (trees)
        weights.save(out_dir, card)
    try:
        from fedcrm.server.model_release import write_model_release

        model = weights if isinstance(weights, list) else weights.model
        return write_model_release(
            out_dir,
            cfg,
            model,
            run_id=str(summary["run_id"]),
            key_dir=release_key_dir,
            releases=result.get("evaluation_releases"),
            metrics=summary["final"],
        )
    except Exception as exc:  # the run's results must still be kept
        log.error("could not write the model bundle: %s", exc, exc_info=True)
        return {}


def _plots(
    out_dir: Path,
    run_dir: RunDir,
    cfg: RunConfig,
    summary: dict[str, Any],
    result: dict[str, Any],
    baselines: dict[str, Any] | None,
) -> None:
    """The per-round and per-branch plots of the run directory."""
    rounds = run_dir.rounds()
    plot_rounds(
        rounds,
        out_dir / "plots",
        baselines=baselines,
        unit=unit(cfg),
        planned=result.get("rounds_planned"),
    )
    local = None
    if baselines and "local_only" in baselines:
        local = {b: v.get("auc") for b, v in baselines["local_only"].get("per_branch", {}).items()}
    if summary["per_branch"]:
        plot_per_branch(
            summary["per_branch"], out_dir / "plots" / "auc_per_branch.png", local_only=local
        )


def _summary(
    cfg: RunConfig,
    result: dict[str, Any],
    released: bool,
    baselines: dict[str, Any] | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """``summary.json`` of a run from the job's result (before the bundle's keys)."""
    summary: dict[str, Any] = {
        "model": result["model"],
        "run_id": result.get("run_id"),
        "rounds": result["rounds"],
        "rounds_planned": result.get("rounds_planned"),
        "final": result["final"],
        "per_branch": result["per_branch"],
        "privacy": result["privacy"],
        "status": run_status(result.get("stopped_reason")),
        "stopped_reason": result.get("stopped_reason"),
        "encrypted": result.get("encrypted", False),
        "bytes_uploaded": result.get("bytes_uploaded"),
        "timings": dict(result.get("timings", {})),
        "config_hash": config_hash(cfg),
        "model_released": released,
    }
    for key in (
        "evaluation",
        "trees",
        "exchanges",
        "bytes_per_tree",
        "feature_importance",
        "standby_messages",
        "fab_hash",
    ):
        if key in result:
            summary[key] = result[key]
    if baselines is not None:
        summary["baselines"] = baselines
    if extra:
        summary.update(extra)
    # The job's cutoff (a simulation passes the one resolved from the data). Under DP it
    # is always fixed; a deployed job without DP and without one lets each branch derive it.
    summary.setdefault("cutoff", cfg.task.cutoff.isoformat() if cfg.task.cutoff else None)
    summary["excluded_customers"] = sum(
        b.get("excluded_customers", 0) for b in summary["per_branch"].values()
    )
    return summary
