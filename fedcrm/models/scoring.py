"""Score a branch's customers with a verified bundle: probability, risk decile, reasons, drift.

:class:`Scorer` takes the scoring features block by block (so a million
customers never need their event sequences in memory at once) and then
finishes: calibration, deciles, explanations and the drift report.

* ``churn_probability``: the model's probability, through the bundle's
  calibration map when it has one (and ``calibrate`` is on).
* ``risk_decile``: 10 for the highest-scoring tenth of the customers scored
  together, 1 for the lowest; customers with equal probabilities share a
  decile (the higher one).
* ``reasons``: the strongest reasons raising the customer's risk
  (:mod:`fedcrm.models.reasons`), against the scored population's median
  customer. Trees: exact TreeSHAP. LSTM: integrated gradients over the
  tabular features for every customer; over the event sequence for the
  highest-scoring ``sequence_share`` of each block (and any ``focus``
  customer) - the others' reasons come from their tabular features alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedcrm.data.dataset import FeatureSet
from fedcrm.data.schema import check_schema, raw_value
from fedcrm.errors import SchemaMismatchError
from fedcrm.models.attribution import (
    IG_STEPS,
    head_attributions,
    lstm_margins,
    sequence_attributions,
    tree_contributions,
    tree_margins,
)
from fedcrm.models.bundle import Bundle
from fedcrm.models.drift import DriftCheck
from fedcrm.models.evaluation import sigmoid
from fedcrm.models.reasons import (
    DEFAULT_REASONS,
    SEQUENCE_GROUPS,
    reasons,
    sequence_facts,
    sequence_groups,
)

COLUMNS = ("customer_id", "churn_probability", "risk_decile", "reasons")
"""Columns of the scores table, in order."""
REASON_SEPARATOR = "; "
DEFAULT_SEQUENCE_SHARE = 0.02
"""LSTM: share of each block (highest scores first) given event-sequence attributions.

Integrated gradients through the LSTM cost about 16 forward and backward passes
per customer (``bench/scoring.py``), so by default only the customers a CRM
team calls first get them; every customer gets tabular reasons."""
FOCUS_REASONS = 10
"""Reasons kept in the details of a ``focus`` customer."""
_EXPLAIN_BLOCK = 20_000

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stage is ``score``, ``sequences`` or ``explain``."""


