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
    """One problem found in a branch export.

    ``line`` is the 1-based line in the file (the header is line 1), or 0 when
    the problem concerns the whole file.
    """

    file: str
    line: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.column}: {self.message}"


class DataValidationError(FedCRMError):
    """A branch export breaks the data contract; ``problems`` lists every finding."""

    def __init__(self, problems: list[Problem], *, limit: int = 50) -> None:
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        if more > 0:
            shown += f"\n  ... and {more} more"
        super().__init__(
            f"{len(self.problems)} problem(s) in the branch export "
            f"(run `fedcrm data validate DIR` for the full list):\n{shown}"
        )


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
