"""Compact wire format for seeded CKKS ciphertexts and their sums (no Flower, no secret key).

Why
---
A fresh symmetric (secret-key) CKKS ciphertext is ``(c0, c1)`` with ``c1 = a``
uniformly random and ``c0 = -a*s + e + m`` (NTT form, modulo the data prime
``q``). SEAL can save such a ciphertext *seeded*: instead of ``c1`` it stores
the 64-byte seed of the PRNG that expands to ``a`` (SEAL's
``Encryptor::encrypt_symmetric`` returning ``Serializable<Ciphertext>``;
TenSEAL's own ``serialize()`` never does, and always zstd-compresses). That
halves the upload. Each remaining coefficient of ``c0`` is uniform below
``q < 2**40`` and needs exactly 5 bytes, so we store ``c0`` as two planes: the
low 32 bits (uint32) and the high bits (uint8). Nothing is compressed, so the
server reads the coefficients with ``np.frombuffer`` (zero copy).

Adding ciphertexts is coefficient-wise addition modulo ``q`` of both halves,
exactly what SEAL's ``Evaluator::add`` does. The server adds the ``c0``
halves with numpy and keeps the seeds: a sum of ``K`` seeded ciphertexts is
``(sum c0, sum a_k)`` and is stored as ``sum c0`` plus the ``K`` seeds (64 bytes
each instead of a 40 KB polynomial; ``sum a_k`` is a public function of the
seeds). A branch that decrypts rebuilds ``K`` SEAL ciphertexts in SEAL's own
serialization (the first with ``c0 = sum c0``, the others with ``c0 = 0``), lets
SEAL load them (SEAL expands each seed to its ``a_k``), adds them with
TenSEAL and decrypts. The server never needs the secret key, any SEAL object,
nor the seeds' expansion.

Layout of one chunk (little endian)::

    header   72 bytes  _HEAD: magic b"FCK1", format version, SEAL version
                       (major, minor), high-plane bytes, key-ceremony tag
                       (8 bytes of context_id), parms_id (32 bytes), values
                       held, N, number of primes L, scale, number of seeds K
    lo plane 4*L*N     low 32 bits of every c0 coefficient (uint32)
    hi plane h*L*N     remaining bits (h = 1 byte for primes of <= 40 bits)
    seeds    81*K      SEAL-serialized UniformRandomGeneratorInfo (16-byte
                       SEAL header, PRNG type, 64-byte seed), verbatim

What the server checks (structure only; with no key nobody can tell a
well-formed ciphertext made under another key from a genuine one, see
:mod:`fedcrm.crypto.packing`): magic and format version, the parameters
(``parms_id``, N, L, scale, plane width), the key-ceremony tag, the number of
values, the exact byte length, and the SEAL header and PRNG type of every seed.
Coefficients are *not* compared with ``q``: a value in ``[q, 2**40)`` is just
another residue (the sum is reduced modulo ``q``), and random bytes pass such a
check with probability ``(q / 2**40)**N ~ 0.995`` anyway.
"""

from __future__ import annotations

import struct
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal  # registers SEAL types (Modulus, ...) with pybind

from fedcrm.crypto import seal_format as sf
from fedcrm.crypto.seal_format import INFO_SIZE

MAGIC = b"FCK1"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<4sBBBB8s32sIIIdI")
_HI_DTYPES = {0: None, 1: np.uint8, 2: np.uint16, 4: np.uint32}


class WireError(ValueError):
    """A chunk is malformed or does not match the parameters; ``args[0]`` says why."""


@dataclass(frozen=True)
class Layout:
    """What a chunk must look like under one key ceremony's parameters."""

    parms_id: bytes
    moduli: tuple[int, ...]
    poly_degree: int
    scale: float
    ctx_tag: bytes
    hi_bytes: int

    @property
    def n_primes(self) -> int:
        return len(self.moduli)

    @property
    def n_coeffs(self) -> int:
        return self.poly_degree * self.n_primes

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    @property
    def plane_bytes(self) -> int:
        return (4 + self.hi_bytes) * self.n_coeffs

    def chunk_bytes(self, n_seeds: int) -> int:
        return _HEAD.size + self.plane_bytes + INFO_SIZE * n_seeds

    @property
    def meta(self) -> sf.CiphertextMeta:
        return sf.CiphertextMeta(self.parms_id, True, self.poly_degree, self.n_primes, self.scale)


