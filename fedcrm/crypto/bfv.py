"""Exact encrypted sums of integer vectors with BFV (TenSEAL), branch side.

One branch (the elected key holder) calls :func:`generate`; the secret
context travels to the other branches sealed to each of them
(:mod:`fedcrm.crypto.sealing`), never in the clear and never usable by the
server. The server gets :attr:`SecretContext.parameters` only
(:class:`~fedcrm.crypto.bfv_wire.BFVParameters`: numbers, no key of any kind)
and sums with :mod:`fedcrm.crypto.bfv_aggregate`.

Parameters and why
------------------
``ts.context(BFV, poly_modulus_degree=8192, plain_modulus=t,
coeff_mod_bit_sizes=[30, 30])``, symmetric (secret-key) encryption, batching
(8192 slots of integers mod ``t`` per ciphertext). Ciphertexts live modulo
the first prime ``q = 1073643521``; the second is SEAL's key-switching prime
(no key switching is ever done: sums only, no multiplication or rotation).

* **Security.** log2 of the whole coefficient modulus is 60 bits. The HE
  standard (Albrecht et al., *Homomorphic Encryption Security Standard*,
  2018, Table 1, ternary secret, classical attacks) allows for N = 8192 at
  most 218 bits for 128-bit security, 152 bits for 192-bit and 118 bits for
  256-bit: 60 bits is inside its strongest row, **256-bit security**. SEAL
  itself enforces the 128-bit bound when the context is built.
* **Plain modulus** ``t = 1785857 = 109 * 2**14 + 1`` (prime, ``t = 1 mod
  2N`` for batching, 20.8 bits). A sum of ``K`` fresh ciphertexts decrypts
  exactly when its noise ``|E| < q / (2t)``; ``E`` is the sum of the ``K``
  encryption errors (SEAL's default sampler draws each coefficient from a
  centred binomial distribution, the difference of the Hamming weights of two
  21-bit strings: variance 10.5, ``|e| <= 21``) plus at most ``K/2`` of
  plaintext-scaling rounding. The sum of ``K`` such errors is ``Binomial(42K, 1/2) - 21K``
  exactly, so :func:`decryption_failure_log2` computes the probability that
  any of the 8192 coefficients of a sum crosses the bound (union bound, worst
  rounding). ``t`` is the largest prime ``= 1 mod 2N`` for which a sum of
  **64** fresh ciphertexts fails with probability below ``2**-40``
  (:func:`choose_plain_modulus`; it gives ``2**-68.6``; the next candidate,
  2277377, only ``2**-34.9``). Measured: SEAL's invariant noise budget is 4
  bits for a fresh ciphertext and 1 bit for a sum of 64 (0 bits, still exact
  but without margin, at 256); at ``t = 4079617`` (22 bits) sums of 120 fail
  in 18 of 20 trials, where the binomial tail alone (no rounding) predicts
  82 %: the noise model fits this SEAL build.
  :data:`~fedcrm.crypto.bfv_wire.MAX_CONTRIBUTIONS` = 64 caps every sum.
* **Size.** ``c1`` travels as SEAL's 64-byte seed and ``c0`` as 8192
  uint32 (``q < 2**32``): 32,981 bytes per 8192 values, **1.007x the fp32
  bytes** of the same vector (TenSEAL's own zstd serialization of both halves:
  2.19x).

Keys and files
--------------
:meth:`SecretContext.to_bytes` is TenSEAL's serialization with the secret key
only (no public, relinearisation or Galois keys); :meth:`SecretContext.save`
writes it with mode 0600. ``context_id`` (16 hex digits) is the SHA-256 of a
domain tag, the parameters and the SHA-256 of those bytes: a fingerprint of
parameters and key that reveals nothing about the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from fedcrm.crypto import seal_format as sf
from fedcrm.crypto.bfv_aggregate import check_contributors
from fedcrm.crypto.bfv_params import (
    CBD_WIDTH,
    COEFF_MOD_BIT_SIZES,
    FAILURE_LOG2_TARGET,
    HE_STANDARD_MAX_LOG_Q,
    PLAIN_MODULUS,
    POLY_MODULUS_DEGREE,
    choose_plain_modulus,
    data_modulus,
    decryption_failure_log2,
    security_level_bits,
)
from fedcrm.crypto.bfv_params import _is_prime as _is_prime
from fedcrm.crypto.bfv_wire import (
    BFVParameters,
    EncryptedVector,
    OwnSeeds,
    pack_chunk,
    parse_vector,
)
from fedcrm.crypto.primitives import write_private
from fedcrm.errors import EncryptionError, KeyFileError

__all__ = [
    "CBD_WIDTH",
    "COEFF_MOD_BIT_SIZES",
    "FAILURE_LOG2_TARGET",
    "HE_STANDARD_MAX_LOG_Q",
    "PLAIN_MODULUS",
    "POLY_MODULUS_DEGREE",
    "SecretContext",
    "choose_plain_modulus",
    "data_modulus",
    "decrypt",
    "decryption_failure_log2",
    "encrypt",
    "generate",
    "noise_budget_bits",
    "security_level_bits",
]

_ID_DOMAIN = b"fedcrm-bfv-context/v1\0"


# -- the secret context ------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SecretContext:
    """A branch's BFV context with the secret key; ``parameters`` is what the server may hold."""

    context: ts.Context
    parameters: BFVParameters
    serialized: bytes = field(compare=False)

    def __repr__(self) -> str:
        return f"SecretContext(context_id={self.parameters.context_id!r})"

    @property
    def plain_modulus(self) -> int:
        return self.parameters.plain_modulus

    def to_bytes(self) -> bytes:
        """TenSEAL serialization with the secret key and no other key (keep it secret)."""
        return self.serialized

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretContext:
        """Load :meth:`to_bytes` output and check it holds fedcrm's BFV parameters.

        Raises
        ------
        KeyFileError
            Not a TenSEAL context, no secret key, or other parameters.
        """
        try:
            ctx = ts.context_from(bytes(data))
            parms = ctx.seal_context().data.key_context_data().parms()
            bits = tuple(m.bit_count() for m in parms.coeff_modulus())
            ok = (
                parms.scheme().name == "BFV"
                and parms.poly_modulus_degree() == POLY_MODULUS_DEGREE
                and bits == COEFF_MOD_BIT_SIZES
                and parms.plain_modulus().value() == PLAIN_MODULUS
            )
        except Exception as exc:  # TenSEAL raises bare exceptions on bad bytes
            raise KeyFileError("not a TenSEAL context (a BFV secret context expected)") from exc
        if not ok:
            raise KeyFileError("the context does not hold fedcrm's BFV parameters")
        if not ctx.is_private():
            raise KeyFileError("the BFV context holds no secret key")
        return cls(ctx, _parameters(ctx, bytes(data)), bytes(data))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write :meth:`to_bytes` to ``path`` with mode 0600 (atomically).

        Raises
        ------
        KeyFileError
            The file exists and ``overwrite`` is false.
        """
        p = Path(path)
        if p.exists() and not overwrite:
            raise KeyFileError(f"{p} already exists; pass overwrite=True to replace it")
        return write_private(p, self.serialized)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SecretContext:
        """Load a context written by :meth:`save`.

        Raises
        ------
        KeyFileError
            Missing or unreadable file, or see :meth:`from_bytes`.
        """
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read the BFV secret context {p}: {exc.strerror}") from None
        return cls.from_bytes(data)


def _parameters(ctx: ts.Context, serialized: bytes) -> BFVParameters:
    data = ctx.seal_context().data.first_context_data()
    parms = data.parms()
    q = int(parms.coeff_modulus()[0].value())
    t = int(parms.plain_modulus().value())
    parms_id = struct.pack("<4Q", *data.parms_id())
    core = json.dumps([POLY_MODULUS_DEGREE, q, t, parms_id.hex()]).encode()
    digest = hashlib.sha256(_ID_DOMAIN + core + hashlib.sha256(serialized).digest())
    return BFVParameters(POLY_MODULUS_DEGREE, q, t, parms_id, digest.hexdigest()[:16])


def generate() -> SecretContext:
    """Create a fresh BFV secret context (at the key-holder branch, from the OS CSPRNG)."""
    ctx = ts.context(
        ts.SCHEME_TYPE.BFV,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        plain_modulus=PLAIN_MODULUS,
        coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    serialized = ctx.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return SecretContext.from_bytes(serialized)


# -- encrypt and decrypt -----------------------------------------------------------------------


def _meta(params: BFVParameters) -> sf.CiphertextMeta:
    return sf.CiphertextMeta(params.parms_id, False, params.poly_modulus_degree, 1, 1.0)


class _Tools:
    def __init__(self, ctx: ts.Context) -> None:
        sc = ctx.seal_context().data
        self.encoder = seal.BatchEncoder(sc)
        self.encryptor = seal.Encryptor(sc, ctx.secret_key().data)
        self.decryptor = seal.Decryptor(sc, ctx.secret_key().data)
        self.scratch = sf.Scratch()


_TOOLS: weakref.WeakKeyDictionary[Any, _Tools] = weakref.WeakKeyDictionary()
_TOOLS_LOCK = threading.Lock()


def _tools(ctx: ts.Context) -> _Tools:
    with _TOOLS_LOCK:
        if ctx not in _TOOLS:
            _TOOLS[ctx] = _Tools(ctx)
        return _TOOLS[ctx]


def _as_ints(values: Any, t: int) -> np.ndarray:
    vec = np.asarray(values)
    if vec.ndim != 1 or vec.size == 0:
        raise EncryptionError(f"expected a non-empty flat vector, got shape {vec.shape}")
    if not np.issubdtype(vec.dtype, np.integer):
        raise EncryptionError("BFV encrypts integers mod t; quantize real values first")
    if vec.min() < 0 or vec.max() >= t:
        raise EncryptionError(f"values must lie in [0, {t}) (integers mod t)")
    return vec.astype(np.uint64)


def encrypt(ctx: SecretContext, values: Any) -> tuple[EncryptedVector, OwnSeeds]:
    """Encrypt integers mod ``t`` (any length; 8192 per seeded ciphertext).

    Returns
    -------
    tuple[EncryptedVector, OwnSeeds]
        The upload, and its seed identities: the branch's contributor identity
        for this step, to keep until it decrypts the aggregate.
    """
    params = ctx.parameters
    vec = _as_ints(values, params.plain_modulus)
    tools = _tools(ctx.context)
    chunks, seeds = [], []
    for i in range(0, vec.size, params.slots):
        part = vec[i : i + params.slots]
        plain = seal.Plaintext()
        tools.encoder.encode(part.tolist(), plain)
        try:
            blob = tools.scratch.save_bytes(tools.encryptor.encrypt_symmetric(plain))
            c0, info, version = sf.parse_seeded(_meta(params), blob)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EncryptionError(f"BFV encryption failed: {exc}") from None
        chunks.append(pack_chunk(params, c0, info, n_values=part.size, seal_version=version))
        seeds.append(sf.seed_identity(info))
    return EncryptedVector(params.context_id, int(vec.size), tuple(chunks)), tuple(seeds)


def _ciphertexts(ctx: SecretContext, agg: EncryptedVector) -> list[tuple[ts.BFVVector, int]]:
    params = ctx.parameters
    out = []
    for chunk in parse_vector(params, agg, None):
        c0 = (chunk.c0.astype(np.uint64) % np.uint64(params.data_modulus)).tobytes()
        zeros, total = bytes(len(c0)), None
        for k, info in enumerate(chunk.seed_infos()):
            blob = sf.build_seeded(_meta(params), c0 if k == 0 else zeros, info, chunk.seal_version)
            vec = ts.bfv_vector_from(ctx.context, sf.vector_proto(blob, chunk.n_values))
            if total is None:
                total = vec
            else:
                total.add_(vec)
        assert total is not None  # parse_chunk guarantees at least one seed
        out.append((total, chunk.n_values))
    return out


def decrypt(
    ctx: SecretContext,
    agg: EncryptedVector,
    *,
    own_seeds: OwnSeeds,
    min_contributors: int,
    expected_contributors: int | None = None,
) -> np.ndarray:
    """Decrypt an aggregate to its sum mod ``t``, after :func:`check_contributors` accepts it.

    Returns
    -------
    numpy.ndarray
        int64 values in ``[0, t)``, one per encrypted value.

    Raises
    ------
    ContributorsError
        The contributor set is refused (see :func:`check_contributors`).
    EncryptionError
        SEAL cannot load a ciphertext.
    """
    params = ctx.parameters
    check_contributors(
        params,
        agg,
        own_seeds,
        min_contributors=min_contributors,
        expected_contributors=expected_contributors,
    )
    try:
        parts = [np.asarray(v.decrypt(), dtype=np.int64)[:n] for v, n in _ciphertexts(ctx, agg)]
    except (ValueError, RuntimeError) as exc:
        raise EncryptionError(f"aggregate does not load as SEAL ciphertexts: {exc}") from None
    return np.concatenate(parts) % params.plain_modulus


def noise_budget_bits(ctx: SecretContext, agg: EncryptedVector) -> int:
    """SEAL's invariant noise budget (bits) of the worst chunk of ``agg``; 0 = no margin left."""
    dec = _tools(ctx.context).decryptor
    return min(dec.invariant_noise_budget(v.ciphertext()[0]) for v, _ in _ciphertexts(ctx, agg))
