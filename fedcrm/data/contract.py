"""The branch-export data contract: file names, columns, value rules and layouts.

A branch exports two tables, as CSV or Parquet:

``customers``
    ``customer_id`` (string), ``branch_id``, ``signup_date`` (ISO date, may be
    empty), ``consent_analytics`` (bool), ``ccpa_opt_out`` (bool), plus the
    optional attribute columns declared by the caller.
``events``
    ``customer_id``, ``timestamp`` (ISO 8601; an offset is converted to UTC, no
    offset means UTC), ``event_type`` (one of :data:`EVENT_TYPES`), ``amount``
    (float >= 0), ``channel`` (one of :data:`CHANNELS`), ``product_category``
    (free text, may be empty).

Booleans are written ``true``/``false``; ``1``/``0`` and ``yes``/``no`` are
accepted too, case-insensitively. ``event_type`` and ``channel`` are matched
case-insensitively after stripping blanks.

A directory holds one of three layouts:

* one pair of files for one branch (``DIR/customers.csv`` + ``DIR/events.csv``);
* one pair of files with many branches, split by ``branch_id``;
* one sub-directory per branch, each holding a pair (``DIR/<any>/customers.csv``).

This module holds the names, small helpers and the readers that turn a file
into text columns with the file line of every row (:func:`read_table`);
:mod:`fedcrm.data.validate` applies the rules and :mod:`fedcrm.data.loader`
returns the typed tables.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedcrm.data.dataset import CHANNELS, EVENT_TYPES
from fedcrm.errors import Problem

logger = logging.getLogger(__name__)

CUSTOMERS = "customers"
EVENTS = "events"
FORMATS: tuple[str, ...] = ("csv", "parquet")

CUSTOMER_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "branch_id",
    "signup_date",
    "consent_analytics",
    "ccpa_opt_out",
)
EVENT_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "timestamp",
    "event_type",
    "amount",
    "channel",
    "product_category",
)
# Columns that may be empty; every other contract column is required.
OPTIONAL_COLUMNS: frozenset[str] = frozenset({"signup_date", "product_category"})

WHOLE = "-"  # the column of a problem that concerns a whole row or file

TRUE_WORDS: frozenset[str] = frozenset({"true", "1", "yes"})
FALSE_WORDS: frozenset[str] = frozenset({"false", "0", "no"})

__all__ = [
    "CHANNELS",
    "CUSTOMERS",
    "CUSTOMER_COLUMNS",
    "EVENTS",
    "EVENT_COLUMNS",
    "EVENT_TYPES",
    "FALSE_WORDS",
    "FORMATS",
    "OPTIONAL_COLUMNS",
    "TRUE_WORDS",
    "WHOLE",
    "FilePair",
    "discover",
    "find_table",
    "lookup",
    "member",
    "parse_bool",
    "read_table",
]


def parse_bool(values: pd.Series) -> pd.Series:
    """Parse contract booleans.

    Parameters
    ----------
    values : Series of str
        Raw text; blanks around a word and letter case are ignored.

    Returns
    -------
    Series of object
        ``True``/``False``, or ``None`` where the text is not a contract boolean.
    """
    norm = values.astype("string").fillna("").str.strip().str.lower()
    out = pd.Series(np.full(len(norm), None, dtype=object), index=values.index)
    out[norm.isin(TRUE_WORDS).to_numpy()] = True
    out[norm.isin(FALSE_WORDS).to_numpy()] = False
    return out


def member(values: pd.Series | np.ndarray, pool: pd.Series | np.ndarray) -> np.ndarray:
    """Boolean mask of ``values`` found in ``pool`` (a hash join).

    ``Series.isin`` on pandas' Arrow-backed strings iterates in Python over the
    pool; Arrow's ``is_in`` stays fast for millions of rows.
    """
    value_set = pa.array(pool, type=pa.string(), from_pandas=True).unique()
    found = pc.is_in(pa.array(values, type=pa.string(), from_pandas=True), value_set=value_set)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


def lookup(values: pd.Series | np.ndarray, keys: pd.Series | np.ndarray) -> np.ndarray:
    """Position in ``keys`` of each of ``values`` (first match), -1 when absent."""
    key_arr = pa.array(keys, type=pa.string(), from_pandas=True)
    found = pc.index_in(pa.array(values, type=pa.string(), from_pandas=True), value_set=key_arr)
    return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass(frozen=True)
class FilePair:
    """Where one pair of contract files lives.

    ``customers`` / ``events`` are absolute paths or ``None`` when missing;
    ``prefix`` is the directory relative to the validated root ("" for the root).
    """

    directory: Path
    prefix: str
    customers: Path | None
    events: Path | None

    def rel(self, path: Path | str) -> str:
        """``path`` (a file name or path in this pair's directory) relative to the root."""
        name = Path(path).name
        return f"{self.prefix}/{name}" if self.prefix else name


def find_table(directory: Path, table: str) -> list[Path]:
    """The files of ``table`` (``customers`` or ``events``) present in ``directory``."""
    paths = [directory / f"{table}.{fmt}" for fmt in FORMATS]
    return [p for p in paths if p.is_file()]


def _has_any(directory: Path) -> bool:
    return bool(find_table(directory, CUSTOMERS) or find_table(directory, EVENTS))


def discover(root: Path) -> list[FilePair]:
    """Find the pairs of contract files under ``root``.

    Parameters
    ----------
    root : Path
        A directory in one of the three layouts described in the module docstring.

    Returns
    -------
    list of FilePair
        One pair when ``root`` itself holds contract files, else one per
        sub-directory that holds any (sorted by name). When ``root`` holds
        neither, a single pair rooted at ``root`` with both files missing.
        When a directory holds both the CSV and the Parquet file of a table the
        first of :data:`FORMATS` is kept here (the validator reports the clash).
    """
    if _has_any(root):
        dirs = [root]
    else:
        subdirs = root.iterdir() if root.is_dir() else iter(())
        dirs = sorted(d for d in subdirs if d.is_dir() and _has_any(d))
        if not dirs:
            dirs = [root]
    pairs = []
    for d in dirs:
        cust = find_table(d, CUSTOMERS)
        ev = find_table(d, EVENTS)
        prefix = "" if d == root else d.relative_to(root).as_posix()
        pairs.append(FilePair(d, prefix, cust[0] if cust else None, ev[0] if ev else None))
    return pairs


# ------------------------------------------------------------------ reading
def _to_text(col: pa.ChunkedArray) -> pd.Series:
    """A Parquet column as contract text ("" for missing)."""
    kind = col.type
    if pa.types.is_dictionary(kind):
        col = col.cast(kind.value_type)
        kind = col.type
    if pa.types.is_date(kind):
        col = col.cast(pa.timestamp("s"))
        kind = col.type
    if pa.types.is_timestamp(kind):
        # tz-aware values are stored in UTC: dropping the zone keeps UTC.
        col = pc.strftime(col.cast(pa.timestamp(kind.unit)), format="%Y-%m-%dT%H:%M:%S")
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        try:
            col = col.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return col.to_pandas().astype("string").fillna("").astype(str)
    return col.fill_null("").to_pandas().astype(str)


def _read_csv(path: Path, rel: str, out: list[Problem]) -> tuple[pd.DataFrame, np.ndarray] | None:
    """Read a CSV file as text columns, with the file line of every row.

    The fast path (Arrow's multi-threaded reader) applies when every line
    after the header is one well-formed row; otherwise the file is re-read
    with :mod:`csv`, which names each malformed line.
    """
    data = path.read_bytes()
    if not data.strip():
        out.append(Problem(rel, 0, WHOLE, "empty file (no header line)"))
        return None
    first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    header = [h.strip() for h in next(csv.reader([first.rstrip("\r")]), [])]
    if not header or _bad_header(header, rel, out):
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        out.append(Problem(rel, data[: exc.start].count(b"\n") + 1, WHOLE, "not UTF-8 text"))
        return None
    n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    invalid: list[int] = []

    def _on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(1)
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
            parse_options=pacsv.ParseOptions(invalid_row_handler=_on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:
        table = None
    balanced = text.count('"') % 2 == 0
    if table is not None and balanced and not invalid and table.num_rows == n_lines - 1:
        frame = table.to_pandas()
        frame.columns = header
        return frame, np.arange(table.num_rows, dtype=np.int64) + 2
    return _read_slow_csv(text, rel, out)


def _read_slow_csv(
    text: str, rel: str, out: list[Problem]
) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The slow path: one Python pass that names every malformed line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    prev = 0
    try:
        for row in reader:
            start, prev = prev + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [h.strip() for h in row]
                continue
            if len(row) != len(header):
                msg = f"malformed row: {len(row)} fields, header has {len(header)}"
                out.append(Problem(rel, start, WHOLE, msg))
                continue
            rows.append(row)
            lines.append(start)
    except csv.Error:
        out.append(Problem(rel, reader.line_num, WHOLE, "malformed CSV (unbalanced quotes)"))
        return None
    if header is None or _bad_header(header, rel, out):
        return None
    frame = (
        pd.DataFrame(rows, columns=header, dtype=str)
        if rows
        else pd.DataFrame({h: pd.Series([], dtype=str) for h in header})
    )
    return frame, np.asarray(lines, dtype=np.int64)


def _bad_header(header: Sequence[str], rel: str, out: list[Problem]) -> bool:
    seen: set[str] = set()
    bad = False
    for name in header:
        if not name:
            out.append(Problem(rel, 1, WHOLE, "empty column name in the header"))
            bad = True
        elif name in seen:
            out.append(Problem(rel, 1, name, "duplicate column in the header"))
            bad = True
        seen.add(name)
    return bad


def read_table(path: Path, rel: str, out: list[Problem]) -> tuple[pd.DataFrame, np.ndarray] | None:
    """Read one contract file with every column as stripped text.

    Parameters
    ----------
    path : Path
        A ``.csv`` or ``.parquet`` file.
    rel : str
        Its name relative to the validated directory (used in problems).
    out : list of Problem
        Receives the problems found while reading.

    Returns
    -------
    (DataFrame, ndarray) or None
        The table (all columns ``str``) and the file line of each row, or
        ``None`` when the file cannot be read at all.
    """
    if path.suffix == ".parquet":
        try:
            raw = pq.read_table(path)
        except (pa.ArrowException, OSError, ValueError):  # unreadable: a finding
            out.append(Problem(rel, 0, WHOLE, "unreadable Parquet file"))
            return None
        names = [str(c).strip() for c in raw.column_names]
        if _bad_header(names, rel, out):
            return None
        frame = pd.DataFrame({n: _to_text(raw.column(i)) for i, n in enumerate(names)})
        read = (frame, np.arange(len(frame), dtype=np.int64) + 2)
    else:
        result = _read_csv(path, rel, out)
        if result is None:
            return None
        read = result
    frame = read[0].apply(lambda c: c.astype(str).str.strip())
    return frame, read[1]
