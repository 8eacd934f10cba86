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
``FeatureSet.tabular_names``), then the declared attributes: numeric ones as
``sign(x) log1p(|x|)``, categorical ones one-hot (one column per declared
category and an ``other`` column for any other or empty value). Everything is
computed with numpy group reductions, no per-customer Python loop, one branch
and :data:`BLOCK_CUSTOMERS` customers at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from fedcrm.data.dataset import CHANNELS, EVENT_TYPES, FeatureSet
from fedcrm.data.feature_blocks import (
    WINDOWS,
    EventArrays,
    FeatureArrays,
    featurise_block,
)
from fedcrm.data.loader import CRMData
from fedcrm.data.spec import OTHER, DataSpec
from fedcrm.errors import ConfigError

logger = logging.getLogger(__name__)

_DAY_NS = 86_400 * 10**9
# Customers featurised at a time: bounds the working memory (the outputs grow
# with the number of customers; the intermediates only with the block).
BLOCK_CUSTOMERS = 100_000


Vocabularies = Mapping[str, Sequence[str]]


def _categories(spec: DataSpec, vocabularies: Vocabularies | None) -> dict[str, tuple[str, ...]]:
    """The categories of each categorical attribute (``vocabularies`` win over the spec's)."""
    cats = spec.vocabularies()
    for name, vocab in (vocabularies or {}).items():
        if name not in cats:
            raise ConfigError(
                f"a vocabulary was given for `{name}`, which the data spec does not declare "
                "categorical"
            )
        cats[name] = tuple(vocab)
    return cats


def tabular_names(
    spec: DataSpec | Sequence[str] = (), vocabularies: Vocabularies | None = None
) -> list[str]:
    """Names of the tabular feature columns, in order.

    A numeric attribute ``age`` is ``attr_age``; a categorical ``segment`` is one
    column per category, ``segment=gold`` ..., then ``segment=other``
    (``[``, ``]`` and ``<``, which XGBoost refuses in names, are written ``(``,
    ``)`` and ``lt``: ``income=<15K`` is ``income=lt15K``).
    """
    if not isinstance(spec, DataSpec):
        spec = DataSpec().with_numeric(tuple(spec))
    names = [
        "log_recency_days",
        "log_purchase_recency_days",
        "log_n_events",
        "log_n_purchases",
        "log_total_spend",
        "log_mean_spend",
        "log_tenure_days",
        "log_mean_gap_days",
    ]
    names += [f"log_events_{w}d" for w in WINDOWS] + [f"log_purchases_{w}d" for w in WINDOWS]
    names += [f"share_{t}" for t in EVENT_TYPES] + [f"share_{c}" for c in CHANNELS]
    names += ["log_n_returns", "log_n_support", "purchase_trend_90d"]
    cats = _categories(spec, vocabularies)
    for name, attr in spec.attributes.items():
        if attr.kind == "numeric":
            names.append(f"attr_{name}")
        else:
            names += [f"{name}={_label(c)}" for c in cats[name]] + [f"{name}={OTHER}"]
    return names


def _label(category: str) -> str:
    """A category as written in a feature name (XGBoost refuses ``[``, ``]`` and ``<``)."""
    return category.replace("[", "(").replace("]", ")").replace("<", "lt")


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


def _attributes(
    customers: pd.DataFrame, spec: DataSpec, cats: Mapping[str, Sequence[str]]
) -> np.ndarray:
    """Numeric attributes on a signed log scale; categoricals one-hot with an ``other`` column.

    A value outside the vocabulary, or an empty one, is ``other``.
    """
    cols: list[np.ndarray] = []
    n = len(customers)
    for name, attr in spec.attributes.items():
        raw = customers[name]
        if attr.kind == "numeric":
            num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
            x = np.nan_to_num(num, nan=0.0, posinf=0.0, neginf=0.0)
            cols.append((np.sign(x) * np.log1p(np.abs(x)))[:, None])
            continue
        vocab = [c.strip().lower() for c in cats[name]]
        text = raw.astype(str).str.strip().str.lower().to_numpy(dtype=object)
        found = pd.Index(vocab, dtype=object).get_indexer(text)
        onehot = np.zeros((n, len(vocab) + 1))
        onehot[np.arange(n), np.where(found >= 0, found, len(vocab))] = 1.0
        cols.append(onehot)
    return np.hstack(cols) if cols else np.zeros((n, 0))


