"""Probability calibration fitted from pooled evaluation releases, and gains curves.

A model's probabilities mean what they say when, among customers given 0.3,
about 30 % churn. The server never sees a customer's score, only the
branches' evaluation releases (:mod:`fedcrm.models.evaluation`): per label,
groups of customers with a count and a location (a logit). That is enough to
fit a monotone map from the model's probability to a calibrated one:

* ``platt``: ``p' = sigmoid(a * logit(p) + b)``, a logistic regression of the
  label on the group location weighted by the group's count (Platt, 1999);
  two numbers, little risk of over-fitting;
* ``isotonic``: the count-weighted isotonic regression of the label on the
  location (pool adjacent violators), stored as knots (logit, probability)
  and applied by linear interpolation, flat beyond the end knots.

:func:`fit_calibration` is a pure function of the releases and also reports
the expected calibration error before and after, both computed from the
group locations (so that the two are comparable; the summary's ``final.ece``
uses the exact group sums). When the releases are the ones the map was
fitted on, "after" is an in-sample figure (``in_sample`` says so).
Noisy (DP) counts are clipped at 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedcrm.models.evaluation import EvaluationRelease, ScoreGroups, logit, sigmoid
from fedcrm.models.pooled import pooled_metrics

Method = Literal["platt", "isotonic"]
METHODS: tuple[str, ...] = ("platt", "isotonic")
MAX_KNOTS = 10_000
"""Most isotonic knots a calibration may hold (a crafted bundle cannot hold more)."""


@dataclass(frozen=True)
class Calibration:
    """A monotone map from a model's probability to a calibrated probability.

    Attributes
    ----------
    method
        ``"platt"`` or ``"isotonic"``.
    a, b
        Platt's slope and intercept on the logit scale.
    knots_logit, knots_prob
        Isotonic knots: logits (increasing) and calibrated probabilities
        (non-decreasing, in [0, 1]).
    ece_before, ece_after
        Expected calibration error of the releases it was fitted on, before
        and after (from group locations).
    customers
        Customers behind the fit.
    in_sample
        ``ece_after`` is measured on the data the map was fitted on.
    """

    method: Method
    a: float = 1.0
    b: float = 0.0
    knots_logit: tuple[float, ...] = ()
    knots_prob: tuple[float, ...] = ()
    ece_before: float = float("nan")
    ece_after: float = float("nan")
    customers: float = 0.0
    in_sample: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}")
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError("calibration: Platt parameters must be finite")
        x = np.asarray(self.knots_logit, dtype=np.float64)
        y = np.asarray(self.knots_prob, dtype=np.float64)
        if self.method == "isotonic":
            if x.size == 0 or x.size != y.size or x.size > MAX_KNOTS:
                raise ValueError(
                    f"calibration: isotonic needs 1..{MAX_KNOTS} knots of equal length"
                )
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise ValueError("calibration: knots must be finite")
            if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
                raise ValueError("calibration: knots must increase (logits) and not decrease")
            if y.min() < 0 or y.max() > 1:
                raise ValueError("calibration: knot probabilities must lie in [0, 1]")

    def apply(self, p: np.ndarray | float) -> np.ndarray:
        """Calibrated probabilities of model probabilities ``p``."""
        z = logit(p)
        if self.method == "platt":
            return sigmoid(self.a * z + self.b)
        return np.interp(z, np.asarray(self.knots_logit), np.asarray(self.knots_prob))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (stored in a model bundle)."""
        out: dict[str, Any] = {"method": self.method}
        if self.method == "platt":
            out.update(a=self.a, b=self.b)
        else:
            out.update(knots_logit=list(self.knots_logit), knots_prob=list(self.knots_prob))
        out.update(
            ece_before=_finite_or_none(self.ece_before),
            ece_after=_finite_or_none(self.ece_after),
            customers=self.customers,
            in_sample=self.in_sample,
        )
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on anything malformed."""
        if not isinstance(doc, Mapping):
            raise ValueError("calibration must be a JSON object")
        method = doc.get("method")
        try:
            return cls(
                method=method,  # type: ignore[arg-type]
                a=float(doc.get("a", 1.0)),
                b=float(doc.get("b", 0.0)),
                knots_logit=tuple(float(v) for v in doc.get("knots_logit", ())),
                knots_prob=tuple(float(v) for v in doc.get("knots_prob", ())),
                ece_before=_nan_if_none(doc.get("ece_before")),
                ece_after=_nan_if_none(doc.get("ece_after")),
                customers=float(doc.get("customers", 0.0)),
                in_sample=bool(doc.get("in_sample", True)),
            )
        except TypeError:
            raise ValueError("calibration: malformed numbers") from None


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _nan_if_none(x: Any) -> float:
    return float("nan") if x is None else float(x)


def score_points(
    releases: Sequence[EvaluationRelease],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every released group as (location logit, label, customers), counts clipped at 0."""
    locs, labels, counts = [], [], []
    for r in (part for release in releases for part in release.parts()):
        for label, groups in ((1.0, r.positives), (0.0, r.negatives)):
            locs.append(np.asarray(groups.logit, dtype=np.float64))
            labels.append(np.full(np.shape(groups.logit), label))
            counts.append(np.clip(np.asarray(groups.count, dtype=np.float64), 0.0, None))
    if not locs:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return np.concatenate(locs), np.concatenate(labels), np.concatenate(counts)


