"""Features "as of" a day for scoring: the training features without a label window."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcrm.data.features import build_features
from fedcrm.data.loader import CRMData, load_crm
from fedcrm.data.scoring_features import (
    UNKNOWN_LABEL,
    build_scoring_features,
    scoring_feature_blocks,
)
from fedcrm.data.synthetic import generate, write_synthetic
from fedcrm.errors import ConfigError


@pytest.fixture(scope="module")
def crm() -> CRMData:
    return generate(branches=2, customers=150, seed=4)


def test_as_of_a_day_equals_training_with_the_cutoff_on_the_next_day(crm: CRMData) -> None:
    cutoff = dt.date(2024, 6, 1)
    train = build_features(crm, cutoff=cutoff, horizon_days=90, max_events=25)
    score = build_scoring_features(crm, as_of=cutoff - dt.timedelta(days=1), max_events=25)
    assert score.customer_ids.tolist() == train.customer_ids.tolist()
    np.testing.assert_array_equal(score.tabular, train.tabular)
    np.testing.assert_array_equal(score.seq_cat, train.seq_cat)
    np.testing.assert_array_equal(score.seq_num, train.seq_num)
    assert (score.labels == UNKNOWN_LABEL).all()


def test_scoring_needs_no_label_window(crm: CRMData) -> None:
    last = crm.events["timestamp"].max().date()
    with pytest.raises(ConfigError, match="no label window"):
        build_features(crm, cutoff=last + dt.timedelta(days=1), horizon_days=90, max_events=10)
    fs = build_scoring_features(crm, as_of=last, max_events=10)
    assert len(fs) > 0
    # The events of the last day count: recency is under a day for someone active then.
    assert np.expm1(fs.tabular[:, 0]).min() < 1.0


def test_blocks_give_exactly_the_whole_build(crm: CRMData) -> None:
    as_of = dt.date(2024, 8, 15)
    whole = build_scoring_features(crm, as_of=as_of, max_events=15)
    blocks = list(scoring_feature_blocks(crm, as_of=as_of, max_events=15, block_size=37))
    assert sum(covered for _, covered in blocks) == len(crm.customers)
    ids = np.concatenate([fs.customer_ids for fs, _ in blocks])
    assert ids.tolist() == whole.customer_ids.tolist()
    np.testing.assert_array_equal(np.concatenate([fs.tabular for fs, _ in blocks]), whole.tabular)
    np.testing.assert_array_equal(np.concatenate([fs.seq_num for fs, _ in blocks]), whole.seq_num)


def test_no_event_up_to_the_day_is_a_clear_error(crm: CRMData) -> None:
    first = crm.events["timestamp"].min().date()
    with pytest.raises(ConfigError, match="no event on or before it"):
        build_scoring_features(crm, as_of=first - dt.timedelta(days=1), max_events=10)


def test_customers_without_consent_are_not_featurised(tmp_path: Path) -> None:
    export = write_synthetic(tmp_path / "crm", branches=1, customers=120, seed=2)
    raw = pd.read_csv(export / "customers.csv", dtype=str)
    gone = set(
        raw.loc[(raw.consent_analytics == "false") | (raw.ccpa_opt_out == "true"), "customer_id"]
    )
    assert gone
    fs = build_scoring_features(load_crm(export), as_of=dt.date(2024, 12, 31), max_events=10)
    assert gone.isdisjoint(fs.customer_ids.tolist())
