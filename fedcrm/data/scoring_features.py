"""Features of a branch's customers for scoring, as of a day, without labels.

Scoring asks about customers' future, so there is no label window: the
features are those of the churn task (:mod:`fedcrm.data.features`) with the
cutoff on the day after ``as_of``, so that recency, gaps and windows are
measured to the end of that day, and every label is :data:`UNKNOWN_LABEL`.
Large exports are featurised block by block of customers
(:func:`scoring_feature_blocks`) to bound memory.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd

from fedcrm.data.dataset import FeatureSet
from fedcrm.data.features import Vocabularies, _build
from fedcrm.data.loader import CRMData
from fedcrm.errors import ConfigError

logger = logging.getLogger(__name__)

UNKNOWN_LABEL = -1
"""Label of customers featurised for scoring (their future is what is asked)."""


def scoring_cutoff(data: CRMData, as_of: dt.date) -> dt.date:
    """The cutoff that makes features use every event up to and including ``as_of``.

    Training features use events strictly before the cutoff day, so scoring
    "as of" a day is the task with the cutoff on the next day: recency, gaps
    and windows are measured to the end of ``as_of``.

    Raises
    ------
    ConfigError
        When there is no event on or before ``as_of``.
    """
    cutoff = (pd.Timestamp(as_of) + pd.Timedelta(days=1)).date()
    ts = data.events["timestamp"]
    if len(ts) == 0 or not (ts < pd.Timestamp(cutoff)).any():
        raise ConfigError(
            f"--as-of {as_of}: no event on or before it, nothing to score; choose a later date"
        )
    later = int((ts >= pd.Timestamp(cutoff)).sum())
    if later:
        logger.info("%d event(s) after %s are ignored", later, as_of)
    return cutoff


def build_scoring_features(
    data: CRMData,
    *,
    as_of: dt.date,
    max_events: int,
    vocabularies: Vocabularies | None = None,
) -> FeatureSet:
    """Features of every customer with an event up to ``as_of``, without labels.

    The same features as :func:`build_features` with the cutoff on the day
    after ``as_of``; no label window is needed. ``labels`` hold
    :data:`UNKNOWN_LABEL`.

    Parameters
    ----------
    data : CRMData
        Consent-filtered tables (customers without consent are already gone).
    as_of : date
        The last day whose events count.
    max_events : int
        Sequence length K of the model.

    Raises
    ------
    ConfigError
        When there is no event on or before ``as_of``.
    """
    fs = _build(data, scoring_cutoff(data, as_of), 0, max_events, vocabularies)
    fs.labels = np.full(len(fs), UNKNOWN_LABEL, dtype=np.int64)
    logger.info("scoring features: %d customer(s) as of %s", len(fs), as_of)
    return fs


def scoring_feature_blocks(
    data: CRMData,
    *,
    as_of: dt.date,
    max_events: int,
    block_size: int = 50_000,
    vocabularies: Vocabularies | None = None,
) -> Iterator[tuple[FeatureSet, int]]:
    """:func:`build_scoring_features` block by block, to bound memory on large exports.

    Customers are taken in the order the features use (branch, then customer
    id) and cut into blocks of ``block_size``; each block's rows are exactly
    what the whole build gives for them (a customer's features depend on their
    own events only).

    Yields
    ------
    (FeatureSet, int)
        The features of a block's customers with an event up to ``as_of``, and
        the number of customers the block covered (for progress).
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    cutoff = scoring_cutoff(data, as_of)
    cust = data.customers.sort_values(["branch_id", "customer_id"], kind="mergesort")
    cust = cust.reset_index(drop=True)
    cidx = pd.Index(cust["customer_id"].to_numpy(dtype=str)).get_indexer(data.events["customer_id"])
    for lo in range(0, len(cust), block_size):
        hi = min(len(cust), lo + block_size)
        rows = np.flatnonzero((cidx >= lo) & (cidx < hi))
        block = CRMData(
            cust.iloc[lo:hi].reset_index(drop=True),
            data.events.iloc[rows].reset_index(drop=True),
            data.excluded,
            data.attribute_columns,
            data.spec,
        )
        fs = _build(block, cutoff, 0, max_events, vocabularies)
        fs.labels = np.full(len(fs), UNKNOWN_LABEL, dtype=np.int64)
        yield fs, hi - lo
