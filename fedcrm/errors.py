"""One exception hierarchy for fedcrm.

Every message says what is wrong and what to do about it. Messages never carry
a customer's data (no ids, no field values): the text of an exception raised in
a ClientApp travels to the server.
"""

from __future__ import annotations

from dataclasses import dataclass


class FedCRMError(Exception):
    """Base class of every error fedcrm raises on purpose."""


class ConfigError(FedCRMError):
    """The composed configuration or a node config is invalid."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a branch export, at one line.

    ``line`` is the 1-based line in the file (the header is line 1), or 0 when
    the problem concerns the whole file. ``note`` adds what differs from row to
    row (e.g. the line of a first occurrence); ``fix`` says what to do. Neither
    ever holds a field value.
    """

    file: str
    line: int
    column: str
    message: str
    note: str = ""
    fix: str = ""

    def __str__(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"{self.file}:{self.line}: {self.column}: {self.message}{note}"


@dataclass(frozen=True)
class ProblemSummary:
    """Every occurrence of one kind of problem in one column of one file.

    ``str()`` is one line, ``FILE: COLUMN: WHAT in N rows (lines A, B, C, ...): FIX``
    (``(line L)`` alone for a problem that stops the reading of a file, such as
    the header's, nothing for a whole-file one); ``lines`` holds the first few
    line numbers, ``count`` them all. ``unit`` names what is counted ("" when
    only the place matters).
    """

    file: str
    column: str
    message: str
    count: int
    lines: tuple[int, ...]
    fix: str = ""
    unit: str = "row"

    def __str__(self) -> str:
        head = f"{self.file}: {self.column}: {self.message}"
        located = [line for line in self.lines if line > 0]
        if self.unit and (self.count > 1 or any(line > 1 for line in located)):
            shown = ", ".join(str(line) for line in located)
            if self.count > len(located):
                shown += ", ..."
            noun = self.unit if self.count == 1 else f"{self.unit}s"
            label = "line" if len(located) == 1 and self.count == 1 else "lines"
            head += f" in {self.count:,} {noun} ({label} {shown})"
        elif located:
            head += f" (line {located[0]})"
        return f"{head}: {self.fix}" if self.fix else head


class DataValidationError(FedCRMError):
    """A branch export breaks the data contract.

    ``summaries`` holds one line per kind of problem, ``problems`` the first
    located problems (at most the validator's ``max_problems``).
    """

    def __init__(
        self, problems: list[Problem], summaries: list[ProblemSummary] | None = None
    ) -> None:
        self.problems = list(problems)
        self.summaries = list(summaries) if summaries is not None else _summarise(self.problems)
        total = sum(s.count for s in self.summaries)
        shown = "\n".join(f"  {s}" for s in self.summaries)
        super().__init__(
            f"{total:,} problem(s) in the branch export "
            f"(`fedcrm data validate DIR --max-problems N` lists them by line):\n{shown}"
        )


def _summarise(problems: list[Problem]) -> list[ProblemSummary]:
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for p in problems:
        groups.setdefault((p.file, p.column, p.message, p.fix), []).append(p.line)
    return [
        ProblemSummary(f, c, m, len(lines), tuple(sorted(lines)[:3]), fix)
        for (f, c, m, fix), lines in groups.items()
    ]


class DataSourceError(FedCRMError):
    """A data source (a database) cannot be reached or read.

    The message names the source without its password and never quotes data.
    """


class PrivacyError(FedCRMError):
    """A privacy setting or privacy computation is invalid."""


class BudgetExhaustedError(PrivacyError):
    """Running the next mechanism would take a branch past its epsilon ceiling."""

    def __init__(self, *, branch_id: str, spent: float, would_spend: float, ceiling: float) -> None:
        self.branch_id = branch_id
        self.spent = spent
        self.would_spend = would_spend
        self.ceiling = ceiling
        super().__init__(
            f"branch {branch_id}: budget-exhausted: epsilon spent {spent:.4g}, "
            f"the next round would reach {would_spend:.4g} > ceiling {ceiling:.4g}"
        )


class LedgerError(PrivacyError):
    """A privacy ledger is malformed, tampered, or does not verify."""


class RefusedError(PrivacyError):
    """A branch refuses a request; ``reason`` is one of :mod:`fedcrm.protocol`'s reasons.

    The typed reply the branch sends instead of a release carries ``reason``
    and the message (which never holds customer data).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class LedgerBehindAnchorError(LedgerError):
    """A ledger is shorter than, or diverges from, the head its anchor or a copy recorded."""


class KeyFileError(FedCRMError):
    """A key or certificate file is missing, unreadable or of the wrong kind."""


class EncryptionError(FedCRMError):
    """A homomorphic-encryption context or ciphertext is invalid."""


class ContributorsError(EncryptionError):
    """A branch refuses to decrypt an aggregate whose contributor set it does not accept.

    ``reason`` is a short code (``missing-own``, ``single``, ``duplicate``,
    ``misaligned``, ``too-few``, ``too-many``, ``malformed``); the message says why.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"refusing to decrypt ({reason}): {message}")


class SecureAggregationError(FedCRMError):
    """A secure-aggregation message is invalid, forged, or asks for what a branch must refuse."""


class RevealRefusedError(SecureAggregationError):
    """A branch refuses to reveal shares: the request contradicts an earlier one, or is unsafe."""


class UpdateRejectedError(FedCRMError):
    """A branch's reply (update, histogram, ciphertext) was rejected by the server."""

    def __init__(self, branch_id: str, reason: str) -> None:
        self.branch_id = branch_id
        self.reason = reason
        super().__init__(f"update from branch {branch_id} rejected: {reason}")


class IdentityError(FedCRMError):
    """A SuperNode claimed a branch identity the admitted list does not give it.

    ``reason`` is one of the typed reasons of :mod:`fedcrm.identity`.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class SchemaMismatchError(FedCRMError):
    """Features at hand are not the ones a model was trained on (names, kinds, vocabularies)."""


class BundleError(FedCRMError):
    """A model bundle is missing, malformed, too large, or fails its hash or signature check."""
