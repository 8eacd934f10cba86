"""Vectorised parsers of contract text values, each saying why a value does not parse.

Every parser takes an Arrow string array (stripped) and returns numpy arrays:
the parsed values and masks of the rows that fail, split by cause, so that the
validator can name the fix (``--decimal comma``, ``--currency-symbols strip``,
``YYYY-MM-DD``...) once per cause instead of once per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

TRUE_WORDS: frozenset[str] = frozenset({"true", "1", "yes"})
FALSE_WORDS: frozenset[str] = frozenset({"false", "0", "no"})
NAN_WORDS: frozenset[str] = frozenset({"nan", "na", "n/a", "null", "none"})
INF_WORDS: frozenset[str] = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})

_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_CURRENCY = r"[$€£¥₹¢]|(^|[^A-Za-z])(USD|EUR|GBP|CHF|JPY|CAD|AUD|SEK|NOK|DKK|PLN|INR)([^A-Za-z]|$)"
_CURRENCY_STRIP = r"[$€£¥₹¢]|USD|EUR|GBP|CHF|JPY|CAD|AUD|SEK|NOK|DKK|PLN|INR|\s|\x{00A0}|'"
_THOUSANDS = {
    "dot": r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$",
    "comma": r"^[+-]?\d{1,3}(\.\d{3})+(,\d+)?$",
}
_DECIMAL_COMMA = r"^[+-]?\d*,\d+$"
_DAY_FIRST = r"^\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}"

# Causes of a value that is not a number, with the fix each calls for.
NUMBER_FIXES: dict[str, str] = {
    "currency": "remove currency symbols or pass --currency-symbols strip "
    "(data.currency_symbols=strip)",
    "thousands": "remove thousands separators or pass --currency-symbols strip "
    "(data.currency_symbols=strip)",
    "decimal_comma": "pass --decimal comma (data.decimal=comma)",
    "other": "write plain numbers such as 12.5",
}


@dataclass
class Numbers:
    """Parsed numbers and the rows that failed, by cause."""

    values: np.ndarray
    nan_word: np.ndarray
    infinite: np.ndarray
    failed: dict[str, np.ndarray] = field(default_factory=dict)


def _mask(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _match(values: pa.Array, pattern: str) -> np.ndarray:
    return _mask(pc.match_substring_regex(values, pattern))


def _per_distinct(values: pa.Array, fn: Callable[[pa.Array], np.ndarray], fill: Any) -> np.ndarray:
    """``fn`` applied to the distinct values only, spread back to every row.

    Contract columns such as ``event_type`` hold a handful of distinct values in
    millions of rows; text functions then run on the handful.
    """
    encoded = pc.dictionary_encode(values)
    per_value = np.append(fn(encoded.dictionary), fill)
    idx = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False))
    return per_value[idx]


def words(values: pa.Array, vocabulary: Sequence[str] | frozenset[str]) -> np.ndarray:
    """Rows whose lower-cased text is one of ``vocabulary``."""
    value_set = pa.array(sorted(vocabulary), pa.string())

    def found(distinct: pa.Array) -> np.ndarray:
        return _mask(pc.is_in(pc.utf8_lower(distinct), value_set=value_set))

    return _per_distinct(values, found, False).astype(bool)


def empty(values: pa.Array) -> np.ndarray:
    """Rows with no text."""
    return _mask(pc.equal(values, ""))


def parse_numbers(values: pa.Array, *, decimal: str = "dot", strip: bool = False) -> Numbers:
    """Parse decimal numbers (``""`` parses as NaN and fails nothing).

    Parameters
    ----------
    values : pa.Array of str
    decimal : {"dot", "comma"}
        The decimal mark.
    strip : bool
        Drop currency symbols and codes, blanks and thousands separators first.
    """
    is_empty = empty(values)
    if not strip and decimal == "dot":
        cast = _try_cast(values, is_empty, pa.float64())
        if cast is not None:  # the usual case: every value a plain number
            out = np.asarray(cast.fill_null(np.nan).to_numpy(zero_copy_only=False), np.float64)
            if np.isfinite(out[~is_empty]).all():
                return Numbers(out, np.zeros(len(out), bool), np.zeros(len(out), bool))
    return _numbers_by_regex(values, is_empty, decimal=decimal, strip=strip)


def _try_cast(values: pa.Array, is_empty: np.ndarray, kind: pa.DataType) -> pa.Array | None:
    """Arrow's cast of the non-empty values (empty -> null), or ``None`` if any fails.

    A sample is tried first: a column with a problem in every row fails there
    instead of costing a full pass.
    """
    text = pc.if_else(pa.array(is_empty), pa.scalar(None, pa.string()), values)
    try:
        pc.cast(text.slice(0, 64), kind)
        return pc.cast(text, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _numbers_by_regex(
    values: pa.Array, is_empty: np.ndarray, *, decimal: str, strip: bool
) -> Numbers:
    text = values
    if strip:
        text = pc.replace_substring_regex(text, _CURRENCY_STRIP, "")
        text = pc.replace_substring(text, "." if decimal == "comma" else ",", "")
    if decimal == "comma":
        text = pc.replace_substring(text, ",", ".")
    ok = _match(text, _NUMBER)
    n = len(values)
    out = np.full(n, np.nan)
    if ok.any():
        good = pc.filter(text, pa.array(ok))
        out[ok] = np.asarray(pc.cast(good, pa.float64()).to_numpy(zero_copy_only=False))
    nan_word = np.zeros(n, dtype=bool)
    infinite = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(~ok & ~is_empty)
    if len(rows):
        lowered = pc.utf8_lower(pc.take(values, pa.array(rows)))
        for mask, vocab in ((nan_word, NAN_WORDS), (infinite, INF_WORDS)):
            mask[rows] = _mask(pc.is_in(lowered, value_set=pa.array(sorted(vocab), pa.string())))
    out[infinite] = np.inf
    rest = ~ok & ~nan_word & ~infinite & ~is_empty
    failed: dict[str, np.ndarray] = {}
    if rest.any():
        # Each cause is looked for only among the rows no earlier cause explains.
        patterns = [("currency", _CURRENCY), ("thousands", _THOUSANDS[decimal])]
        if decimal == "dot":
            patterns.append(("decimal_comma", _DECIMAL_COMMA))
        for cause, pattern in patterns:
            hit = np.zeros(n, dtype=bool)
            rows = np.flatnonzero(rest)
            if len(rows):
                hit[rows] = _match(pc.take(values, pa.array(rows)), pattern)
            failed[cause] = hit
            rest &= ~hit
        failed["other"] = rest
    return Numbers(out, nan_word, infinite, failed)


def parse_bools(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(value, bad)``: contract booleans (``""`` is False and not bad)."""
    true = words(values, TRUE_WORDS)
    false = words(values, FALSE_WORDS)
    return true, ~true & ~false & ~empty(values)


