"""CKKS contexts and key files for encrypted aggregation (TenSEAL).

Key ceremony
------------
:func:`key_ceremony` writes three files into one directory:

``he_secret.ctx`` (mode 0600)
    TenSEAL context *with* the secret key. Every branch gets a copy; the
    server must never see it.
``he_public.ctx``
    The same context *without* the secret key, for the server. It carries the
    relinearisation keys only so that its bytes are unique to this ceremony:
    ``context_id`` = first 16 hex digits of the SHA-256 of this file.
``he_params.json``
    Public parameters, ``context_id`` and ``secret_check`` (SHA-256 prefix of
    ``he_secret.ctx``, a key-check value that binds the secret file to this
    ceremony; the secret key has thousands of bits of entropy, so the hash
    reveals nothing usable).

Parameters and why
------------------
Aggregation only adds ciphertexts: no multiplication, no rotation, so a
modulus chain of depth 0 suffices and no Galois keys are generated.

* ``poly_modulus_degree`` N = 8192 (4096 slots per ciphertext), coefficient
  modulus ``[40, 40]`` (80 bits; the 128-bit HE-standard bound for N = 8192 is
  218 bits, for N = 4096 it is 109 bits). Ciphertexts live at the first level,
  i.e. one 40-bit prime; the second prime is the key-switching prime.
* Symmetric (secret-key) encryption: branches hold the secret key anyway; it is
  ~40 % faster than public-key encryption at N = 8192 (0.12 s vs 0.20 s for
  200k values), adds less noise, and the server, which holds no public key,
  cannot fabricate ciphertexts.
* Scale 2**20. A slot holds a value x as round(x * 2**20) modulo a 40-bit
  prime, so the *sum over branches* must stay within ``MAX_ABS_SUM`` = 2**18
  (one bit of margin below 2**19). Absolute error per coordinate of the
  decrypted sum (measured): rms 2e-4 for one update (fresh-encryption noise
  ~2**7.7 / 2**20), rms 6e-4 and max 3e-3 over 40k coordinates for a sum of 10
  (noise adds as a random walk). Relative error of the weighted average is
  thus ~6e-4 / rms(sum): 1.4e-6 for 200k values ~N(0, 0.1) with example-count
  weights 100..3000 (bench/he.py). Use example counts as weights (not
  fractions), so the sum sits far above the noise floor; parameters of
  magnitude <= 5 with up to ~50k examples in total stay inside the range.
  :func:`fedcrm.crypto.packing.encrypt_update` refuses values beyond the range
  and :func:`fedcrm.crypto.packing.decrypt_sum` refuses a sum that overflowed.

Wire format: seeded ciphertexts, uncompressed (see :mod:`fedcrm.crypto.wire`)
------------------------------------------------------------------------------
Branches encrypt with SEAL's seeded symmetric encryption: ``c1`` travels as a
64-byte PRNG seed, ``c0`` as 5 bytes per coefficient (the data prime has 40
bits). Upload: 2.57x the fp32 bytes for 200k values (49 chunks + the weight
ciphertext), encrypt ~0.1 s CPU. The server adds the ``c0`` halves with numpy
and keeps the seeds (10 branches x 200k values: ~0.015 s CPU, bytes in -> bytes
out); a branch decrypting the sum lets SEAL expand every seed (~0.35 ms per
seed and ciphertext, ~0.2 s CPU for 10 branches).

Measured alternatives (TenSEAL 0.3.18, 200k values, upload = ciphertext bytes /
fp32 bytes), all with TenSEAL's own serialization: N=8192 [60,60] 8.0x;
N=4096 [40,40] 6.02x; N=8192 [40,40] 5.78x; N=8192 [36,36] 5.4x; [30,30] 4.4x
but relative error ~1e-4 at the limit. Upload size depends only on the bits of
the data prime (N cancels out); below 40 bits the dynamic range becomes too
tight for example-count weights. TenSEAL always zstd-compresses ciphertexts
and never seeds them: with [40, 40] that cost ~0.18 s CPU to aggregate 10
branches (0.163 s of it deserialization, 0.015 s additions), hence the format
above.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenseal as ts

from fedcrm.errors import EncryptionError, KeyFileError

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (40, 40)
SCALE_BITS = 20
SECURITY_LEVEL_BITS = 128
MAX_ABS_SUM = 2.0**18

SECRET_FILE = "he_secret.ctx"
PUBLIC_FILE = "he_public.ctx"
PARAMS_FILE = "he_params.json"

_SER_KW: dict[str, bool] = {"save_galois_keys": False, "save_public_key": False}


def fingerprint(data: bytes) -> str:
    """Return the first 16 hex digits of the SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class _Loaded:
    context: ts.Context
    context_id: str
    slots: int
    scale: float
    max_abs_sum: float = field(default=MAX_ABS_SUM)


@dataclass(frozen=True)
class SecretContext(_Loaded):
    """A branch's CKKS context holding the secret key (encrypt and decrypt)."""


@dataclass(frozen=True)
class PublicContext(_Loaded):
    """The server's CKKS context: no secret key, it can only add ciphertexts."""


def _new_context() -> ts.Context:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.global_scale = 2.0**SCALE_BITS
    return ctx


