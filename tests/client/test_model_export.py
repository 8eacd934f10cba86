"""What a branch keeps of an LSTM run: its own signed bundle in ``model-dir``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.lstm_app import export_local_model
from fedcrm.config import JobSpec, RunConfig
from fedcrm.models.bundle import load_bundle
from fedcrm.models.bundle_find import default_key_files, find_bundle, load_trusted_keys


def test_the_branch_keeps_a_bundle_signed_by_its_own_key(scoring_world, tmp_path: Path) -> None:
    fs = scoring_world.train
    train, test = fs.subset(np.arange(400)), fs.subset(np.arange(400, len(fs)))
    settings = BranchSettings(branch_id="b1", data_path=tmp_path, model_dir=tmp_path / "models")
    spec = JobSpec.from_run(
        RunConfig(model=scoring_world.lstm_cfg, task=scoring_world.task), run_id="run7"
    )
    export_local_model(settings, spec, scoring_world.lstm_weights, BranchData(train, test, 0))

    path = find_bundle(tmp_path / "models")
    assert path.name == "bundle-run7"
    bundle = load_bundle(
        path, trusted_keys=load_trusted_keys(default_key_files(path), strict=False)
    )
    assert bundle.manifest["branch_id"] == "b1" and bundle.manifest["run_id"] == "run7"
    assert bundle.drift_reference is not None and bundle.drift_reference.customers == 400
    assert bundle.model_config == scoring_world.lstm_cfg and bundle.task == scoring_world.task
    assert (tmp_path / "models" / "keys" / "b1.key").exists()  # no signing-key configured
