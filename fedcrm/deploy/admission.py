"""Which branches the central team admits: ``server/admitted.json`` and the changes to it.

The admitted list is the roster of :mod:`fedcrm.identity` (format and key
statuses are described there): per branch its node public key, the SuperLink
node id it was registered under, its ledger signing public keys (current,
retired, revoked) and its key-agreement public key. Only public keys are in
it; a compliance officer can read who may join and verify any ledger with it.

Changes, each made by one ``fedcrm server ...`` command:

==================  ==========================================================
``register``        :func:`admit_request`: a branch's first request; a rotation
                    signed by its current signing key; the same request again
                    (no change); with ``--replace``, new keys confirmed out of band
``unregister``      :func:`remove_branch`: status ``removed`` (keys kept, so its
                    old ledgers still verify)
``revoke-key``      :func:`revoke_signing_key` / :func:`revoke_node_key`: the
                    branch is out until it sends a new request
==================  ==========================================================

Registration with a running SuperLink is :mod:`fedcrm.deploy.superlink`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedcrm.deploy.provision import Federation
from fedcrm.deploy.request import BranchRequest
from fedcrm.errors import ConfigError
from fedcrm.identity import (
    ACTIVE,
    CURRENT,
    REMOVED,
    RETIRED,
    REVOKED,
    ROSTER_FILE,
    BranchIdentity,
    Roster,
    SigningKey,
    load_roster,
    save_roster,
)

ADMITTED_FILE = f"server/{ROSTER_FILE}"

ADMITTED, ROTATED, REPLACED, UNCHANGED = "admitted", "rotated", "replaced", "unchanged"


def admitted_path(fed: Federation) -> Path:
    """``<federation>/server/admitted.json``."""
    return fed.root / ADMITTED_FILE


def load(fed: Federation) -> Roster:
    """The federation's roster (empty before the first registration).

    Raises
    ------
    ConfigError
        When the file exists but is not an admitted list; it is left as it is.
    """
    return load_roster(admitted_path(fed))


def save(fed: Federation, roster: Roster) -> Path:
    """Write the federation's roster."""
    return save_roster(roster, admitted_path(fed))


@dataclass(frozen=True)
class Admission:
    """What :func:`admit_request` changed.

    ``retired_node_key`` is the node key the branch no longer uses (to take off
    the SuperLink), when the request replaced it.
    """

    identity: BranchIdentity
    change: str
    fingerprint: str
    retired_node_key: str | None = None


def _same_keys(identity: BranchIdentity, req: BranchRequest) -> bool:
    key = identity.signing_key
    return (
        identity.node_public_key is not None
        and _text(identity.node_public_key) == _text(req.node_public_key)
        and key is not None
        and key.key_id == req.signing_key_id
        and identity.agreement_public_key.strip() == req.agreement_public_key.strip()
    )


def _text(openssh: str) -> str:
    return " ".join(openssh.split()[:2])


def _refuse_reused_keys(roster: Roster, req: BranchRequest) -> None:
    """A key may belong to one branch only, and a retired or revoked key never comes back."""
    b = req.branch_id
    owner = roster.owner_of_node_key(req.node_public_key)
    mine = roster.get(b)
    if owner is not None and owner != b:
        raise ConfigError(f"{req.source}: its node key is registered for branch {owner}")
    if mine is not None and any(
        _text(k) == _text(req.node_public_key) for k in mine.revoked_node_keys
    ):
        raise ConfigError(f"{req.source}: its node key was revoked; the branch makes a new one")
    owner = roster.owner_of_signing_key(req.signing_key_id)
    if owner is not None and owner != b:
        raise ConfigError(f"{req.source}: its signing key belongs to branch {owner}")
    old = mine.key(req.signing_key_id) if mine is not None else None
    if old is not None and old.status != CURRENT:
        raise ConfigError(
            f"{req.source}: its signing key {old.key_id} is {old.status}; a rotation needs a "
            "new key (`fedcrm node rotate-keys --signing`)"
        )


def _new_keys(current: BranchIdentity, req: BranchRequest, old_status: str) -> BranchIdentity:
    """``current`` with the request's keys; the replaced signing key gets ``old_status``."""
    keys = list(current.signing_keys)
    if current.key(req.signing_key_id) is None:
        keys = [
            SigningKey(k.key_id, k.public_key, old_status) if k.status == CURRENT else k
            for k in keys
        ]
        keys.append(SigningKey(req.signing_key_id, req.signing_public_key))
    node_changed = _text(current.node_public_key or "") != _text(req.node_public_key)
    return current.with_changes(
        status=ACTIVE,
        node_public_key=req.node_public_key,
        node_id=None if node_changed else current.node_id,
        signing_keys=tuple(keys),
        agreement_public_key=req.agreement_public_key,
    )


