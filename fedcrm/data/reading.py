"""What every table reader yields: chunks of stripped text columns with their file lines.

A reader (:class:`TableReader`) opens a table (a CSV file in
:mod:`fedcrm.data.csvfile`, a Parquet file here, a database query in
:mod:`fedcrm.data.sql`), returns its column names, then yields
:class:`Chunk` s of rows in order. Typed sources (Parquet, databases) are read
as the contract text of their values (:func:`to_text`), so one set of checks
serves them all. Every problem goes to a
:class:`~fedcrm.data.problems.ProblemLog` with the fix; none quotes a value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fedcrm.data.problems import ProblemLog

WHOLE = "-"  # the column of a problem that concerns a whole row or file
PARQUET_BATCH = 1 << 20


@dataclass
class Chunk:
    """A run of rows: stripped text columns by name and the file line of each row."""

    columns: dict[str, pa.Array]
    lines: np.ndarray

    def __len__(self) -> int:
        return int(self.lines.shape[0])


class TableReader(Protocol):
    """A source of one contract table (a CSV or Parquet file, a database query).

    ``failed`` turns true when reading stopped part-way (a problem was logged).
    """

    name: str
    failed: bool

    def open(self, log: ProblemLog) -> list[str] | None:
        """The column names, or ``None`` (with problems logged) when unreadable."""

    def chunks(self, log: ProblemLog) -> Iterator[Chunk]:
        """The rows, in order, after :meth:`open` returned columns."""


def bad_header(header: Sequence[str], name: str, log: ProblemLog) -> bool:
    """Log empty and duplicate column names; whether there was any."""
    seen: set[str] = set()
    bad = False
    for col in header:
        if not col:
            log.one(name, 1, WHOLE, "empty column name in the header", fix="name every column")
            bad = True
        elif col in seen:
            log.one(name, 1, col, "duplicate column in the header", fix="keep one of them")
            bad = True
        seen.add(col)
    return bad


def strip(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A text column with blanks around each value removed (one contiguous array)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    # ASCII blanks only: byte-wise and safe on UTF-8 (no multi-byte sequence holds one).
    return pc.ascii_trim_whitespace(values)


# ------------------------------------------------------------------- Parquet
def to_text(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A typed column as contract text ("" for missing), stripped."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
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
    elif pa.types.is_boolean(kind):
        col = pc.if_else(col, "true", "false")
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        try:
            col = col.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            col = pa.array([None if v is None else str(v) for v in col.to_pylist()], pa.string())
    if pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    return strip(col.fill_null(""))


class ParquetTable:
    """A Parquet file read in row batches; a row's line is its index + 2."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.failed = False
        self._file: pq.ParquetFile | None = None

    def open(self, log: ProblemLog) -> list[str] | None:
        """The column names (see :class:`TableReader`)."""
        try:
            self._file = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError, ValueError):  # unreadable: a finding
            log.one(self.name, 0, WHOLE, "unreadable Parquet file", fix="export it again")
            return None
        names = [str(c).strip() for c in self._file.schema_arrow.names]
        return None if bad_header(names, self.name, log) else names

    def chunks(self, log: ProblemLog) -> Iterator[Chunk]:
        """Row batches as text (see :class:`TableReader`)."""
        assert self._file is not None
        start = 2
        try:
            for batch in self._file.iter_batches(batch_size=PARQUET_BATCH):
                names = [str(c).strip() for c in batch.schema.names]
                columns = {n: to_text(batch.column(i)) for i, n in enumerate(names)}
                yield Chunk(columns, np.arange(start, start + batch.num_rows, dtype=np.int64))
                start += batch.num_rows
        except (pa.ArrowException, OSError, ValueError):
            log.one(self.name, start, WHOLE, "unreadable Parquet file", fix="export it again")
            self.failed = True
