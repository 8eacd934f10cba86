"""``fedcrm score`` and ``fedcrm explain`` at a branch: the scores file, refusals, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcrm.cli import main
from fedcrm.data.dataset import FeatureSet
from fedcrm.models.bundle_writers import write_branch_bundle, write_server_bundle
from fedcrm.models.gbdt import HistGBDT


@pytest.fixture(scope="module")
def run_dirs(scoring_world, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A run directory (release bundle) and a branch folder (its own copy) per model kind."""
    out = {}
    for kind in ("lstm", "gbdt"):
        model, cfg = scoring_world.model(kind)
        root = tmp_path_factory.mktemp(kind)
        common = dict(model=model, model_config=cfg, task=scoring_world.task, run_id="r1")
        write_server_bundle(root / "run", key_dir=root / "run" / "keys", **common)
        write_branch_bundle(
            root / "branch" / "models", branch_id="branch_00", train=scoring_world.train,
            test=scoring_world.train, **common,
        )  # fmt: skip
        out[kind] = root
    return out


def _score(bundle: Path, data: Path, out: Path, *extra: str) -> int:
    as_of = "2024-10-01"
    return main(["score", str(bundle), str(data), "--as-of", as_of, "--out", str(out), *extra])


@pytest.mark.parametrize("kind", ["lstm", "gbdt"])
def test_score_writes_one_private_row_per_customer_with_consent(
    scoring_world, run_dirs, tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    out, summary = tmp_path / "scores.csv", tmp_path / "summary.json"
    models = run_dirs[kind] / "branch" / "models"
    assert _score(models, scoring_world.export, out, "--summary", str(summary)) == 0

    table = pd.read_csv(out, dtype={"customer_id": str}, keep_default_na=False)
    assert list(table.columns) == ["customer_id", "churn_probability", "risk_decile", "reasons"]
    raw = pd.read_csv(scoring_world.export / "customers.csv", dtype=str)
    excluded = raw[(raw.consent_analytics == "false") | (raw.ccpa_opt_out == "true")]
    assert len(excluded) > 0
    assert set(table.customer_id).isdisjoint(excluded.customer_id)
    assert sorted(table.customer_id) == sorted(scoring_world.train.customer_ids.tolist())
    assert table.risk_decile.between(1, 10).all() and table.churn_probability.between(0, 1).all()
    assert (table.reasons[table.risk_decile == 10] != "").mean() > 0.9
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600

    doc = json.loads(summary.read_text())
    assert doc["customers_scored"] == len(table) and doc["calibrated"] is True
    assert doc["bundle"]["origin"] == "branch" and doc["bundle"]["kind"] == kind
    assert max(doc["drift"]["psi"].values()) < 0.01 and doc["drift"]["major_shift"] == []
    err = capsys.readouterr().err
    assert f"signature verified with key {doc['bundle']['key_id']}" in err
    assert "customers (" in err and "excluded for consent or opt-out" in err


def test_parquet_output_and_the_release_bundle(scoring_world, run_dirs, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    assert _score(run_dirs["gbdt"] / "run", scoring_world.export, out, "--reasons", "0") == 0
    table = pd.read_parquet(out)
    assert len(table) == len(scoring_world.train) and (table.reasons == "").all()
    assert _score(run_dirs["gbdt"] / "run", scoring_world.export, out) == 1  # no overwrite
    assert _score(run_dirs["gbdt"] / "run", scoring_world.export, out, "--overwrite") == 0


def test_a_tampered_bundle_is_refused_with_exit_1(
    scoring_world, run_dirs, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dirs["lstm"] / "run", run)
    weights = run / "bundle" / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = tmp_path / "s.csv"
    assert _score(run, scoring_world.export, out) == 1
    assert "does not match its hash" in capsys.readouterr().err
    assert not out.exists()


def test_keys_must_be_found_or_given(
    scoring_world, run_dirs, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dirs["gbdt"] / "run" / "bundle", run / "bundle")
    assert _score(run, scoring_world.export, tmp_path / "s.csv") == 1
    assert "no trusted public key" in capsys.readouterr().err
    branch_key = next((run_dirs["gbdt"] / "branch" / "models" / "keys").glob("*.pub"))
    args = ["--trusted-key", str(branch_key)]
    assert _score(run, scoring_world.export, tmp_path / "s.csv", *args) == 1
    assert "does not verify" in capsys.readouterr().err
    release = run_dirs["gbdt"] / "run" / "keys" / "release.pub"
    assert _score(run, scoring_world.export, tmp_path / "s.csv", "--trusted-key", str(release)) == 0


def test_an_export_without_the_models_attribute_column_is_named(
    scoring_world, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model trained with an attribute column cannot score an export without it."""
    fs = scoring_world.train
    names = [*fs.tabular_names, "attr_loyalty"]
    with_attr = FeatureSet(
        fs.customer_ids, fs.branch_ids, fs.seq_cat, fs.seq_num, fs.lengths,
        np.column_stack([fs.tabular, np.zeros(len(fs), np.float32)]), fs.labels, names,
    )  # fmt: skip
    gbdt = HistGBDT.from_config(scoring_world.gbdt_cfg).fit(
        with_attr.tabular, fs.labels, feature_names=names
    )
    write_branch_bundle(
        tmp_path / "models", model=gbdt, model_config=scoring_world.gbdt_cfg,
        task=scoring_world.task, run_id="r1", branch_id="b", train=with_attr,
    )  # fmt: skip
    assert _score(tmp_path / "models", scoring_world.export, tmp_path / "s.csv") == 1
    err = capsys.readouterr().err
    assert "customers.csv: loyalty: missing column (line 1)" in err


@pytest.mark.parametrize("kind", ["lstm", "gbdt"])
def test_explain_prints_one_customers_reasons(
    scoring_world, run_dirs, capsys: pytest.CaptureFixture, kind: str
) -> None:
    table_id = str(scoring_world.train.customer_ids[3])
    argv = ["explain", str(run_dirs[kind] / "branch" / "models"), str(scoring_world.export)]
    argv += ["--as-of", "2024-10-01", "--customer-id", table_id]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "churn probability" in printed and "risk decile" in printed
    method = "TreeSHAP" if kind == "gbdt" else "integrated gradients"
    assert method in printed
    assert any(name in printed for name in scoring_world.train.tabular_names)
    assert main([*argv, "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert set(detail["tabular"]) == set(scoring_world.train.tabular_names)


def test_explain_of_an_unknown_customer_does_not_echo_the_id(
    scoring_world, run_dirs, capsys: pytest.CaptureFixture
) -> None:
    argv = ["explain", str(run_dirs["gbdt"] / "run"), str(scoring_world.export)]
    argv += ["--as-of", "2024-10-01", "--customer-id", "NOBODY-4711"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "is not scored" in err and "NOBODY-4711" not in err
