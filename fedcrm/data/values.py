"""Vectorised parsers of contract text values, each saying why a value does not parse.

Every parser takes an Arrow string array (stripped) and returns numpy arrays:
the parsed values and masks of the rows that fail, split by cause, so that the
validator can name the fix (``--decimal comma``, ``--currency-symbols strip``,
``YYYY-MM-DD``...) once per cause instead of once per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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


def words(values: pa.Array, vocabulary: Sequence[str] | frozenset[str]) -> np.ndarray:
    """Rows whose lower-cased text is one of ``vocabulary``."""
    lowered = pc.utf8_lower(values)
    return _mask(pc.is_in(lowered, value_set=pa.array(sorted(vocabulary), pa.string())))


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
    nan_word = words(values, NAN_WORDS)
    infinite = words(values, INF_WORDS)
    out[infinite] = np.inf
    rest = ~ok & ~nan_word & ~infinite & ~empty(values)
    failed: dict[str, np.ndarray] = {}
    if rest.any():
        currency = rest & _match(values, _CURRENCY)
        thousands = rest & ~currency & _match(values, _THOUSANDS[decimal])
        comma = rest & ~currency & ~thousands
        comma &= _match(values, _DECIMAL_COMMA) if decimal == "dot" else np.zeros(n, bool)
        other = rest & ~currency & ~thousands & ~comma
        failed = {"currency": currency, "thousands": thousands, "decimal_comma": comma}
        failed["other"] = other
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
    for kind in (pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")):
        try:
            ts = pc.cast(pc.if_else(empty(values), pa.scalar(None, pa.string()), values), kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        ns = ts.cast(pa.int64()).fill_null(np.iinfo(np.int64).min)
        ns_np = np.asarray(ns.to_numpy(zero_copy_only=False), dtype=np.int64)
        none = np.zeros(len(values), dtype=bool)
        return ns_np, none, none
    text = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    ns_np = parsed.dt.tz_localize(None).astype("datetime64[ns]").to_numpy().astype(np.int64)
    bad = parsed.isna().to_numpy() & ~empty(values)
    day_first = bad & _match(values, _DAY_FIRST)
    return ns_np, bad, day_first


def codes(values: pa.Array, vocabulary: Sequence[str]) -> np.ndarray:
    """Index of each lower-cased value in ``vocabulary`` (-1 when absent or empty)."""
    found = pc.index_in(pc.utf8_lower(values), value_set=pa.array(list(vocabulary), pa.string()))
    return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
