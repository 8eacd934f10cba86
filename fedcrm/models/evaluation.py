"""What a branch releases about its test customers' scores, and the pooled metrics.

A branch never sends a customer's score. It sends, for each label, a few
*score groups* (:class:`ScoreGroups`): a count of customers and where their
scores lie (a logit), and, when the groups are exact, sums of their log loss,
probability and squared probability. Two releases exist:

* :func:`thresholded_release` (no differential privacy): each label's scores
  are sorted, split at the decision threshold, and cut into consecutive groups
  of at least ``min_count`` customers; a group is released as its size, its mean
  logit and its sums. Every released number aggregates at least ``min_count``
  customers; a label with fewer customers is withheld. This is *not* DP: the
  group boundaries follow the data (a model chosen to read data out can learn
  group means of a feature), which is why it is declared as such.
* :func:`dp_release` (differential privacy): counts on a fixed logit grid
  (:data:`GRID_EDGES`, no data-dependent choice), each plus Gaussian noise. One
  customer adds 1 to exactly one (cell, label) count, so the L2 sensitivity is
  1 and the noise standard deviation is the noise multiplier. Locations are
  the cell centres; sums are derived from them when pooling.

A release may carry a second, *validation* part: the same statistics of a
fixed half of the test customers (those whose split number ``u`` lies below
half the test fraction, :mod:`fedcrm.data.split`), the main part holding the
other half. The halves are disjoint, so under DP the pair costs what one
release costs (one customer moves one count of one half). The server picks
the F1 threshold on the validation halves and reports F1 on the others
(:mod:`fedcrm.models.pooled`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

THRESHOLD = 0.5
"""Default decision threshold (scores ``p >= THRESHOLD`` are predicted positive)."""
LOGIT_CLIP = 12.0
"""Logits are clipped to ``[-LOGIT_CLIP, LOGIT_CLIP]`` (``p`` within 6e-6 of 0 or 1)."""
EPS = 1e-15
"""Scores are clipped to ``[EPS, 1 - EPS]`` for the log loss."""
GRID_EDGES = np.linspace(-6.0, 6.0, 15)
"""Inner cell edges of the DP grid, in logits; 0 (``p = 0.5``) is an edge. 16 cells."""
CALIBRATION_BINS = 10
"""Equal-width probability bins of the reliability table and the ECE."""
DEFAULT_MIN_COUNT = 10
"""Default smallest group of a thresholded release (node config ``min-cell-count``)."""

Mechanism = Literal["thresholded", "dp"]


def logit(p: np.ndarray | float) -> np.ndarray:
    """Logit of probabilities, clipped to :data:`LOGIT_CLIP`."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.clip(np.log(q) - np.log1p(-q), -LOGIT_CLIP, LOGIT_CLIP)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`logit` (no overflow warning for very large ``|z|``)."""
    z = np.clip(np.asarray(z, dtype=np.float64), -700.0, 700.0)
    return 1.0 / (1.0 + np.exp(-z))


def grid_centres() -> np.ndarray:
    """Location (logit) of each DP grid cell; the two tails sit half a cell outside."""
    half = (GRID_EDGES[1] - GRID_EDGES[0]) / 2
    inner = (GRID_EDGES[:-1] + GRID_EDGES[1:]) / 2
    return np.concatenate([[GRID_EDGES[0] - half], inner, [GRID_EDGES[-1] + half]])