def risk_deciles(p: np.ndarray) -> np.ndarray:
    """Decile of each probability among all of them: 10 = the highest tenth, ties share one."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=np.int64)
    at_or_below = np.searchsorted(np.sort(p), p, side="right")
    return np.clip(np.ceil(10.0 * at_or_below / p.size), 1, 10).astype(np.int64)


@dataclass
class ScoringOptions:
    """How to score.

    Attributes
    ----------
    reasons
        Reasons per customer (0: no explanations, fastest).
    calibrate
        Apply the bundle's calibration map when it has one.
    sequence_share
        LSTM: share of each block, highest scores first, whose event sequence is
        attributed (0..1).
    focus
        Customer ids that always get every attribution and whose details are kept.
    ig_steps
        Points of the integrated-gradients sums (LSTM).
    """

    reasons: int = DEFAULT_REASONS
    calibrate: bool = True
    sequence_share: float = DEFAULT_SEQUENCE_SHARE
    focus: frozenset[str] = frozenset()
    ig_steps: int = IG_STEPS

    def __post_init__(self) -> None:
        if self.reasons < 0 or not 0.0 <= self.sequence_share <= 1.0 or self.ig_steps < 1:
            raise ValueError("reasons >= 0, 0 <= sequence_share <= 1 and ig_steps >= 1")


@dataclass
class ScoreResult:
    """The scores table and what else scoring found.

    Attributes
    ----------
    table
        :data:`COLUMNS`, highest probability first.
    drift
        :meth:`fedcrm.models.drift.DriftCheck.report` (None without a drift reference).
    calibrated
        Whether the probabilities went through a calibration map.
    details
        Per ``focus`` customer: logit, raw and calibrated probability, decile,
        reasons with their attributions, every tabular attribution and the
        sequence groups' attributions.
    """

    table: pd.DataFrame
    drift: dict[str, Any] | None
    calibrated: bool
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


class Scorer:
    """Scores feature blocks with ``bundle``; :meth:`finish` returns the :class:`ScoreResult`."""

    def __init__(
        self,
        bundle: Bundle,
        options: ScoringOptions | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.bundle = bundle
        self.options = options or ScoringOptions()
        self.progress = progress
        ref = bundle.drift_reference
        self.drift = DriftCheck(ref) if ref is not None else None
        self._ids: list[np.ndarray] = []
        self._logits: list[np.ndarray] = []
        self._tabular: list[np.ndarray] = []
        self._states: list[np.ndarray] = []
        self._facts: list[np.ndarray] = []
        self._sequences: list[tuple[np.ndarray, FeatureSet]] = []
        self._n = 0

    def add(self, fs: FeatureSet) -> None:
        """Score one block of customers (features from :mod:`fedcrm.data.features`).

        Raises
        ------
        SchemaMismatchError
            When the features are not the ones the model was trained on.
        """
        check_schema(
            self.bundle.manifest["schema"], fs.tabular_names, max_events=fs.seq_cat.shape[1]
        )
        if not np.all(np.isfinite(fs.tabular)):
            raise SchemaMismatchError("the features contain non-finite values; check the export")
        if len(fs) == 0:
            return
        explain = self.options.reasons > 0 or bool(self.options.focus)
        if self.bundle.kind == "gbdt":
            logits = tree_margins(self.bundle.model, fs.tabular)
        else:
            logits, states = lstm_margins(self.bundle.model, fs)
            if explain:
                self._states.append(states)
                self._facts.append(sequence_facts(fs.seq_cat, fs.seq_num).astype(np.float32))
                self._attribute_sequences(fs, logits)
        self._ids.append(np.asarray(fs.customer_ids).astype(str))
        self._logits.append(logits)
        self._tabular.append(np.asarray(fs.tabular, dtype=np.float32))
        if self.drift is not None:
            self.drift.add(fs.tabular)
        self._n += len(fs)

    def _attribute_sequences(self, fs: FeatureSet, logits: np.ndarray) -> None:
        """Keep the event sequences of the customers whose sequence will be attributed."""
        chosen = np.zeros(len(fs), dtype=bool)
        if self.options.reasons > 0 and self.options.sequence_share > 0:
            k = math.ceil(self.options.sequence_share * len(fs))
            chosen[np.argsort(-logits, kind="stable")[:k]] = True
        if self.options.focus:
            chosen |= np.isin(np.asarray(fs.customer_ids).astype(str), list(self.options.focus))
        rows = np.flatnonzero(chosen)
        if rows.size:
            sub = fs.subset(rows)
            sub.seq_cat = sub.seq_cat.astype(np.int8)  # vocabularies < 128: 8x less memory
            self._sequences.append((self._n + rows, sub))

    def _sequence_groups(self, typical_recency_days: float) -> dict[int, np.ndarray]:
        groups: dict[int, np.ndarray] = {}
        done, total = 0, sum(len(sub) for _, sub in self._sequences)
        for rows, sub in self._sequences:
            attr = sequence_attributions(
                self.bundle.model,
                sub,
                typical_recency_days=typical_recency_days,
                steps=self.options.ig_steps,
            )
            for r, g in zip(rows.tolist(), sequence_groups(attr, sub.seq_cat), strict=True):
                groups[r] = g
            done += len(sub)
            if self.progress is not None:
                self.progress("sequences", done, total)
        return groups

    def finish(self) -> ScoreResult:
        """Calibrate, rank, explain and report drift over every block added."""
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, dtype=str)
        logits = np.concatenate(self._logits) if self._logits else np.zeros(0)
        p_model = sigmoid(logits)
        cal = self.bundle.calibration if self.options.calibrate else None
        p = cal.apply(p_model) if cal is not None else p_model
        deciles = risk_deciles(p)
        texts = [""] * ids.size
        details: dict[str, dict[str, Any]] = {}
        if (self.options.reasons > 0 or self.options.focus) and ids.size:
            texts, details = self._explain(ids, logits, p_model, p, deciles)
        table = pd.DataFrame(
            {
                "customer_id": ids,
                "churn_probability": p,
                "risk_decile": deciles,
                "reasons": texts,
            }
        )
        order = np.lexsort((ids, -p)) if ids.size else np.zeros(0, dtype=np.int64)
        table = table.iloc[order].reset_index(drop=True)
        drift = self.drift.report() if self.drift is not None and self._n else None
        return ScoreResult(table, drift, cal is not None, details)

    def _explain(
        self,
        ids: np.ndarray,
        logits: np.ndarray,
        p_model: np.ndarray,
        p: np.ndarray,
        deciles: np.ndarray,
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        names = self.bundle.feature_names
        tabular = np.concatenate(self._tabular)
        typical = np.median(tabular, axis=0)
        states = np.concatenate(self._states) if self._states else None
        facts = np.concatenate(self._facts) if self._facts else None
        seq_groups: dict[int, np.ndarray] = {}
        if self._sequences and "log_recency_days" in names:
            recency = raw_value("log_recency_days", typical[names.index("log_recency_days")])
            seq_groups = self._sequence_groups(float(recency))
        focus = set(np.flatnonzero(np.isin(ids, list(self.options.focus))).tolist())
        todo = np.arange(ids.size) if self.options.reasons > 0 else np.array(sorted(focus), int)
        top = max(self.options.reasons, FOCUS_REASONS if focus else 0)
        texts = [""] * ids.size
        details: dict[str, dict[str, Any]] = {}
        for start in range(0, todo.size, _EXPLAIN_BLOCK):
            rows = todo[start : start + _EXPLAIN_BLOCK]
            attr, groups = self._attributions(rows, tabular, typical, states, seq_groups)
            found = reasons(
                names,
                attr,
                tabular[rows],
                typical,
                groups=groups,
                facts=None if facts is None else facts[rows],
                top=top,
            )
            for j, i in enumerate(rows.tolist()):
                texts[i] = REASON_SEPARATOR.join(t for t, _ in found[j][: self.options.reasons])
                if i in focus:
                    details[str(ids[i])] = {
                        "logit": float(logits[i]),
                        "probability_model": float(p_model[i]),
                        "churn_probability": float(p[i]),
                        "risk_decile": int(deciles[i]),
                        "reasons": found[j],
                        "tabular": dict(zip(names, map(float, attr[j]), strict=True)),
                        "sequence": None
                        if groups is None
                        else dict(zip(SEQUENCE_GROUPS, map(float, groups[j]), strict=True)),
                    }
            if self.progress is not None:
                self.progress("explain", int(min(todo.size, start + _EXPLAIN_BLOCK)), todo.size)
        return texts, details

    def _attributions(
        self,
        rows: np.ndarray,
        tabular: np.ndarray,
        typical: np.ndarray,
        states: np.ndarray | None,
        seq_groups: dict[int, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-feature attributions of ``rows`` and, for the LSTM, per sequence group."""
        if self.bundle.kind == "gbdt":
            return tree_contributions(self.bundle.model, tabular[rows])[:, :-1], None
        assert states is not None
        attr = head_attributions(
            self.bundle.model, states[rows], tabular[rows], typical, steps=self.options.ig_steps
        )
        groups = np.zeros((rows.size, len(SEQUENCE_GROUPS)))
        for j, i in enumerate(rows.tolist()):
            if i in seq_groups:
                groups[j] = seq_groups[i]
        return attr, groups


def score_blocks(
    bundle: Bundle,
    blocks: Iterable[tuple[FeatureSet, int]],
    *,
    total: int,
    options: ScoringOptions | None = None,
    progress: Progress | None = None,
) -> ScoreResult:
    """Score every block of ``blocks`` (``(features, customers covered)``) and finish."""
    scorer = Scorer(bundle, options, progress)
    done = 0
    for fs, covered in blocks:
        scorer.add(fs)
        done += covered
        if progress is not None:
            progress("score", done, total)
    return scorer.finish()


__all__ = [
    "COLUMNS",
    "DEFAULT_SEQUENCE_SHARE",
    "ScoreResult",
    "Scorer",
    "ScoringOptions",
    "risk_deciles",
    "score_blocks",
]
