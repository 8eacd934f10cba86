"""Seeded BFV ciphertexts on the wire, summed with parameters only (server side).

This module never imports TenSEAL: the server holds :class:`BFVParameters`
(public numbers, no secret key, no public key, no relinearisation or Galois
key), parses and adds ciphertexts with numpy, and has no way to encrypt.

A fresh BFV ciphertext made with SEAL's symmetric encryption is ``(c0, c1)``
with ``c1 = a`` expanded from a 64-byte PRNG seed and ``c0 = -(a*s + e) +
round(q*m/t)`` (coefficient form, modulo the data prime ``q``). It travels as
``c0`` plus the seed. The sum of ``K`` ciphertexts is ``(sum c0, sum a_k)``:
the server adds the ``c0`` halves modulo ``q`` and keeps the ``K`` seeds, so an
aggregate carries **one seed per contribution per chunk, in the same order in
every chunk**. That list is the contributor set a branch checks before it
decrypts (:func:`fedcrm.crypto.bfv_aggregate.check_contributors`): the server
cannot add a contribution without its seed (``sum a_k`` would not match
``sum c0``), nor remove one without leaving uniform noise in the decryption.

Layout of one chunk (little endian)::

    header  60 bytes  _HEAD: magic b"FBV1", format version, SEAL version (major,
                      minor), reserved, context tag (8 bytes of context_id),
                      parms_id (32 bytes), values held, N, number of seeds K
    c0      4*N       c0 coefficients (uint32; the data prime is below 2**32)
    seeds   81*K      SEAL-serialized seed infos, verbatim (see seal_format)

Checks on every chunk: magic and version, parameters (parms_id, N), context
tag, value count, exact byte length, well-formed seeds; a fresh upload has
exactly one seed per chunk, no seed seen before. Without a key nobody can tell
a well-formed chunk made under another key from a genuine one; such a chunk
only decrypts to noise.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcrm.crypto import seal_format as sf
from fedcrm.errors import EncryptionError

MAGIC = b"FBV1"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<4sBBBB8s32sIII")
MAX_CONTRIBUTIONS = 64

RecordValue = bytes | int | str | list[bytes]
OwnSeeds = tuple[bytes, ...]
"""A branch's contributor identity for one step: the seed identity of each of its chunks."""


