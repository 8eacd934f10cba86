"""The contract's rules, applied to one chunk of a table at a time.

Each check turns a :class:`~fedcrm.data.reading.Chunk` of text into compact
typed columns (:class:`CustomerColumns`, :class:`EventColumns`) and records
every rule it breaks in a :class:`~fedcrm.data.problems.ProblemLog`, with the
fix; :mod:`fedcrm.data.validate` drives them over whole files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedcrm.data.columns import CustomerColumns, EventColumns
from fedcrm.data.contract import (
    CHANNELS,
    CUSTOMER_COLUMNS,
    EVENT_COLUMNS,
    EVENT_TYPES,
    OPTIONAL_COLUMNS,
)
from fedcrm.data.problems import ProblemLog
from fedcrm.data.reading import Chunk
from fedcrm.data.spec import OTHER, DataSpec, personal_data_kind
from fedcrm.data.values import (
    NUMBER_FIXES,
    codes,
    empty,
    parse_bools,
    parse_numbers,
    parse_timestamps,
)

_DAY_NS = 86_400 * 10**9
_NAT = np.iinfo(np.int64).min
_EMPTY_FIX = "fill it in or drop the row"
_DATE_FIX = "write dates as YYYY-MM-DD"
_TS_FIX = (
    "write timestamps as YYYY-MM-DDTHH:MM:SS (ISO 8601; an offset such as Z or +02:00 may follow)"
)
_DAY_FIRST_FIX = (
    "this looks like dd/mm/yyyy or mm/dd/yyyy: convert the column to ISO 8601 ({}) before export"
)
_PII_FIX = "drop the column before export: fedcrm never needs it"


def check_columns(
    header: Sequence[str],
    name: str,
    required: Sequence[str],
    declared: Sequence[str],
    log: ProblemLog,
) -> None:
    """Missing contract or declared columns, undeclared and personal-data columns."""
    for col in required:
        if col not in header:
            log.one(name, 1, col, "missing column", fix="add it (see the data contract)")
    for col in declared:
        if col not in header:
            log.one(
                name,
                1,
                col,
                "missing column",
                fix="declared in the data spec: add it to the file or remove it from the spec",
            )
    for col in header:
        if col in required or col in declared:
            continue
        what = personal_data_kind(col)
        if what is not None:
            log.one(name, 1, col, f"looks like personal data ({what})", fix=_PII_FIX)
        elif required == CUSTOMER_COLUMNS:
            log.one(
                name,
                1,
                col,
                "undeclared column",
                fix=f"declare it in the data spec (data_spec.yaml: `attributes: {{{col}: "
                "numeric}`, or categorical with its categories) or drop it",
            )
        else:
            log.one(
                name,
                1,
                col,
                "undeclared column",
                fix="drop it: the events file takes only the contract columns",
            )


def _required(chunk: Chunk, name: str, columns: Sequence[str], log: ProblemLog) -> None:
    for col in columns:
        if col in chunk.columns and col not in OPTIONAL_COLUMNS:
            bad = empty(chunk.columns[col])
            log.add(name, col, "empty value in a required field", chunk.lines[bad], fix=_EMPTY_FIX)


def _numbers(
    values: pa.Array,
    lines: np.ndarray,
    name: str,
    col: str,
    spec: DataSpec,
    log: ProblemLog,
    other_fix: str = NUMBER_FIXES["other"],
) -> np.ndarray:
    parsed = parse_numbers(values, decimal=spec.decimal, strip=spec.currency_symbols == "strip")
    for cause, bad in parsed.failed.items():
        fix = other_fix if cause == "other" else NUMBER_FIXES[cause]
        log.add(name, col, "not a number", lines[bad], fix=fix)
    log.add(name, col, "not a finite number", lines[parsed.infinite], fix=NUMBER_FIXES["other"])
    return parsed.values


def _timestamps(
    values: pa.Array, lines: np.ndarray, name: str, col: str, log: ProblemLog, *, date: bool
) -> np.ndarray:
    ns, bad, day_first = parse_timestamps(values)
    what = "not an ISO date (YYYY-MM-DD)" if date else "not an ISO 8601 timestamp"
    log.add(name, col, what, lines[bad & ~day_first], fix=_DATE_FIX if date else _TS_FIX)
    form = "YYYY-MM-DD" if date else "YYYY-MM-DDTHH:MM:SS"
    log.add(name, col, what, lines[day_first], fix=_DAY_FIRST_FIX.format(form))
    return ns


# ------------------------------------------------------------------ customers
def check_customer_chunk(
    chunk: Chunk, name: str, spec: DataSpec, log: ProblemLog
) -> CustomerColumns:
    """Check one chunk of a customers table and type it."""
    n = len(chunk)
    lines = chunk.lines
    cols = chunk.columns
    blank = pa.array([""] * n, pa.string())
    _required(chunk, name, CUSTOMER_COLUMNS, log)
    signup = np.full(n, _NAT, dtype=np.int64)
    if "signup_date" in cols:
        ns = _timestamps(cols["signup_date"], lines, name, "signup_date", log, date=True)
        ok = ns != _NAT
        signup[ok] = ns[ok] - ns[ok] % _DAY_NS
    flags = {}
    for col in ("consent_analytics", "ccpa_opt_out"):
        value = np.zeros(n, dtype=bool)
        if col in cols:
            value, bad = parse_bools(cols[col])
            log.add(name, col, "not a boolean", lines[bad], fix="use true/false, 1/0 or yes/no")
        flags[col] = value
    attrs: dict[str, pa.Array | np.ndarray] = {}
    for col, attr in spec.attributes.items():
        values = cols.get(col, blank)
        if attr.kind == "numeric":
            fix = (
                f"write plain numbers, or declare `{col}` categorical with its categories "
                "in the data spec"
            )
            attrs[col] = _numbers(values, lines, name, col, spec, log, other_fix=fix)
            continue
        found = codes(values, [c.strip().lower() for c in attr.categories])
        outside = (found < 0) & ~empty(values)
        log.add(
            name,
            col,
            "value outside the declared categories",
            lines[outside],
            fix=f"such values count as `{col}={OTHER}`; add the category to the data spec "
            "if it is one",
            warning=True,
        )
        attrs[col] = values
    return CustomerColumns(
        cols.get("customer_id", blank),
        cols.get("branch_id", blank),
        signup,
        flags["consent_analytics"],
        flags["ccpa_opt_out"],
        lines,
        attrs,
    )


# --------------------------------------------------------------------- events
def _customer_rows(
    chunk: Chunk,
    name: str,
    customer_ids: pa.Array | None,
    customers_name: str,
    log: ProblemLog,
) -> np.ndarray:
    """Row of each event's customer in the customers table (-1 when not there)."""
    cols, lines = chunk.columns, chunk.lines
    customer = np.full(len(chunk), -1, dtype=np.int32)
    if "customer_id" in cols and customer_ids is not None:
        ids = cols["customer_id"]
        pos = pc.index_in(ids, value_set=customer_ids).fill_null(-1)
        customer = np.asarray(pos.to_numpy(zero_copy_only=False), dtype=np.int32)
        log.add(
            name,
            "customer_id",
            f"event for a customer not in {customers_name}",
            lines[(customer < 0) & ~empty(ids)],
            fix="export every customer who has events (consent is applied after validation)",
        )
    return customer


