"""Features and labels on a hand-computed case; cutoff rules; stratified split."""

from __future__ import annotations

import datetime as dt
import zlib

import numpy as np
import pandas as pd
import pytest

from fedcrm.data.dataset import FeatureSet
from fedcrm.data.features import (
    branch_feature_sets,
    build_features,
    resolve_cutoff,
    stratified_split,
)
from fedcrm.data.loader import CRMData
from fedcrm.errors import ConfigError

CUTOFF = dt.date(2024, 1, 11)


def _tiny() -> CRMData:
    customers = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C"],
            "branch_id": ["b1", "b1", "b2"],
            "signup_date": pd.to_datetime(["2023-12-01", None, "2024-01-01"]).astype(
                "datetime64[ns]"
            ),
            "consent_analytics": True,
            "ccpa_opt_out": False,
        }
    )
    rows = [
        ("A", "2024-01-01 00:00", "purchase", 9.0, "store", " Books "),
        ("A", "2024-01-05 12:00", "visit", 0.0, "store", ""),
        ("A", "2024-01-15 00:00", "purchase", 5.0, "web", "books"),  # in the window
        ("B", "2024-01-10 00:00", "web_visit", 0.0, "web", ""),
        ("B", "2024-01-25 00:00", "purchase", 5.0, "web", ""),  # after the window
        ("C", "2024-01-12 00:00", "purchase", 1.0, "app", ""),  # only after the cutoff
    ]
    ev = pd.DataFrame(
        rows,
        columns=["customer_id", "timestamp", "event_type", "amount", "channel", "product_category"],
    )
    ev["timestamp"] = pd.to_datetime(ev["timestamp"]).astype("datetime64[ns]")
    ev["branch_id"] = ev["customer_id"].map({"A": "b1", "B": "b1", "C": "b2"}).astype(str)
    return CRMData(customers, ev, {"b1": 0, "b2": 0})


def test_hand_computed_case() -> None:
    fs = build_features(_tiny(), cutoff=CUTOFF, horizon_days=10, max_events=3)
    assert fs.customer_ids.tolist() == ["A", "B"]
    assert fs.branch_ids.tolist() == ["b1", "b1"]
    assert fs.labels.tolist() == [0, 1]
    assert fs.lengths.tolist() == [2, 1]
    books = zlib.crc32(b"books") % 32 + 1
    assert fs.seq_cat[0].tolist() == [[1, 1, books], [2, 1, 0], [0, 0, 0]]
    assert fs.seq_cat[1].tolist() == [[6, 2, 0], [0, 0, 0], [0, 0, 0]]
    np.testing.assert_allclose(
        fs.seq_num[0, :2], np.log1p([[9.0, 0.0, 10.0], [0.0, 4.5, 5.5]]), rtol=1e-6
    )
    np.testing.assert_allclose(fs.seq_num[1, 0], np.log1p([0.0, 0.0, 1.0]), rtol=1e-6)
    assert not fs.seq_num[0, 2].any()
    tab = dict(zip(fs.tabular_names, fs.tabular[0], strict=True))
    assert tab["log_recency_days"] == pytest.approx(np.log1p(5.5))
    assert tab["log_purchase_recency_days"] == pytest.approx(np.log1p(10.0))
    assert tab["log_tenure_days"] == pytest.approx(np.log1p(41.0))
    assert tab["log_n_purchases"] == pytest.approx(np.log1p(1))
    assert tab["log_total_spend"] == pytest.approx(np.log1p(9.0))
    assert tab["share_purchase"] == pytest.approx(0.5)
    assert tab["share_store"] == pytest.approx(1.0)
    assert tab["log_events_30d"] == pytest.approx(np.log1p(2))
    b = dict(zip(fs.tabular_names, fs.tabular[1], strict=True))
    assert b["log_recency_days"] == pytest.approx(np.log1p(1.0))
    assert b["log_tenure_days"] == pytest.approx(np.log1p(1.0))  # no signup date: first event
    assert fs.tabular.dtype == np.float32 and np.isfinite(fs.tabular).all()


def test_truncation_keeps_last_events_and_true_gap() -> None:
    fs = build_features(_tiny(), cutoff=CUTOFF, horizon_days=10, max_events=1)
    assert fs.lengths.tolist() == [1, 1]
    assert fs.seq_cat[0, 0].tolist() == [2, 1, 0]
    assert fs.seq_num[0, 0, 1] == pytest.approx(np.log1p(4.5))


def test_resolve_cutoff() -> None:
    data = _tiny()
    assert resolve_cutoff(data, None, 10) == dt.date(2024, 1, 15)
    assert resolve_cutoff(data, CUTOFF, 10) == CUTOFF
    with pytest.raises(ConfigError, match="no customers"):
        resolve_cutoff(data, dt.date(2023, 1, 1), 10)
    with pytest.raises(ConfigError, match="no label window"):
        resolve_cutoff(data, dt.date(2025, 1, 1), 10)


def test_branch_feature_sets_share_the_cutoff() -> None:
    sets = branch_feature_sets(_tiny(), cutoff=CUTOFF, horizon_days=10, max_events=3)
    assert list(sets) == ["b1"]  # b2 has no event before the cutoff
    assert sets["b1"].customer_ids.tolist() == ["A", "B"]


def _fake(n_per_branch: dict[str, int], seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    branches = np.concatenate([[b] * n for b, n in n_per_branch.items()])
    n = len(branches)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    return FeatureSet(
        np.arange(n).astype(str),
        branches,
        np.zeros((n, 2, 3), np.int64),
        np.zeros((n, 2, 3), np.float32),
        np.ones(n, np.int64),
        np.zeros((n, 1), np.float32),
        labels,
    )


def test_stratified_split() -> None:
    fs = _fake({"a": 500, "b": 120, "c": 40})
    train, test = stratified_split(fs, test_fraction=0.25, seed=7)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(fs)
    for b in ("a", "b", "c"):
        for y in (0, 1):
            group = np.flatnonzero((fs.branch_ids == b) & (fs.labels == y))
            share = np.isin(group, test).mean()
            assert abs(share - 0.25) <= 0.5 / len(group) + 1e-9
    again = stratified_split(fs, test_fraction=0.25, seed=7)
    assert np.array_equal(again[1], test)
    other = stratified_split(fs, test_fraction=0.25, seed=8)
    assert not np.array_equal(other[1], test)
    # a branch split alone gets the same rows as in the pooled split
    idx_b = np.flatnonzero(fs.branch_ids == "b")
    alone = stratified_split(fs.subset(idx_b), test_fraction=0.25, seed=7)[1]
    assert np.array_equal(idx_b[alone], np.intersect1d(test, idx_b))


def test_blocks_of_customers_and_event_order_do_not_change_features(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedcrm.data import features
    from fedcrm.data.synthetic import generate

    data = generate(branches=2, customers=150, seed=11)
    whole = build_features(data, cutoff=None, horizon_days=90, max_events=8)
    monkeypatch.setattr(features, "BLOCK_CUSTOMERS", 7)
    shuffled = CRMData(
        data.customers,
        data.events.sample(frac=1.0, random_state=0).reset_index(drop=True),
        data.excluded,
    )
    for variant in (data, shuffled):
        blocks = build_features(variant, cutoff=None, horizon_days=90, max_events=8)
        for name in ("customer_ids", "seq_cat", "seq_num", "lengths", "tabular", "labels"):
            assert np.array_equal(getattr(blocks, name), getattr(whole, name)), name
