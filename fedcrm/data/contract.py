"""The branch-export data contract: file names, columns, value rules and layouts.

A branch exports two tables, as CSV or Parquet:

``customers``
    ``customer_id`` (string, unique within the branch), ``branch_id``,
    ``signup_date`` (ISO date, may be empty), ``consent_analytics`` (bool),
    ``ccpa_opt_out`` (bool), plus the attribute columns the branch declares in
    its data spec (:mod:`fedcrm.data.spec`), numeric or categorical.
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

Customer ids identify a customer within a branch: the same id in two branch
folders (or under two ``branch_id`` values) names two customers, two units of
privacy. Within one customers file ids must be unique, since its events file
names customers by id alone.

This module holds the names and small helpers; :mod:`fedcrm.data.reading`
turns files into text chunks, :mod:`fedcrm.data.validate` applies the rules
and :mod:`fedcrm.data.loader` returns the typed tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedcrm.data.dataset import CHANNELS, EVENT_TYPES

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

# Training leaves out a branch with fewer customers active before the cutoff;
# validation warns about a branch with fewer consenting customers who have events.
MIN_BRANCH_CUSTOMERS = 10

__all__ = [
    "CHANNELS",
    "CUSTOMERS",
    "CUSTOMER_COLUMNS",
    "EVENTS",
    "EVENT_COLUMNS",
    "EVENT_TYPES",
    "FORMATS",
    "MIN_BRANCH_CUSTOMERS",
    "OPTIONAL_COLUMNS",
    "FilePair",
    "branch_id_mismatch",
    "branch_ids_of",
    "discover",
    "find_table",
    "lookup",
    "member",
]


def _codes(values: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(codes, categories)`` of a categorical column, else ``None``."""
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy(), values.cat.categories.to_numpy(dtype=object)
    if isinstance(values, pd.Categorical):
        return values.codes, values.categories.to_numpy(dtype=object)
    return None


def member(values: pd.Series | np.ndarray, pool: pd.Series | np.ndarray) -> np.ndarray:
    """Boolean mask of ``values`` found in ``pool`` (a hash join).

    ``Series.isin`` on pandas' Arrow-backed strings iterates in Python over the
    pool; Arrow's ``is_in`` stays fast for millions of rows. A categorical
    column is matched through its categories.
    """
    cat = _codes(values)
    if cat is not None:
        inside = member(cat[1], pool)
        return np.append(inside, False)[cat[0]]
    pool_cat = _codes(pool)
    if pool_cat is not None:
        pool = pool_cat[1][np.unique(pool_cat[0][pool_cat[0] >= 0])]
    value_set = pa.array(pool, type=pa.string(), from_pandas=True).unique()
    found = pc.is_in(pa.array(values, type=pa.string(), from_pandas=True), value_set=value_set)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


def lookup(values: pd.Series | np.ndarray, keys: pd.Series | np.ndarray) -> np.ndarray:
    """Position in ``keys`` of each of ``values`` (first match), -1 when absent."""
    cat = _codes(values)
    if cat is not None:
        pos = lookup(cat[1], keys)
        return np.append(pos, -1)[cat[0]]
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


def branch_ids_of(data: Any) -> list[str]:
    """The branch ids of loaded data (a ``CRMData``) or of a customers table, sorted."""
    if hasattr(data, "branches"):
        return [str(b) for b in data.branches()]
    if "branch_id" not in data:
        return []
    return sorted({str(b) for b in data["branch_id"].dropna().unique() if str(b)})


def branch_id_mismatch(data: Any, branch_id: str) -> str | None:
    """A note when a one-branch export names another branch than the node serves, else None.

    A one-branch export is read as the branch's own whatever its rows say, so
    an export of the wrong branch (or the generator's ``branch_00``) would be
    accepted without a word. The note names both ids (ids, never customer data).

    Parameters
    ----------
    data
        A ``CRMData`` or a customers table (``branch_id`` column).
    branch_id
        The branch the node serves (node config ``branch-id``).
    """
    ids = branch_ids_of(data)
    if len(ids) != 1 or ids[0] == branch_id:
        return None
    return (
        f"every row of the export says branch_id {ids[0]}, and this node serves branch "
        f"{branch_id}: its customers are taken as {branch_id}'s. If the export is another "
        f"branch's, stop and export {branch_id}'s; if {ids[0]} is only another name for this "
        "branch, nothing needs doing"
    )
