"""Load a validated branch export into typed tables, consent filtering first.

:func:`load_crm` validates (raising :class:`fedcrm.errors.DataValidationError`
with one line per kind of problem), parses types and then, before anything
else, drops the customers with ``consent_analytics=false`` or
``ccpa_opt_out=true`` together with their events, keeping only their count per
branch.

Events are held compactly: ``customer_id``, ``event_type``, ``channel``,
``product_category`` and ``branch_id`` are pandas categoricals (sorted
categories, only those in use), so a 30-million-event branch takes about
0.8 GB.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedcrm.data.contract import (
    CHANNELS,
    CUSTOMER_COLUMNS,
    CUSTOMERS,
    EVENT_COLUMNS,
    EVENT_TYPES,
    EVENTS,
    FORMATS,
    member,
)
from fedcrm.data.problems import DEFAULT_MAX_DETAILS
from fedcrm.data.spec import DataSpec
from fedcrm.data.validate import Inspection, inspect_dir
from fedcrm.errors import DataValidationError

logger = logging.getLogger(__name__)

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass
class CRMData:
    """Typed, consent-filtered CRM tables of one or more branches.

    Attributes
    ----------
    customers : DataFrame
        ``customer_id``, ``branch_id`` (str), ``signup_date`` (datetime64, NaT
        when unknown), ``consent_analytics``, ``ccpa_opt_out`` (bool), then the
        declared attribute columns (numeric ones as float64, NaN when empty;
        categorical ones as text).
    events : DataFrame
        The contract columns (``timestamp`` tz-naive datetime64 in UTC,
        ``amount`` float64, ``event_type``/``channel`` lower-case,
        ``product_category`` "" when empty) plus the customer's ``branch_id``;
        text columns are categoricals (made so on construction).
    excluded : dict of str to int
        Branch id -> number of customers dropped for consent / opt-out.
    attribute_columns : tuple of str
        Numeric attribute columns declared outside ``spec`` (added to it).
    spec : DataSpec
        The branch's data spec: the declared attributes, their kinds and
        categories. After construction ``attribute_columns`` lists every
        declared attribute.
    """

    customers: pd.DataFrame
    events: pd.DataFrame
    excluded: dict[str, int] = field(default_factory=dict)
    attribute_columns: tuple[str, ...] = ()
    spec: DataSpec = field(default_factory=DataSpec)

    def __post_init__(self) -> None:
        self.spec = self.spec.with_numeric(self.attribute_columns)
        self.attribute_columns = self.spec.attribute_columns
        self.events = compact_events(self.events)

    def branches(self) -> list[str]:
        """The branch ids that have customers, sorted."""
        return sorted(self.customers["branch_id"].unique().tolist())

    def branch(self, branch_id: str) -> CRMData:
        """The customers, events and exclusion count of one branch."""
        excluded = {branch_id: self.excluded.get(branch_id, 0)}
        if self.branches() == [branch_id]:
            return CRMData(self.customers, self.events, excluded, spec=self.spec)
        cust = self.customers[self.customers["branch_id"] == branch_id].reset_index(drop=True)
        ev = self.events[self.events["branch_id"] == branch_id].reset_index(drop=True)
        return CRMData(cust, ev, excluded, spec=self.spec)

    def write(self, out_dir: str | Path, fmt: str = "csv") -> Path:
        """Write the contract files (one pair, with a ``branch_id`` column).

        Parameters
        ----------
        out_dir : str or Path
            Created if needed; existing contract files are overwritten.
        fmt : {"csv", "parquet"}

        Returns
        -------
        Path
            ``out_dir``.
        """
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cust = self.customers[list(CUSTOMER_COLUMNS) + list(self.attribute_columns)].copy()
        ev = self.events[list(EVENT_COLUMNS)].copy()
        if fmt == "parquet":
            cust.to_parquet(out / f"{CUSTOMERS}.parquet", index=False)
            ev.to_parquet(out / f"{EVENTS}.parquet", index=False)
            return out
        cust["signup_date"] = cust["signup_date"].dt.strftime("%Y-%m-%d").fillna("")
        for name in ("consent_analytics", "ccpa_opt_out"):
            cust[name] = cust[name].map({True: "true", False: "false"})
        stamps = pa.array(ev["timestamp"].to_numpy(dtype="datetime64[s]"))
        ev["timestamp"] = pc.strftime(stamps, format=_TS_FORMAT).to_pandas().to_numpy()
        cust.to_csv(out / f"{CUSTOMERS}.csv", index=False, lineterminator="\n")
        ev.to_csv(out / f"{EVENTS}.csv", index=False, lineterminator="\n")
        return out


def apply_consent(
    customers: pd.DataFrame, events: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Drop customers without analytics consent or who opted out, and their events.

    Parameters
    ----------
    customers, events : DataFrame
        Typed tables (``consent_analytics`` / ``ccpa_opt_out`` bool).

    Returns
    -------
    (customers, events, excluded)
        The kept rows and the number of dropped customers per branch (every
        branch of ``customers`` appears, possibly with 0).
    """
    drop = ~customers["consent_analytics"].astype(bool) | customers["ccpa_opt_out"].astype(bool)
    counts = drop.groupby(customers["branch_id"]).sum()
    excluded = {str(b): int(n) for b, n in counts.items()}
    kept_c = customers.loc[~drop].reset_index(drop=True)
    if not drop.any():
        gone_events = np.zeros(len(events), dtype=bool)
    elif customers["customer_id"].is_unique:
        gone_events = member(events["customer_id"], customers.loc[drop, "customer_id"])
    else:  # the same id in two branches names two customers
        rows = customer_rows(customers, events)
        gone_events = np.append(drop.to_numpy(), False)[rows]
    kept_e = events.loc[~gone_events].reset_index(drop=True)
    logger.info(
        "consent filter: %d customer(s) excluded across %d branch(es)",
        int(drop.sum()),
        len(excluded),
    )
    return kept_c, kept_e, excluded


