"""Check a branch export against the data contract, naming file, line and column.

Every finding is a :class:`fedcrm.errors.Problem`; ``str(problem)`` reads
``file:line: column: what is wrong``. ``line`` is the 1-based line of the file
(the header is line 1), 0 for a whole-file problem. For Parquet files ``line`` is
the row index + 2, the line the row would have in the equivalent CSV file.
Messages never contain a field value or a customer id.

All checks are vectorised: a 50k-customer / 1M-event branch validates in a few
seconds. :func:`inspect_dir` also returns the typed tables, which
:func:`fedcrm.data.loader.load_crm` uses so that files are read only once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedcrm.data.contract import (
    CHANNELS,
    CUSTOMER_COLUMNS,
    EVENT_COLUMNS,
    EVENT_TYPES,
    OPTIONAL_COLUMNS,
    WHOLE,
    FilePair,
    discover,
    find_table,
    lookup,
    member,
    parse_bool,
    read_table,
)
from fedcrm.errors import Problem
from fedcrm.identity import is_valid_id

logger = logging.getLogger(__name__)

_NAN_WORDS = frozenset({"nan", "na", "n/a", "null", "none"})
_UNDECLARED = "undeclared column (declare it as an attribute column or drop it)"
_NO_ROWS = "no data rows: empty branch (the file has only a header)"
_ELSEWHERE = "customer_id also appears in another branch directory"


@dataclass
class Inspection:
    """Result of :func:`inspect_dir`: the problems and the typed tables.

    ``customers`` / ``events`` concatenate every pair found; they are only
    trustworthy when ``problems`` is empty.
    """

    problems: list[Problem] = field(default_factory=list)
    customers: pd.DataFrame | None = None
    events: pd.DataFrame | None = None


def _blank(frame: pd.DataFrame) -> pd.Series:
    return pd.Series("", index=frame.index, dtype=str)


def _emit(out: list[Problem], file: str, lines: Iterable[int], column: str, message: str) -> None:
    out.extend(Problem(file, int(line), column, message) for line in lines)


def _check_columns(
    frame: pd.DataFrame,
    rel: str,
    required: Sequence[str],
    allowed_extra: Sequence[str],
    out: list[Problem],
) -> None:
    for name in [*required, *allowed_extra]:
        if name not in frame.columns:
            out.append(Problem(rel, 1, name, "missing column"))
    for name in frame.columns:
        if name not in required and name not in allowed_extra:
            out.append(Problem(rel, 1, name, _UNDECLARED))


def _required(frame: pd.DataFrame, lines: np.ndarray, rel: str, out: list[Problem]) -> None:
    for name in frame.columns:
        if name in CUSTOMER_COLUMNS + EVENT_COLUMNS and name not in OPTIONAL_COLUMNS:
            empty = (frame[name] == "").to_numpy()
            _emit(out, rel, lines[empty], name, "empty value in a required field")


def _timestamps(text: pd.Series) -> pd.Series:
    """ISO 8601 text -> tz-naive UTC datetime64[ns] (NaT where unparsable)."""
    ts = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    return ts.dt.tz_localize(None).astype("datetime64[ns]")


def _check_customers(
    pair: FilePair, attrs: Sequence[str], out: list[Problem]
) -> tuple[pd.DataFrame, np.ndarray] | None:
    assert pair.customers is not None
    rel = pair.rel(pair.customers)
    read = read_table(pair.customers, rel, out)
    if read is None:
        return None
    frame, lines = read
    _check_columns(frame, rel, CUSTOMER_COLUMNS, attrs, out)
    if len(frame) == 0:
        out.append(Problem(rel, 0, WHOLE, _NO_ROWS))
    _required(frame, lines, rel, out)
    typed = pd.DataFrame(index=frame.index)
    for name in CUSTOMER_COLUMNS + tuple(attrs):
        typed[name] = frame[name] if name in frame.columns else _blank(frame)
    if "customer_id" in frame.columns:
        ids = frame["customer_id"]
        dup = (ids.duplicated(keep="first") & (ids != "")).to_numpy()
        if dup.any():
            first = pd.Series(lines, index=frame.index).groupby(ids.to_numpy()).transform("first")
            for line, f in zip(lines[dup], first.to_numpy()[dup], strict=True):
                msg = f"duplicate customer_id (first on line {f})"
                out.append(Problem(rel, int(line), "customer_id", msg))
    if "signup_date" in frame.columns:
        sd = frame["signup_date"]
        parsed = _timestamps(sd)
        bad = (parsed.isna() & (sd != "")).to_numpy()
        _emit(out, rel, lines[bad], "signup_date", "not an ISO date (YYYY-MM-DD)")
        typed["signup_date"] = parsed.dt.normalize()
    else:
        typed["signup_date"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns]")
    for name in ("consent_analytics", "ccpa_opt_out"):
        if name in frame.columns:
            parsed = parse_bool(frame[name])
            bad = (parsed.isna() & (frame[name] != "")).to_numpy()
            _emit(out, rel, lines[bad], name, "not a boolean (use true/false, 1/0 or yes/no)")
            typed[name] = parsed.fillna(False).astype(bool)
        else:
            typed[name] = False
    return typed, lines


def _check_events(
    pair: FilePair, known: pd.Series | None, out: list[Problem]
) -> pd.DataFrame | None:
    assert pair.events is not None
    rel = pair.rel(pair.events)
    read = read_table(pair.events, rel, out)
    if read is None:
        return None
    frame, lines = read
    _check_columns(frame, rel, EVENT_COLUMNS, (), out)
    if len(frame) == 0:
        out.append(Problem(rel, 0, WHOLE, _NO_ROWS))
    _required(frame, lines, rel, out)
    typed = pd.DataFrame(index=frame.index)
    for name in EVENT_COLUMNS:
        typed[name] = frame[name] if name in frame.columns else _blank(frame)
    if "customer_id" in frame.columns and known is not None:
        ids = frame["customer_id"]
        bad = ~member(ids, known) & (ids != "").to_numpy()
        cust = pair.rel(pair.customers) if pair.customers else "customers"
        _emit(out, rel, lines[bad], "customer_id", f"event for a customer not in {cust}")
    if "timestamp" in frame.columns:
        ts = _timestamps(frame["timestamp"])
        bad = (ts.isna() & (frame["timestamp"] != "")).to_numpy()
        _emit(out, rel, lines[bad], "timestamp", "not an ISO 8601 timestamp")
        typed["timestamp"] = ts
    for name, vocab in (("event_type", EVENT_TYPES), ("channel", CHANNELS)):
        if name in frame.columns:
            norm = frame[name].str.lower()
            bad = (~norm.isin(vocab) & (norm != "")).to_numpy()
            msg = f"unknown {name} (expected one of {', '.join(vocab)})"
            _emit(out, rel, lines[bad], name, msg)
            typed[name] = norm
    if "amount" in frame.columns:
        text = frame["amount"]
        try:
            amount = pd.Series(
                pc.cast(pa.array(text), pa.float64()).to_numpy(zero_copy_only=False),
                index=text.index,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            amount = pd.to_numeric(text, errors="coerce").astype("float64")
        nan_word = text.str.lower().isin(_NAN_WORDS).to_numpy()
        unparsable = (amount.isna().to_numpy() & (text != "").to_numpy()) & ~nan_word
        _emit(out, rel, lines[nan_word], "amount", "missing value (NaN) in a required field")
        _emit(out, rel, lines[unparsable], "amount", "not a number")
        inf = np.isinf(amount.to_numpy())
        _emit(out, rel, lines[inf], "amount", "not a finite number")
        neg = (amount < 0).to_numpy()
        _emit(out, rel, lines[neg], "amount", "negative amount (must be >= 0)")
        typed["amount"] = amount.fillna(0.0)
    return typed


def _check_pair(
    pair: FilePair, attrs: Sequence[str], out: list[Problem]
) -> tuple[pd.DataFrame | None, pd.DataFrame | None, np.ndarray | None]:
    for path, table in ((pair.customers, "customers"), (pair.events, "events")):
        if path is None:
            out.append(
                Problem(
                    pair.rel(f"{table}.csv"),
                    0,
                    WHOLE,
                    f"missing file ({table}.csv or {table}.parquet)",
                )
            )
        else:
            others = find_table(pair.directory, table)
            if len(others) > 1:
                out.append(
                    Problem(
                        pair.rel(path),
                        0,
                        WHOLE,
                        f"both {table}.csv and {table}.parquet present; keep one",
                    )
                )
    cust = _check_customers(pair, attrs, out) if pair.customers is not None else None
    customers, lines = cust if cust is not None else (None, None)
    known = customers["customer_id"] if customers is not None else None
    events = _check_events(pair, known, out) if pair.events is not None else None
    if customers is not None and events is not None and lines is not None:
        ok = (customers["branch_id"] != "").to_numpy()
        has_events = member(customers["customer_id"], events["customer_id"])
        per_branch = pd.DataFrame(
            {"b": customers["branch_id"].to_numpy()[ok], "e": has_events[ok], "line": lines[ok]}
        ).groupby("b", sort=True)
        agg = per_branch.agg(e=("e", "any"), line=("line", "min"))
        rel = pair.rel(pair.customers) if pair.customers else "customers"
        _emit(
            out,
            rel,
            agg["line"][~agg["e"]],
            "branch_id",
            "branch has no events (none of its customers appears in the events file)",
        )
        _emit(
            out,
            rel,
            agg["line"][[not is_valid_id(b) for b in agg.index]],
            "branch_id",
            "not a valid branch id (letters, digits, '-' and '_' only; ids become file names)",
        )
    if customers is not None:
        customers = customers.assign(_file=pair.rel(pair.customers or "customers.csv"), _line=lines)
    return customers, events, lines


def inspect_dir(path: str | Path, *, attribute_columns: Sequence[str] = ()) -> Inspection:
    """Validate a branch export and parse its tables.

    Parameters
    ----------
    path : str or Path
        A directory in one of the contract layouts.
    attribute_columns : sequence of str
        Extra customer columns the caller declares; any other column is a problem.

    Returns
    -------
    Inspection
        Every problem (sorted by file and line) and the typed tables.
    """
    root = Path(path)
    out: list[Problem] = []
    if not root.is_dir():
        return Inspection([Problem(".", 0, WHOLE, "not a directory")])
    attrs = tuple(attribute_columns)
    custs, evs = [], []
    for pair in discover(root):
        customers, events, _ = _check_pair(pair, attrs, out)
        if customers is not None:
            custs.append(customers)
        if events is not None:
            if customers is not None:
                pos = lookup(events["customer_id"], customers["customer_id"])
                branch = np.append(customers["branch_id"].to_numpy(dtype=object), "")[pos]
                events = events.assign(branch_id=pd.array(branch, dtype=str))
            evs.append(events)
    customers = pd.concat(custs, ignore_index=True) if custs else None
    if customers is not None and len(custs) > 1:
        ids = customers["customer_id"]
        dup = ids.duplicated(keep=False) & (ids != "")
        multi = dup & (customers.groupby(ids)["_file"].transform("nunique") > 1)
        for file, line in zip(customers["_file"][multi], customers["_line"][multi], strict=True):
            out.append(Problem(file, int(line), "customer_id", _ELSEWHERE))
    if customers is not None:
        customers = customers.drop(columns=["_file", "_line"])
    events = pd.concat(evs, ignore_index=True) if evs else None
    out.sort(key=lambda p: (p.file, p.line))
    if out:
        logger.info("branch export %s: %d problem(s)", root.name, len(out))
    return Inspection(out, customers, events)


def validate_dir(path: str | Path, *, attribute_columns: Sequence[str] = ()) -> list[Problem]:
    """Every way a branch export breaks the data contract.

    Parameters
    ----------
    path : str or Path
        A directory in one of the contract layouts.
    attribute_columns : sequence of str
        Extra customer columns the caller declares.

    Returns
    -------
    list of Problem
        Empty when the export is valid; sorted by file and line.
    """
    return inspect_dir(path, attribute_columns=attribute_columns).problems
