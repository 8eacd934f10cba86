"""The request file a branch sends to the central team: its public keys, signed.

``fedcrm node init`` (and ``fedcrm node rotate-keys``) writes
``<branch_id>.request.json``; ``fedcrm server register --request`` reads it.
JSON, public material only::

    {"kind": "fedcrm-branch-request", "format": 1,
     "branch_id": "b1", "created": "<UTC ISO 8601>",
     "node_public_key": "ecdsa-sha2-nistp384 AAAA...",     (OpenSSH, Flower node auth)
     "signing_public_key": "-----BEGIN PUBLIC KEY-----...", (PEM, Ed25519 ledger key)
     "signing_key_id": "<16 hex>",
     "agreement_public_key": "-----BEGIN PUBLIC KEY-----...", (PEM, X25519)
     "previous_signing_key_id": null | "<16 hex>",          (rotation: the key it replaces)
     "signature": "<base64>",           Ed25519, by signing_public_key
     "previous_signature": null | "<base64>"}  Ed25519, by the previous signing key

Both signatures cover :func:`signed_bytes`: a domain prefix and the canonical
JSON of every field but the two signatures. The first proves the branch holds
the new signing key and makes any change in transit detectable; the second,
on a rotation, proves the request comes from whoever held the key being
replaced. Neither tells the central team that the file came from the branch
and not from someone who made their own keys: compare the :func:`fingerprint`
that ``node init`` printed with the one ``server register`` prints, over a
channel you trust (a phone call).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcrm.errors import ConfigError, KeyFileError
from fedcrm.ids import check_id
from fedcrm.privacy import signing

KIND = "fedcrm-branch-request"
FORMAT = 1
SUFFIX = ".request.json"
_DOMAIN = b"fedcrm-branch-request/1\n"
_SIGNATURES = ("signature", "previous_signature")
_FIELDS = (
    "kind",
    "format",
    "branch_id",
    "created",
    "node_public_key",
    "signing_public_key",
    "signing_key_id",
    "agreement_public_key",
    "previous_signing_key_id",
)
_NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def signed_bytes(body: dict[str, Any]) -> bytes:
    """What the request's signatures cover: a prefix and the canonical JSON of the fields."""
    fields = {k: body.get(k) for k in _FIELDS}
    return _DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")


def fingerprint(body: dict[str, Any]) -> str:
    """A short SHA-256 of the signed fields, grouped for reading aloud (``ab12-cd34-...``)."""
    digest = hashlib.sha256(signed_bytes(body)).hexdigest()[:32]
    return "-".join(digest[i : i + 4] for i in range(0, 32, 4))


def check_node_public_key(openssh: str, source: str) -> str:
    """An OpenSSH EC public key on a NIST curve (what Flower's node authentication takes).

    Raises
    ------
    KeyFileError
        Naming ``source`` when it is anything else.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(openssh.strip().encode("ascii"))
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError):
        raise KeyFileError(f"{source}: the node key is not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _NIST_CURVES:
        raise KeyFileError(
            f"{source}: the node key is not an EC key on a NIST curve (Flower's node "
            "authentication needs one, e.g. P-384)"
        )
    return openssh.strip()


@dataclass(frozen=True)
class BranchRequest:
    """A request file whose fields and self-signature were checked (:func:`read_request`)."""

    body: dict[str, Any]
    source: str

    @property
    def branch_id(self) -> str:
        """The branch the request is for."""
        return str(self.body["branch_id"])

    @property
    def node_public_key(self) -> str:
        """OpenSSH text of the node authentication key."""
        return str(self.body["node_public_key"])

    @property
    def signing_public_key(self) -> str:
        """PEM of the (new) ledger signing key."""
        return str(self.body["signing_public_key"])

    @property
    def signing_key_id(self) -> str:
        """Key id of the (new) ledger signing key."""
        return str(self.body["signing_key_id"])

    @property
    def agreement_public_key(self) -> str:
        """PEM of the X25519 key-agreement key."""
        return str(self.body["agreement_public_key"])

    @property
    def previous_signing_key_id(self) -> str | None:
        """The signing key this request rotates away from (``None``: a first request)."""
        value = self.body.get("previous_signing_key_id")
        return str(value) if value else None

    @property
    def fingerprint(self) -> str:
        """See :func:`fingerprint`."""
        return fingerprint(self.body)

    def signed_by_previous(self, previous_pem: str) -> bool:
        """Whether ``previous_signature`` is the previous key's signature of this request."""
        sig = self.body.get("previous_signature")
        if not sig:
            return False
        key = signing.signing_public_key_from_pem(previous_pem, "the previous signing key")
        return signing.verify_signature(key, signed_bytes(self.body), str(sig))


