"""A branch's own folder: keys born on its machine, and the request carrying their public halves.

``fedcrm node init --branch-id B --out DIR`` writes (private keys mode 0600,
folders 0700)::

    DIR/
        branch.json              the branch id and where its files are
        B.request.json           public keys, signed: send it to the central team
        keys/
            node_auth_key(.pub)    EC P-384, OpenSSH (Flower SuperNode authentication)
            B.key  B.pub           Ed25519 ledger signing key (PEM; fedcrm.privacy.signing)
            B.x25519.key  B.x25519.pub  X25519 key agreement (PEM; fedcrm.privacy.signing)
            retired/B.<key_id>.pub  signing keys replaced by a rotation (public halves)
        ledger.jsonl  models/  cache/   written at run time (cache/: computed features, private)

Nothing here is sent anywhere but the request file. ``fedcrm node start
--branch-dir DIR`` finds every file through ``branch.json``;
``fedcrm node rotate-keys --branch-dir DIR`` replaces the node and/or signing
key and writes a new request signed by the old signing key.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcrm.deploy.request import SUFFIX, make_request, write_request
from fedcrm.deploy.tls import private_dir, write_private
from fedcrm.errors import ConfigError
from fedcrm.ids import check_id
from fedcrm.privacy import signing

BRANCH_FILE = "branch.json"
KIND = "fedcrm-branch"
NODE_KEY = "node_auth_key"


def make_node_auth_key(private_path: Path) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format, as Flower's SuperNode authentication expects.

    ``private_path`` gets the private key (mode 0600), ``private_path.pub`` the
    public key the central team registers.
    """
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private(private_path, priv)
    pub_path = private_path.with_name(private_path.name + ".pub")
    pub_path.write_bytes(pub + b"\n")
    return private_path, pub_path


@dataclass(frozen=True)
class BranchDir:
    """A loaded branch folder (absolute paths)."""

    root: Path
    branch_id: str

    @property
    def keys(self) -> Path:
        """The 0700 folder of the branch's keys."""
        return self.root / "keys"

    @property
    def node_key(self) -> Path:
        """Node authentication private key (OpenSSH)."""
        return self.keys / NODE_KEY

    @property
    def node_public_key(self) -> Path:
        """Node authentication public key (OpenSSH)."""
        return self.keys / f"{NODE_KEY}.pub"

    @property
    def signing_key(self) -> Path:
        """Ed25519 ledger signing private key."""
        return self.keys / f"{self.branch_id}{signing.PRIVATE_SUFFIX}"

    @property
    def signing_public_key(self) -> Path:
        """Ed25519 ledger signing public key."""
        return self.keys / f"{self.branch_id}{signing.PUBLIC_SUFFIX}"

    @property
    def agreement_key(self) -> Path:
        """X25519 private key."""
        return self.keys / f"{self.branch_id}{signing.AGREEMENT_PRIVATE_SUFFIX}"

    @property
    def agreement_public_key(self) -> Path:
        """X25519 public key."""
        return self.keys / f"{self.branch_id}{signing.AGREEMENT_PUBLIC_SUFFIX}"

    @property
    def request(self) -> Path:
        """The latest request file."""
        return self.root / f"{self.branch_id}{SUFFIX}"

    @property
    def ledger_path(self) -> Path:
        """The branch's privacy ledger."""
        return self.root / "ledger.jsonl"

    @property
    def model_dir(self) -> Path:
        """Where the branch exports models it keeps."""
        return self.root / "models"

    @property
    def cache_dir(self) -> Path:
        """Where the branch keeps its computed features between messages."""
        return self.root / "cache"


def load_branch_dir(directory: str | os.PathLike[str], flag: str = "--branch-dir") -> BranchDir:
    """The branch folder ``fedcrm node init`` wrote.

    Raises
    ------
    ConfigError
        Naming ``flag`` when ``branch.json`` is missing or not a branch file.
    """
    root = Path(directory).resolve()
    path = root / BRANCH_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("kind") != KIND:
            raise ValueError("kind")
        branch_id = check_id(data["branch_id"], f"{path}: branch_id")
    except FileNotFoundError:
        raise ConfigError(
            f"{flag} {directory}: no {BRANCH_FILE} there; make the branch's keys first with "
            "`fedcrm node init --branch-id B --out DIR`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{flag} {directory}: {BRANCH_FILE} is not a fedcrm branch file ({type(exc).__name__})"
        ) from None
    return BranchDir(root, branch_id)


def _request_body(bd: BranchDir, previous: signing.Ed25519PrivateKey | None) -> dict[str, Any]:
    return make_request(
        branch_id=bd.branch_id,
        node_public_key=bd.node_public_key.read_text(),
        signing_key=signing.load_private_key(bd.signing_key),
        agreement_public_key=bd.agreement_public_key.read_text(),
        previous_signing_key=previous,
    )


