"""Check a branch export against the data contract, summarised per kind of problem.

Findings go to a :class:`~fedcrm.data.problems.ProblemLog`: one summary line
per (file, column, kind) - ``events.csv: amount: not a number in 1,016,335 rows
(lines 2, 3, 4, ...): remove currency symbols or pass --currency-symbols strip``
- and the first located problems, ``file:line: column: what``. ``line`` is the
1-based line of the file (the header is line 1), 0 for a whole-file problem;
for Parquet files and database tables it is the row index + 2, the line the row
would have in the equivalent CSV file. Messages never contain a field value or a
customer id.

Tables are read in chunks (:mod:`fedcrm.data.reading`) and every check is
vectorised; events are kept only in compact typed form, so memory grows with
the number of rows at about 30 bytes per event. :func:`inspect_dir` also
returns the typed tables, which :func:`fedcrm.data.loader.load_crm` uses so
that files are read only once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedcrm.data.checks import check_columns, check_customer_chunk, check_event_chunk
from fedcrm.data.columns import CustomerColumns, EventColumns
from fedcrm.data.contract import (
    CHANNELS,
    CUSTOMER_COLUMNS,
    EVENT_COLUMNS,
    EVENT_TYPES,
    MIN_BRANCH_CUSTOMERS,
    discover,
    find_table,
)
from fedcrm.data.csvfile import CsvTable
from fedcrm.data.problems import DEFAULT_MAX_DETAILS, ProblemLog
from fedcrm.data.reading import WHOLE, ParquetTable, TableReader
from fedcrm.data.spec import DataSpec, resolve_spec
from fedcrm.errors import Problem, ProblemSummary
from fedcrm.ids import is_valid_id

logger = logging.getLogger(__name__)

_NO_ROWS = "no data rows: empty branch (the file has only a header)"
_SAME_BRANCH = "customer_id also appears for the same branch_id in another branch folder"


@dataclass
class Inspection:
    """Result of an inspection: the findings and, when there are none, the typed tables."""

    log: ProblemLog = field(default_factory=ProblemLog)
    customers: pd.DataFrame | None = None
    events: pd.DataFrame | None = None
    spec: DataSpec = field(default_factory=DataSpec)

    @property
    def problems(self) -> list[Problem]:
        """The first located problems (``file:line: column: what``), by file and line."""
        return self.log.details

    @property
    def summaries(self) -> list[ProblemSummary]:
        """One line per kind of problem."""
        return self.log.summaries

    @property
    def warnings(self) -> list[ProblemSummary]:
        """One line per kind of warning (the export is still valid)."""
        return self.log.warnings


@dataclass
class SourcePair:
    """The two tables of one branch folder (or of one database)."""

    customers: TableReader | None
    events: TableReader | None


@dataclass
class _PairTables:
    name: str
    customers: CustomerColumns
    events: EventColumns | None


def _readers(root: Path, spec: DataSpec, log: ProblemLog) -> list[SourcePair]:
    known_c = (*CUSTOMER_COLUMNS, *spec.attribute_columns)
    pairs = []
    for pair in discover(root):
        tables: list[TableReader | None] = []
        for path, table, known in (
            (pair.customers, "customers", known_c),
            (pair.events, "events", EVENT_COLUMNS),
        ):
            if path is None:
                log.one(
                    pair.rel(f"{table}.csv"),
                    0,
                    WHOLE,
                    f"missing file ({table}.csv or {table}.parquet)",
                    fix="export it",
                )
                tables.append(None)
                continue
            if len(find_table(pair.directory, table)) > 1:
                log.one(
                    pair.rel(path),
                    0,
                    WHOLE,
                    f"both {table}.csv and {table}.parquet present",
                    fix="keep one",
                )
            name = pair.rel(path)
            reader: TableReader = (
                ParquetTable(path, name)
                if path.suffix == ".parquet"
                else CsvTable(path, name, spec, known)
            )
            tables.append(reader)
        pairs.append(SourcePair(tables[0], tables[1]))
    return pairs


def _read_customers(reader: TableReader, spec: DataSpec, log: ProblemLog) -> CustomerColumns | None:
    header = reader.open(log)
    if header is None:
        return None
    check_columns(header, reader.name, CUSTOMER_COLUMNS, spec.attribute_columns, log)
    parts = CustomerColumns.empty(spec)
    for chunk in reader.chunks(log):
        parts.append(check_customer_chunk(chunk, reader.name, spec, log))
    if reader.failed:
        return None
    table = parts.concat()
    if len(table) == 0:
        log.one(reader.name, 0, WHOLE, _NO_ROWS, fix="export the branch's customers")
    ids = pd.Series(table.customer_id.to_numpy(zero_copy_only=False), dtype=object)
    dup = (ids.duplicated(keep="first") & (ids != "")).to_numpy()
    if dup.any():
        first = pd.Series(table.lines).groupby(ids.to_numpy()).transform("first").to_numpy()
        log.add(
            reader.name,
            "customer_id",
            "duplicate customer_id",
            table.lines[dup],
            notes=[f"first on line {f}" for f in first[dup][: log.max_details or None]],
            fix="customer ids must be unique within a branch's customers file",
        )
    branches = pd.Series(table.branch_id.to_numpy(zero_copy_only=False), dtype=object)
    bad = np.array([bool(b) and not is_valid_id(b) for b in branches], dtype=bool)
    if bad.any():
        log.add(
            reader.name,
            "branch_id",
            "not a valid branch id",
            table.lines[bad],
            fix="use letters, digits, '-' and '_' only (branch ids become file names)",
        )
    return table


def _read_events(
    reader: TableReader,
    customers: CustomerColumns | None,
    cust_name: str,
    log: ProblemLog,
    spec: DataSpec,
    keep: bool,
) -> EventColumns | None:
    header = reader.open(log)
    if header is None:
        return None
    check_columns(header, reader.name, EVENT_COLUMNS, (), log)
    ids = customers.customer_id if customers is not None else None
    parts = EventColumns.empty()
    for chunk in reader.chunks(log):
        part = check_event_chunk(chunk, reader.name, ids, cust_name, spec, log)
        parts.append(part if keep else part.customers_only())
    if reader.failed:
        return None
    table = parts.concat()
    if len(table) == 0:
        log.one(reader.name, 0, WHOLE, _NO_ROWS, fix="export the branch's events")
    return table


def _branch_checks(
    customers: CustomerColumns, events: EventColumns, name: str, log: ProblemLog
) -> None:
    """Branches without events (a problem) or with too few customers to train (a warning)."""
    branch = pd.Series(customers.branch_id.to_numpy(zero_copy_only=False), dtype=object)
    codes, uniques = pd.factorize(branch)
    if len(uniques) == 0:
        return
    with_events = np.zeros(len(customers), dtype=bool)
    known = events.customer[events.customer >= 0]
    with_events[np.unique(known)] = True
    consenting = customers.consent & ~customers.opt_out & with_events
    named = (branch != "").to_numpy()
    first = pd.Series(customers.lines).groupby(codes).min().to_numpy()
    any_events = np.bincount(codes[with_events & named], minlength=len(uniques)) > 0
    trainable = np.bincount(codes[consenting & named], minlength=len(uniques))
    has_name = np.asarray([u != "" for u in uniques])
    log.add(
        name,
        "branch_id",
        "branch has no events (none of its customers appears in the events file)",
        first[~any_events & has_name],
        fix="export the branch's events, or leave its customers out",
        unit="branch",
    )
    log.add(
        name,
        "branch_id",
        f"branch with fewer than {MIN_BRANCH_CUSTOMERS} consenting customers who have events",
        first[any_events & has_name & (trainable < MIN_BRANCH_CUSTOMERS)],
        fix=f"training leaves out a branch with fewer than {MIN_BRANCH_CUSTOMERS} customers "
        "active before the cutoff",
        unit="branch",
        warning=True,
    )


def inspect_pairs(
    pairs: Sequence[SourcePair], spec: DataSpec, log: ProblemLog, *, events: bool = True
) -> Inspection:
    """Validate the tables of ``pairs`` and type them (the events only when ``events``)."""
    found: list[_PairTables] = []
    for pair in pairs:
        customers = None
        if pair.customers is not None:
            customers = _read_customers(pair.customers, spec, log)
        table = None
        if pair.events is not None:
            cust_name = pair.customers.name if pair.customers is not None else "customers"
            table = _read_events(pair.events, customers, cust_name, log, spec, events)
        if customers is not None and table is not None and pair.customers is not None:
            _branch_checks(customers, table, pair.customers.name, log)
        if customers is not None and pair.customers is not None:
            found.append(_PairTables(pair.customers.name, customers, table))
    _same_customer_twice(found, log)
    inspection = Inspection(log, spec=spec)
    if not log and found and all(f.events is not None for f in found):
        inspection.customers = pd.concat(
            [f.customers.frame(spec) for f in found], ignore_index=True
        )
        if events:
            inspection.events = _assemble_events(found, inspection.customers)
    if log:
        logger.info("branch export: %d problem(s)", log.count)
    return inspection


def _same_customer_twice(found: Sequence[_PairTables], log: ProblemLog) -> None:
    """The same (branch_id, customer_id) in two folders: two rows for one customer."""
    if len(found) < 2:
        return
    keys = []
    for i, f in enumerate(found):
        c = f.customers
        keys.append(
            pd.DataFrame(
                {
                    "b": c.branch_id.to_numpy(zero_copy_only=False),
                    "c": c.customer_id.to_numpy(zero_copy_only=False),
                    "pair": i,
                    "line": c.lines,
                }
            )
        )
    both = pd.concat(keys, ignore_index=True)
    both = both[both["c"] != ""]
    twice = both.duplicated(["b", "c"], keep=False)
    spread = both[twice].groupby(["b", "c"])["pair"].transform("nunique") > 1
    hits = both[twice][spread.to_numpy()]
    for pair, rows in hits.groupby("pair"):
        log.add(
            found[int(pair)].name,
            "customer_id",
            _SAME_BRANCH,
            rows["line"].to_numpy(),
            fix="a customer of one branch belongs in one folder; merge the folders",
        )


def _sorted_categorical(values: np.ndarray) -> tuple[np.ndarray, pd.Index]:
    """Codes and sorted categories of a string array."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int32), pd.Index(uniques, dtype=str)


