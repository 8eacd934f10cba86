"""Feature drift between a branch's training customers and the customers it scores today.

A branch's own copy of a model bundle keeps the binned distribution of each
tabular feature over the branch's training customers
(:func:`drift_reference`: up to :data:`DRIFT_BINS` quantile bins). It stays at
the branch: the server's copy has none. At scoring time today's customers are
counted in the same bins and each feature gets its population stability index

    PSI = sum over bins of (today - training) * ln(today / training)

(shares floored at :data:`SHARE_FLOOR` so an empty bin does not give an
infinite index). The usual reading: below 0.1 stable, 0.1 to 0.2 a moderate
shift, above :data:`PSI_MAJOR` (0.2) a major shift: the model sees customers
unlike the ones it learned from, and its scores deserve less trust until it is
retrained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DRIFT_BINS = 10
"""Quantile bins per feature in a drift reference."""
PSI_MODERATE = 0.1
"""Population stability index above which a feature has moved moderately."""
PSI_MAJOR = 0.2
"""Population stability index above which a feature has moved a lot (a warning)."""
SHARE_FLOOR = 1e-4
"""Smallest share a bin counts with in the PSI."""
_MAX_FEATURES = 10_000


@dataclass(frozen=True)
class DriftReference:
    """Binned distribution of each tabular feature over the training customers.

    Attributes
    ----------
    names
        Feature names, in column order.
    edges
        Inner bin edges per feature (increasing): bin ``i`` holds values in
        ``[edges[i-1], edges[i])``, the first and last bins are open-ended.
    shares
        Share of training customers in each bin (``len(edges) + 1`` per feature).
    customers
        Training customers counted.
    """

    names: tuple[str, ...]
    edges: tuple[tuple[float, ...], ...]
    shares: tuple[tuple[float, ...], ...]
    customers: int

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.edges) == len(self.shares) <= _MAX_FEATURES):
            raise ValueError("drift reference: names, edges and shares differ in length")
        for e, s in zip(self.edges, self.shares, strict=True):
            e_arr, s_arr = np.asarray(e, np.float64), np.asarray(s, np.float64)
            if len(e) > DRIFT_BINS or len(s) != len(e) + 1:
                raise ValueError("drift reference: each feature needs len(edges) + 1 shares")
            if not (np.all(np.isfinite(e_arr)) and np.all(np.isfinite(s_arr))):
                raise ValueError("drift reference: edges and shares must be finite")
            if np.any(np.diff(e_arr) <= 0) or np.any(s_arr < 0):
                raise ValueError("drift reference: edges must increase, shares be >= 0")

    def bin_counts(self, X: np.ndarray) -> list[np.ndarray]:
        """Customers of ``X`` (rows, columns as ``names``) in each feature's bins."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.names):
            raise ValueError(f"drift: expected {len(self.names)} feature columns")
        out = []
        for j, e in enumerate(self.edges):
            which = np.searchsorted(np.asarray(e), X[:, j], side="right")
            out.append(np.bincount(which, minlength=len(e) + 1).astype(np.float64))
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (stored in a branch's bundle)."""
        return {
            "bins": DRIFT_BINS,
            "customers": self.customers,
            "features": [
                {"name": n, "edges": list(e), "shares": list(s)}
                for n, e, s in zip(self.names, self.edges, self.shares, strict=True)
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DriftReference:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on anything malformed."""
        try:
            feats = list(doc["features"])
            return cls(
                names=tuple(str(f["name"]) for f in feats),
                edges=tuple(tuple(float(v) for v in f["edges"]) for f in feats),
                shares=tuple(tuple(float(v) for v in f["shares"]) for f in feats),
                customers=int(doc["customers"]),
            )
        except (KeyError, TypeError):
            raise ValueError("drift reference: malformed") from None


def drift_reference(
    X: np.ndarray, names: Sequence[str], *, bins: int = DRIFT_BINS
) -> DriftReference:
    """Quantile bins of every column of ``X`` (the branch's training features)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names) or X.shape[0] == 0:
        raise ValueError("drift reference needs a non-empty (customers, features) matrix")
    edges, shares = [], []
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    for j in range(X.shape[1]):
        col = X[:, j]
        e = np.unique(np.quantile(col, qs))
        # A bin [e_i, e_i+1) must hold something: drop the smallest edge when it is the minimum.
        e = e[e > col.min()] if e.size else e
        counts = np.bincount(np.searchsorted(e, col, side="right"), minlength=e.size + 1)
        edges.append(tuple(float(v) for v in e))
        shares.append(tuple(float(v) for v in counts / counts.sum()))
    return DriftReference(tuple(str(n) for n in names), tuple(edges), tuple(shares), X.shape[0])


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two share (or count) vectors over the same bins."""
    e = np.asarray(expected, np.float64)
    a = np.asarray(actual, np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    e = np.maximum(e / e.sum(), SHARE_FLOOR)
    a = np.maximum(a / a.sum(), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class DriftCheck:
    """Counts today's customers in a reference's bins, block by block, then reports."""

    reference: DriftReference
    counts: list[np.ndarray] = field(default_factory=list)

    def add(self, X: np.ndarray) -> None:
        """Count a block of customers (rows of tabular features)."""
        block = self.reference.bin_counts(X)
        self.counts = (
            block if not self.counts else [c + b for c, b in zip(self.counts, block, strict=True)]
        )

    def report(self) -> dict[str, Any]:
        """``psi`` per feature, the features over :data:`PSI_MAJOR` / :data:`PSI_MODERATE`."""
        values = {
            name: psi(np.asarray(ref), np.asarray(cnt))
            for name, ref, cnt in zip(
                self.reference.names, self.reference.shares, self.counts, strict=True
            )
        }
        major = sorted((n for n, v in values.items() if v > PSI_MAJOR), key=lambda n: -values[n])
        moderate = sorted(
            (n for n, v in values.items() if PSI_MODERATE < v <= PSI_MAJOR),
            key=lambda n: -values[n],
        )
        return {
            "psi": values,
            "major_shift": major,
            "moderate_shift": moderate,
            "threshold_major": PSI_MAJOR,
            "threshold_moderate": PSI_MODERATE,
            "training_customers": self.reference.customers,
            "customers": float(self.counts[0].sum()) if self.counts else 0.0,
        }


__all__ = [
    "DRIFT_BINS",
    "PSI_MAJOR",
    "PSI_MODERATE",
    "DriftCheck",
    "DriftReference",
    "drift_reference",
    "psi",
]