def _hi_bytes(bits: int) -> int:
    for h in (0, 1, 2, 4):
        if bits <= 32 + 8 * h:
            return h
    raise ValueError(f"prime of {bits} bits")


def layout_of(ctx: ts.Context, context_id: str, scale: float) -> Layout:
    """The chunk layout for ciphertexts at the first data level of ``ctx``."""
    data = ctx.seal_context().data.first_context_data()
    parms = data.parms()
    moduli = tuple(int(m.value()) for m in parms.coeff_modulus())
    return Layout(
        parms_id=struct.pack("<4Q", *data.parms_id()),
        moduli=moduli,
        poly_degree=int(parms.poly_modulus_degree()),
        scale=float(scale),
        ctx_tag=bytes.fromhex(context_id)[:8].ljust(8, b"\0"),
        hi_bytes=_hi_bytes(max(m.bit_length() for m in moduli)),
    )


@dataclass(frozen=True)
class Chunk:
    """A parsed chunk; ``lo``/``hi`` are read-only views into the chunk's bytes."""

    n_values: int
    seal_version: tuple[int, int]
    lo: np.ndarray  # (L, N) uint32
    hi: np.ndarray | None  # (L, N) uint8/16/32, or None for primes of <= 32 bits
    seeds: bytes  # K * INFO_SIZE bytes

    @property
    def n_seeds(self) -> int:
        return len(self.seeds) // INFO_SIZE

    def c0(self) -> np.ndarray:
        """The ``c0`` coefficients as uint64, shape (L, N) (not reduced modulo q)."""
        out = self.lo.astype(np.uint64)
        if self.hi is not None:
            out |= self.hi.astype(np.uint64) << np.uint64(32)
        return out


def parse(layout: Layout, data: bytes) -> Chunk:
    """Parse and structurally validate one chunk.

    Raises
    ------
    WireError
        Not a chunk of this format, other parameters or key ceremony, wrong
        byte length, or a malformed seed.
    """
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < _HEAD.size:
        raise WireError("does not deserialize: too short for a ciphertext header")
    (magic, fmt, major, minor, hi_bytes, tag, parms_id, n_values, degree, n_primes, scale,
     n_seeds) = _HEAD.unpack_from(data)  # fmt: skip
    if magic != MAGIC or fmt != FORMAT_VERSION:
        raise WireError(
            "does not deserialize: not a fedcrm seeded CKKS ciphertext (bad magic or format "
            "version; truncated, corrupt, or another serialization)"
        )
    if (
        parms_id != layout.parms_id
        or degree != layout.poly_degree
        or n_primes != layout.n_primes
        or hi_bytes != layout.hi_bytes
    ):
        raise WireError(
            "does not deserialize: made under other encryption parameters (parms_id, N or "
            "primes differ)"
        )
    if scale != layout.scale:
        raise WireError(f"was encrypted at scale {scale!r}, expected {layout.scale!r}")
    if tag != layout.ctx_tag:
        raise WireError("was made under another key ceremony (its context tag differs)")
    if n_seeds < 1 or len(data) != layout.chunk_bytes(n_seeds):
        raise WireError(
            f"does not deserialize: {len(data)} bytes, expected "
            f"{layout.chunk_bytes(max(n_seeds, 1))} for {max(n_seeds, 1)} seed(s) "
            "(truncated or padded)"
        )
    if not 1 <= n_values <= layout.slots:
        raise WireError(f"holds {n_values} values, a ciphertext holds 1..{layout.slots}")
    n = layout.n_coeffs
    off = _HEAD.size
    lo = np.frombuffer(data, np.uint32, n, off).reshape(layout.n_primes, degree)
    off += 4 * n
    hi = None
    if layout.hi_bytes:
        hi = np.frombuffer(data, _HI_DTYPES[layout.hi_bytes], n, off).reshape(lo.shape)
        off += layout.hi_bytes * n
    seeds = bytes(data[off:])
    for k in range(n_seeds):
        _check_info(seeds, k * INFO_SIZE)
    return Chunk(int(n_values), (major, minor), lo, hi, seeds)