def _assemble_events(found: Sequence[_PairTables], customers: pd.DataFrame) -> pd.DataFrame:
    """The compact events table of every pair (``customers``: theirs, concatenated)."""
    offsets = np.cumsum([0] + [len(f.customers) for f in found])[:-1]
    id_codes, id_cats = _sorted_categorical(customers["customer_id"].to_numpy(dtype=object))
    br_codes, br_cats = _sorted_categorical(customers["branch_id"].to_numpy(dtype=object))
    events_parts = [f.events for f in found if f.events is not None]
    gpos = np.concatenate(
        [e.customer.astype(np.int64) + o for e, o in zip(events_parts, offsets, strict=True)]
    )
    category_codes, category_cats = EventColumns.merge_categories(events_parts)
    events = pd.DataFrame(
        {
            "customer_id": pd.Categorical.from_codes(id_codes[gpos], categories=id_cats),
            "timestamp": np.concatenate([e.timestamp for e in events_parts]).view("M8[ns]"),
            "event_type": pd.Categorical.from_codes(
                np.concatenate([e.event_type for e in events_parts]), categories=EVENT_TYPES
            ),
            "amount": np.concatenate([e.amount for e in events_parts]),
            "channel": pd.Categorical.from_codes(
                np.concatenate([e.channel for e in events_parts]), categories=CHANNELS
            ),
            "product_category": pd.Categorical.from_codes(category_codes, categories=category_cats),
            "branch_id": pd.Categorical.from_codes(br_codes[gpos], categories=br_cats),
        }
    )
    return events


