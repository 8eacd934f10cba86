"""A branch's own keys: Ed25519 ledger signing, X25519 key agreement (wraps cryptography).

Both are born on the branch's machine (``fedcrm node init``); only their
public halves leave it.

File formats:

* signing private key ``<branch_id>.key``: PEM, PKCS#8, unencrypted Ed25519
  private key (``-----BEGIN PRIVATE KEY-----``), file mode 0600;
* signing public key ``<branch_id>.pub``: PEM, X.509 SubjectPublicKeyInfo
  (``-----BEGIN PUBLIC KEY-----``); a verifier's ``<branch_id>.pub`` may hold
  several such blocks (the branch's current and retired keys);
* agreement private key ``<branch_id>.x25519.key``: PEM, PKCS#8, unencrypted
  X25519 private key (RFC 7748), file mode 0600;
* agreement public key ``<branch_id>.x25519.pub``: PEM, X.509
  SubjectPublicKeyInfo. Other branches derive pairwise secrets with it
  (secure-aggregation masks, handing over the encryption secret).

A roster carries public keys in their raw form (32 bytes each,
:func:`raw_public_bytes`, :func:`signing_public_from_raw`,
:func:`agreement_public_from_raw`). Signatures are raw 64-byte Ed25519
signatures (RFC 8032), carried as base64 text. A key is named by
:func:`key_id`, the first 16 hex digits of the SHA-256 of its raw 32-byte
public key (for either kind).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedcrm.errors import ConfigError, KeyFileError
from fedcrm.ids import check_id
from fedcrm.privacy.signatures import (
    agreement_public_from_raw,
    key_id,
    public_key_of,
    raw_public_bytes,
    sign,
    signing_public_from_raw,
    verify_signature,
)

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "X25519PrivateKey",
    "X25519PublicKey",
    "agreement_public_from_raw",
    "agreement_public_key_from_pem",
    "generate_agreement_key",
    "generate_signing_key",
    "key_id",
    "key_on_first_use",
    "load_agreement_private_key",
    "load_agreement_public_key",
    "load_private_key",
    "load_public_key",
    "load_public_keys",
    "public_key_of",
    "public_pem",
    "raw_public_bytes",
    "sign",
    "signing_public_from_raw",
    "signing_public_key_from_pem",
    "verify_signature",
]

logger = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
AGREEMENT_PRIVATE_SUFFIX = ".x25519.key"
AGREEMENT_PUBLIC_SUFFIX = ".x25519.pub"
_PEM_BLOCK = b"-----END PUBLIC KEY-----"


def _public_pem(public_key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_pem(
    key: Ed25519PrivateKey | Ed25519PublicKey | X25519PrivateKey | X25519PublicKey,
) -> str:
    """The public half of ``key`` as PEM SubjectPublicKeyInfo text."""
    if isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)):
        key = key.public_key()
    return _public_pem(key).decode("ascii")


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    # Create with 0600 from the start: the key is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # in case the umask removed owner bits


def _key_file_name(branch_id: str) -> str:
    try:
        return check_id(branch_id, "branch id")
    except ConfigError as exc:
        raise KeyFileError(f"cannot name a key file: {exc}") from None


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
        Names the files; a path-safe id (:func:`fedcrm.identity.check_id`).
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
    branch_id = _key_file_name(branch_id)
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
    _write_private(private_path, private_pem)
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


def _load_private(path: Path, cls: type, what: str) -> Any:
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
            raise KeyFileError(f"{path} holds a public key; give the private key") from None
        raise KeyFileError(
            f"{path} is not an unencrypted PEM PKCS#8 private key; "
            "create one with `fedcrm node init`"
        ) from None
    if not isinstance(key, cls):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an {what} private key")
    return key


def _public_from_pem(data: bytes, cls: type, what: str, source: str) -> Any:
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"{source} holds a private key; give the public key and keep the private key "
            "at the branch"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{source} is not a PEM SubjectPublicKeyInfo public key") from None
    if not isinstance(key, cls):
        raise KeyFileError(f"{source} holds a {type(key).__name__}, not an {what} public key")
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a branch's Ed25519 private key (PEM PKCS#8, unencrypted).

    Logs a warning when the file is readable by group or others.

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, not PEM, or not an Ed25519 private key.
    """
    return _load_private(Path(path), Ed25519PrivateKey, "Ed25519")  # type: ignore[no-any-return]


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a branch's Ed25519 public key (PEM SubjectPublicKeyInfo; the first block).

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, a private key, or not an Ed25519 public key.
    """
    path = Path(path)
    return signing_public_key_from_pem(_read(path, "public"), str(path))


def signing_public_key_from_pem(data: str | bytes, source: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM SubjectPublicKeyInfo text; ``source`` names it in errors.

    Raises
    ------
    KeyFileError
        If it is a private key, not PEM, or not an Ed25519 public key.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    return _public_from_pem(raw, Ed25519PublicKey, "Ed25519", source)  # type: ignore[no-any-return]


def load_public_keys(path: str | os.PathLike[str]) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in a file of PEM blocks (a branch's current and retired keys).

    Raises
    ------
    KeyFileError
        If the file is missing or unreadable, or a block is not an Ed25519 public key.
    """
    path = Path(path)
    data = _read(path, "public")
    blocks = [b + _PEM_BLOCK for b in data.split(_PEM_BLOCK) if b.strip()]
    return [signing_public_key_from_pem(b, str(path)) for b in blocks]


# --------------------------------------------------------------- agreement keys
def generate_agreement_key(
    out_dir: str | os.PathLike[str], branch_id: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Create the X25519 key-agreement key of ``branch_id`` in ``out_dir``.

    Writes ``<branch_id>.x25519.key`` (PEM PKCS#8, mode 0600) and
    ``<branch_id>.x25519.pub`` (PEM SubjectPublicKeyInfo).

    Returns
    -------
    tuple of Path
        ``(private_key_path, public_key_path)``.

    Raises
    ------
    KeyFileError
        If the key exists and ``overwrite`` is false, or ``branch_id`` is not a path-safe id.
    """
    branch_id = _key_file_name(branch_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path = out / f"{branch_id}{AGREEMENT_PRIVATE_SUFFIX}"
    public_path = out / f"{branch_id}{AGREEMENT_PUBLIC_SUFFIX}"
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise KeyFileError(f"{private_path} already exists; pass --overwrite to replace it")
    key = X25519PrivateKey.generate()
    _write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    public_path.write_bytes(_public_pem(key.public_key()))
    return private_path, public_path


def load_agreement_private_key(path: str | os.PathLike[str]) -> X25519PrivateKey:
    """Load a branch's X25519 private key (PEM PKCS#8, unencrypted).

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, not PEM, or not an X25519 private key.
    """
    return _load_private(Path(path), X25519PrivateKey, "X25519")  # type: ignore[no-any-return]


def load_agreement_public_key(path: str | os.PathLike[str]) -> X25519PublicKey:
    """Load an X25519 public key file (PEM SubjectPublicKeyInfo).

    Raises
    ------
    KeyFileError
        If the file is missing, unreadable, a private key, or not an X25519 public key.
    """
    path = Path(path)
    return agreement_public_key_from_pem(_read(path, "public"), str(path))


def agreement_public_key_from_pem(data: str | bytes, source: str) -> X25519PublicKey:
    """An X25519 public key from PEM SubjectPublicKeyInfo text; ``source`` names it in errors.

    Raises
    ------
    KeyFileError
        If it is a private key, not PEM, or not an X25519 public key.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    return _public_from_pem(raw, X25519PublicKey, "X25519", source)  # type: ignore[no-any-return]
