"""Consent filtering, typed tables, CSV / Parquet round trips."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedcrm.data.loader import load_crm
from fedcrm.data.synthetic import generate

CUSTOMERS = """customer_id,branch_id,signup_date,consent_analytics,ccpa_opt_out
A1,north,2023-01-05,true,false
A2,north,,FALSE,false
A3,north,2023-01-07,Yes,TRUE
A4,north,2023-01-08,1,0
B1,south,2023-02-01,true,no
B2,south,2023-02-02,no,no
"""
EVENTS = """customer_id,timestamp,event_type,amount,channel,product_category
A1,2023-03-01T10:00:00+02:00,Purchase,10.5,Store, Books
A2,2023-03-02T11:00:00,visit,0,web,
A3,2023-03-03T12:00:00Z,purchase,3,app,toys
A4,2023-03-04,support,0,phone,
B1,2023-03-05 09:30:00,purchase,7,web,music
B2,2023-03-06,purchase,8,web,music
A1,2023-02-01T00:00:00,visit,0,store,
"""


@pytest.fixture
def export(tmp_path: Path) -> Path:
    (tmp_path / "customers.csv").write_text(CUSTOMERS)
    (tmp_path / "events.csv").write_text(EVENTS)
    return tmp_path


def test_consent_and_opt_out_are_dropped_and_counted(export: Path) -> None:
    data = load_crm(export)
    assert data.excluded == {"north": 2, "south": 1}
    assert sorted(data.customers["customer_id"]) == ["A1", "A4", "B1"]
    assert sorted(set(data.events["customer_id"])) == ["A1", "A4", "B1"]
    assert data.branches() == ["north", "south"]
    north = data.branch("north")
    assert north.excluded == {"north": 2}
    assert sorted(north.customers["customer_id"]) == ["A1", "A4"]
    assert set(north.events["branch_id"]) == {"north"}


def test_types_and_normalisation(export: Path) -> None:
    ev = load_crm(export).events
    assert str(ev["timestamp"].dtype) == "datetime64[ns]"
    assert ev["amount"].dtype == "float64"
    a1 = ev[ev["customer_id"] == "A1"]
    # sorted by customer then time; the +02:00 offset is converted to UTC
    expected = [pd.Timestamp("2023-02-01"), pd.Timestamp("2023-03-01 08:00")]
    assert a1["timestamp"].tolist() == expected
    assert a1["event_type"].tolist() == ["visit", "purchase"]
    assert a1["channel"].tolist() == ["store", "store"]
    assert a1["product_category"].tolist() == ["", "Books"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    data = generate(branches=2, customers=60, seed=3)
    data.write(tmp_path / fmt, fmt=fmt)
    back = load_crm(tmp_path / fmt)
    pd.testing.assert_frame_equal(back.customers, data.customers)
    pd.testing.assert_frame_equal(back.events, data.events)
    assert back.excluded == {b: 0 for b in data.branches()}