@dataclass(frozen=True)
class ScoreGroups:
    """One label's released score groups.

    Attributes
    ----------
    count
        Customers per group (noisy, possibly negative, under DP).
    logit
        Where the group's scores lie: their mean logit, or the DP cell centre.
    loss, prob, prob_sq
        Sums over the group of the log loss (against this label), the
        probability and its square; ``None`` under DP (derived from ``logit``).
    """

    count: np.ndarray
    logit: np.ndarray
    loss: np.ndarray | None = None
    prob: np.ndarray | None = None
    prob_sq: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = np.asarray(self.count).shape
        for name in ("logit", "loss", "prob", "prob_sq"):
            value = getattr(self, name)
            if value is not None and np.asarray(value).shape != n:
                raise ValueError(f"score groups: `{name}` has another length than `count`")
            if value is not None and not np.all(np.isfinite(value)):
                raise ValueError(f"score groups: `{name}` holds non-finite values")
        if len(n) != 1 or not np.all(np.isfinite(self.count)):
            raise ValueError("score groups: `count` must be a finite 1-d array")

    @property
    def exact(self) -> bool:
        """Whether the group sums were released (thresholded releases)."""
        return self.loss is not None

    def sums(self, positive: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Log-loss, probability and squared-probability sums (derived under DP)."""
        if self.loss is not None and self.prob is not None and self.prob_sq is not None:
            return self.loss, self.prob, self.prob_sq
        p = np.clip(sigmoid(self.logit), EPS, 1 - EPS)
        loss = -np.log(p) if positive else -np.log1p(-p)
        return self.count * loss, self.count * p, self.count * p * p


_FIELDS = ("count", "logit", "loss", "prob", "prob_sq")


@dataclass(frozen=True)
class EvaluationRelease:
    """A branch's evaluation statistics: score groups of positives and negatives.

    Attributes
    ----------
    positives, negatives
        The groups of each label.
    mechanism
        ``"thresholded"`` (not DP; every number aggregates >= ``min_count``
        customers) or ``"dp"`` (Gaussian noise, accounted in the ledger).
    """

    positives: ScoreGroups
    negatives: ScoreGroups
    mechanism: Mechanism
    validation: EvaluationRelease | None = None

    def to_record(self, prefix: str = "eval.") -> dict[str, Any]:
        """Flat name -> number or list of numbers (a Flower ``MetricRecord``'s values)."""
        out: dict[str, Any] = {f"{prefix}dp": 1.0 if self.mechanism == "dp" else 0.0}
        for label, groups in (("pos", self.positives), ("neg", self.negatives)):
            for name in _FIELDS:
                value = getattr(groups, name)
                if value is not None:
                    out[f"{prefix}{label}.{name}"] = [float(v) for v in np.ravel(value)]
        if self.validation is not None:
            out.update(self.validation.to_record(f"{prefix}val."))
        return out

    def parts(self) -> list[EvaluationRelease]:
        """The release's disjoint parts (main, then validation when there is one)."""
        main = EvaluationRelease(self.positives, self.negatives, self.mechanism)
        return [main] if self.validation is None else [main, self.validation]

    @classmethod
    def from_record(cls, record: Mapping[str, Any], prefix: str = "eval.") -> EvaluationRelease:
        """Inverse of :meth:`to_record`.

        Raises
        ------
        ValueError
            On missing keys, mismatched lengths or non-finite values (never quoting a value).
        """
        if f"{prefix}dp" not in record:
            raise ValueError("the reply carries no evaluation release")
        mechanism: Mechanism = "dp" if float(record[f"{prefix}dp"]) else "thresholded"
        labels = {}
        for label in ("pos", "neg"):
            arrays: dict[str, np.ndarray | None] = {}
            for name in _FIELDS:
                value = record.get(f"{prefix}{label}.{name}")
                arrays[name] = None if value is None else np.asarray(value, dtype=np.float64)
            if arrays["count"] is None or arrays["logit"] is None:
                raise ValueError(f"evaluation release lacks `{label}.count` or `{label}.logit`")
            if mechanism == "thresholded" and any(
                arrays[n] is None for n in ("loss", "prob", "prob_sq")
            ):
                raise ValueError("a thresholded evaluation release must carry its group sums")
            labels[label] = ScoreGroups(**arrays)  # type: ignore[arg-type]
        validation = None
        if f"{prefix}val.dp" in record:
            validation = cls.from_record(record, f"{prefix}val.")
            if validation.mechanism != mechanism or validation.validation is not None:
                raise ValueError("the validation part must be one release of the same kind")
        return cls(labels["pos"], labels["neg"], mechanism, validation)

    @property
    def n(self) -> float:
        """Customers released, both parts (noisy under DP)."""
        own = float(np.sum(self.positives.count) + np.sum(self.negatives.count))
        return own + (self.validation.n if self.validation is not None else 0.0)


# ------------------------------------------------------------------ releases
def _check(y_true: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but p has {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 labels only")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, np.clip(s, 0.0, 1.0)


def _chunks(sorted_scores: np.ndarray, min_count: int) -> list[np.ndarray]:
    """Consecutive chunks of at least ``min_count`` (a shorter run is one chunk)."""
    n = sorted_scores.size
    if n == 0:
        return []
    return list(np.array_split(sorted_scores, max(1, n // min_count)))


def _label_groups(
    scores: np.ndarray, min_count: int, threshold: float, positive: bool
) -> ScoreGroups:
    s = np.sort(scores)
    below, above = s[s < threshold], s[s >= threshold]
    parts_below, parts_above = _chunks(below, min_count), _chunks(above, min_count)
    # A side too small for a group of its own joins the other side's nearest group
    # (that group then straddles the threshold: its counts below/above are not released).
    if 0 < below.size < min_count and parts_above:
        parts_above[0] = np.concatenate([below, parts_above[0]])
        parts_below = []
    elif 0 < above.size < min_count and parts_below:
        parts_below[-1] = np.concatenate([parts_below[-1], above])
        parts_above = []
    parts = [p for p in parts_below + parts_above if p.size >= min_count]
    count, loc, loss, prob, prob_sq = [], [], [], [], []
    for part in parts:
        q = np.clip(part, EPS, 1 - EPS)
        count.append(part.size)
        loc.append(float(np.mean(logit(part))))
        loss.append(float(np.sum(-np.log(q) if positive else -np.log1p(-q))))
        prob.append(float(np.sum(part)))
        prob_sq.append(float(np.sum(part * part)))
    return ScoreGroups(
        np.asarray(count, np.float64),
        np.asarray(loc, np.float64),
        np.asarray(loss, np.float64),
        np.asarray(prob, np.float64),
        np.asarray(prob_sq, np.float64),
    )


def _halves(
    y: np.ndarray, s: np.ndarray, validation: np.ndarray | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(labels, scores) of the main part, then of the validation part when asked."""
    if validation is None:
        return [(y, s)]
    v = np.asarray(validation, dtype=bool).ravel()
    if v.shape != y.shape:
        raise ValueError(f"validation mask has {v.size} values but there are {y.size} scores")
    return [(y[~v], s[~v]), (y[v], s[v])]


def _with_validation(parts: list[EvaluationRelease]) -> EvaluationRelease:
    main = parts[0]
    if len(parts) == 1:
        return main
    return EvaluationRelease(main.positives, main.negatives, main.mechanism, parts[1])


def thresholded_release(
    y_true: np.ndarray,
    p: np.ndarray,
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    threshold: float = THRESHOLD,
    validation: np.ndarray | None = None,
) -> EvaluationRelease:
    """Score groups of at least ``min_count`` customers per label (not DP).

    Parameters
    ----------
    y_true, p
        Labels (0/1) and predicted probabilities of the branch's test customers.
    min_count
        Smallest group; a label with fewer customers is withheld entirely.
    threshold
        Groups do not straddle it when each side has ``min_count`` customers,
        so counts above and below it are exact.
    validation
        Boolean mask of the customers released apart as the validation part.
    """
    if min_count < 1:
        raise ValueError("min_count must be >= 1")
    y, s = _check(y_true, p)
    return _with_validation(
        [
            EvaluationRelease(
                _label_groups(ss[yy == 1], min_count, threshold, True),
                _label_groups(ss[yy == 0], min_count, threshold, False),
                "thresholded",
            )
            for yy, ss in _halves(y, s, validation)
        ]
    )


def grid_counts(y_true: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-label counts on the DP grid (before noise)."""
    y, s = _check(y_true, p)
    cell = np.searchsorted(GRID_EDGES, logit(s), side="right")
    cells = GRID_EDGES.size + 1
    pos = np.bincount(cell[y == 1], minlength=cells).astype(np.float64)
    neg = np.bincount(cell[y == 0], minlength=cells).astype(np.float64)
    return pos, neg


def dp_release(
    y_true: np.ndarray,
    p: np.ndarray,
    *,
    noise_std: float,
    rng: np.random.Generator,
    validation: np.ndarray | None = None,
) -> EvaluationRelease:
    """Grid counts per label plus Gaussian noise of ``noise_std`` (L2 sensitivity 1).

    ``rng`` must be the branch's own release generator (never seeded by a
    message). With a ``validation`` mask the two disjoint halves get a grid
    each; one customer still moves one count, so the sensitivity stays 1.
    """
    if not (math.isfinite(noise_std) and noise_std > 0):
        raise ValueError("noise_std must be a finite number > 0")
    y, s = _check(y_true, p)
    parts = []
    for yy, ss in _halves(y, s, validation):
        pos, neg = grid_counts(yy, ss)
        centres = grid_centres()
        pos = pos + rng.normal(0.0, noise_std, size=pos.shape)
        neg = neg + rng.normal(0.0, noise_std, size=neg.shape)
        parts.append(
            EvaluationRelease(
                ScoreGroups(pos, centres.copy()), ScoreGroups(neg, centres.copy()), "dp"
            )
        )
    return _with_validation(parts)


__all__ = [
    "EvaluationRelease",
    "ScoreGroups",
    "dp_release",
    "grid_counts",
    "thresholded_release",
]
