"""Who takes part in secure aggregation: the roster, a branch's identity, thresholds, signatures.

Roster
------
branch_id -> (Ed25519 signing public key, X25519 agreement public key), both
raw 32 bytes (see :mod:`fedcrm.privacy.signing`). Every branch loads the
roster from its own trusted copy (provisioning), never from the server: the
roster is what lets a branch tell a peer's advertisement from one the server
made up. :attr:`Roster.digest` binds every message to one roster. Holder
indices for secret shares are the 1-based positions in sorted branch order.

Threshold
---------
``T`` is the number of revealed shares that rebuild a branch's self-mask seed
or ephemeral key. With ``n`` roster branches, of which ``c`` collude with the
server:

* liveness: a step completes when at least ``T`` branches advertise, submit
  and answer the reveal, so up to ``n - T`` may drop out;
* privacy: the server and the ``c`` colluders learn nothing about an honest
  branch's individual update as long as ``2T > n + c`` (two disjoint groups of
  ``T - c`` honest branches, one revealing a branch's self-mask seed and the
  other its ephemeral key, or endorsing two different dropout claims, would
  need more honest branches than there are). See :mod:`fedcrm.crypto.masking`.

:func:`default_threshold` is the smallest ``T`` with ``2T > n + 1``: private
against the server together with any one branch. For even ``n`` this is the
majority; for odd ``n`` one more than the majority: with ``n = 5`` and
``T = 3`` the server and one branch, giving two groups of branches two
different dropout claims, rebuild both secrets of a third branch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from fedcrm.crypto.primitives import b64, canonical, unb64
from fedcrm.errors import KeyFileError, SecureAggregationError
from fedcrm.privacy import signing

_SIGNED_DOMAIN = b"fedcrm/secagg/signed/v1\0"
MAX_MESSAGE_BYTES = 4 << 20


def default_threshold(n: int) -> int:
    """The smallest ``T`` with ``2T > n + 1`` (private against the server plus one branch)."""
    if n < 1:
        raise ValueError("a roster needs at least one branch")
    return min(n, (n + 1) // 2 + 1)


def max_colluders(n: int, threshold: int) -> int:
    """The most colluding branches ``c`` with ``2T > n + c``."""
    return max(0, 2 * threshold - n - 1)


def max_dropouts(n: int, threshold: int) -> int:
    """How many branches may drop out of a step after advertising."""
    return n - threshold


@dataclass(frozen=True)
class RosterEntry:
    """One branch's raw public keys."""

    signing_public: bytes
    agreement_public: bytes

    def __post_init__(self) -> None:
        if len(self.signing_public) != 32 or len(self.agreement_public) != 32:
            raise KeyFileError("roster public keys are 32 raw bytes each")


