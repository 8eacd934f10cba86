"""The contract's rules, applied to one chunk of a table at a time.

Each check turns a :class:`~fedcrm.data.reading.Chunk` of text into compact
typed columns (:class:`CustomerColumns`, :class:`EventColumns`) and records
every rule it breaks in a :class:`~fedcrm.data.problems.ProblemLog`, with the
fix; :mod:`fedcrm.data.validate` drives them over whole files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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
@dataclass
class CustomerColumns:
    """A customers table in typed columns (one array each once :meth:`concat` ran)."""

    customer_id: pa.Array
    branch_id: pa.Array
    signup: np.ndarray
    consent: np.ndarray
    opt_out: np.ndarray
    lines: np.ndarray
    attributes: dict[str, pa.Array | np.ndarray] = field(default_factory=dict)
    _parts: list[CustomerColumns] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.lines.shape[0])

    @classmethod
    def empty(cls, spec: DataSpec) -> CustomerColumns:
        """A table with no rows."""
        none = pa.array([], pa.string())
        attrs: dict[str, pa.Array | np.ndarray] = {
            n: np.zeros(0) if a.kind == "numeric" else none for n, a in spec.attributes.items()
        }
        z = np.zeros(0, dtype=bool)
        return cls(none, none, np.zeros(0, np.int64), z, z, np.zeros(0, np.int64), attrs)

    def append(self, part: CustomerColumns) -> None:
        """Queue a chunk's columns for :meth:`concat`."""
        self._parts.append(part)

    def concat(self) -> CustomerColumns:
        """One table from this one and every appended chunk."""
        parts = [self, *self._parts]

        def text(get: object) -> pa.Array:
            arrays = [get(p) for p in parts]  # type: ignore[operator]
            return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())

        attrs: dict[str, pa.Array | np.ndarray] = {}
        for n, first in self.attributes.items():
            if isinstance(first, np.ndarray):
                attrs[n] = np.concatenate([p.attributes[n] for p in parts])
            else:
                attrs[n] = text(lambda p, n=n: p.attributes[n])
        return CustomerColumns(
            text(lambda p: p.customer_id),
            text(lambda p: p.branch_id),
            np.concatenate([p.signup for p in parts]),
            np.concatenate([p.consent for p in parts]),
            np.concatenate([p.opt_out for p in parts]),
            np.concatenate([p.lines for p in parts]),
            attrs,
        )

    def frame(self, spec: DataSpec) -> pd.DataFrame:
        """The typed customers table of :class:`fedcrm.data.loader.CRMData`."""
        out = pd.DataFrame(
            {
                "customer_id": pd.Series(
                    self.customer_id.to_numpy(zero_copy_only=False), dtype=str
                ),
                "branch_id": pd.Series(self.branch_id.to_numpy(zero_copy_only=False), dtype=str),
                "signup_date": self.signup.view("M8[ns]"),
                "consent_analytics": self.consent,
                "ccpa_opt_out": self.opt_out,
            }
        )
        for n in spec.attribute_columns:
            values = self.attributes[n]
            if isinstance(values, np.ndarray):
                out[n] = values
            else:
                out[n] = pd.Series(values.to_numpy(zero_copy_only=False), dtype=str)
        return out


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
@dataclass
class EventColumns:
    """An events table in compact typed columns (about 30 bytes per event)."""

    customer: np.ndarray  # row of the customer in its customers table, -1 when unknown
    timestamp: np.ndarray  # int64 UTC nanoseconds
    event_type: np.ndarray  # int8 index into EVENT_TYPES
    channel: np.ndarray  # int8 index into CHANNELS
    amount: np.ndarray  # float64
    category: list[tuple[np.ndarray, list[str]]]  # per chunk: codes and their dictionary
    _parts: list[EventColumns] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.customer.shape[0])

    @classmethod
    def empty(cls) -> EventColumns:
        """A table with no rows."""
        z = np.zeros(0, np.int8)
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int64), z, z, np.zeros(0), [])

    def customers_only(self) -> EventColumns:
        """The same rows with only their customer (all validation needs after a chunk)."""
        z = np.zeros(0, np.int8)
        return EventColumns(self.customer, np.zeros(0, np.int64), z, z, np.zeros(0), [])

    def append(self, part: EventColumns) -> None:
        """Queue a chunk's columns for :meth:`concat`."""
        self._parts.append(part)

    def concat(self) -> EventColumns:
        """One table from this one and every appended chunk."""
        parts = [self, *self._parts]
        return EventColumns(
            np.concatenate([p.customer for p in parts]),
            np.concatenate([p.timestamp for p in parts]),
            np.concatenate([p.event_type for p in parts]),
            np.concatenate([p.channel for p in parts]),
            np.concatenate([p.amount for p in parts]),
            [c for p in parts for c in p.category],
        )

    @staticmethod
    def merge_categories(tables: Sequence[EventColumns]) -> tuple[np.ndarray, pd.Index]:
        """Codes of every event's product category into one sorted vocabulary."""
        pieces = [c for t in tables for c in t.category]
        vocab = pd.Index(sorted({v for _, d in pieces for v in d}), dtype=str)
        out = []
        for idx, dictionary in pieces:
            remap = vocab.get_indexer(pd.Index(dictionary, dtype=object)).astype(np.int32)
            out.append(remap[idx] if len(remap) else idx.astype(np.int32))
        return (np.concatenate(out) if out else np.zeros(0, np.int32)), vocab


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
    customer = np.full(n, -1, dtype=np.int32)
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
    timestamp = np.full(n, _NAT, dtype=np.int64)
    if "timestamp" in cols:
        timestamp = _timestamps(cols["timestamp"], lines, name, "timestamp", log, date=False)
    typed = {}
    for col, vocab in (("event_type", EVENT_TYPES), ("channel", CHANNELS)):
        found = np.full(n, -1, dtype=np.int64)
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
    amount = np.zeros(n)
    if "amount" in cols:
        text = cols["amount"]
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
        amount = np.nan_to_num(parsed.values, nan=0.0)
    category: list[tuple[np.ndarray, list[str]]] = []
    if "product_category" in cols:
        encoded = pc.dictionary_encode(cols["product_category"])
        category = [
            (
                np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int32),
                encoded.dictionary.to_pylist(),
            )
        ]
    else:
        category = [(np.zeros(n, np.int32), [""])]
    return EventColumns(
        customer, timestamp, typed["event_type"], typed["channel"], amount, category
    )