def _params(public_bytes: bytes, secret_bytes: bytes) -> dict[str, Any]:
    return {
        "scheme": "CKKS",
        "library": f"tenseal {ts.__version__}",
        "encryption_type": "symmetric",
        "poly_modulus_degree": POLY_MODULUS_DEGREE,
        "slots": POLY_MODULUS_DEGREE // 2,
        "coeff_mod_bit_sizes": list(COEFF_MOD_BIT_SIZES),
        "global_scale": 2.0**SCALE_BITS,
        "global_scale_bits": SCALE_BITS,
        "security_level_bits": SECURITY_LEVEL_BITS,
        "max_abs_sum": MAX_ABS_SUM,
        "galois_keys": False,
        "context_id": fingerprint(public_bytes),
        "secret_check": fingerprint(secret_bytes),
    }


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def key_ceremony(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> tuple[Path, Path]:
    """Create a CKKS key pair and write the secret, public and parameter files.

    Parameters
    ----------
    out_dir
        Directory to write into (created if missing).
    overwrite
        Replace existing key files; otherwise an existing file is an error.

    Returns
    -------
    tuple[Path, Path]
        Paths of ``he_secret.ctx`` (for branches) and ``he_public.ctx`` (for the
        server). ``he_params.json`` is written next to them.

    Raises
    ------
    KeyFileError
        If a key file exists and ``overwrite`` is false.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    secret_path, public_path, params_path = (
        out / SECRET_FILE,
        out / PUBLIC_FILE,
        out / PARAMS_FILE,
    )
    existing = [p.name for p in (secret_path, public_path, params_path) if p.exists()]
    if existing and not overwrite:
        raise KeyFileError(
            f"{out}: {', '.join(existing)} already exist; refusing to overwrite keys "
            "(ciphertexts made under them would become undecryptable). "
            "Pass overwrite=True / --overwrite to replace them."
        )
    ctx = _new_context()
    secret_bytes = ctx.serialize(save_secret_key=True, save_relin_keys=False, **_SER_KW)
    public_bytes = ctx.serialize(save_secret_key=False, save_relin_keys=True, **_SER_KW)
    _write_secret(secret_path, secret_bytes)
    public_path.write_bytes(public_bytes)
    params = _params(public_bytes, secret_bytes)
    params_path.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return secret_path, public_path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"{what} {path} does not exist: run `fedcrm keys init --out DIR` "
            "and point the configuration at the file it wrote"
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read: {exc.strerror}") from exc


def _parse(data: bytes, path: Path, what: str) -> ts.Context:
    try:
        ctx = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare exceptions on bad bytes
        raise KeyFileError(f"{path} is not a TenSEAL context ({what} expected)") from exc
    try:
        scale = ctx.global_scale
    except Exception as exc:
        raise KeyFileError(f"{path}: context has no global scale; not a fedcrm key file") from exc
    if not math.isfinite(scale) or scale <= 0:
        raise KeyFileError(f"{path}: invalid global scale")
    return ctx


def _slots(ctx: ts.Context) -> int:
    return int(ctx.seal_context().data.key_context_data().parms().poly_modulus_degree()) // 2


def load_secret_context(
    path: str | os.PathLike[str], *, params_path: str | os.PathLike[str] | None = None
) -> SecretContext:
    """Load a branch's secret context and check it against ``he_params.json``.

    Parameters
    ----------
    path
        ``he_secret.ctx`` written by :func:`key_ceremony`.
    params_path
        ``he_params.json`` of the same ceremony; default: next to ``path``.

    Raises
    ------
    KeyFileError
        Missing or unreadable file, not a TenSEAL context, a context without a
        secret key, or a secret file and parameter file from different ceremonies.
    """
    p = Path(path)
    data = _read(p, "secret HE context")
    ctx = _parse(data, p, "secret context")
    if not ctx.is_private():
        raise KeyFileError(
            f"{p} has no secret key: branches need he_secret.ctx from the key ceremony, "
            "not he_public.ctx"
        )
    pp = Path(params_path) if params_path is not None else p.with_name(PARAMS_FILE)
    params = _read_params(pp)
    if params.get("secret_check") != fingerprint(data):
        raise KeyFileError(
            f"{p} does not belong to {pp}: they come from different key ceremonies; "
            "copy he_secret.ctx and he_params.json from the same `fedcrm keys init` run"
        )
    return SecretContext(
        context=ctx,
        context_id=str(params["context_id"]),
        slots=_slots(ctx),
        scale=float(ctx.global_scale),
        max_abs_sum=float(params.get("max_abs_sum", MAX_ABS_SUM)),
    )


def _read_params(path: Path) -> dict[str, Any]:
    raw = _read(path, "HE parameter file")
    try:
        params = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{path} is not valid JSON") from exc
    if not isinstance(params, dict) or not isinstance(params.get("context_id"), str):
        raise KeyFileError(f"{path} has no context_id; not an he_params.json file")
    return params


def load_public_context(path: str | os.PathLike[str]) -> PublicContext:
    """Load the server's public context; refuse one that holds a secret key.

    Raises
    ------
    KeyFileError
        Missing or unreadable file, or not a TenSEAL context.
    EncryptionError
        The context holds a secret key (the server must never hold one).
    """
    p = Path(path)
    data = _read(p, "public HE context")
    ctx = _parse(data, p, "public context")
    if ctx.is_private() or ctx.has_secret_key():
        raise EncryptionError(
            f"{p} holds a secret key: the server must never load it. The central team "
            f"must use {PUBLIC_FILE} from the key ceremony; only branches get {SECRET_FILE}"
        )
    return PublicContext(
        context=ctx,
        context_id=fingerprint(data),
        slots=_slots(ctx),
        scale=float(ctx.global_scale),
    )


def read_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the public parameters recorded in ``he_params.json``."""
    return _read_params(Path(path))