@dataclass(frozen=True)
class Roster:
    """The branches of a federation and their long-term public keys."""

    entries: Mapping[str, RosterEntry]

    def __post_init__(self) -> None:
        if not self.entries:
            raise KeyFileError("the roster is empty")
        object.__setattr__(self, "entries", dict(sorted(self.entries.items())))

    @property
    def ids(self) -> tuple[str, ...]:
        """Branch ids in sorted order."""
        return tuple(self.entries)

    @property
    def n(self) -> int:
        return len(self.entries)

    def index(self, branch_id: str) -> int:
        """1-based holder index of ``branch_id`` for secret shares."""
        try:
            return self.ids.index(branch_id) + 1
        except ValueError:
            raise SecureAggregationError(f"branch {branch_id} is not in the roster") from None

    def entry(self, branch_id: str) -> RosterEntry:
        if branch_id not in self.entries:
            raise SecureAggregationError(f"branch {branch_id} is not in the roster")
        return self.entries[branch_id]

    def to_json(self) -> bytes:
        """Canonical JSON: ``{"branches": {id: {"signing": b64, "agreement": b64}}}``."""
        return canonical(
            {
                "branches": {
                    b: {"signing": b64(e.signing_public), "agreement": b64(e.agreement_public)}
                    for b, e in self.entries.items()
                }
            }
        )

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of :meth:`to_json`; every message names the roster by it."""
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, data: bytes | str) -> Roster:
        """Parse :meth:`to_json` output.

        Raises
        ------
        KeyFileError
            Not a roster.
        """
        try:
            branches = json.loads(data)["branches"]
            return cls(
                {
                    b: RosterEntry(unb64(e["signing"], 32), unb64(e["agreement"], 32))
                    for b, e in branches.items()
                }
            )
        except (ValueError, KeyError, TypeError, AttributeError, SecureAggregationError):
            raise KeyFileError("not a fedcrm roster (JSON with branches and raw keys)") from None

    @classmethod
    def from_key_dir(cls, key_dir: str | os.PathLike[str], branch_ids: Iterable[str]) -> Roster:
        """Build a roster from ``<id>.pub`` and ``<id>.x25519.pub`` files in ``key_dir``."""
        d = Path(key_dir)
        entries = {}
        for b in branch_ids:
            sign_pub = signing.load_public_key(d / f"{b}{signing.PUBLIC_SUFFIX}")
            agree_pub = signing.load_agreement_public_key(
                d / f"{b}{signing.AGREEMENT_PUBLIC_SUFFIX}"
            )
            entries[b] = RosterEntry(
                signing.raw_public_bytes(sign_pub), signing.raw_public_bytes(agree_pub)
            )
        return cls(entries)


@dataclass(frozen=True, repr=False)
class BranchIdentity:
    """A branch's long-term private keys (they never leave the branch)."""

    branch_id: str
    signing_key: signing.Ed25519PrivateKey
    agreement_key: signing.X25519PrivateKey

    def __repr__(self) -> str:
        return f"BranchIdentity({self.branch_id!r})"

    @classmethod
    def generate(cls, branch_id: str) -> BranchIdentity:
        """Fresh keys in memory (tests, simulations); use the key files in deployment."""
        return cls(
            branch_id,
            signing.Ed25519PrivateKey.generate(),
            signing.X25519PrivateKey.generate(),
        )

    @classmethod
    def load(cls, key_dir: str | os.PathLike[str], branch_id: str) -> BranchIdentity:
        """Load ``<id>.key`` and ``<id>.x25519.key`` from ``key_dir``."""
        d = Path(key_dir)
        return cls(
            branch_id,
            signing.load_private_key(d / f"{branch_id}{signing.PRIVATE_SUFFIX}"),
            signing.load_agreement_private_key(
                d / f"{branch_id}{signing.AGREEMENT_PRIVATE_SUFFIX}"
            ),
        )

    @property
    def entry(self) -> RosterEntry:
        """This branch's roster entry."""
        return RosterEntry(
            signing.raw_public_bytes(self.signing_key),
            signing.raw_public_bytes(self.agreement_key),
        )


def sign_message(identity: BranchIdentity, kind: str, body: Mapping[str, Any]) -> bytes:
    """``body`` signed by ``identity`` as a message of ``kind`` (canonical JSON bytes)."""
    payload = {"kind": kind, "signer": identity.branch_id, "body": dict(body)}
    signature = identity.signing_key.sign(_SIGNED_DOMAIN + canonical(payload))
    return canonical({**payload, "signature": b64(signature)})


def open_message(roster: Roster, kind: str, blob: Any) -> tuple[str, dict[str, Any]]:
    """Verify a signed message against the roster; return ``(signer, body)``.

    Raises
    ------
    SecureAggregationError
        Not a signed message of ``kind``, a signer outside the roster, or a
        signature that does not verify with the signer's roster key.
    """
    if not isinstance(blob, bytes | str) or len(blob) > MAX_MESSAGE_BYTES:
        raise SecureAggregationError(f"a {kind} must be JSON bytes")
    try:
        msg = json.loads(blob)
        payload = {"kind": msg["kind"], "signer": msg["signer"], "body": msg["body"]}
        signature = unb64(msg["signature"], 64)
    except (ValueError, KeyError, TypeError):
        raise SecureAggregationError(f"malformed {kind}") from None
    if payload["kind"] != kind or set(msg) != {*payload, "signature"}:
        raise SecureAggregationError(f"not a {kind}")
    signer = payload["signer"]
    if not isinstance(signer, str) or not isinstance(payload["body"], dict):
        raise SecureAggregationError(f"malformed {kind}")
    key = signing.signing_public_from_raw(roster.entry(signer).signing_public)
    try:
        key.verify(signature, _SIGNED_DOMAIN + canonical(payload))
    except InvalidSignature:
        raise SecureAggregationError(
            f"{kind} claiming to come from branch {signer} does not verify with its roster key"
        ) from None
    return signer, payload["body"]