def _retire_signing_key(bd: BranchDir) -> None:
    """Keep the public half of the signing key about to be replaced (old entries verify)."""
    if not bd.signing_public_key.exists():
        return
    old = signing.load_public_key(bd.signing_public_key)
    retired = bd.keys / "retired"
    retired.mkdir(exist_ok=True)
    (retired / f"{bd.branch_id}.{signing.key_id(old)}{signing.PUBLIC_SUFFIX}").write_bytes(
        bd.signing_public_key.read_bytes()
    )


def init_branch_dir(
    out_dir: str | os.PathLike[str], branch_id: str, *, overwrite: bool = False
) -> tuple[BranchDir, dict[str, Any]]:
    """Make a branch's keys and its first request in ``out_dir``; returns the folder and request.

    Raises
    ------
    ConfigError
        On an invalid branch id, or when ``out_dir`` holds a branch's keys already
        and ``overwrite`` is false (the message names ``--overwrite``).
    """
    branch_id = check_id(branch_id, "--branch-id")
    root = Path(out_dir).resolve()
    existing = root / BRANCH_FILE
    if existing.exists() and not overwrite:
        raise ConfigError(
            f"--out {out_dir} already holds the keys of a branch ({existing}); new keys would "
            "replace them and the central team would have to register the branch again. Keep "
            "them, rotate them with `fedcrm node rotate-keys`, or pass --overwrite"
        )
    private_dir(root)
    bd = BranchDir(root, branch_id)
    private_dir(bd.keys)
    if overwrite:
        _retire_signing_key(bd)
    make_node_auth_key(bd.node_key)
    signing.generate_signing_key(bd.keys, branch_id, overwrite=overwrite)
    signing.generate_agreement_key(bd.keys, branch_id, overwrite=overwrite)
    data = {
        "format": 1,
        "kind": KIND,
        "branch_id": branch_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    existing.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    body = _request_body(bd, previous=None)
    write_request(root, body)
    return bd, body


def rotate_keys(bd: BranchDir, *, node: bool = True, signing_key: bool = True) -> dict[str, Any]:
    """Replace the node key and/or the signing key; returns the new request (also written).

    The request is signed by the new signing key and by the one it replaces,
    so the central team accepts it as coming from the holder of the old key.
    The old signing key's public half stays in ``keys/retired/``; its private
    half is gone.

    Raises
    ------
    ConfigError
        When neither key is to be rotated.
    """
    if not (node or signing_key):
        raise ConfigError("rotate at least one key: --node and/or --signing")
    previous = signing.load_private_key(bd.signing_key)
    if node:
        make_node_auth_key(bd.node_key)
    if signing_key:
        _retire_signing_key(bd)
        signing.generate_signing_key(bd.keys, bd.branch_id, overwrite=True)
    body = _request_body(bd, previous=previous)
    write_request(bd.root, body)
    return body


def init_steps(bd: BranchDir, fingerprint: str) -> str:
    """What ``fedcrm node init`` prints."""
    return "\n".join(
        [
            f"Branch {bd.branch_id}: keys made in {bd.keys} (private keys mode 0600; they never "
            "leave this machine).",
            f"Request: {bd.request} (public keys only), fingerprint {fingerprint}",
            "Next steps:",
            f"  1. Send {bd.request.name} to the central team and read them the fingerprint "
            "over the phone; they run\n"
            f"       fedcrm server register --federation FED --request {bd.request.name}\n"
            "     and check it prints the same fingerprint.",
            "  2. They hand you their kit/ folder (CA certificate, SuperLink address).",
            "  3. Review the app you will run and pin its hash: "
            "fedcrm node app-hash /path/to/reviewed/fedcrm",
            f"  4. fedcrm node start --federation kit --branch-dir {bd.root} "
            "--data-path /path/to/export --epsilon-ceiling 8 --approve-app <hash>",
        ]
    )


def rotate_steps(bd: BranchDir, fingerprint: str, *, node: bool, signing_key: bool) -> str:
    """What ``fedcrm node rotate-keys`` prints."""
    what = " and ".join(w for w, on in (("node key", node), ("signing key", signing_key)) if on)
    return "\n".join(
        [
            f"Branch {bd.branch_id}: new {what} in {bd.keys}.",
            f"Request: {bd.request}, fingerprint {fingerprint} (signed by the previous "
            "signing key)",
            "Next steps:",
            f"  1. Send {bd.request.name} to the central team: "
            f"fedcrm server register --federation FED --request {bd.request.name}",
            "  2. A running `fedcrm node start` needs nothing: the SuperLink drops the old node "
            "key when they register the new one, and the SuperNode restarts with it; ledger "
            "entries are signed with the new signing key from the next message on.",
        ]
    )
