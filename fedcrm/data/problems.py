"""Collects validation findings in bounded memory: counts per kind, the first lines in full.

A file with a problem in every one of its million rows must not produce a
million objects: :class:`ProblemLog` keeps, for each (file, column, message,
fix), the number of rows and the first :data:`SAMPLE_LINES` line numbers, and
keeps in full only the first ``max_details`` problems in file order. Checks
hand it whole arrays of line numbers at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedcrm.errors import Problem, ProblemSummary

SAMPLE_LINES = 3
DEFAULT_MAX_DETAILS = 1000


@dataclass
class _Kind:
    count: int = 0
    first: list[int] = field(default_factory=list)
    order: int = 0


class ProblemLog:
    """Problems and warnings of one validation, summarised per kind.

    Parameters
    ----------
    max_details : int or None
        How many located problems (``file:line: column: what``) to keep, the
        first in (file, line) order; ``None`` keeps all of them.
    """

    def __init__(self, max_details: int | None = DEFAULT_MAX_DETAILS) -> None:
        self.max_details = max_details
        self._kinds: dict[tuple[str, str, str, str, str, bool], _Kind] = {}
        self._details: list[Problem] = []

    # ------------------------------------------------------------- recording
    def add(
        self,
        file: str,
        column: str,
        message: str,
        lines: np.ndarray | Sequence[int],
        *,
        fix: str = "",
        notes: Sequence[str] | None = None,
        unit: str = "row",
        warning: bool = False,
    ) -> None:
        """Record ``message`` at every line of ``lines`` (an empty array records nothing).

        ``notes`` (aligned with ``lines``) is kept only for the located problems
        that are kept in full.
        """
        arr = np.asarray(lines, dtype=np.int64).ravel()
        if arr.size == 0:
            return
        key = (file, column, message, fix, unit, warning)
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = _Kind(order=len(self._kinds))
        kind.count += int(arr.size)
        head = np.sort(arr)[:SAMPLE_LINES] if arr.size > SAMPLE_LINES else np.sort(arr)
        kind.first = sorted({*kind.first, *head.tolist()})[:SAMPLE_LINES]
        if warning or self.max_details == 0:
            return
        limit = arr.size if self.max_details is None else min(arr.size, self.max_details)
        order = np.argsort(arr, kind="stable")[:limit]
        self._details.extend(
            Problem(file, int(arr[i]), column, message, notes[i] if notes is not None else "", fix)
            for i in order
        )
        if self.max_details is not None and len(self._details) > 2 * self.max_details:
            self._trim()

    def one(
        self,
        file: str,
        line: int,
        column: str,
        message: str,
        *,
        fix: str = "",
        note: str = "",
        unit: str = "",
        warning: bool = False,
    ) -> None:
        """Record one problem (or warning) at one line (0: the whole file).

        By default the summary gives only the place (``unit=""``); a check that
        may find the same thing on many rows passes ``unit="row"``.
        """
        self.add(
            file,
            column,
            message,
            [line],
            fix=fix,
            notes=[note] if note else None,
            unit=unit,
            warning=warning,
        )

    def _trim(self) -> None:
        self._details.sort(key=lambda p: (p.file, p.line))
        if self.max_details is not None:
            del self._details[self.max_details :]

    # --------------------------------------------------------------- reading
    def _summaries(self, warning: bool) -> list[ProblemSummary]:
        rows = [
            (key, kind) for key, kind in self._kinds.items() if key[5] == warning and kind.count > 0
        ]
        rows.sort(key=lambda r: (r[0][0], r[1].first[0] if r[1].first else 0, r[1].order))
        return [
            ProblemSummary(f, c, m, kind.count, tuple(kind.first), fix, unit)
            for (f, c, m, fix, unit, _), kind in rows
        ]

    @property
    def summaries(self) -> list[ProblemSummary]:
        """One line per kind of problem, by file then first line."""
        return self._summaries(False)

    @property
    def warnings(self) -> list[ProblemSummary]:
        """One line per kind of warning (things that do not make the export invalid)."""
        return self._summaries(True)

    @property
    def details(self) -> list[Problem]:
        """The first located problems, by file then line."""
        self._trim()
        return list(self._details)

    @property
    def count(self) -> int:
        """How many problems (not warnings) were recorded."""
        return sum(k.count for key, k in self._kinds.items() if not key[5])

    def __bool__(self) -> bool:
        return self.count > 0
