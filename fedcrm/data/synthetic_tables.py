"""Record types and output tables of the synthetic generator (:mod:`fedcrm.data.synthetic`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from fedcrm.data.contract import CHANNELS, EVENT_TYPES

if TYPE_CHECKING:
    import pyarrow as pa


class _Branches(NamedTuple):
    """The traits of each branch (arrays with one entry per branch)."""

    sizes: np.ndarray
    alpha: np.ndarray
    activity: np.ndarray
    chan_mix: np.ndarray
    cat_mix: np.ndarray
    type_mix: np.ndarray
    amp: np.ndarray
    phase: np.ndarray
    holiday: np.ndarray
    no_consent: np.ndarray
    opt_out: np.ndarray


class _Customers(NamedTuple):
    """The latent traits of each customer (arrays with one entry per customer)."""

    b: np.ndarray  # branch index
    s: np.ndarray  # support-proneness
    spend: np.ndarray
    fav: np.ndarray  # favourite category
    signup: np.ndarray  # days from start
    joined: np.ndarray
    lam: np.ndarray  # event rate per day
    T: np.ndarray  # churn time (inf for non-churners)
    decline: np.ndarray  # length of the decline phase before T


def _customer_frame(
    ids: np.ndarray,
    branch: np.ndarray,
    signup_ts: pd.DatetimeIndex,
    consent: np.ndarray,
    opted: np.ndarray,
) -> pd.DataFrame:
    """The customers table of the contract from its columns."""
    return pd.DataFrame(
        {
            "customer_id": pd.array(ids, dtype=str),
            "branch_id": pd.array(branch, dtype=str),
            "signup_date": signup_ts.astype("datetime64[ns]"),
            "consent_analytics": consent,
            "ccpa_opt_out": opted,
        }
    )


def _event_frame(
    ids: np.ndarray,
    ts: np.ndarray,
    etype: np.ndarray,
    amount: np.ndarray,
    chan: np.ndarray,
    cat_names: np.ndarray,
    branch: np.ndarray,
) -> pd.DataFrame:
    """The events table of the contract from its columns (type and channel as indices)."""
    return pd.DataFrame(
        {
            "customer_id": pd.array(ids, dtype=str),
            "timestamp": ts.astype("datetime64[ns]"),
            "event_type": pd.array(np.asarray(EVENT_TYPES, dtype=object)[etype], dtype=str),
            "amount": amount.astype(np.float64),
            "channel": pd.array(np.asarray(CHANNELS, dtype=object)[chan], dtype=str),
            "product_category": pd.array(cat_names, dtype=str),
            "branch_id": pd.array(branch, dtype=str),
        }
    )


def _csv_tables(cust: pd.DataFrame, events: pd.DataFrame) -> dict[str, pa.Table]:
    """The customers and events of one chunk as Arrow tables of contract text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return {
        "customers": pa.table(
            {
                "customer_id": cust["customer_id"].to_numpy(dtype=object),
                "branch_id": cust["branch_id"].to_numpy(dtype=object),
                "signup_date": pc.strftime(
                    pa.array(cust["signup_date"].to_numpy(dtype="datetime64[s]")),
                    format="%Y-%m-%d",
                ),
                "consent_analytics": pc.if_else(
                    cust["consent_analytics"].to_numpy(), "true", "false"
                ),
                "ccpa_opt_out": pc.if_else(cust["ccpa_opt_out"].to_numpy(), "true", "false"),
            }
        ),
        "events": pa.table(
            {
                "customer_id": events["customer_id"].to_numpy(dtype=object),
                "timestamp": pc.strftime(
                    pa.array(events["timestamp"].to_numpy(dtype="datetime64[s]")),
                    format="%Y-%m-%dT%H:%M:%S",
                ),
                "event_type": events["event_type"].to_numpy(dtype=object),
                "amount": events["amount"].to_numpy(),
                "channel": events["channel"].to_numpy(dtype=object),
                "product_category": events["product_category"].to_numpy(dtype=object),
            }
        ),
    }