def make_request(
    *,
    branch_id: str,
    node_public_key: str,
    signing_key: signing.Ed25519PrivateKey,
    agreement_public_key: str,
    previous_signing_key: signing.Ed25519PrivateKey | None = None,
) -> dict[str, Any]:
    """A signed request body (see the module docstring)."""
    body: dict[str, Any] = {
        "kind": KIND,
        "format": FORMAT,
        "branch_id": check_id(branch_id, "--branch-id"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "node_public_key": node_public_key.strip(),
        "signing_public_key": signing.public_pem(signing_key),
        "signing_key_id": signing.key_id(signing_key),
        "agreement_public_key": agreement_public_key,
        "previous_signing_key_id": (
            signing.key_id(previous_signing_key) if previous_signing_key is not None else None
        ),
    }
    message = signed_bytes(body)
    body["signature"] = signing.sign(signing_key, message)
    body["previous_signature"] = (
        signing.sign(previous_signing_key, message) if previous_signing_key is not None else None
    )
    return body


def write_request(directory: str | os.PathLike[str], body: dict[str, Any]) -> Path:
    """Write ``<branch_id>.request.json`` into ``directory`` (readable: it is public)."""
    path = Path(directory) / f"{check_id(body['branch_id'], 'branch id')}{SUFFIX}"
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return path


def read_request(path: str | os.PathLike[str]) -> BranchRequest:
    """Read and check a request file: fields, key types, key id and self-signature.

    Raises
    ------
    ConfigError, KeyFileError
        Naming ``--request FILE`` and what is wrong (nothing in the file is trusted
        before this returns).
    """
    source = f"--request {path}"
    try:
        body = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: not a JSON file ({type(exc).__name__})") from None
    if not isinstance(body, dict) or body.get("kind") != KIND or body.get("format") != FORMAT:
        raise ConfigError(
            f"{source}: not a fedcrm branch request (format {FORMAT}); the branch writes one "
            "with `fedcrm node init`"
        )
    extra = sorted(set(body) - set(_FIELDS) - set(_SIGNATURES))
    optional = ("previous_signing_key_id", "previous_signature")
    missing = [k for k in (*_FIELDS, "signature") if k not in optional and not body.get(k)]
    if extra or missing:
        raise ConfigError(f"{source}: unexpected fields {extra} or missing fields {missing}")
    if not all(isinstance(body[k], str) for k in (*_FIELDS[2:], "signature") if body.get(k)):
        raise ConfigError(f"{source}: every key and id must be text")
    check_id(body["branch_id"], f"{source}: branch_id")
    if bool(body.get("previous_signing_key_id")) != bool(body.get("previous_signature")):
        raise ConfigError(
            f"{source}: a rotation names the previous key and is signed by it (one is missing)"
        )
    try:
        dt.datetime.fromisoformat(body["created"])
    except ValueError:
        raise ConfigError(f"{source}: `created` is not an ISO 8601 time") from None
    check_node_public_key(body["node_public_key"], source)
    key = signing.signing_public_key_from_pem(body["signing_public_key"], f"{source} (signing)")
    signing.agreement_public_key_from_pem(body["agreement_public_key"], f"{source} (agreement)")
    if signing.key_id(key) != body["signing_key_id"]:
        raise ConfigError(f"{source}: signing_key_id does not match the signing key")
    if not signing.verify_signature(key, signed_bytes(body), body["signature"]):
        raise ConfigError(
            f"{source}: its signature does not verify: the file changed after the branch "
            "wrote it; ask the branch for it again"
        )
    return BranchRequest(body, source)