def parse_timestamps(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ISO 8601 text -> int64 UTC nanoseconds (NaT where empty or unparsable).

    Returns ``(ns, bad, day_first)``: ``bad`` marks text that is not ISO 8601,
    ``day_first`` the bad rows that look like ``dd/mm/yyyy`` (or ``mm/dd``).
    A value without an offset is UTC.
    """
    is_empty = empty(values)
    for kind in (pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")):
        ts = _try_cast(values, is_empty, kind)
        if ts is None:
            continue
        ns = ts.cast(pa.int64()).fill_null(np.iinfo(np.int64).min)
        ns_np = np.asarray(ns.to_numpy(zero_copy_only=False), dtype=np.int64)
        none = np.zeros(len(values), dtype=bool)
        return ns_np, none, none
    text = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    ns_np = parsed.dt.tz_localize(None).astype("datetime64[ns]").to_numpy().astype(np.int64)
    bad = parsed.isna().to_numpy() & ~is_empty
    day_first = bad & _match(values, _DAY_FIRST)
    return ns_np, bad, day_first


def codes(values: pa.Array, vocabulary: Sequence[str]) -> np.ndarray:
    """Index of each lower-cased value in ``vocabulary`` (-1 when absent or empty)."""
    value_set = pa.array(list(vocabulary), pa.string())

    def index(distinct: pa.Array) -> np.ndarray:
        found = pc.index_in(pc.utf8_lower(distinct), value_set=value_set).fill_null(-1)
        return np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.int64)

    return _per_distinct(values, index, -1).astype(np.int64)
