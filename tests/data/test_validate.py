"""Every kind of contract violation is located exactly and never leaks a value."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedcrm.data.loader import load_crm
from fedcrm.data.validate import validate_dir
from fedcrm.errors import DataValidationError

SENTINEL = "SECRET-123"
NEG = "-77.7"

CUSTOMERS = """customer_id,branch_id,signup_date,consent_analytics,ccpa_opt_out
SECRET-123,b1,2023-01-05,true,false
C2,b1,,yes,no
C3,b1,2023-02-01,1,0
"""
EVENTS = """customer_id,timestamp,event_type,amount,channel,product_category
SECRET-123,2023-03-01T10:00:00,purchase,10.5,store,books
C2,2023-03-02T11:00:00,visit,0,web,
C3,2023-03-03T12:00:00Z,purchase,3,app,toys
"""


def _write(d: Path, customers: str | None = CUSTOMERS, events: str | None = EVENTS) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if customers is not None:
        (d / "customers.csv").write_text(customers)
    if events is not None:
        (d / "events.csv").write_text(events)
    return d


def _replace_line(text: str, line: int, new: str) -> str:
    lines = text.splitlines()
    lines[line - 1] = new
    return "\n".join(lines) + "\n"


def _assert_located(root: Path, expected: str, **kw: object) -> None:
    problems = validate_dir(root, **kw)  # type: ignore[arg-type]
    shown = [str(p) for p in problems]
    assert any(s.startswith(expected) for s in shown), shown
    for s in shown:
        assert SENTINEL not in s and NEG not in s, s
    with pytest.raises(DataValidationError) as info:
        load_crm(root, **kw)  # type: ignore[arg-type]
    assert SENTINEL not in str(info.value) and NEG not in str(info.value)
    assert info.value.problems == problems


def test_valid_export_has_no_problem(tmp_path: Path) -> None:
    assert validate_dir(_write(tmp_path)) == []
    data = load_crm(tmp_path)
    assert len(data.customers) == 3 and len(data.events) == 3
    assert str(data.events["timestamp"].dtype) == "datetime64[ns]"


CASES = {
    "bad_signup_date": (
        _replace_line(CUSTOMERS, 2, "SECRET-123,b1,SECRET-123,true,false"),
        EVENTS,
        "customers.csv:2: signup_date: ",
    ),
    "bad_bool": (
        _replace_line(CUSTOMERS, 3, "C2,b1,,SECRET-123,no"),
        EVENTS,
        "customers.csv:3: consent_analytics: ",
    ),
    "empty_required": (
        _replace_line(CUSTOMERS, 4, ",b1,2023-02-01,1,0"),
        EVENTS,
        "customers.csv:4: customer_id: ",
    ),
    "duplicate_id": (
        CUSTOMERS + "SECRET-123,b1,,true,false\n",
        EVENTS,
        "customers.csv:5: customer_id: duplicate customer_id (first on line 2)",
    ),
    "missing_column": (
        CUSTOMERS.replace(",ccpa_opt_out", "")
        .replace(",false\n", "\n")
        .replace(",no\n", "\n")
        .replace(",0\n", "\n"),
        EVENTS,
        "customers.csv:1: ccpa_opt_out: missing column",
    ),
    "extra_column": (
        CUSTOMERS,
        EVENTS.replace("category\n", "category,notes\n", 1)
        .replace("books\n", "books,SECRET-123\n")
        .replace(",\n", ",,x\n")
        .replace("toys\n", "toys,y\n"),
        "events.csv:1: notes: undeclared column",
    ),
    "bad_timestamp": (
        CUSTOMERS,
        _replace_line(EVENTS, 3, "C2,SECRET-123,visit,0,web,"),
        "events.csv:3: timestamp: ",
    ),
    "unparsable_amount": (
        CUSTOMERS,
        _replace_line(EVENTS, 2, "SECRET-123,2023-03-01,purchase,SECRET-123,store,books"),
        "events.csv:2: amount: not a number",
    ),
    "negative_amount": (
        CUSTOMERS,
        EVENTS + "C3,2023-03-04,return,-77.7,store,toys\n",
        "events.csv:5: amount: negative amount",
    ),
    "nan_amount": (
        CUSTOMERS,
        _replace_line(EVENTS, 4, "C3,2023-03-03,purchase,NaN,app,toys"),
        "events.csv:4: amount: missing value (NaN)",
    ),
    "empty_amount": (
        CUSTOMERS,
        _replace_line(EVENTS, 4, "C3,2023-03-03,purchase,,app,toys"),
        "events.csv:4: amount: empty value",
    ),
    "unknown_event_type": (
        CUSTOMERS,
        _replace_line(EVENTS, 3, "C2,2023-03-02,SECRET-123,0,web,"),
        "events.csv:3: event_type: unknown event_type",
    ),
    "unknown_channel": (
        CUSTOMERS,
        _replace_line(EVENTS, 3, "C2,2023-03-02,visit,0,SECRET-123,"),
        "events.csv:3: channel: unknown channel",
    ),
    "unknown_customer": (
        CUSTOMERS,
        EVENTS + "SECRET-1234,2023-03-04,visit,0,web,\n",
        "events.csv:5: customer_id: event for a customer not in customers.csv",
    ),
    "branch_without_events": (
        CUSTOMERS + "C9,b2,,true,false\nC10,b2,,true,false\n",
        EVENTS,
        "customers.csv:5: branch_id: branch has no events",
    ),
    "header_only_events": (
        CUSTOMERS,
        EVENTS.splitlines()[0] + "\n",
        "events.csv:0: -: no data rows",
    ),
    "header_only_customers": (
        CUSTOMERS.splitlines()[0] + "\n",
        EVENTS,
        "customers.csv:0: -: no data rows",
    ),
    "ragged_long": (
        CUSTOMERS,
        _replace_line(EVENTS, 3, "C2,2023-03-02,visit,0,web,,SECRET-123"),
        "events.csv:3: -: malformed row (7 fields, header has 6)",
    ),
    "ragged_short": (
        CUSTOMERS,
        _replace_line(EVENTS, 4, "SECRET-123,2023-03-03,purchase"),
        "events.csv:4: -: malformed row (3 fields",
    ),
    "ragged_after_quoted_newline": (
        CUSTOMERS,
        _replace_line(EVENTS, 2, 'SECRET-123,2023-03-01,purchase,1,store,"two\nlines"')
        + "C3,2023-03-05,visit,0,web,,SECRET-123\n",
        "events.csv:6: -: malformed row",
    ),
    "unbalanced_quote": (
        CUSTOMERS,
        EVENTS + 'C3,2023-03-05,visit,0,web,"SECRET-123\n',
        "events.csv:",
    ),
    "empty_file": (CUSTOMERS, "", "events.csv:0: -: empty file"),
    "value_after_blank_line": (
        CUSTOMERS,
        EVENTS + "\nC3,2023-03-05,visit,0,SECRET-123,\n",
        "events.csv:6: channel: ",
    ),
    "bad_utf8": (CUSTOMERS, None, "events.csv:5: -: not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_is_located(tmp_path: Path, case: str) -> None:
    customers, events, expected = CASES[case]
    root = _write(tmp_path, customers, events)
    if case == "bad_utf8":
        (root / "events.csv").write_bytes(EVENTS.encode() + b"\xff\xfeSECRET-123\n")
    _assert_located(root, expected)


def test_missing_file(tmp_path: Path) -> None:
    _assert_located(_write(tmp_path, events=None), "events.csv:0: -: missing file")


def test_declared_attribute_column(tmp_path: Path) -> None:
    text = CUSTOMERS.replace("ccpa_opt_out\n", "ccpa_opt_out,age\n")
    text = text.replace("false\n", "false,41\n")
    text = text.replace("no\n", "no,\n").replace(",0\n", ",0,33\n")
    root = _write(tmp_path, text)
    assert [p.column for p in validate_dir(root)] == ["age"]
    assert validate_dir(root, attribute_columns=["age"]) == []
    _assert_located(
        root, "customers.csv:1: income: missing column", attribute_columns=["age", "income"]
    )


def test_subdirectory_layout_names_relative_files(tmp_path: Path) -> None:
    _write(tmp_path / "north")
    other = CUSTOMERS.replace("SECRET-123", "S1").replace("C2", "S2").replace("C3", "S3")
    bad = EVENTS.replace("SECRET-123", "S1").replace("C2", "S2").replace("C3", "S3")
    broken = _replace_line(bad, 3, "S2,x,visit,0,web,")
    _write(tmp_path / "south", other.replace("b1", "b2"), broken)
    _assert_located(tmp_path, "south/events.csv:3: timestamp: ")
    (tmp_path / "south" / "events.csv").write_text(bad)
    assert validate_dir(tmp_path) == []
    assert load_crm(tmp_path).branches() == ["b1", "b2"]


def test_customer_ids_are_unique_within_a_branch_only(tmp_path: Path) -> None:
    # Two branches that both number customers from 1: two sets of customers.
    _write(tmp_path / "north")
    _write(tmp_path / "west", CUSTOMERS.replace("b1", "b3"), EVENTS)
    assert validate_dir(tmp_path) == []
    data = load_crm(tmp_path)
    assert len(data.customers) == 6 and len(data.events) == 6
    assert sorted(data.branch("b3").customers["customer_id"]) == ["C2", "C3", SENTINEL]
    assert data.branch("b3").events["branch_id"].tolist() == ["b3"] * 3
    # The same branch split over two folders must not hold one customer twice.
    _write(tmp_path / "north2")
    _assert_located(
        tmp_path, "north2/customers.csv:2: customer_id: customer_id also appears for the same"
    )


def test_parquet_lines_are_row_plus_two(tmp_path: Path) -> None:
    cust = pd.DataFrame(
        {
            "customer_id": ["SECRET-123", "C2"],
            "branch_id": ["b1", "b1"],
            "signup_date": pd.to_datetime(["2023-01-01", None]),
            "consent_analytics": [True, True],
            "ccpa_opt_out": [False, False],
        }
    )
    ev = pd.DataFrame(
        {
            "customer_id": ["SECRET-123", "C2"],
            "timestamp": pd.to_datetime(["2023-03-01", "2023-03-02"], utc=True),
            "event_type": ["purchase", "visit"],
            "amount": [1.5, -77.7],
            "channel": ["store", "web"],
            "product_category": ["x", None],
        }
    )
    cust.to_parquet(tmp_path / "customers.parquet")
    ev.to_parquet(tmp_path / "events.parquet")
    _assert_located(tmp_path, "events.parquet:3: amount: negative amount")
    ev.loc[1, "amount"] = 0.0
    ev.to_parquet(tmp_path / "events.parquet")
    assert validate_dir(tmp_path) == []
    (tmp_path / "events.csv").write_text(EVENTS)
    _assert_located(tmp_path, "events.csv:0: -: both events.csv and events.parquet")


def test_not_a_directory(tmp_path: Path) -> None:
    assert [str(p) for p in validate_dir(tmp_path / "nope")] == [".:0: -: not a directory"]
