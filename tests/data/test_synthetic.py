"""Synthetic data: determinism, non-IID branches, consent share, a learnable signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedcrm.data import synthetic
from fedcrm.data.features import branch_feature_sets, build_features, stratified_split
from fedcrm.data.loader import load_crm
from fedcrm.data.validate import validate_dir


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = synthetic.write_synthetic(tmp_path / "a", branches=2, customers=150, seed=11)
    b = synthetic.write_synthetic(tmp_path / "b", branches=2, customers=150, seed=11)
    c = synthetic.write_synthetic(tmp_path / "c", branches=2, customers=150, seed=12)
    for name in ("customers.csv", "events.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "events.csv").read_bytes() != (c / "events.csv").read_bytes()
    assert validate_dir(a) == []
    loaded = load_crm(a)
    made = synthetic.generate(branches=2, customers=150, seed=11)
    pd.testing.assert_frame_equal(loaded.customers, made.customers)
    pd.testing.assert_frame_equal(loaded.events, made.events)
    assert loaded.excluded == made.excluded


def test_branches_are_non_iid_and_signal_is_learnable() -> None:
    data = synthetic.generate(branches=5, customers=500, seed=5)
    total = len(data.customers) + sum(data.excluded.values())
    assert 0.01 <= sum(data.excluded.values()) / total <= 0.05
    sizes = data.customers.groupby("branch_id").size()
    assert sizes.min() >= 0.25 * 500 and sizes.max() > 1.3 * sizes.min()
    assert data.events["timestamp"].max() >= pd.Timestamp("2024-12-30")

    sets = branch_feature_sets(data, cutoff=None, horizon_days=90, max_events=50)
    churn = np.array([fs.labels.mean() for fs in sets.values()])
    assert churn.max() - churn.min() > 0.08, churn
    mixes = data.events.groupby("branch_id")["channel"].value_counts(normalize=True).unstack()
    assert (mixes.max() - mixes.min()).max() > 0.05

    fs = build_features(data, cutoff=None, horizon_days=90, max_events=50)
    assert 0.2 < fs.labels.mean() < 0.7
    train, test = stratified_split(fs, test_fraction=0.3, seed=0)
    model = LogisticRegression(max_iter=2000).fit(fs.tabular[train], fs.labels[train])
    auc = roc_auc_score(fs.labels[test], model.predict_proba(fs.tabular[test])[:, 1])
    assert 0.7 <= auc <= 0.95, auc


def test_true_signal_is_documented() -> None:
    assert "True signal" in synthetic.TRUE_SIGNAL
    assert synthetic.TRUE_SIGNAL in (synthetic.__doc__ or "")


def test_a_one_branch_export_naming_another_branch_is_noted(tmp_path: Path) -> None:
    from fedcrm.data.contract import branch_id_mismatch

    write_synthetic = synthetic.write_synthetic
    one = load_crm(write_synthetic(tmp_path / "one", branches=1, customers=30, seed=1))
    note = branch_id_mismatch(one, "b1")
    assert note is not None and "branch_id branch_00" in note and "serves branch b1" in note
    assert branch_id_mismatch(one.customers, "b1") == note  # a customers table works too
    assert branch_id_mismatch(one, "branch_00") is None
    named = write_synthetic(tmp_path / "named", branches=1, customers=30, seed=1, branch_ids=["b1"])
    assert branch_id_mismatch(load_crm(named), "b1") is None
    # Several branches: picking this branch's rows is another check's business.
    many = load_crm(write_synthetic(tmp_path / "many", branches=2, customers=30, seed=1))
    assert branch_id_mismatch(many, "b1") is None
