"""Ed25519 signing keys of branches (the one module wrapping cryptography's hazmat).

File formats:

* private key ``<branch_id>.key``: PEM, PKCS#8, unencrypted Ed25519 private key
  (``-----BEGIN PRIVATE KEY-----``), file mode 0600;
* public key ``<branch_id>.pub``: PEM, X.509 SubjectPublicKeyInfo
  (``-----BEGIN PUBLIC KEY-----``).

Signatures are raw 64-byte Ed25519 signatures (RFC 8032), carried as base64
text. A key is named by :func:`key_id`, the first 16 hex digits of the SHA-256
of its raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcrm.errors import KeyFileError

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "generate_signing_key",
    "key_id",
    "key_on_first_use",
    "load_private_key",
    "load_public_key",
    "public_key_of",
    "sign",
    "verify_signature",
]

logger = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_signing_key(
    out_dir: str | os.PathLike[str], branch_id: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Create the Ed25519 signing key of ``branch_id`` in ``out_dir``.

    Writes ``<branch_id>.key`` (PEM PKCS#8, mode 0600) and ``<branch_id>.pub``
    (PEM SubjectPublicKeyInfo). The private key never leaves the branch; the
    public key goes to whoever verifies its ledger.

    Parameters
    ----------
    out_dir
        Directory for both files (created if missing).
    branch_id
        Names the files; letters, digits, ``-``, ``_`` and ``.``.
    overwrite
        Replace an existing key. A replaced key no longer verifies the
        entries it signed, so this is off by default.

    Returns
    -------
    tuple of Path
        ``(private_key_path, public_key_path)``.

    Raises
    ------
    KeyFileError
        If the key exists and ``overwrite`` is false, or ``branch_id`` is not a
        plain file name.
    """
    if (
        not branch_id
        or branch_id in (".", "..")
        or any(not (c.isalnum() or c in "-_.") for c in branch_id)
    ):
        raise KeyFileError(
            f"branch id {branch_id!r} cannot name a key file; use letters, digits, '-', '_', '.'"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path = out / f"{branch_id}{PRIVATE_SUFFIX}"
    public_path = out / f"{branch_id}{PUBLIC_SUFFIX}"
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise KeyFileError(
            f"{private_path} already exists; a new key would orphan the ledger entries it "
            "signed. Keep it, or pass overwrite=True (--overwrite) to replace it"
        )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.unlink(missing_ok=True)
    # Create with 0600 from the start: the key is never readable by others, even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    os.chmod(private_path, 0o600)  # in case the umask removed owner bits
    public_path.write_bytes(_public_pem(key.public_key()))
    return private_path, public_path


def key_on_first_use(out_dir: str | os.PathLike[str], name: str) -> Path:
    """The private key ``<name>.key`` in ``out_dir``, created (with ``.pub``) when missing.

    For keys nobody provisions by hand: the federation's model release key
    (``release.key`` beside the server's files) and a branch's model signing
    key when its node config names none.

    Returns
    -------
    Path
        The private key file; the public key is the same path with ``.pub``.
    """
    private_path = Path(out_dir) / f"{name}{PRIVATE_SUFFIX}"
    if not private_path.exists():
        generate_signing_key(out_dir, name)
        logger.info("created the signing key %s", private_path)
    return private_path


def _read(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{kind} key file {path} not found; create it with `fedcrm node init`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {kind} key file {path}: {exc.strerror}") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a branch's Ed25519 private key (PEM PKCS#8, unencrypted).

    Logs a warning when the file is readable by group or others.

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, not PEM, or not an Ed25519 private key.
    """
    path = Path(path)
    data = _read(path, "private")
    try:
        mode = path.stat().st_mode
    except OSError:  # pragma: no cover - read succeeded just above
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "private key %s is accessible by group or others (mode %o); run `chmod 600 %s`",
            path,
            stat.S_IMODE(mode),
            path,
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if b"PUBLIC KEY" in data:
            raise KeyFileError(
                f"{path} holds a public key; give the private key (<branch_id>.key)"
            ) from None
        raise KeyFileError(
            f"{path} is not an unencrypted PEM PKCS#8 private key; "
            "create one with `fedcrm node init`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a branch's Ed25519 public key (PEM SubjectPublicKeyInfo).

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, a private key, or not an Ed25519 public key.
    """
    path = Path(path)
    data = _read(path, "public")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"{path} holds a private key; give the public key (<branch_id>.pub) and keep "
            "the private key at the branch"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not a PEM SubjectPublicKeyInfo public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_key_of(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    """The public half of ``key`` (``key`` itself when it is public)."""
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public_key_of(key).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """Ed25519 signature of ``data``, base64 text."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify_signature(public_key: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s signature of ``data``."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        public_key.verify(raw, data)
    except (InvalidSignature, binascii.Error, ValueError, UnicodeEncodeError, AttributeError):
        return False
    return True