def _empty(K: int, names: list[str]) -> FeatureSet:
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


def _build(
    data: CRMData,
    cutoff: dt.date,
    horizon_days: int,
    max_events: int,
    vocabularies: Vocabularies | None,
) -> FeatureSet:
    """Features of one branch's customers active before the cutoff, in blocks of customers."""
    K = int(max_events)
    names = tabular_names(data.spec, vocabularies)
    cats = _categories(data.spec, vocabularies)
    c_ns = pd.Timestamp(cutoff).value
    ev = EventArrays.of(data.events)
    cust = data.customers
    id_cats = data.events["customer_id"].cat.categories
    before = np.bincount(ev.code[ev.ts < c_ns], minlength=len(id_cats)) > 0
    cust_code = pd.Index(id_cats).get_indexer(cust["customer_id"].to_numpy(dtype=object))
    active = np.flatnonzero((cust_code >= 0) & before[np.maximum(cust_code, 0)])
    active = active[np.argsort(cust_code[active], kind="stable")]
    n = len(active)
    if n == 0:
        return _empty(K, names)
    codes = cust_code[active]
    grouped = ev.grouped_codes()
    lo = np.searchsorted(grouped, codes, "left")
    hi = np.searchsorted(grouped, codes, "right")
    out = FeatureArrays(
        np.zeros((n, K, 3), dtype=np.int64),
        np.zeros((n, K, 3), dtype=np.float32),
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        np.zeros((n, len(names)), dtype=np.float32),
    )
    signup = cust["signup_date"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    signup = np.where(signup == np.iinfo(np.int64).min, c_ns, signup)[active]
    block = BLOCK_CUSTOMERS
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        rows = slice(r0, r1)
        events = ev.take(int(lo[r0]), int(hi[r1 - 1]))
        featurise_block(out, rows, events, codes[rows], signup[rows], c_ns, horizon_days, K)
    attrs = _attributes(cust.iloc[active], data.spec, cats)
    out.tabular[:, len(names) - attrs.shape[1] :] = attrs
    return FeatureSet(
        customer_ids=cust["customer_id"].to_numpy(dtype=str)[active],
        branch_ids=cust["branch_id"].to_numpy(dtype=str)[active],
        seq_cat=out.seq_cat,
        seq_num=out.seq_num,
        lengths=out.lengths,
        tabular=out.tabular,
        labels=out.labels,
        tabular_names=names,
    )


def _build_all(
    data: CRMData,
    cutoff: dt.date,
    horizon_days: int,
    max_events: int,
    vocabularies: Vocabularies | None,
) -> FeatureSet:
    parts = [
        _build(data.branch(b), cutoff, horizon_days, max_events, vocabularies)
        for b in data.branches()
    ]
    parts = [p for p in parts if len(p)] or [
        _empty(int(max_events), tabular_names(data.spec, vocabularies))
    ]
    return parts[0] if len(parts) == 1 else FeatureSet.concat(parts)


def build_features(
    data: CRMData,
    *,
    cutoff: dt.date | None,
    horizon_days: int,
    max_events: int,
    vocabularies: Vocabularies | None = None,
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
    vocabularies : mapping of str to sequence of str, optional
        Categories of declared categorical attributes, replacing the data
        spec's (e.g. a vocabulary agreed across branches).

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
    fs = _build_all(data, resolved, horizon_days, max_events, vocabularies)
    logger.info(
        "features: %d customer(s), churn rate %.3f, cutoff %s",
        len(fs),
        float(fs.labels.mean()) if len(fs) else 0.0,
        resolved,
    )
    return fs


def branch_feature_sets(
    data: CRMData,
    *,
    cutoff: dt.date | None,
    horizon_days: int,
    max_events: int,
    vocabularies: Vocabularies | None = None,
) -> dict[str, FeatureSet]:
    """One :class:`FeatureSet` per branch, all with the same cutoff (resolved on all data).

    A branch with no customer active before the cutoff is left out (with a warning).
    """
    resolved = resolve_cutoff(data, cutoff, horizon_days)
    out: dict[str, FeatureSet] = {}
    for b in data.branches():
        fs = _build(data.branch(b), resolved, horizon_days, max_events, vocabularies)
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
