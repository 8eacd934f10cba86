"""Binary classification metrics, per branch and pooled across branches.

:func:`binary_metrics` scores one set of predictions with scikit-learn.
:func:`score_summary` reduces a branch's predictions to sums and histograms
that reveal no single customer's score; :func:`metrics_from_summaries` pools
such summaries into the metrics of the concatenated data (AUC from the binned
score histograms, the others exactly).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

logger = logging.getLogger(__name__)

THRESHOLD = 0.5
"""Scores ``p >= THRESHOLD`` are predicted positive."""
EPS = 1e-15
"""Scores are clipped to ``[EPS, 1 - EPS]`` for the log loss."""

_SUM_KEYS = ("tp", "fp", "tn", "fn", "logloss_sum", "n")


def _check(y_true: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but p has {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 labels only")
    return y, s


def binary_metrics(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, F1, log loss and accuracy of scores ``p`` for labels ``y_true``.

    Parameters
    ----------
    y_true : array of 0/1, shape (n,)
    p : array of float, shape (n,)
        Predicted probability of class 1.

    Returns
    -------
    dict
        ``auc`` (nan when only one class is present), ``f1`` and ``accuracy``
        at threshold 0.5 (``p >= 0.5`` is positive), ``logloss`` with ``p``
        clipped to ``[1e-15, 1 - 1e-15]``.
    """
    y, s = _check(y_true, p)
    if y.size == 0:
        nan = float("nan")
        return {"auc": nan, "f1": nan, "logloss": nan, "accuracy": nan}
    pred = (s >= THRESHOLD).astype(np.int64)
    auc = float(roc_auc_score(y, s)) if np.unique(y).size == 2 else float("nan")
    return {
        "auc": auc,
        "f1": float(f1_score(y, pred, zero_division=0)),
        "logloss": float(log_loss(y, np.clip(s, EPS, 1 - EPS), labels=[0, 1])),
        "accuracy": float(accuracy_score(y, pred)),
    }


def score_summary(
    y_true: np.ndarray, p: np.ndarray, *, bins: int = 2048
) -> dict[str, np.ndarray | float]:
    """Sums and score histograms from which pooled metrics can be computed.

    Parameters
    ----------
    y_true : array of 0/1, shape (n,)
    p : array of float, shape (n,)
    bins : int
        Number of equal-width score bins over [0, 1].

    Returns
    -------
    dict
        ``hist_pos`` / ``hist_neg`` (float64 arrays of length ``bins``: counts
        of positives / negatives per score bin), ``tp``, ``fp``, ``tn``, ``fn``
        (at threshold 0.5), ``logloss_sum`` (sum of per-customer log losses,
        clipped as in :func:`binary_metrics`) and ``n``. Every entry is a sum
        over customers, so summaries of several branches add up (also under
        homomorphic encryption).
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    y, s = _check(y_true, p)
    s = np.clip(s, 0.0, 1.0)
    pos = y == 1
    pred = s >= THRESHOLD
    sc = np.clip(s, EPS, 1 - EPS)
    losses = -(y * np.log(sc) + (1 - y) * np.log1p(-sc))
    hist_pos = np.histogram(s[pos], bins=bins, range=(0.0, 1.0))[0].astype(np.float64)
    hist_neg = np.histogram(s[~pos], bins=bins, range=(0.0, 1.0))[0].astype(np.float64)
    return {
        "hist_pos": hist_pos,
        "hist_neg": hist_neg,
        "tp": float(np.sum(pred & pos)),
        "fp": float(np.sum(pred & ~pos)),
        "tn": float(np.sum(~pred & ~pos)),
        "fn": float(np.sum(~pred & pos)),
        "logloss_sum": float(np.sum(losses)),
        "n": float(y.size),
    }


def auc_from_histograms(hist_pos: np.ndarray, hist_neg: np.ndarray) -> float:
    """ROC AUC from binned score counts; pairs within one bin count half.

    Returns nan when either class is absent.
    """
    hp = np.asarray(hist_pos, dtype=np.float64)
    hn = np.asarray(hist_neg, dtype=np.float64)
    n_pos, n_neg = hp.sum(), hn.sum()
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    neg_below = np.concatenate([[0.0], np.cumsum(hn)[:-1]])
    return float(np.sum(hp * (neg_below + 0.5 * hn)) / (n_pos * n_neg))


def metrics_from_summaries(summaries: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """Pooled metrics of several :func:`score_summary` results.

    Parameters
    ----------
    summaries : sequence of dict
        Summaries with the same number of bins (e.g. one per branch, or their
        element-wise sum).

    Returns
    -------
    dict
        ``auc`` (from the summed histograms), ``f1``, ``logloss``, ``accuracy``
        (exact, as :func:`binary_metrics` on the concatenated data) and ``n``.
    """
    if not summaries:
        raise ValueError("no summaries to pool")
    sizes = {np.asarray(s["hist_pos"]).size for s in summaries}
    if len(sizes) != 1:
        raise ValueError(f"summaries have different numbers of bins: {sorted(sizes)}")
    tot = {k: float(sum(float(s[k]) for s in summaries)) for k in _SUM_KEYS}  # type: ignore[arg-type]
    hist_pos = np.sum([np.asarray(s["hist_pos"], dtype=np.float64) for s in summaries], axis=0)
    hist_neg = np.sum([np.asarray(s["hist_neg"], dtype=np.float64) for s in summaries], axis=0)
    n = tot["n"]
    if n <= 0:
        nan = float("nan")
        return {"auc": nan, "f1": nan, "logloss": nan, "accuracy": nan, "n": 0.0}
    f1_den = 2 * tot["tp"] + tot["fp"] + tot["fn"]
    return {
        "auc": auc_from_histograms(hist_pos, hist_neg),
        "f1": 2 * tot["tp"] / f1_den if f1_den > 0 else 0.0,
        "logloss": tot["logloss_sum"] / n,
        "accuracy": (tot["tp"] + tot["tn"]) / n,
        "n": n,
    }
