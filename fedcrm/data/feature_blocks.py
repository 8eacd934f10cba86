"""The churn features of one block of customers, from their events as plain arrays.

:mod:`fedcrm.data.features` cuts a branch into blocks of customers and calls
:func:`featurise_block` on each with the block's events, grouped by customer
and in time order; every quantity is per customer, so the blocks' results are
exactly those of one pass over the branch, with working memory bounded by the
block (see that module for the feature definitions).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedcrm.data.dataset import N_CATEGORY_BUCKETS

_DAY_NS = 86_400 * 10**9
WINDOWS: tuple[int, ...] = (30, 90, 180)


def category_bucket(category: str) -> int:
    """The stable bucket (1..N_CATEGORY_BUCKETS, 0 for empty) of a product category."""
    key = category.strip().lower()
    if not key:
        return 0
    return zlib.crc32(key.encode("utf-8")) % N_CATEGORY_BUCKETS + 1


@dataclass
class EventArrays:
    """One branch's events as arrays, grouped by customer (``order`` when not stored so)."""

    code: np.ndarray  # customer category code
    ts: np.ndarray
    etype: np.ndarray  # 1..6
    chan: np.ndarray  # 1..5
    bucket: np.ndarray
    amount: np.ndarray
    order: np.ndarray | None

    @classmethod
    def of(cls, ev: pd.DataFrame) -> EventArrays:
        """The arrays of a compact events table (see :class:`fedcrm.data.loader.CRMData`)."""
        cat = ev["product_category"].cat
        table = np.array([category_bucket(str(c)) for c in cat.categories] + [0], dtype=np.int8)
        code = ev["customer_id"].cat.codes.to_numpy()
        ts = ev["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
        grouped = len(code) < 2 or bool(
            np.all(
                (np.diff(code.astype(np.int64)) > 0)
                | ((code[1:] == code[:-1]) & (ts[1:] >= ts[:-1]))
            )
        )
        return cls(
            code,
            ts,
            ev["event_type"].cat.codes.to_numpy().astype(np.int64) + 1,
            ev["channel"].cat.codes.to_numpy().astype(np.int64) + 1,
            table[cat.codes.to_numpy()],
            ev["amount"].to_numpy(dtype=np.float64),
            None if grouped else np.lexsort((ts, code)),
        )

    def take(self, lo: int, hi: int) -> tuple[np.ndarray, ...]:
        """Events ``lo:hi`` in grouped order: (code, ts, etype, chan, bucket, amount)."""
        idx: slice | np.ndarray = slice(lo, hi) if self.order is None else self.order[lo:hi]
        arrays = (self.code, self.ts, self.etype, self.chan, self.bucket, self.amount)
        return tuple(a[idx] for a in arrays)

    def grouped_codes(self) -> np.ndarray:
        """Customer codes in grouped order (non-decreasing)."""
        return self.code if self.order is None else self.code[self.order]


@dataclass
class FeatureArrays:
    """The preallocated outputs every block writes its rows into."""

    seq_cat: np.ndarray
    seq_num: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    tabular: np.ndarray


def _labels(
    codes: np.ndarray, code: np.ndarray, ts: np.ndarray, etype: np.ndarray, c_ns: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Block row of each event (-1 outside the block) and each customer's churn label.

    The label is 0 for a purchase in ``[cutoff, cutoff + horizon)``, 1 otherwise.
    """
    n = len(codes)
    local = np.searchsorted(codes, code)
    local_c = np.minimum(local, n - 1)
    cidx = np.where(codes[local_c] == code, local_c, -1)
    end_ns = c_ns + horizon * _DAY_NS
    bought = (etype == 1) & (ts >= c_ns) & (ts < end_ns) & (cidx >= 0)
    labels = np.ones(n, dtype=np.int64)
    labels[np.unique(cidx[bought])] = 0
    return cidx, labels


def _write_sequences(
    out: FeatureArrays,
    rows: slice,
    K: int,
    c: np.ndarray,
    pos: np.ndarray,
    counts: np.ndarray,
    cat: tuple[np.ndarray, ...],
    num: tuple[np.ndarray, ...],
) -> None:
    """Each customer's last ``K`` events (categorical ``cat``, log1p of ``num``) into ``out``."""
    first_kept = np.maximum(counts - K, 0)
    keep = pos >= first_kept[c]
    slot = pos[keep] - first_kept[c[keep]]
    r = c[keep] + rows.start
    out.seq_cat[r, slot] = np.stack([a[keep] for a in cat], axis=1)
    out.seq_num[r, slot] = np.log1p(np.stack([a[keep] for a in num], axis=1))


def _tabular(
    n: int,
    c: np.ndarray,
    counts: np.ndarray,
    starts: np.ndarray,
    to_cut: np.ndarray,
    etype: np.ndarray,
    chan: np.ndarray,
    amount: np.ndarray,
    signup_days: np.ndarray,
) -> np.ndarray:
    """The tabular features of ``n`` customers from their events before the cutoff.

    ``c`` is each event's customer (events grouped by customer, in time order),
    ``counts`` and ``starts`` the number and first index of each customer's events.
    """
    purchase = etype == 1
    ends = starts + counts - 1
    recency = to_cut[ends]
    first_days = to_cut[starts]
    pc, pt = c[purchase], to_cut[purchase]
    last_p = np.r_[pc[1:] != pc[:-1], True] if len(pc) else np.zeros(0, dtype=bool)
    p_recency = first_days + 1.0  # no purchase yet: longer ago than the first event
    p_recency[pc[last_p]] = pt[last_p]
    n_p = np.bincount(c, weights=purchase, minlength=n)
    spend = np.bincount(c, weights=amount * purchase, minlength=n)
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
    return np.column_stack(
        [
            *cols,
            type_counts / denom,
            chan_counts / denom,
            np.log1p(type_counts[:, 2]),
            np.log1p(type_counts[:, 3]),
            np.log1p(win_p[1]) - np.log1p(prev_p),
        ]
    )


def featurise_block(
    out: FeatureArrays,
    rows: slice,
    ev: tuple[np.ndarray, ...],
    codes: np.ndarray,
    signup: np.ndarray,
    c_ns: int,
    horizon_days: int,
    K: int,
) -> None:
    """Features of the active customers ``codes`` (sorted), written to ``out[rows]``."""
    code, ts, etype, chan, bucket, amount = ev
    n = len(codes)
    cidx, labels = _labels(codes, code, ts, etype, c_ns, horizon_days)

    # ---- events before the cutoff, ordered by customer then time
    sel = np.flatnonzero((ts < c_ns) & (cidx >= 0))
    c, t = cidx[sel], ts[sel]
    etype, chan, bucket, amount = etype[sel], chan[sel], bucket[sel], amount[sel]

    counts = np.bincount(c, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(c)) - starts[c]
    to_cut = (c_ns - t) / _DAY_NS
    gap = np.zeros(len(c))
    gap[1:] = (t[1:] - t[:-1]) / _DAY_NS
    gap[pos == 0] = 0.0

    _write_sequences(out, rows, K, c, pos, counts, (etype, chan, bucket), (amount, gap, to_cut))
    out.lengths[rows] = np.minimum(counts, K)
    out.labels[rows] = labels
    tab = _tabular(n, c, counts, starts, to_cut, etype, chan, amount, (c_ns - signup) / _DAY_NS)
    out.tabular[rows, : tab.shape[1]] = tab