def _locations_only(release: EvaluationRelease, cal: Calibration | None) -> EvaluationRelease:
    """The release with sums dropped (derived from locations), optionally recalibrated."""

    def move(g: ScoreGroups) -> ScoreGroups:
        loc = np.asarray(g.logit, dtype=np.float64)
        if cal is not None:
            loc = logit(cal.apply(sigmoid(loc)))
        return ScoreGroups(np.asarray(g.count, dtype=np.float64), loc)

    validation = release.validation
    return EvaluationRelease(
        move(release.positives),
        move(release.negatives),
        release.mechanism,
        _locations_only(validation, cal) if validation is not None else None,
    )


def calibration_error(
    releases: Sequence[EvaluationRelease], calibration: Calibration | None = None
) -> float:
    """ECE of ``releases`` from group locations, after ``calibration`` when given."""
    return float(pooled_metrics([_locations_only(r, calibration) for r in releases])["ece"])


def recalibrated_metrics(
    releases: Sequence[EvaluationRelease], calibration: Calibration
) -> dict[str, Any]:
    """:func:`~fedcrm.models.evaluation.pooled_metrics` with every location recalibrated."""
    return pooled_metrics([_locations_only(r, calibration) for r in releases])


def fit_calibration(
    releases: Sequence[EvaluationRelease], method: Method = "platt"
) -> Calibration | None:
    """Fit a calibration map from pooled releases.

    Parameters
    ----------
    releases
        The branches' evaluation releases of one model.
    method
        ``"platt"`` or ``"isotonic"``.

    Returns
    -------
    Calibration or None
        None when the releases hold no customer of one of the labels (nothing
        to calibrate against).
    """
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}")
    loc, label, count = score_points(releases)
    keep = count > 0
    loc, label, count = loc[keep], label[keep], count[keep]
    if count[label == 1].sum() <= 0 or count[label == 0].sum() <= 0:
        return None
    if method == "platt":
        a, b = _platt(loc, label, count)
        cal = Calibration("platt", a=a, b=b)
    else:
        x, y = _isotonic(loc, label, count)
        cal = Calibration("isotonic", knots_logit=tuple(x), knots_prob=tuple(y))
    return Calibration(
        **{
            **cal.__dict__,
            "ece_before": calibration_error(releases),
            "ece_after": calibration_error(releases, cal),
            "customers": float(count.sum()),
        }
    )


def _platt(loc: np.ndarray, label: np.ndarray, count: np.ndarray) -> tuple[float, float]:
    """Count-weighted logistic regression of the label on the location (Newton steps)."""
    a, b = 1.0, 0.0
    X = np.column_stack([loc, np.ones_like(loc)])
    ridge = 1e-6 * count.sum()
    for _ in range(100):
        p = sigmoid(a * loc + b)
        grad = X.T @ (count * (p - label)) + ridge * np.array([a - 1.0, 0.0])
        w = count * np.maximum(p * (1 - p), 1e-12)
        hess = (X.T * w) @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(a), float(b)


def _isotonic(loc: np.ndarray, label: np.ndarray, count: np.ndarray) -> tuple[list, list]:
    """Pool adjacent violators over the distinct locations; knots at block ends."""
    order = np.argsort(loc, kind="stable")
    xs, inverse = np.unique(loc[order], return_inverse=True)
    w = np.bincount(inverse, weights=count[order])
    s = np.bincount(inverse, weights=(count * label)[order])
    blocks: list[list[float]] = []  # [sum, weight, first x, last x]
    for x, wi, si in zip(xs, w, s, strict=True):
        blocks.append([si, wi, x, x])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            si2, wi2, _, last = blocks.pop()
            blocks[-1][0] += si2
            blocks[-1][1] += wi2
            blocks[-1][3] = last
    kx: list[float] = []
    ky: list[float] = []
    for total, weight, first, last in blocks:
        for x in (first, last) if last > first else (first,):
            kx.append(float(x))
            ky.append(float(total / weight))
    return kx, ky


def gains_curve(releases: Sequence[EvaluationRelease]) -> dict[str, np.ndarray]:
    """Cumulative gains and lift from pooled releases (groups sorted by score, highest first).

    Returns
    -------
    dict
        ``share_customers`` and ``share_positives`` (cumulative, from 0 to 1,
        starting at 0) and ``lift`` (``share_positives / share_customers``,
        nan at 0).
    """
    loc, label, count = score_points(releases)
    # Customers at one location (both labels in one DP cell) are one point: no order inside.
    xs, inverse = np.unique(loc, return_inverse=True)
    c = np.bincount(inverse, weights=count, minlength=xs.size)[::-1]
    pos = np.bincount(inverse, weights=count * label, minlength=xs.size)[::-1]
    total_c, total_p = c.sum(), pos.sum()
    if total_c <= 0 or total_p <= 0:
        empty = np.zeros(1)
        return {"share_customers": empty, "share_positives": empty, "lift": np.full(1, np.nan)}
    sc = np.concatenate([[0.0], np.cumsum(c) / total_c])
    sp = np.concatenate([[0.0], np.cumsum(pos) / total_p])
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(sc > 0, sp / sc, np.nan)
    return {"share_customers": sc, "share_positives": sp, "lift": lift}


__all__ = [
    "METHODS",
    "Calibration",
    "calibration_error",
    "fit_calibration",
    "gains_curve",
    "recalibrated_metrics",
    "score_points",
]
