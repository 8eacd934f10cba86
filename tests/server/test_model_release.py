"""The run directory's release: signed bundle, calibration from pooled releases, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedcrm.config import RunConfig, compose
from fedcrm.errors import ConfigError
from fedcrm.models.bundle import load_bundle
from fedcrm.models.evaluation import thresholded_release
from fedcrm.privacy.signing import load_public_key
from fedcrm.server.model_release import write_model_release
from fedcrm.server.outputs import write_outputs


def _releases(world) -> list[dict]:  # type: ignore[no-untyped-def]
    """Two branches' thresholded releases of the trees' scores, as records on the wire."""
    p = world.gbdt.predict_proba(world.train.tabular)[:, 1]
    y = world.train.labels
    halves = np.array_split(np.arange(len(y)), 2)
    return [thresholded_release(y[i], p[i], min_count=10).to_record() for i in halves]


def _cfg(world, kind: str, **extra) -> RunConfig:  # type: ignore[no-untyped-def]
    return RunConfig(model=world.model(kind)[1], task=world.task, **extra)


def test_trees_with_releases_get_a_calibrated_signed_bundle_and_plots(
    scoring_world, tmp_path: Path
) -> None:
    run, keys = tmp_path / "run", tmp_path / "server"
    cfg = _cfg(scoring_world, "gbdt", calibration="isotonic")
    entries = write_model_release(
        run, cfg, scoring_world.gbdt, run_id="r1", key_dir=keys, releases=_releases(scoring_world)
    )

    bundle = load_bundle(run / "bundle", trusted_keys=[load_public_key(keys / "release.pub")])
    assert bundle.calibration is not None and bundle.calibration.method == "isotonic"
    assert entries["calibration"]["method"] == "isotonic"
    assert entries["calibration"]["ece_after"] < entries["calibration"]["ece_before"]
    assert entries["bundle"]["key_id"] == bundle.key_id
    for name in ("importance.png", "reliability.png", "gains.png"):
        assert (run / "plots" / name).stat().st_size > 1000
    # The release key is made once and kept: a second release is signed by the same key.
    again = write_model_release(run, cfg, scoring_world.gbdt, run_id="r2", key_dir=keys)
    assert again["bundle"]["key_id"] == entries["bundle"]["key_id"]
    assert again["calibration"] is None  # no releases this time


def test_an_lstm_release_without_evaluation_releases(scoring_world, tmp_path: Path) -> None:
    cfg = _cfg(scoring_world, "lstm", calibration="none")
    entries = write_model_release(tmp_path, cfg, scoring_world.lstm_weights, run_id="r1")
    assert (tmp_path / "keys" / "release.key").exists()  # default: the run directory's keys/
    assert (tmp_path / "plots" / "importance.png").exists()
    assert not (tmp_path / "plots" / "reliability.png").exists()
    assert entries["calibration"] is None


def test_the_run_directory_writer_adds_bundle_and_calibration_to_the_summary(
    scoring_world, tmp_path: Path
) -> None:
    from fedcrm.server.tree_records import TreeArtifact

    cfg = _cfg(scoring_world, "gbdt")
    result = {
        "model": "gbdt",
        "run_id": "r1",
        "rounds": 15,
        "final": {"auc": 0.8, "f1": float("nan")},  # NaN metrics must not stop the bundle
        "per_branch": {},
        "privacy": {},
        "weights": TreeArtifact(scoring_world.gbdt, {"trees": 15}),
        "evaluation_releases": _releases(scoring_world),
    }
    summary = write_outputs(tmp_path / "run", cfg, result, release_key_dir=tmp_path / "srv")

    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["bundle"]["path"] == "bundle" == summary["bundle"]["path"]
    assert written["calibration"]["method"] == "platt"
    assert (tmp_path / "srv" / "release.pub").exists()
    assert (tmp_path / "run" / "model.xgb.json").exists()  # the existing files stay
    manifest = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())
    assert manifest["metrics"] == {"auc": 0.8, "f1": None}


def test_calibration_is_a_run_setting() -> None:
    assert compose([]).calibration == "platt"
    assert compose(["calibration=isotonic"]).calibration == "isotonic"
    with pytest.raises(ConfigError, match="calibration"):
        compose(["calibration=magic"])
