"""Scoring blocks of customers: probabilities, deciles, reasons, drift, schema checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcrm.data.loader import load_crm
from fedcrm.data.scoring_features import scoring_feature_blocks
from fedcrm.errors import SchemaMismatchError
from fedcrm.models.bundle import load_bundle
from fedcrm.models.bundle_find import default_key_files, load_trusted_keys
from fedcrm.models.bundle_writers import write_branch_bundle
from fedcrm.models.evaluation import sigmoid
from fedcrm.models.scoring import COLUMNS, Scorer, ScoringOptions, risk_deciles, score_blocks


def test_deciles_split_in_tenths_and_ties_share_one() -> None:
    p = np.random.default_rng(0).random(1000)
    d = risk_deciles(p)
    assert np.bincount(d, minlength=11)[1:].tolist() == [100] * 10
    assert d[np.argmax(p)] == 10 and d[np.argmin(p)] == 1
    tied = risk_deciles(np.array([0.2, 0.2, 0.2, 0.9]))
    assert tied.tolist() == [8, 8, 8, 10]


@pytest.fixture(scope="module")
def branch_bundles(scoring_world, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = {}
    for kind in ("lstm", "gbdt"):
        model, cfg = scoring_world.model(kind)
        path = write_branch_bundle(
            tmp_path_factory.mktemp(kind) / "models", model=model, model_config=cfg,
            task=scoring_world.task, run_id="r1", branch_id="branch_00",
            train=scoring_world.train, test=scoring_world.train,
        )  # fmt: skip
        out[kind] = load_bundle(
            path, trusted_keys=load_trusted_keys(default_key_files(path), strict=False)
        )
    return out


def _blocks(world, block_size: int = 150):  # type: ignore[no-untyped-def]
    crm = load_crm(world.export)
    return scoring_feature_blocks(
        crm, as_of=world.as_of, max_events=20, block_size=block_size
    ), len(crm.customers)


@pytest.mark.parametrize("kind", ["lstm", "gbdt"])
def test_scores_reasons_and_drift_of_the_training_population(
    scoring_world, branch_bundles, kind: str
) -> None:
    bundle = branch_bundles[kind]
    blocks, total = _blocks(scoring_world)
    focus = str(scoring_world.train.customer_ids[7])
    seen = []
    result = score_blocks(
        bundle, blocks, total=total,
        options=ScoringOptions(calibrate=False, focus=frozenset({focus})),
        progress=lambda stage, done, n: seen.append(stage),
    )  # fmt: skip
    table = result.table

    assert tuple(table.columns) == COLUMNS
    assert len(table) == len(scoring_world.train)
    assert sorted(table.customer_id) == sorted(scoring_world.train.customer_ids.tolist())
    assert np.all(np.diff(table.churn_probability) <= 0)  # highest risk first
    # Uncalibrated scores are the model's own.
    ids = scoring_world.train.customer_ids
    want = dict(zip(ids, sigmoid(scoring_world.logits(kind)), strict=True))
    got = table.churn_probability.clip(1e-5, 1 - 1e-5)
    np.testing.assert_allclose(got, [want[c] for c in table.customer_id], atol=1e-6)
    # The top decile is explained; reasons name what the customer did.
    top = table[table.risk_decile == 10]
    assert (top.reasons.str.len() > 0).mean() > 0.9
    assert top.reasons.str.contains("days|events|purchase").all()
    detail = result.details[focus]
    assert set(detail["tabular"]) == set(scoring_world.train.tabular_names)
    assert (detail["sequence"] is not None) == (kind == "lstm")
    # Today's customers are the training customers: nothing moved.
    assert result.drift is not None and max(result.drift["psi"].values()) < 0.01
    assert "score" in seen and "explain" in seen


def test_calibration_in_the_bundle_moves_the_probabilities(scoring_world, branch_bundles) -> None:
    bundle = branch_bundles["gbdt"]
    cal = bundle.calibration
    assert cal is not None
    raw = score_blocks(
        bundle,
        _blocks(scoring_world)[0],
        total=1,
        options=ScoringOptions(reasons=0, calibrate=False),
    )
    calibrated = score_blocks(
        bundle, _blocks(scoring_world)[0], total=1, options=ScoringOptions(reasons=0)
    )
    assert calibrated.calibrated and not raw.calibrated
    by_id = dict(zip(raw.table.customer_id, raw.table.churn_probability, strict=True))
    expected = cal.apply(np.array([by_id[c] for c in calibrated.table.customer_id]))
    np.testing.assert_allclose(calibrated.table.churn_probability, expected)
    assert (calibrated.table.reasons == "").all()


def test_features_of_another_schema_are_refused(
    scoring_world, branch_bundles, tmp_path: Path
) -> None:
    fs = next(iter(_blocks(scoring_world)[0]))[0]
    fs.tabular_names = [*fs.tabular_names[:-1], "attr_loyalty"]
    with pytest.raises(SchemaMismatchError, match="attr_loyalty"):
        Scorer(branch_bundles["lstm"]).add(fs)