def _str_categories(cat: pd.Categorical) -> pd.Categorical:
    if cat.categories.dtype == "str":
        return cat
    cats = pd.Index(cat.categories.to_numpy(dtype=object), dtype=str)
    return pd.Categorical.from_codes(cat.codes, categories=cats)


def _used_sorted(values: pd.Series | np.ndarray) -> pd.Categorical:
    """A categorical of ``values`` whose categories are the sorted values in use."""
    return _str_categories(_used_sorted_any(values))


def _used_sorted_any(values: pd.Series | np.ndarray) -> pd.Categorical:
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        cats = values.cat.categories
        used = np.bincount(codes[codes >= 0], minlength=len(cats)) > 0
        if used.all() and cats.is_monotonic_increasing:
            return values.array
        keep = np.flatnonzero(used)
        kept = cats[keep]
        order = np.argsort(kept.to_numpy(dtype=object), kind="stable")
        remap = np.full(len(cats) + 1, -1, dtype=np.int64)
        remap[keep[order]] = np.arange(len(keep))
        new_codes = remap[codes]  # code -1 reads the trailing -1
        return pd.Categorical.from_codes(new_codes, categories=kept[order])
    return pd.Categorical(np.asarray(values, dtype=object))


def compact_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events with text columns as categoricals (fixed vocabularies, or sorted in-use values)."""
    out = {}
    for col in events.columns:
        values = events[col]
        if col in ("event_type", "channel"):
            vocab = EVENT_TYPES if col == "event_type" else CHANNELS
            if isinstance(values.dtype, pd.CategoricalDtype) and tuple(
                values.cat.categories
            ) == tuple(vocab):
                out[col] = _str_categories(values.array)
            else:
                cats = pd.Index(list(vocab), dtype=str)
                out[col] = pd.Categorical(np.asarray(values, dtype=object), categories=cats)
        elif col in ("customer_id", "product_category", "branch_id"):
            out[col] = _used_sorted(values)
        else:
            out[col] = values.to_numpy()
    return pd.DataFrame(out)


def customer_rows(customers: pd.DataFrame, events: pd.DataFrame) -> np.ndarray:
    """Row in ``customers`` of each event's (branch_id, customer_id), -1 when absent."""
    ev_ids = _used_sorted(events["customer_id"])
    ev_br = _used_sorted(events["branch_id"])
    n_ids = max(len(ev_ids.categories), 1)
    id_pos = pd.Index(ev_ids.categories).get_indexer(customers["customer_id"].to_numpy(object))
    br_pos = pd.Index(ev_br.categories).get_indexer(customers["branch_id"].to_numpy(object))
    ok = (id_pos >= 0) & (br_pos >= 0)
    keys = np.where(ok, br_pos.astype(np.int64) * n_ids + id_pos, -1)
    ev_keys = ev_br.codes.astype(np.int64) * n_ids + ev_ids.codes
    found = pd.Index(keys).get_indexer(ev_keys) if pd.Index(keys[ok]).is_unique else None
    if found is None:
        raise ValueError("a (branch_id, customer_id) appears twice in customers")
    return np.asarray(found, dtype=np.int64)


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events ordered by branch, customer, then time (stable), index reset.

    An export already in that order (the usual case) is not copied.
    """
    events = compact_events(events)
    ts = events["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    cust = events["customer_id"].cat.codes.to_numpy()
    keys = [ts, cust]
    if "branch_id" in events:
        keys.append(events["branch_id"].cat.codes.to_numpy())
    if not _is_sorted(keys):
        return events.iloc[np.lexsort(keys)].reset_index(drop=True)
    return events.reset_index(drop=True)


def _is_sorted(keys: list[np.ndarray]) -> bool:
    """Whether rows are in lexicographic order of ``keys`` (the last key most significant)."""
    n = len(keys[0])
    if n < 2:
        return True
    undecided = np.ones(n - 1, dtype=bool)
    for key in reversed(keys):
        d = np.diff(key.astype(np.int64))
        if (undecided & (d < 0)).any():
            return False
        undecided &= d == 0
    return True


def load_crm(
    path: str | Path,
    *,
    spec: DataSpec | None = None,
    attribute_columns: Sequence[str] = (),
    max_problems: int | None = DEFAULT_MAX_DETAILS,
) -> CRMData:
    """Validate, parse and consent-filter a branch export.

    Parameters
    ----------
    path : str or Path
        A directory in one of the contract layouts (see :mod:`fedcrm.data.contract`).
    spec : DataSpec, optional
        How the files are written and the declared attributes; default: the
        ``data_spec.yaml`` in ``path``, if any.
    attribute_columns : sequence of str
        Extra numeric attribute columns (added to the spec's).
    max_problems : int or None
        Located problems kept in the error (every kind is summarised).

    Returns
    -------
    CRMData

    Raises
    ------
    DataValidationError
        When the export breaks the contract (one summary line per kind of problem).
    """
    found = inspect_dir(
        path, spec=spec, attribute_columns=attribute_columns, max_problems=max_problems
    )
    return crm_from_inspection(found)


def crm_from_inspection(found: Inspection) -> CRMData:
    """The consent-filtered :class:`CRMData` of a clean inspection.

    Raises
    ------
    DataValidationError
        When the inspection found problems.
    """
    if found.log:
        raise DataValidationError(found.problems, found.summaries)
    for warning in found.warnings:
        logger.warning("%s", warning)
    assert found.customers is not None and found.events is not None
    customers, events, excluded = apply_consent(found.customers, found.events)
    events = sort_events(events[[*EVENT_COLUMNS, "branch_id"]])
    logger.info(
        "loaded %d customer(s), %d event(s) in %d branch(es)",
        len(customers),
        len(events),
        customers["branch_id"].nunique(),
    )
    return CRMData(customers, events, excluded, spec=found.spec)