def _vocabulary_codes(chunk: Chunk, name: str, log: ProblemLog) -> dict[str, np.ndarray]:
    """``event_type`` and ``channel`` as int8 indices into their vocabularies (-1 unknown)."""
    cols, lines = chunk.columns, chunk.lines
    typed = {}
    for col, vocab in (("event_type", EVENT_TYPES), ("channel", CHANNELS)):
        found = np.full(len(chunk), -1, dtype=np.int64)
        if col in cols:
            found = codes(cols[col], vocab)
            log.add(
                name,
                col,
                f"unknown {col} (expected one of {', '.join(vocab)})",
                lines[(found < 0) & ~empty(cols[col])],
                fix=f"map the branch's own {col} values to these before export",
            )
        typed[col] = found.astype(np.int8)
    return typed


def _amounts(
    text: pa.Array, lines: np.ndarray, name: str, spec: DataSpec, log: ProblemLog
) -> np.ndarray:
    """The ``amount`` column as numbers (0 where missing), its problems logged."""
    parsed = parse_numbers(text, decimal=spec.decimal, strip=spec.currency_symbols == "strip")
    log.add(
        name,
        "amount",
        "missing value (NaN) in a required field",
        lines[parsed.nan_word],
        fix="write 0 or drop the row",
    )
    for cause, bad in parsed.failed.items():
        log.add(name, "amount", "not a number", lines[bad], fix=NUMBER_FIXES[cause])
    log.add(
        name,
        "amount",
        "not a finite number",
        lines[parsed.infinite],
        fix=NUMBER_FIXES["other"],
    )
    with np.errstate(invalid="ignore"):
        negative = parsed.values < 0
    log.add(
        name,
        "amount",
        "negative amount (must be >= 0)",
        lines[negative],
        fix="record a refund as event_type return with a positive amount",
    )
    return np.nan_to_num(parsed.values, nan=0.0)


def _event_categories(chunk: Chunk) -> list[tuple[np.ndarray, list[str]]]:
    """The chunk's product categories as codes and their dictionary."""
    if "product_category" in chunk.columns:
        encoded = pc.dictionary_encode(chunk.columns["product_category"])
        return [
            (
                np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int32),
                encoded.dictionary.to_pylist(),
            )
        ]
    return [(np.zeros(len(chunk), np.int32), [""])]


def check_event_chunk(
    chunk: Chunk,
    name: str,
    customer_ids: pa.Array | None,
    customers_name: str,
    spec: DataSpec,
    log: ProblemLog,
) -> EventColumns:
    """Check one chunk of an events table and type it."""
    n = len(chunk)
    lines = chunk.lines
    cols = chunk.columns
    _required(chunk, name, EVENT_COLUMNS, log)
    customer = _customer_rows(chunk, name, customer_ids, customers_name, log)
    timestamp = np.full(n, _NAT, dtype=np.int64)
    if "timestamp" in cols:
        timestamp = _timestamps(cols["timestamp"], lines, name, "timestamp", log, date=False)
    typed = _vocabulary_codes(chunk, name, log)
    amount = np.zeros(n)
    if "amount" in cols:
        amount = _amounts(cols["amount"], lines, name, spec, log)
    return EventColumns(
        customer, timestamp, typed["event_type"], typed["channel"], amount, _event_categories(chunk)
    )
