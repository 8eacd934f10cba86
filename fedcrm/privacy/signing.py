"""Long-term keys of branches (the one module wrapping cryptography's key formats).

Each branch has two long-term key pairs, both born on the branch's machine:

* an **Ed25519 signing key** (RFC 8032): ``<branch_id>.key`` (PEM, PKCS#8,
  unencrypted, ``-----BEGIN PRIVATE KEY-----``, mode 0600) and
  ``<branch_id>.pub`` (PEM, X.509 SubjectPublicKeyInfo, ``-----BEGIN PUBLIC
  KEY-----``). It signs ledger entries and secure-aggregation messages.
  Signatures are raw 64-byte Ed25519 signatures, carried as base64 text. A
  key is named by :func:`key_id`, the first 16 hex digits of the SHA-256 of
  its raw 32-byte public key.
* an **X25519 agreement key** (RFC 7748): ``<branch_id>.x25519.key`` (PEM,
  PKCS#8, mode 0600) and ``<branch_id>.x25519.pub`` (PEM,
  SubjectPublicKeyInfo). Peers encrypt secret shares and sealed payloads to it
  (:mod:`fedcrm.crypto.masking`, :mod:`fedcrm.crypto.sealing`).

A roster carries public keys in their **raw** form (32 bytes each,
:func:`raw_public_bytes`, :func:`signing_public_from_raw`,
:func:`agreement_public_from_raw`).
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
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedcrm.errors import KeyFileError

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "X25519PrivateKey",
    "X25519PublicKey",
    "agreement_public_from_raw",
    "generate_agreement_key",
    "generate_signing_key",
    "key_id",
    "load_agreement_private_key",
    "load_agreement_public_key",
    "load_private_key",
    "load_public_key",
    "public_key_of",
    "raw_public_bytes",
    "sign",
    "signing_public_from_raw",
    "verify_signature",
]

logger = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
AGREEMENT_PRIVATE_SUFFIX = ".x25519.key"
AGREEMENT_PUBLIC_SUFFIX = ".x25519.pub"

_PrivateKey = Ed25519PrivateKey | X25519PrivateKey
_PublicKey = Ed25519PublicKey | X25519PublicKey


def _public_pem(public_key: _PublicKey) -> bytes:
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
    return _write_key_pair(
        out_dir,
        branch_id,
        Ed25519PrivateKey.generate(),
        (PRIVATE_SUFFIX, PUBLIC_SUFFIX),
        overwrite=overwrite,
        orphans="the ledger entries it signed",
    )


def generate_agreement_key(
    out_dir: str | os.PathLike[str], branch_id: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Create the X25519 agreement key of ``branch_id`` in ``out_dir``.

    Writes ``<branch_id>.x25519.key`` (PEM PKCS#8, mode 0600) and
    ``<branch_id>.x25519.pub`` (PEM SubjectPublicKeyInfo). Peers encrypt to the
    public key; the private key never leaves the branch.

    Returns
    -------
    tuple of Path
        ``(private_key_path, public_key_path)``.

    Raises
    ------
    KeyFileError
        As :func:`generate_signing_key`.
    """
    return _write_key_pair(
        out_dir,
        branch_id,
        X25519PrivateKey.generate(),
        (AGREEMENT_PRIVATE_SUFFIX, AGREEMENT_PUBLIC_SUFFIX),
        overwrite=overwrite,
        orphans="what peers sealed to it",
    )


def _write_key_pair(
    out_dir: str | os.PathLike[str],
    branch_id: str,
    key: _PrivateKey,
    suffixes: tuple[str, str],
    *,
    overwrite: bool,
    orphans: str,
) -> tuple[Path, Path]:
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
    private_path = out / f"{branch_id}{suffixes[0]}"
    public_path = out / f"{branch_id}{suffixes[1]}"
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise KeyFileError(
            f"{private_path} already exists; a new key would orphan {orphans}. "
            "Keep it, or pass overwrite=True (--overwrite) to replace it"
        )
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
    key = _load_private(Path(path), Ed25519PrivateKey, "Ed25519", "<branch_id>.key")
    assert isinstance(key, Ed25519PrivateKey)
    return key


def load_agreement_private_key(path: str | os.PathLike[str]) -> X25519PrivateKey:
    """Load a branch's X25519 agreement private key (PEM PKCS#8, unencrypted).

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, not PEM, or not an X25519 private key.
    """
    key = _load_private(Path(path), X25519PrivateKey, "X25519", "<branch_id>.x25519.key")
    assert isinstance(key, X25519PrivateKey)
    return key


def _load_private(path: Path, kind: type, label: str, name: str) -> _PrivateKey:
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
                f"{path} holds a public key; give the private key ({name})"
            ) from None
        raise KeyFileError(
            f"{path} is not an unencrypted PEM PKCS#8 private key; "
            "create one with `fedcrm node init`"
        ) from None
    if not isinstance(key, kind):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an {label} private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a branch's Ed25519 public key (PEM SubjectPublicKeyInfo).

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, a private key, or not an Ed25519 public key.
    """
    key = _load_public(Path(path), Ed25519PublicKey, "Ed25519", "<branch_id>.pub")
    assert isinstance(key, Ed25519PublicKey)
    return key


def load_agreement_public_key(path: str | os.PathLike[str]) -> X25519PublicKey:
    """Load a branch's X25519 agreement public key (PEM SubjectPublicKeyInfo).

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, a private key, or not an X25519 public key.
    """
    key = _load_public(Path(path), X25519PublicKey, "X25519", "<branch_id>.x25519.pub")
    assert isinstance(key, X25519PublicKey)
    return key


def _load_public(path: Path, kind: type, label: str, name: str) -> _PublicKey:
    data = _read(path, "public")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"{path} holds a private key; give the public key ({name}) and keep "
            "the private key at the branch"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not a PEM SubjectPublicKeyInfo public key") from None
    if not isinstance(key, kind):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an {label} public key")
    return key


def raw_public_bytes(key: _PrivateKey | _PublicKey) -> bytes:
    """The raw 32-byte public key (Ed25519 or X25519) of ``key``."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey | X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_public_from_raw(raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its raw 32 bytes.

    Raises
    ------
    KeyFileError
        Not 32 bytes.
    """
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError("an Ed25519 public key is 32 raw bytes") from None


def agreement_public_from_raw(raw: bytes) -> X25519PublicKey:
    """An X25519 public key from its raw 32 bytes.

    Raises
    ------
    KeyFileError
        Not 32 bytes.
    """
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError("an X25519 public key is 32 raw bytes") from None


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
