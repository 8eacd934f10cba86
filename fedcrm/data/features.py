"""Churn features and labels from a branch's CRM tables (runs at the branch).

Task ``churn``: the customers in the task are those with at least one event
strictly before the cutoff (midnight UTC starting the cutoff day). Label 1 when
the customer makes no ``purchase`` in ``[cutoff, cutoff + horizon_days)``.

Sequence: the last ``max_events`` events before the cutoff, oldest first,
right-padded. ``seq_cat`` = (event type 1..6, channel 1..5, category bucket
1..32 from ``zlib.crc32`` of the lower-cased stripped category, 0 when empty);
``seq_num`` = (log1p amount, log1p days since the previous event — measured on
the full history, 0 for the customer's first event — and log1p days from the
event to the cutoff).

Tabular features are on a log / share scale (names in
``FeatureSet.tabular_names``); everything is computed with numpy group
reductions, no per-customer Python loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd

from fedcrm.data.contract import member
from fedcrm.data.dataset import CHANNELS, EVENT_TYPES, N_CATEGORY_BUCKETS, FeatureSet
from fedcrm.data.loader import CRMData
from fedcrm.data.schema import WINDOWS, tabular_names
from fedcrm.errors import ConfigError

logger = logging.getLogger(__name__)

_DAY_NS = 86_400 * 10**9


def category_bucket(category: str) -> int:
    """The stable bucket (1..N_CATEGORY_BUCKETS, 0 for empty) of a product category."""
    key = category.strip().lower()
    if not key:
        return 0
    return zlib.crc32(key.encode("utf-8")) % N_CATEGORY_BUCKETS + 1


def resolve_cutoff(data: CRMData, cutoff: dt.date | None, horizon_days: int) -> dt.date:
    """The task cutoff: ``cutoff`` itself, or the latest event date - ``horizon_days``.

    Raises
    ------
    ConfigError
        When there are no events, no event before the cutoff (no customer in the
        task) or no event on or after it (nothing to label against).
    """
    ts = data.events["timestamp"]
    if len(ts) == 0:
        raise ConfigError("the data has no events: cannot build the churn task")
    last = ts.max()
    if cutoff is None:
        cutoff = (last.normalize() - pd.Timedelta(days=horizon_days)).date()
    start = pd.Timestamp(cutoff)
    if not (ts < start).any():
        raise ConfigError(
            f"task.cutoff {cutoff} leaves no customers: no event before it; choose a later cutoff"
        )
    if last < start:
        raise ConfigError(
            f"task.cutoff {cutoff} leaves no label window: no event on or after it; "
            "choose an earlier cutoff or a shorter task.horizon_days"
        )
    if start + pd.Timedelta(days=horizon_days) > last.normalize() + pd.Timedelta(days=1):
        logger.warning(
            "the label window of task.cutoff %s runs past the last event; churn may be overstated",
            cutoff,
        )
    return start.date()


def _codes(values: pd.Series, vocab: tuple[str, ...]) -> np.ndarray:
    return pd.Categorical(values, categories=list(vocab)).codes.astype(np.int64) + 1


def _buckets(values: pd.Series) -> np.ndarray:
    codes, uniques = pd.factorize(values.astype(str).str.strip().str.lower())
    table = np.array([category_bucket(u) for u in uniques] + [0], dtype=np.int64)
    return table[codes]  # code -1 (missing) -> the trailing 0


def _attributes(customers: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    out = np.zeros((len(customers), len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        raw = customers[name]
        num = pd.to_numeric(raw, errors="coerce").astype("float64")
        nonnum = num.isna() & raw.astype(str).str.strip().ne("")
        if nonnum.any():
            logger.warning("attribute column %s has non-numeric values; they count as 0", name)
        x = np.nan_to_num(num.to_numpy(), nan=0.0, posinf=0.0, neginf=0.0)
        out[:, j] = np.sign(x) * np.log1p(np.abs(x))
    return out


def _empty(K: int, attrs: tuple[str, ...]) -> FeatureSet:
    names = tabular_names(attrs)
    return FeatureSet(
        customer_ids=np.zeros(0, dtype=str),
        branch_ids=np.zeros(0, dtype=str),
        seq_cat=np.zeros((0, K, 3), dtype=np.int64),
        seq_num=np.zeros((0, K, 3), dtype=np.float32),
        lengths=np.zeros(0, dtype=np.int64),
        tabular=np.zeros((0, len(names)), dtype=np.float32),
        labels=np.zeros(0, dtype=np.int64),
        tabular_names=names,
    )


def _build(data: CRMData, cutoff: dt.date, horizon_days: int, max_events: int) -> FeatureSet:
    K = int(max_events)
    c_ns = pd.Timestamp(cutoff).value
    ev = data.events
    ts = ev["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    before = ts < c_ns
    cust = data.customers
    active = cust[member(cust["customer_id"], ev["customer_id"][before])]
    active = active.sort_values(["branch_id", "customer_id"], kind="mergesort")
    ids = active["customer_id"].to_numpy(dtype=str)
    n = len(ids)
    if n == 0:
        return _empty(K, data.attribute_columns)
    index = pd.Index(ids)
    cidx = index.get_indexer(ev["customer_id"])

    # ---- labels: any purchase in [cutoff, cutoff + horizon)
    end_ns = c_ns + horizon_days * _DAY_NS
    is_purchase = (ev["event_type"] == "purchase").to_numpy()
    bought = is_purchase & (ts >= c_ns) & (ts < end_ns) & (cidx >= 0)
    labels = np.ones(n, dtype=np.int64)
    labels[np.unique(cidx[bought])] = 0

    # ---- events before the cutoff, ordered by customer then time
    sel = np.flatnonzero(before & (cidx >= 0))
    sel = sel[np.lexsort((ts[sel], cidx[sel]))]
    c, t = cidx[sel], ts[sel]
    sub = ev.iloc[sel]
    etype = _codes(sub["event_type"], EVENT_TYPES)
    chan = _codes(sub["channel"], CHANNELS)
    bucket = _buckets(sub["product_category"])
    amount = sub["amount"].to_numpy(dtype=np.float64)
    purchase = etype == 1

    counts = np.bincount(c, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(c)) - starts[c]
    to_cut = (c_ns - t) / _DAY_NS
    gap = np.zeros(len(c))
    gap[1:] = (t[1:] - t[:-1]) / _DAY_NS
    gap[pos == 0] = 0.0

    first_kept = np.maximum(counts - K, 0)
    keep = pos >= first_kept[c]
    slot = pos[keep] - first_kept[c[keep]]
    rows = c[keep]
    seq_cat = np.zeros((n, K, 3), dtype=np.int64)
    seq_num = np.zeros((n, K, 3), dtype=np.float32)
    seq_cat[rows, slot] = np.stack([etype[keep], chan[keep], bucket[keep]], axis=1)
    seq_num[rows, slot] = np.log1p(np.stack([amount[keep], gap[keep], to_cut[keep]], axis=1))
    lengths = np.minimum(counts, K).astype(np.int64)

    # ---- tabular
    ends = starts + counts - 1
    recency = to_cut[ends]
    first_days = to_cut[starts]
    pc, pt = c[purchase], to_cut[purchase]
    last_p = np.r_[pc[1:] != pc[:-1], True] if len(pc) else np.zeros(0, dtype=bool)
    p_recency = first_days + 1.0  # no purchase yet: longer ago than the first event
    p_recency[pc[last_p]] = pt[last_p]
    n_p = np.bincount(c, weights=purchase, minlength=n)
    spend = np.bincount(c, weights=amount * purchase, minlength=n)
    signup = active["signup_date"].fillna(pd.Timestamp(cutoff)).to_numpy(dtype="datetime64[ns]")
    signup_days = (c_ns - signup.astype(np.int64)) / _DAY_NS
    tenure = np.maximum(np.maximum(signup_days, first_days), 0.0)
    mean_gap = np.where(counts > 1, (first_days - recency) / np.maximum(counts - 1, 1), 0.0)
    win_e = [np.bincount(c, weights=to_cut <= w, minlength=n) for w in WINDOWS]
    win_p = [np.bincount(c, weights=purchase & (to_cut <= w), minlength=n) for w in WINDOWS]
    prev_p = win_p[2] - win_p[1]
    type_counts = np.bincount(c * 6 + etype - 1, minlength=n * 6).reshape(n, 6)
    chan_counts = np.bincount(
        c * 5 + np.maximum(chan - 1, 0), weights=chan > 0, minlength=n * 5
    ).reshape(n, 5)
    denom = np.maximum(counts, 1)[:, None]
    cols = [
        np.log1p(recency),
        np.log1p(p_recency),
        np.log1p(counts),
        np.log1p(n_p),
        np.log1p(spend),
        np.log1p(spend / np.maximum(n_p, 1)),
        np.log1p(tenure),
        np.log1p(mean_gap),
        *[np.log1p(w) for w in win_e],
        *[np.log1p(w) for w in win_p],
    ]
    tab = np.column_stack(
        [
            *cols,
            type_counts / denom,
            chan_counts / denom,
            np.log1p(type_counts[:, 2]),
            np.log1p(type_counts[:, 3]),
            np.log1p(win_p[1]) - np.log1p(prev_p),
            _attributes(active, data.attribute_columns),
        ]
    ).astype(np.float32)
    return FeatureSet(
        customer_ids=ids,
        branch_ids=active["branch_id"].to_numpy(dtype=str),
        seq_cat=seq_cat,
        seq_num=seq_num,
        lengths=lengths,
        tabular=tab,
        labels=labels,
        tabular_names=tabular_names(data.attribute_columns),
    )


def build_features(
    data: CRMData, *, cutoff: dt.date | None, horizon_days: int, max_events: int
) -> FeatureSet:
    """Sequences, tabular features and churn labels of every customer active before the cutoff.

    Parameters
    ----------
    data : CRMData
        Consent-filtered tables (one or more branches).
    cutoff : date or None
        Features use events strictly before it; ``None`` = latest event date - horizon.
    horizon_days : int
        Label window length after the cutoff.
    max_events : int
        Sequence length K (the last K events are kept).

    Returns
    -------
    FeatureSet
        Rows ordered by branch then customer id.

    Raises
    ------
    ConfigError
        When the cutoff leaves no customer or no label window.
    """
    resolved = resolve_cutoff(data, cutoff, horizon_days)
    fs = _build(data, resolved, horizon_days, max_events)
    logger.info(
        "features: %d customer(s), churn rate %.3f, cutoff %s",
        len(fs),
        float(fs.labels.mean()) if len(fs) else 0.0,
        resolved,
    )
    return fs


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


def build_scoring_features(data: CRMData, *, as_of: dt.date, max_events: int) -> FeatureSet:
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
    fs = _build(data, scoring_cutoff(data, as_of), 0, max_events)
    fs.labels = np.full(len(fs), UNKNOWN_LABEL, dtype=np.int64)
    logger.info("scoring features: %d customer(s) as of %s", len(fs), as_of)
    return fs


def scoring_feature_blocks(
    data: CRMData, *, as_of: dt.date, max_events: int, block_size: int = 50_000
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
        )
        fs = _build(block, cutoff, 0, max_events)
        fs.labels = np.full(len(fs), UNKNOWN_LABEL, dtype=np.int64)
        yield fs, hi - lo


def branch_feature_sets(
    data: CRMData, *, cutoff: dt.date | None, horizon_days: int, max_events: int
) -> dict[str, FeatureSet]:
    """One :class:`FeatureSet` per branch, all with the same cutoff (resolved on all data).

    A branch with no customer active before the cutoff is left out (with a warning).
    """
    resolved = resolve_cutoff(data, cutoff, horizon_days)
    out: dict[str, FeatureSet] = {}
    for b in data.branches():
        fs = _build(data.branch(b), resolved, horizon_days, max_events)
        if len(fs) == 0:
            logger.warning("branch %s has no customer active before the cutoff; left out", b)
            continue
        out[b] = fs
    return out


def stratified_split(
    fs: FeatureSet, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split stratified by (branch, label).

    Each branch is split on its own with a generator seeded by ``(seed,
    crc32(branch_id))``, so a branch gets the same split whether it is split
    alone or pooled with others. Each (branch, label) group puts
    ``round(n * test_fraction)`` rows in the test set, keeping at least one for
    training when the group has two or more.

    Returns
    -------
    (train_idx, test_idx) : sorted int64 arrays
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    test: list[np.ndarray] = []
    branches = np.asarray(fs.branch_ids).astype(str)
    for b in sorted(set(branches.tolist())):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(b.encode("utf-8"))])
        for label in (0, 1):
            group = np.flatnonzero((branches == b) & (fs.labels == label))
            k = round(len(group) * test_fraction)
            if len(group) >= 2:
                k = min(k, len(group) - 1)
            test.append(rng.permutation(group)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(fs), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_idx.astype(np.int64)