def _check_info(buf: bytes, off: int) -> None:
    if not sf.info_is_valid(buf, off):
        raise WireError("does not deserialize: malformed seed (not a SEAL PRNG info)")


def pack(
    layout: Layout,
    c0: np.ndarray,
    seeds: bytes,
    *,
    n_values: int,
    seal_version: tuple[int, int],
) -> bytes:
    """Serialize ``c0`` (uint64, fully reduced, L*N values) and the seeds as one chunk."""
    c0 = np.ascontiguousarray(c0, dtype=np.uint64).reshape(-1)
    head = _HEAD.pack(
        MAGIC,
        FORMAT_VERSION,
        seal_version[0],
        seal_version[1],
        layout.hi_bytes,
        layout.ctx_tag,
        layout.parms_id,
        n_values,
        layout.poly_degree,
        layout.n_primes,
        layout.scale,
        len(seeds) // INFO_SIZE,
    )
    parts = [head, c0.astype(np.uint32).tobytes()]
    if layout.hi_bytes:
        parts.append((c0 >> np.uint64(32)).astype(_HI_DTYPES[layout.hi_bytes]).tobytes())
    parts.append(seeds)
    return b"".join(parts)


def reduce(layout: Layout, total: np.ndarray) -> np.ndarray:
    """``total`` (uint64, shape (..., L, N)) modulo each prime, in place."""
    q = np.asarray(layout.moduli, dtype=np.uint64).reshape(-1, 1)
    np.remainder(total, q, out=total)
    return total


# -- branch side: SEAL seeded encryption -------------------------------------------------------


class _SealTools:
    """SEAL encoder/encryptor for one TenSEAL context, and a scratch directory for SEAL's saves."""

    def __init__(self, ctx: ts.Context) -> None:
        sc = ctx.seal_context().data
        self.parms_id = sc.first_parms_id()
        self.encoder = seal.CKKSEncoder(sc)
        self.encryptor = seal.Encryptor(sc, ctx.secret_key().data)
        self.scratch = sf.Scratch()


_TOOLS: weakref.WeakKeyDictionary[Any, _SealTools] = weakref.WeakKeyDictionary()
_TOOLS_LOCK = threading.Lock()


def _tools(ctx: ts.Context) -> _SealTools:
    with _TOOLS_LOCK:
        tools = _TOOLS.get(ctx)
        if tools is None:
            tools = _TOOLS[ctx] = _SealTools(ctx)
        return tools


def encrypt_chunks(ctx: ts.Context, layout: Layout, vec: np.ndarray) -> list[bytes]:
    """Encode and encrypt ``vec`` (float64) with SEAL, ``layout.slots`` values per chunk."""
    tools = _tools(ctx)
    out = []
    for i in range(0, vec.size, layout.slots):
        part = vec[i : i + layout.slots]
        plain = seal.Plaintext()
        tools.encoder.encode(part.tolist(), tools.parms_id, layout.scale, plain)
        blob = tools.scratch.save_bytes(tools.encryptor.encrypt_symmetric(plain))
        c0, info, version = sf.parse_seeded(layout.meta, blob)
        out.append(pack(layout, c0, info, n_values=part.size, seal_version=version))
    return out


# -- branch side: back to SEAL / TenSEAL for decryption ---------------------------------------


def to_ckks_vector(ctx: ts.Context, layout: Layout, chunk: Chunk) -> ts.CKKSVector:
    """The TenSEAL vector that ``chunk`` encodes: SEAL expands every seed, TenSEAL adds.

    Works with a public context too (no secret key is involved); only
    ``decrypt()`` on the result needs the secret key.
    """
    c0 = reduce(layout, chunk.c0()).tobytes()
    zeros = bytes(len(c0))
    total = None
    for k in range(chunk.n_seeds):
        info = chunk.seeds[k * INFO_SIZE : (k + 1) * INFO_SIZE]
        blob = sf.build_seeded(layout.meta, c0 if k == 0 else zeros, info, chunk.seal_version)
        vec = ts.ckks_vector_from(ctx, sf.vector_proto(blob, chunk.n_values, layout.scale))
        if total is None:
            total = vec
        else:
            total.add_(vec)
    assert total is not None  # parse() guarantees n_seeds >= 1
    return total
