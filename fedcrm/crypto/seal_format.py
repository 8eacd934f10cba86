"""SEAL's own serialization of seeded ciphertexts, read by the BFV wire format.

SEAL (the library under TenSEAL) saves a ``Serializable<Ciphertext>`` returned
by ``Encryptor::encrypt_symmetric`` *seeded*: the uniformly random half ``c1``
is replaced by the 64-byte seed of the PRNG that expands to it. TenSEAL's
bindings save such an object only to a file path and usually zstd-compress it.
This module reads the ``c0`` coefficients and the seed out of that blob, and
builds the blob back (uncompressed) from ``c0`` and a seed so that SEAL can
load it again. It knows nothing of keys; :mod:`fedcrm.crypto.bfv_wire` and
:mod:`fedcrm.crypto.bfv` (BFV) build their compact formats on it.

Layout written by SEAL 4 (little endian)::

    SEAL header 16 bytes   magic 0xA15E, header size, version major/minor,
                           compression (0 none, 1 zlib, 2 zstd), reserved, total size
    members                parms_id (32 bytes), is_ntt_form, size, N, L, scale,
                           correction factor
    DynArray header        a nested SEAL header, then the number of uint64 values
    c0                     N * L uint64 coefficients (each below its prime)
    seed info (81 bytes)   SEAL ``UniformRandomGeneratorInfo``: SEAL header, PRNG
                           type (1 blake2xb, 2 shake256), 64-byte seed

The first 16 bytes of a seed info are a SEAL header (they carry the SEAL
version); the last 65 bytes (PRNG type and seed) determine ``c1``:
:func:`seed_identity` returns them.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading
import weakref
import zlib
from dataclasses import dataclass

import numpy as np

SEAL_HEAD = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
SEAL_MAGIC = 0xA15E
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2
PRNG_TYPES = (1, 2)  # blake2xb, shake256
INFO_SIZE = SEAL_HEAD.size + 1 + 64  # SEAL UniformRandomGeneratorInfo, uncompressed
MEMBERS = struct.Struct("<32sBQQQdQ")  # parms_id, is_ntt_form, size, N, L, scale, correction


@dataclass(frozen=True)
class CiphertextMeta:
    """The members SEAL stores before a ciphertext's coefficients (size is always 2)."""

    parms_id: bytes
    is_ntt_form: bool
    poly_degree: int
    n_primes: int
    scale: float

    @property
    def n_coeffs(self) -> int:
        return self.poly_degree * self.n_primes


def info_is_valid(buf: bytes, off: int = 0) -> bool:
    """Whether ``buf[off:off + INFO_SIZE]`` is an uncompressed SEAL PRNG seed info."""
    if len(buf) < off + INFO_SIZE:
        return False
    magic, hsize, _, _, compr, _, size = SEAL_HEAD.unpack_from(buf, off)
    return (
        magic == SEAL_MAGIC
        and hsize == SEAL_HEAD.size
        and compr == COMPR_NONE
        and size == INFO_SIZE
        and buf[off + SEAL_HEAD.size] in PRNG_TYPES
    )


def seed_identity(info: bytes) -> bytes:
    """The 65 bytes of a seed info that determine ``c1`` (PRNG type and seed).

    Two infos differing only in their SEAL header expand to the same ``c1``:
    compare contributions by this, never by the whole info.
    """
    return bytes(info[SEAL_HEAD.size : INFO_SIZE])


def decompress(body: bytes, compr: int, size: int) -> bytes:
    """Undo SEAL's compression of a serialized object's body."""
    if compr == COMPR_NONE:
        return body
    if compr == COMPR_ZLIB:
        return zlib.decompress(body)
    if compr == COMPR_ZSTD:
        import pyarrow as pa  # a dependency already; SEAL's zstd frames, fast C decoder

        return pa.Codec("zstd").decompress(body, decompressed_size=size, asbytes=True)
    raise ValueError(f"unknown SEAL compression mode {compr}")


