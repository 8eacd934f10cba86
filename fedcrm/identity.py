"""Who a branch is: path-safe ids, the roster of admitted branches, the node identity check.

Neutral ground for the CLI, the deployment tools, the ServerApp and the
ClientApp: no Flower import, no key maths (keys travel here as text; the
``cryptography`` wrappers live in :mod:`fedcrm.privacy.signing`).

**Ids.** Branch ids, run ids and model names become file names; they are
checked by :mod:`fedcrm.ids` (re-exported here).

**Roster.** The central team's admitted list, ``server/admitted.json`` of a
federation directory (JSON, public keys only)::

    {"format": 2, "branches": {"<branch_id>": {
        "status": "active" | "removed",
        "node_public_key": "ecdsa-sha2-nistp384 AAAA...",   (OpenSSH; null once revoked)
        "node_id": 123 | null,                              (SuperLink node id, once registered)
        "signing_keys": [{"key_id": "<16 hex>", "public_key": "<PEM SubjectPublicKeyInfo>",
                          "status": "current" | "retired" | "revoked", "since": "<UTC>"}],
        "agreement_public_key": "<PEM SubjectPublicKeyInfo, X25519>",
        "revoked_node_keys": ["ecdsa-sha2-nistp384 AAAA..."],
        "admitted": "<UTC>", "updated": "<UTC>"}}}

A signing key is *retired* when the branch rotated it (its old ledger entries
still verify) and *revoked* when the central team withdrew it (entries signed
with it never verify). A branch takes part only while it is active, holds a node
key and a current signing key (:attr:`BranchIdentity.admitted`).

**Node identity.** Flower tells the ServerApp which SuperNode (node id) sent a
reply; the branch id inside the reply is what the node claims.
:func:`check_node_identity` accepts the claim only when the roster binds that
branch id to that node id; otherwise it raises :class:`IdentityError` with a
typed reason (:data:`REASON_INVALID_ID`, :data:`REASON_UNKNOWN_BRANCH`,
:data:`REASON_NOT_ADMITTED`, :data:`REASON_OTHER_NODE`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcrm.branch_identity import (
    ACTIVE,
    CURRENT,
    REMOVED,
    RETIRED,
    REVOKED,
    BranchIdentity,
    SigningKey,
)
from fedcrm.errors import ConfigError, IdentityError, KeyFileError
from fedcrm.ids import MAX_ID_LENGTH, check_id, id_path, is_valid_id

__all__ = [
    "ACTIVE",
    "CRYPTO_ROSTER_FILE",
    "CURRENT",
    "MAX_ID_LENGTH",
    "REASON_INVALID_ID",
    "REASON_NOT_ADMITTED",
    "REASON_OTHER_NODE",
    "REASON_UNKNOWN_BRANCH",
    "REMOVED",
    "RETIRED",
    "REVOKED",
    "ROSTER_FILE",
    "ROSTER_FORMAT",
    "BranchIdentity",
    "Roster",
    "RosterFile",
    "SigningKey",
    "check_id",
    "check_node_identity",
    "id_path",
    "identity_refusal",
    "is_valid_id",
    "load_roster",
    "save_roster",
]

ROSTER_FORMAT = 2
ROSTER_FILE = "admitted.json"

REASON_INVALID_ID = "invalid-id"
REASON_UNKNOWN_BRANCH = "unknown-branch"
REASON_NOT_ADMITTED = "not-admitted"
REASON_OTHER_NODE = "other-node"


# ------------------------------------------------------------------ roster
@dataclass(frozen=True)
class Roster:
    """Branch id -> :class:`BranchIdentity` (every branch ever admitted, removed ones too)."""

    branches: dict[str, BranchIdentity] = field(default_factory=dict)

    def get(self, branch_id: str) -> BranchIdentity | None:
        """The branch's identity, or ``None``."""
        return self.branches.get(branch_id)

    def admitted(self) -> dict[str, BranchIdentity]:
        """The branches that may take part now."""
        return {b: i for b, i in sorted(self.branches.items()) if i.admitted}

    def crypto_roster(self) -> Any:
        """The admitted branches' raw public keys for secure aggregation.

        Returns a :class:`fedcrm.crypto.roster.Roster` (current signing key and
        agreement key of every admitted branch), the roster every branch of an
        encrypted job receives.
        """
        from fedcrm.crypto.roster import Roster as KeyRoster
        from fedcrm.crypto.roster import RosterEntry
        from fedcrm.privacy import signing

        entries = {}
        for b, ident in self.admitted().items():
            key = ident.signing_key
            assert key is not None  # admitted
            sign_pub = signing.signing_public_key_from_pem(key.public_key, f"admitted list: {b}")
            agree_pub = signing.agreement_public_key_from_pem(
                ident.agreement_public_key, f"admitted list: {b}"
            )
            entries[b] = RosterEntry(
                signing.raw_public_bytes(sign_pub), signing.raw_public_bytes(agree_pub)
            )
        return KeyRoster(entries)

    def by_node_id(self, node_id: int) -> BranchIdentity | None:
        """The admitted branch bound to SuperLink node ``node_id``."""
        return next((i for i in self.admitted().values() if i.node_id == node_id), None)

    def owner_of_node_key(self, openssh: str) -> str | None:
        """The branch whose (current or revoked) node key is ``openssh``."""
        key = _key_text(openssh)
        for b, i in self.branches.items():
            if i.node_public_key and _key_text(i.node_public_key) == key:
                return b
            if any(_key_text(k) == key for k in i.revoked_node_keys):
                return b
        return None

    def owner_of_signing_key(self, key_id: str) -> str | None:
        """The branch that holds (or held) the signing key ``key_id``."""
        return next((b for b, i in self.branches.items() if i.key(key_id) is not None), None)

    def with_branch(self, identity: BranchIdentity) -> Roster:
        """A copy with ``identity`` added or replaced."""
        return Roster({**self.branches, identity.branch_id: identity})

    def write_signing_keys(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``<branch_id>.pub`` per branch: its current and retired keys, PEM blocks.

        What ``fedcrm privacy verify --keys DIR`` reads; revoked keys are left out.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for b, identity in sorted(self.branches.items()):
            pems = [k.public_key.strip() + "\n" for k in identity.verifying_keys().values()]
            if pems:
                path = id_path(out, b, "branch id", suffix=".pub")
                path.write_text("".join(pems))
                written.append(path)
        return written


def _key_text(openssh: str) -> str:
    """An OpenSSH public key without its comment (``type base64``)."""
    return " ".join(openssh.split()[:2])


def load_roster(path: str | os.PathLike[str]) -> Roster:
    """Read an admitted list (an empty roster when the file does not exist yet).

    Raises
    ------
    ConfigError
        When the file exists but is not a format-2 admitted list; it is left as it is.
    """
    path = Path(path)
    if not path.exists():
        return Roster()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != ROSTER_FORMAT:
            raise ValueError("format")
        branches = {
            str(b): BranchIdentity.from_json(str(b), entry)
            for b, entry in dict(data["branches"]).items()
        }
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ConfigError(
            f"{path} is not a fedcrm admitted list (format {ROSTER_FORMAT}; "
            f"{type(exc).__name__}); it was left untouched: restore it from a backup, or move "
            "it away and register each branch again with `fedcrm server register --request`"
        ) from None
    return Roster(branches)


CRYPTO_ROSTER_FILE = "roster.json"
"""The admitted branches' public keys for encrypted jobs, written beside the admitted list."""


def save_roster(roster: Roster, path: str | os.PathLike[str]) -> Path:
    """Write the admitted list atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": ROSTER_FORMAT,
        "branches": {b: i.to_json() for b, i in sorted(roster.branches.items())},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    # Beside it, the roster of encrypted jobs (raw public keys), for branches to pin
    # (`fedcrm node start --roster`).
    keys = path.with_name(CRYPTO_ROSTER_FILE)
    try:
        data_keys = roster.crypto_roster().to_json() if roster.admitted() else None
    except KeyFileError:  # a list written before every branch had an agreement key
        data_keys = None
    if data_keys is None:
        keys.unlink(missing_ok=True)
    else:
        tmp = keys.with_name(keys.name + ".tmp")
        tmp.write_bytes(data_keys)
        tmp.replace(keys)
    return path


# ----------------------------------------------------------- node identity
def check_node_identity(roster: Roster | None, branch_id: object, node_id: int) -> str:
    """Accept SuperNode ``node_id`` claiming ``branch_id``, or raise :class:`IdentityError`.

    Without a roster (simulation) only the id's form is checked.

    Returns
    -------
    str
        The branch id.

    Raises
    ------
    IdentityError
        With ``reason`` :data:`REASON_INVALID_ID` (not a path-safe id),
        :data:`REASON_UNKNOWN_BRANCH` (not in the roster),
        :data:`REASON_NOT_ADMITTED` (removed, or a key revoked) or
        :data:`REASON_OTHER_NODE` (the branch is registered with another node key).
    """
    if not is_valid_id(branch_id):
        raise IdentityError(
            REASON_INVALID_ID, f"node {node_id} announced a branch id that is not a valid id"
        )
    branch = str(branch_id)
    if roster is None:
        return branch
    identity = roster.get(branch)
    if identity is None:
        raise IdentityError(
            REASON_UNKNOWN_BRANCH,
            f"node {node_id} announced branch {branch}, which is not admitted",
        )
    if not identity.admitted:
        raise IdentityError(
            REASON_NOT_ADMITTED,
            f"node {node_id} announced branch {branch}, which is {identity.status} or has a "
            "revoked key",
        )
    if identity.node_id != node_id:
        owner = roster.by_node_id(node_id)
        held = f" (it is registered for branch {owner.branch_id})" if owner else ""
        raise IdentityError(
            REASON_OTHER_NODE,
            f"node {node_id} announced branch {branch}, which is registered with another "
            f"node key{held}",
        )
    return branch


def identity_refusal(
    identities: RosterFile | Roster | None, branch_id: object, node_id: int
) -> str | None:
    """Why SuperNode ``node_id`` may not act as ``branch_id`` (``None``: it may).

    What the ServerApp calls when a node joins; ``identities`` is the
    deployment's admitted list (``None`` in simulation: the id's form only).
    """
    roster = identities.roster() if isinstance(identities, RosterFile) else identities
    try:
        check_node_identity(roster, branch_id, node_id)
    except IdentityError as exc:
        return str(exc)
    return None


class RosterFile:
    """An admitted list on disk, read again whenever it changed (the ServerApp's view).

    A branch registered or rotated while a run goes on (new node id) is then
    recognised at its next admission without restarting the run.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._roster = Roster()
        if not self.path.is_file():
            raise ConfigError(
                f"{self.path}: no admitted list there; give the run-config key `server-dir` "
                "as the federation's server/ folder (branches are admitted with "
                "`fedcrm server register --request`)"
            )
        self.roster()

    def roster(self) -> Roster:
        """The roster as the file holds it now."""
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._roster = load_roster(self.path)
            self._stamp = stamp
        return self._roster

    def check(self, branch_id: object, node_id: int) -> str:
        """:func:`check_node_identity` against the file's current roster."""
        return check_node_identity(self.roster(), branch_id, node_id)

    def signing_keys(self, branch_id: str) -> dict[str, Any] | None:
        """Key id -> Ed25519 public key of ``branch_id`` (current and retired), or ``None``."""
        from fedcrm.privacy import signing

        identity = self.roster().get(branch_id)
        if identity is None:
            return None
        return {
            key_id: signing.signing_public_key_from_pem(k.public_key, f"admitted list: {branch_id}")
            for key_id, k in identity.verifying_keys().items()
        }