@dataclass(frozen=True)
class BFVParameters:
    """Public BFV parameters of one secret context: all the server ever holds.

    Attributes
    ----------
    poly_modulus_degree
        N; also the number of slots of a ciphertext (batching).
    data_modulus
        The prime ``q`` ciphertexts live modulo (the key-switching prime is not used).
    plain_modulus
        ``t``; plaintext slots are integers modulo ``t``.
    parms_id
        SEAL's 32-byte identifier of the parameters at the data level.
    context_id
        Fingerprint of the parameters and the secret key (16 hex digits).
    max_contributions
        Most contributions a sum may hold and still decrypt exactly.
    """

    poly_modulus_degree: int
    data_modulus: int
    plain_modulus: int
    parms_id: bytes
    context_id: str
    max_contributions: int = MAX_CONTRIBUTIONS

    def __post_init__(self) -> None:
        if not 0 < self.data_modulus < 2**32 or len(self.parms_id) != 32:
            raise EncryptionError("BFV parameters: data modulus must be below 2**32")
        if not 1 < self.plain_modulus < self.data_modulus or self.poly_modulus_degree < 1024:
            raise EncryptionError("BFV parameters: invalid plain modulus or degree")
        try:
            if len(bytes.fromhex(self.context_id)) != 8:
                raise ValueError
        except ValueError:
            raise EncryptionError("BFV parameters: context_id must be 16 hex digits") from None

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self.poly_modulus_degree

    @property
    def tag(self) -> bytes:
        """The 8 bytes of ``context_id`` every chunk carries."""
        return bytes.fromhex(self.context_id)

    def chunk_bytes(self, n_seeds: int) -> int:
        """Exact byte length of a chunk carrying ``n_seeds`` seeds."""
        return _HEAD.size + 4 * self.poly_modulus_degree + sf.INFO_SIZE * n_seeds

    def to_json(self) -> bytes:
        """Canonical JSON (what a branch hands to the server)."""
        body = {
            "scheme": "BFV",
            "poly_modulus_degree": self.poly_modulus_degree,
            "data_modulus": self.data_modulus,
            "plain_modulus": self.plain_modulus,
            "parms_id": self.parms_id.hex(),
            "context_id": self.context_id,
            "max_contributions": self.max_contributions,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> BFVParameters:
        """Parse :meth:`to_json` output.

        Raises
        ------
        EncryptionError
            Not JSON, another scheme, a missing or mistyped field.
        """
        try:
            body = json.loads(data)
            if body.pop("scheme") != "BFV":
                raise ValueError("scheme")
            ints = ("poly_modulus_degree", "data_modulus", "plain_modulus", "max_contributions")
            if any(type(body[k]) is not int for k in ints) or set(body) != {
                *ints,
                "parms_id",
                "context_id",
            }:
                raise ValueError("fields")
            return cls(
                **{k: body[k] for k in ints},
                parms_id=bytes.fromhex(body["parms_id"]),
                context_id=str(body["context_id"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EncryptionError(f"not fedcrm BFV parameters ({exc.__class__.__name__})") from None


@dataclass(frozen=True)
class EncryptedVector:
    """An encrypted vector of integers mod ``t``: one branch's upload or a sum."""

    context_id: str
    length: int
    chunks: tuple[bytes, ...]

    def to_records(self, prefix: str = "") -> dict[str, RecordValue]:
        """A plain dict for a Flower ``ConfigRecord`` (keys get ``prefix``)."""
        return {
            f"{prefix}context_id": self.context_id,
            f"{prefix}length": int(self.length),
            f"{prefix}chunks": list(self.chunks),
        }

    @classmethod
    def from_records(cls, record: Mapping[str, Any], prefix: str = "") -> EncryptedVector:
        """Rebuild from :meth:`to_records` output.

        Raises
        ------
        EncryptionError
            A key is missing or has the wrong type.
        """
        try:
            cid, length, chunks = (
                record[f"{prefix}{k}"] for k in ("context_id", "length", "chunks")
            )
        except KeyError as exc:
            raise EncryptionError(f"encrypted vector record lacks key {exc.args[0]!r}") from None
        if (
            not isinstance(cid, str)
            or type(length) is not int
            or not isinstance(chunks, list | tuple)
        ):
            raise EncryptionError(
                "encrypted vector record: context_id str, length int, chunks list"
            )
        if not all(isinstance(c, bytes) for c in chunks):
            raise EncryptionError("encrypted vector record: every chunk must be bytes")
        return cls(context_id=cid, length=length, chunks=tuple(chunks))

    @property
    def nbytes(self) -> int:
        """Total bytes of the chunks."""
        return sum(len(c) for c in self.chunks)


def chunk_sizes(length: int, slots: int) -> list[int]:
    """Number of values in each chunk of a vector of ``length >= 1`` values."""
    full, rest = divmod(length, slots)
    return [slots] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Chunk:
    """A parsed chunk; ``c0`` is a read-only view into the chunk's bytes."""

    n_values: int
    seal_version: tuple[int, int]
    c0: np.ndarray  # (N,) uint32, not reduced modulo q
    seeds: bytes  # K * INFO_SIZE bytes

    @property
    def n_seeds(self) -> int:
        return len(self.seeds) // sf.INFO_SIZE

    def seed_infos(self) -> list[bytes]:
        """Each contribution's seed info (81 bytes), in contribution order."""
        size = sf.INFO_SIZE
        return [self.seeds[k * size : (k + 1) * size] for k in range(self.n_seeds)]

    def seed_identities(self) -> list[bytes]:
        """Each contribution's seed identity (see :func:`seal_format.seed_identity`)."""
        return [sf.seed_identity(info) for info in self.seed_infos()]


class ChunkError(ValueError):
    """A chunk is malformed or does not match the parameters; ``args[0]`` says why."""


def parse_chunk(params: BFVParameters, data: Any, *, n_values: int | None = None) -> Chunk:
    """Parse and structurally validate one chunk (expected value count optional).

    Raises
    ------
    ChunkError
        Not a chunk of this format, other parameters or context, wrong length,
        or a malformed seed.
    """
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < _HEAD.size:
        raise ChunkError("does not deserialize: too short for a ciphertext header")
    magic, fmt, major, minor, _, tag, parms_id, count, degree, n_seeds = _HEAD.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT_VERSION:
        raise ChunkError("does not deserialize: not a fedcrm seeded BFV ciphertext")
    if parms_id != params.parms_id or degree != params.poly_modulus_degree:
        raise ChunkError("does not deserialize: made under other encryption parameters")
    if tag != params.tag:
        raise ChunkError("was made under another secret context (its context tag differs)")
    if n_seeds < 1 or len(data) != params.chunk_bytes(n_seeds):
        raise ChunkError(f"does not deserialize: {len(data)} bytes (truncated or padded)")
    if not 1 <= count <= params.slots or (n_values is not None and count != n_values):
        raise ChunkError(f"holds {count} values, expected {n_values or params.slots}")
    c0 = np.frombuffer(data, np.uint32, degree, _HEAD.size)
    seeds = bytes(data[_HEAD.size + 4 * degree :])
    if not all(sf.info_is_valid(seeds, k * sf.INFO_SIZE) for k in range(n_seeds)):
        raise ChunkError("does not deserialize: malformed seed (not a SEAL PRNG info)")
    return Chunk(int(count), (major, minor), c0, seeds)


def pack_chunk(
    params: BFVParameters, c0: np.ndarray, seeds: bytes, *, n_values: int, seal_version: tuple
) -> bytes:
    """Serialize reduced ``c0`` coefficients (N values below q) and seed infos as one chunk."""
    head = _HEAD.pack(
        MAGIC,
        FORMAT_VERSION,
        seal_version[0],
        seal_version[1],
        0,
        params.tag,
        params.parms_id,
        n_values,
        params.poly_modulus_degree,
        len(seeds) // sf.INFO_SIZE,
    )
    return head + np.ascontiguousarray(c0, dtype=np.uint32).tobytes() + seeds


def parse_vector(params: BFVParameters, vec: Any, length: int | None) -> list[Chunk]:
    """Parse every chunk of ``vec`` (expected ``length`` optional).

    Raises
    ------
    ChunkError
        Not an :class:`EncryptedVector` of this context, wrong length or chunk
        count, or a chunk that :func:`parse_chunk` rejects (the reason names it).
    """
    if not isinstance(vec, EncryptedVector):
        raise ChunkError(f"not an EncryptedVector ({type(vec).__name__})")
    if vec.context_id != params.context_id:
        raise ChunkError(f"made under another secret context (context_id {vec.context_id!r})")
    if length is not None and vec.length != length:
        raise ChunkError(f"wrong length {vec.length}, expected {length}")
    if vec.length < 1:
        raise ChunkError("empty vector")
    sizes = chunk_sizes(vec.length, params.slots)
    if len(vec.chunks) != len(sizes):
        kind = "extra chunk(s)" if len(vec.chunks) > len(sizes) else "missing chunk(s)"
        raise ChunkError(f"{kind}: {len(vec.chunks)} ciphertexts, expected {len(sizes)}")
    out = []
    for i, (data, size) in enumerate(zip(vec.chunks, sizes, strict=True)):
        try:
            out.append(parse_chunk(params, data, n_values=size))
        except ChunkError as exc:
            raise ChunkError(f"chunk {i} {exc.args[0]}") from None
    return out
