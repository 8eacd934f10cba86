"""One branch as the central team knows it: its public keys, node and statuses.

A :class:`BranchIdentity` is one entry of the admitted list: the branch's
SuperNode public key and SuperLink node id, its ledger signing keys
(:class:`SigningKey`, each *current*, *retired* after a rotation or *revoked*
by the central team), its key-agreement public key, the node keys revoked
before, and whether the branch is *active* or *removed*. Keys are kept as
text (OpenSSH and PEM); the roster that holds every branch and its file are
in :mod:`fedcrm.identity`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

from fedcrm.ids import check_id

CURRENT, RETIRED, REVOKED = "current", "retired", "revoked"
ACTIVE, REMOVED = "active", "removed"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SigningKey:
    """One ledger signing public key of a branch (PEM SubjectPublicKeyInfo, Ed25519)."""

    key_id: str
    public_key: str
    status: str = CURRENT
    since: str = field(default_factory=_now)


@dataclass(frozen=True)
class BranchIdentity:
    """What the central team knows of one branch: public keys and its SuperLink node id."""

    branch_id: str
    node_public_key: str | None
    signing_keys: tuple[SigningKey, ...]
    agreement_public_key: str
    node_id: int | None = None
    status: str = ACTIVE
    revoked_node_keys: tuple[str, ...] = ()
    admitted_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    @property
    def signing_key(self) -> SigningKey | None:
        """The current signing key (``None`` after it was revoked without a successor)."""
        return next((k for k in self.signing_keys if k.status == CURRENT), None)

    @property
    def admitted(self) -> bool:
        """Active, with a node key and a current signing key: may take part."""
        return self.status == ACTIVE and bool(self.node_public_key) and self.signing_key is not None

    def verifying_keys(self) -> dict[str, SigningKey]:
        """Key id -> key, for every signing key whose old entries still verify (not revoked)."""
        return {k.key_id: k for k in self.signing_keys if k.status != REVOKED}

    def key(self, key_id: str) -> SigningKey | None:
        """The signing key with ``key_id`` in any status."""
        return next((k for k in self.signing_keys if k.key_id == key_id), None)

    def with_changes(self, **changes: Any) -> BranchIdentity:
        """A copy with ``changes`` and a new ``updated_at``."""
        return replace(self, **changes, updated_at=_now())

    def to_json(self) -> dict[str, Any]:
        """The roster entry (see :mod:`fedcrm.identity`)."""
        return {
            "status": self.status,
            "node_public_key": self.node_public_key,
            "node_id": self.node_id,
            "signing_keys": [
                {
                    "key_id": k.key_id,
                    "public_key": k.public_key,
                    "status": k.status,
                    "since": k.since,
                }
                for k in self.signing_keys
            ],
            "agreement_public_key": self.agreement_public_key,
            "revoked_node_keys": list(self.revoked_node_keys),
            "admitted": self.admitted_at,
            "updated": self.updated_at,
        }

    @classmethod
    def from_json(cls, branch_id: str, data: dict[str, Any]) -> BranchIdentity:
        """Parse one roster entry (``KeyError``, ``TypeError``, ``ValueError`` if malformed)."""
        status = str(data["status"])
        keys = tuple(
            SigningKey(str(k["key_id"]), str(k["public_key"]), str(k["status"]), str(k["since"]))
            for k in data["signing_keys"]
        )
        if status not in (ACTIVE, REMOVED) or any(
            k.status not in (CURRENT, RETIRED, REVOKED) for k in keys
        ):
            raise ValueError("unknown status")
        if sum(k.status == CURRENT for k in keys) > 1:
            raise ValueError("two current signing keys")
        node_id = data.get("node_id")
        return cls(
            branch_id=check_id(branch_id, "branch id"),
            node_public_key=str(data["node_public_key"]) if data.get("node_public_key") else None,
            signing_keys=keys,
            agreement_public_key=str(data["agreement_public_key"]),
            node_id=int(node_id) if node_id is not None else None,
            status=status,
            revoked_node_keys=tuple(str(k) for k in data.get("revoked_node_keys", [])),
            admitted_at=str(data["admitted"]),
            updated_at=str(data.get("updated", data["admitted"])),
        )