def parse_seeded(meta: CiphertextMeta, blob: bytes) -> tuple[np.ndarray, bytes, tuple[int, int]]:
    """(c0 uint64 (L*N,), seed info bytes, SEAL version) of a SEAL-saved seeded ciphertext.

    Raises
    ------
    ValueError
        Not a SEAL ciphertext, other members than ``meta``, or not seeded.
    """
    magic, hsize, major, minor, compr, _, size = SEAL_HEAD.unpack_from(blob)
    if magic != SEAL_MAGIC or hsize != SEAL_HEAD.size or size != len(blob):
        raise ValueError("SEAL did not write a valid ciphertext header")
    n = meta.n_coeffs
    dyn = SEAL_HEAD.size + 8 + 8 * n
    body = decompress(blob[hsize:], compr, MEMBERS.size + dyn + INFO_SIZE)
    parms_id, ntt, size2, degree, n_primes, scale, correction = MEMBERS.unpack_from(body)
    if (parms_id, bool(ntt), size2, degree, n_primes, scale, correction) != (
        meta.parms_id, meta.is_ntt_form, 2, meta.poly_degree, meta.n_primes, meta.scale, 1,
    ):  # fmt: skip
        raise ValueError("SEAL ciphertext metadata differ from the expected layout")
    off = MEMBERS.size + SEAL_HEAD.size
    (count,) = struct.unpack_from("<Q", body, off)
    if count != n or len(body) != MEMBERS.size + dyn + INFO_SIZE:
        raise ValueError("SEAL did not save a seeded ciphertext (full c1 present?)")
    c0 = np.frombuffer(body, np.uint64, n, off + 8)
    info = bytes(body[MEMBERS.size + dyn :])
    if not info_is_valid(info):
        raise ValueError("SEAL wrote a malformed seed")
    return c0, info, (major, minor)


def build_seeded(meta: CiphertextMeta, c0: bytes, info: bytes, version: tuple[int, int]) -> bytes:
    """SEAL's uncompressed serialization of the seeded ciphertext ``(c0, seed)``.

    ``c0`` holds ``L*N`` uint64 coefficients (reduced), ``info`` one seed info.
    """
    n = meta.n_coeffs
    dyn = SEAL_HEAD.pack(SEAL_MAGIC, SEAL_HEAD.size, *version, COMPR_NONE, 0,
                         SEAL_HEAD.size + 8 + 8 * n)  # fmt: skip
    members = MEMBERS.pack(meta.parms_id, int(meta.is_ntt_form), 2, meta.poly_degree,
                           meta.n_primes, meta.scale, 1)  # fmt: skip
    size = SEAL_HEAD.size + len(members) + len(dyn) + 8 + len(c0) + len(info)
    head = SEAL_HEAD.pack(SEAL_MAGIC, SEAL_HEAD.size, *version, COMPR_NONE, 0, size)
    return b"".join((head, members, dyn, struct.pack("<Q", n), c0, info))


def varint(n: int) -> bytes:
    """Protocol-buffer base-128 varint of ``n >= 0``."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def vector_proto(seal_blob: bytes, n_values: int, scale: float | None = None) -> bytes:
    """TenSEAL's ``BFVVectorProto`` holding one ciphertext.

    Fields: ``sizes = [n_values]``, ``ciphertexts = [seal_blob]`` (and ``scale``,
    which only TenSEAL's CKKS vectors use).
    """
    sizes = varint(n_values)
    parts = [
        b"\x0a" + varint(len(sizes)) + sizes,
        b"\x12" + varint(len(seal_blob)) + seal_blob,
    ]
    if scale is not None:
        parts.append(b"\x19" + struct.pack("<d", scale))
    return b"".join(parts)


class Scratch:
    """A private directory (0700, on /dev/shm when present) for SEAL's file-only save.

    Ciphertexts are not secret, they go on the wire; the directory is removed
    when the object is garbage-collected.
    """

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="fedcrm-he-", dir=base)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, True)

    def path(self) -> str:
        """A file name private to the calling thread."""
        return os.path.join(self.dir, f"ct-{threading.get_ident()}")

    def save_bytes(self, serializable: object) -> bytes:
        """Let SEAL save ``serializable`` (anything with ``.save(path)``) and return the bytes."""
        path = self.path()
        try:
            serializable.save(path)  # type: ignore[attr-defined]
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            if os.path.exists(path):
                os.unlink(path)