def admit_request(fed: Federation, req: BranchRequest, *, replace: bool = False) -> Admission:
    """Record a checked request (:func:`fedcrm.deploy.request.read_request`) in the roster.

    Raises
    ------
    ConfigError
        For a rotation of a branch that is not admitted, a request for an admitted
        branch that its current signing key did not sign (unless ``replace``), or
        keys another branch holds or that were retired or revoked.
    """
    roster = load(fed)
    b = req.branch_id
    current = roster.get(b)
    _refuse_reused_keys(roster, req)
    if current is None:
        if req.previous_signing_key_id:
            raise ConfigError(
                f"{req.source}: a key rotation for branch {b}, which is not admitted; register "
                "its first request (from `fedcrm node init`) instead"
            )
        identity = BranchIdentity(
            branch_id=b,
            node_public_key=req.node_public_key,
            signing_keys=(SigningKey(req.signing_key_id, req.signing_public_key),),
            agreement_public_key=req.agreement_public_key,
        )
        save(fed, roster.with_branch(identity))
        return Admission(identity, ADMITTED, req.fingerprint)
    if current.admitted and _same_keys(current, req):
        return Admission(current, UNCHANGED, req.fingerprint)
    key = current.signing_key
    rotation = (
        current.status == ACTIVE
        and key is not None
        and req.previous_signing_key_id == key.key_id
        and req.signed_by_previous(key.public_key)
    )
    if not (rotation or replace):
        held = f"signing key {key.key_id}" if key is not None else "no current signing key"
        raise ConfigError(
            f"{req.source}: branch {b} is admitted already ({current.status}, {held}) and "
            "this request is not a key rotation signed by its current signing key. If the "
            "branch made new keys (`node init --overwrite`, lost keys, a revoked key), confirm "
            f"the fingerprint {req.fingerprint} with the branch over the phone and pass --replace"
        )
    identity = _new_keys(current, req, RETIRED)
    save(fed, roster.with_branch(identity))
    old_node = current.node_public_key
    retired = old_node if old_node and _text(old_node) != _text(req.node_public_key) else None
    return Admission(identity, ROTATED if rotation else REPLACED, req.fingerprint, retired)


def _known(roster: Roster, branch_id: str) -> BranchIdentity:
    identity = roster.get(branch_id)
    if identity is None:
        known = ", ".join(sorted(roster.branches)) or "none"
        raise ConfigError(f"--branch-id {branch_id} is not in the admitted list (known: {known})")
    return identity


def remove_branch(fed: Federation, branch_id: str) -> BranchIdentity:
    """Mark ``branch_id`` removed; returns its identity before (its node key, to unregister).

    Its signing keys stay, so its past ledgers still verify.

    Raises
    ------
    ConfigError
        When the branch is not admitted.
    """
    roster = load(fed)
    identity = _known(roster, branch_id)
    if identity.status == REMOVED:
        active = ", ".join(roster.admitted()) or "none"
        raise ConfigError(f"--branch-id {branch_id} is not admitted (admitted: {active})")
    save(fed, roster.with_branch(identity.with_changes(status=REMOVED, node_id=None)))
    return identity


def revoke_signing_key(fed: Federation, branch_id: str, key_id: str) -> BranchIdentity:
    """Revoke one of a branch's signing keys: no ledger entry signed with it verifies any more.

    Revoking the current key leaves the branch without one: it is out (and should
    be taken off the SuperLink) until it registers new keys with ``--replace``.

    Raises
    ------
    ConfigError
        When the branch or the key is unknown.
    """
    roster = load(fed)
    identity = _known(roster, branch_id)
    if identity.key(key_id) is None:
        ids = ", ".join(k.key_id for k in identity.signing_keys)
        raise ConfigError(
            f"--key-id {key_id} is not a signing key of {branch_id} (its keys: {ids})"
        )
    keys = tuple(
        SigningKey(k.key_id, k.public_key, REVOKED) if k.key_id == key_id else k
        for k in identity.signing_keys
    )
    changed = identity.with_changes(signing_keys=keys)
    if changed.signing_key is None:
        changed = changed.with_changes(node_id=None)
    save(fed, roster.with_branch(changed))
    return changed


def revoke_node_key(fed: Federation, branch_id: str) -> str:
    """Revoke a branch's node key; returns it (to take off the SuperLink).

    The branch is out until a key rotation (``fedcrm node rotate-keys --node``,
    signed by its current signing key) brings a new node key.

    Raises
    ------
    ConfigError
        When the branch is unknown or holds no node key.
    """
    roster = load(fed)
    identity = _known(roster, branch_id)
    if not identity.node_public_key:
        raise ConfigError(f"--branch-id {branch_id} holds no node key (revoked already)")
    key = identity.node_public_key
    save(
        fed,
        roster.with_branch(
            identity.with_changes(
                node_public_key=None,
                node_id=None,
                revoked_node_keys=(*identity.revoked_node_keys, key),
            )
        ),
    )
    return key


def record_node_ids(fed: Federation, node_ids: dict[str, int]) -> None:
    """Store the SuperLink node ids the admitted branches were registered under."""
    if not node_ids:
        return
    roster = load(fed)
    for b, node_id in node_ids.items():
        identity = roster.get(b)
        if identity is not None and identity.node_id != node_id:
            roster = roster.with_branch(identity.with_changes(node_id=node_id))
    save(fed, roster)