def inspect_dir(
    path: str | Path,
    *,
    spec: DataSpec | None = None,
    attribute_columns: Sequence[str] = (),
    max_problems: int | None = DEFAULT_MAX_DETAILS,
    events: bool = True,
) -> Inspection:
    """Validate a branch export directory and parse its tables.

    Parameters
    ----------
    path : str or Path
        A directory in one of the contract layouts.
    spec : DataSpec, optional
        How the files are written and the declared attributes; default: the
        ``data_spec.yaml`` in ``path``, if any.
    attribute_columns : sequence of str
        Extra numeric attribute columns (added to the spec's).
    max_problems : int or None
        How many located problems to keep (every kind is summarised anyway).
    events : bool
        Also return the typed events table (validation alone does not need it,
        and it is the largest thing held).

    Returns
    -------
    Inspection
    """
    root = Path(path)
    log = ProblemLog(max_problems)
    if not root.is_dir():
        log.one(".", 0, WHOLE, "not a directory", fix="give the export's directory")
        return Inspection(log)
    if spec is None:
        spec = resolve_spec(root, attribute_columns=attribute_columns)
    elif attribute_columns:
        spec = spec.with_numeric(attribute_columns)
    return inspect_pairs(_readers(root, spec, log), spec, log, events=events)


def validate_dir(
    path: str | Path,
    *,
    spec: DataSpec | None = None,
    attribute_columns: Sequence[str] = (),
    max_problems: int | None = DEFAULT_MAX_DETAILS,
) -> list[Problem]:
    """The first ``max_problems`` ways a branch export breaks the data contract.

    Empty when the export is valid; sorted by file and line. See
    :func:`inspect_dir` for the parameters and the summaries.
    """
    return inspect_dir(
        path,
        spec=spec,
        attribute_columns=attribute_columns,
        max_problems=max_problems,
        events=False,
    ).problems
