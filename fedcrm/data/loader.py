"""Load a validated branch export into typed tables, consent filtering first.

:func:`load_crm` validates (raising :class:`fedcrm.errors.DataValidationError`
listing every problem), parses types and then, before anything else, drops the
customers with ``consent_analytics=false`` or ``ccpa_opt_out=true`` together
with their events, keeping only their count per branch.
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
    CUSTOMER_COLUMNS,
    CUSTOMERS,
    EVENT_COLUMNS,
    EVENTS,
    FORMATS,
    lookup,
    member,
)
from fedcrm.data.validate import inspect_dir
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
        declared attribute columns (as text).
    events : DataFrame
        The contract columns (``timestamp`` tz-naive datetime64 in UTC,
        ``amount`` float64, ``event_type``/``channel`` lower-case,
        ``product_category`` "" when empty) plus the customer's ``branch_id``;
        sorted by customer and time.
    excluded : dict of str to int
        Branch id -> number of customers dropped for consent / opt-out.
    attribute_columns : tuple of str
        The declared attribute columns present in ``customers``.
    """

    customers: pd.DataFrame
    events: pd.DataFrame
    excluded: dict[str, int] = field(default_factory=dict)
    attribute_columns: tuple[str, ...] = ()

    def branches(self) -> list[str]:
        """The branch ids that have customers, sorted."""
        return sorted(self.customers["branch_id"].unique().tolist())

    def branch(self, branch_id: str) -> CRMData:
        """The customers, events and exclusion count of one branch."""
        cust = self.customers[self.customers["branch_id"] == branch_id].reset_index(drop=True)
        ev = self.events[self.events["branch_id"] == branch_id].reset_index(drop=True)
        return CRMData(
            cust, ev, {branch_id: self.excluded.get(branch_id, 0)}, self.attribute_columns
        )

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
    gone = customers.loc[drop, "customer_id"]
    kept_c = customers.loc[~drop].reset_index(drop=True)
    kept_e = events.loc[~member(events["customer_id"], gone)].reset_index(drop=True)
    logger.info(
        "consent filter: %d customer(s) excluded across %d branch(es)",
        int(drop.sum()),
        len(excluded),
    )
    return kept_c, kept_e, excluded


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events ordered by customer then time (stable), index reset."""
    ids = np.sort(pd.unique(events["customer_id"].to_numpy(dtype=object)).astype(str))
    codes = lookup(events["customer_id"], ids)
    ts = events["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    order = np.lexsort((ts, codes))
    return events.iloc[order].reset_index(drop=True)


def load_crm(path: str | Path, *, attribute_columns: Sequence[str] = ()) -> CRMData:
    """Validate, parse and consent-filter a branch export.

    Parameters
    ----------
    path : str or Path
        A directory in one of the contract layouts (see :mod:`fedcrm.data.contract`).
    attribute_columns : sequence of str
        Extra customer columns to keep; any other extra column is a problem.

    Returns
    -------
    CRMData

    Raises
    ------
    DataValidationError
        When the export breaks the contract; ``problems`` lists every finding.
    """
    found = inspect_dir(path, attribute_columns=attribute_columns)
    if found.problems:
        raise DataValidationError(found.problems)
    assert found.customers is not None and found.events is not None
    customers, events, excluded = apply_consent(found.customers, found.events)
    events = sort_events(events[[*EVENT_COLUMNS, "branch_id"]])
    logger.info(
        "loaded %d customer(s), %d event(s) in %d branch(es)",
        len(customers),
        len(events),
        customers["branch_id"].nunique(),
    )
    return CRMData(customers, events, excluded, tuple(attribute_columns))
