"""Pack, encrypt, add and decrypt flat update vectors with CKKS.

A branch flattens its update, multiplies it by its example weight and calls
:func:`encrypt_update`: the vector is cut into chunks of ``slots`` values
(4096 with the default parameters), each chunk is one seeded CKKS ciphertext
(SEAL symmetric encryption, compact format of :mod:`fedcrm.crypto.wire`), and
the weight is encrypted as one more ciphertext. The server calls
:func:`aggregate` (or feeds an :class:`Accumulator` as replies arrive) with the
public context only: it adds the ciphertexts' ``c0`` halves coefficient-wise
modulo ``q`` with numpy and keeps every branch's seed of ``c1``. Branches call
:func:`decrypt_average`, where SEAL expands the seeds and decrypts.

The server can check everything except the key a ciphertext was made under:
ciphertexts with other parameters or another key ceremony's tag are rejected,
but one made with another key whose chunks claim this ceremony parses fine and
only decrypts to noise. The declared ``context_id`` and the chunks' tags catch
honest mistakes; :func:`decrypt_sum` refuses an out-of-range result (a foreign
ciphertext decrypts to values spread uniformly over the whole modulus, so some
of the 4096 slots exceed the range with overwhelming probability).

Nothing here imports Flower: :meth:`EncryptedUpdate.to_records` returns a
plain dict whose values Flower's ``ConfigRecord`` accepts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcrm.crypto import wire
from fedcrm.crypto.ckks import PublicContext, SecretContext
from fedcrm.errors import EncryptionError

RecordValue = bytes | int | str | list[bytes]


@dataclass(frozen=True)
class EncryptedUpdate:
    """One branch's encrypted, weight-scaled update (or an encrypted sum)."""

    context_id: str
    length: int
    chunks: list[bytes]
    weight: bytes

    def to_records(self, prefix: str = "") -> dict[str, RecordValue]:
        """Return a plain dict for a Flower ``ConfigRecord`` (keys get ``prefix``)."""
        return {
            f"{prefix}context_id": self.context_id,
            f"{prefix}length": int(self.length),
            f"{prefix}chunks": list(self.chunks),
            f"{prefix}weight": self.weight,
        }

    @classmethod
    def from_records(cls, record: Mapping[str, Any], prefix: str = "") -> EncryptedUpdate:
        """Rebuild an update from :meth:`to_records` output.

        Raises
        ------
        EncryptionError
            A key is missing or has the wrong type.
        """
        try:
            cid = record[f"{prefix}context_id"]
            length = record[f"{prefix}length"]
            chunks = record[f"{prefix}chunks"]
            weight = record[f"{prefix}weight"]
        except KeyError as exc:
            raise EncryptionError(f"encrypted update record lacks key {exc.args[0]!r}") from exc
        if not isinstance(cid, str) or isinstance(length, bool) or not isinstance(length, int):
            raise EncryptionError("encrypted update record: context_id must be str, length int")
        if not isinstance(weight, bytes) or not isinstance(chunks, list | tuple):
            raise EncryptionError("encrypted update record: weight must be bytes, chunks a list")
        if not all(isinstance(c, bytes) for c in chunks):
            raise EncryptionError("encrypted update record: every chunk must be bytes")
        return cls(context_id=cid, length=length, chunks=list(chunks), weight=weight)

    @property
    def nbytes(self) -> int:
        """Total ciphertext bytes (chunks and weight)."""
        return sum(len(c) for c in self.chunks) + len(self.weight)


def n_chunks(length: int, slots: int) -> int:
    """Number of ciphertexts needed for ``length`` values at ``slots`` per ciphertext."""
    return max(1, math.ceil(length / slots))


def chunk_sizes(length: int, slots: int) -> list[int]:
    """Number of values in each chunk of a vector of ``length`` values."""
    full, rest = divmod(length, slots)
    return [slots] * full + ([rest] if rest or not full else [])


def _as_vector(values: np.ndarray, ctx: SecretContext) -> np.ndarray:
    vec = np.asarray(values, dtype=np.float64)
    if vec.ndim != 1 or vec.size == 0:
        raise EncryptionError(f"expected a non-empty flat vector, got shape {vec.shape}")
    if not np.all(np.isfinite(vec)):
        raise EncryptionError("update contains NaN or infinite values; refusing to encrypt")
    peak = float(np.max(np.abs(vec)))
    if peak > ctx.max_abs_sum:
        raise EncryptionError(
            f"update magnitude {peak:.3g} exceeds the CKKS range {ctx.max_abs_sum:.3g} "
            "(the sum over branches must stay inside it); scale values down"
        )
    return vec


def _layout(ctx: PublicContext | SecretContext) -> wire.Layout:
    return wire.layout_of(ctx.context, ctx.context_id, ctx.scale)


def encrypt_update(ctx: SecretContext, values: np.ndarray, *, weight: float) -> EncryptedUpdate:
    """Encrypt a weight-scaled flat update and its weight.

    Parameters
    ----------
    ctx
        The branch's secret context.
    values
        Flat vector, already multiplied by ``weight``.
    weight
        The branch's example weight (> 0), e.g. its number of training examples.

    Returns
    -------
    EncryptedUpdate
        ``ceil(len(values) / ctx.slots)`` seeded ciphertexts and the encrypted
        weight, each in the compact format of :mod:`fedcrm.crypto.wire`
        (SEAL symmetric encryption; ~2.5x the fp32 bytes).
    """
    if not math.isfinite(weight) or weight <= 0 or weight > ctx.max_abs_sum:
        raise EncryptionError(f"weight must be finite, > 0 and <= {ctx.max_abs_sum:.3g}")
    vec = _as_vector(values, ctx)
    layout = _layout(ctx)
    try:
        chunks = wire.encrypt_chunks(ctx.context, layout, vec)
        # The weight fills every slot: averaging the slots after decryption cuts its
        # noise ~sqrt(slots)-fold at no extra size (a ciphertext always has all slots).
        (enc_weight,) = wire.encrypt_chunks(ctx.context, layout, np.full(ctx.slots, float(weight)))
    except (ValueError, RuntimeError, OSError) as exc:  # SEAL refused or wrote garbage
        raise EncryptionError(f"CKKS encryption failed: {exc}") from exc
    return EncryptedUpdate(ctx.context_id, int(vec.size), chunks, enc_weight)


class _RejectedError(Exception):
    """Internal: one update cannot be added; ``args[0]`` is the reason."""


def _parse(layout: wire.Layout, data: Any, size: int, what: str) -> wire.Chunk:
    try:
        chunk = wire.parse(layout, data)
    except wire.WireError as exc:
        raise _RejectedError(f"{what} {exc.args[0]}") from exc
    if chunk.n_values != size:
        raise _RejectedError(f"{what} holds {chunk.n_values} values, expected {size}")
    return chunk


def _check_shape(ctx: PublicContext, update: Any, length: int) -> EncryptedUpdate:
    if not isinstance(update, EncryptedUpdate):
        raise _RejectedError(f"not an EncryptedUpdate ({type(update).__name__})")
    if update.context_id != ctx.context_id:
        raise _RejectedError(
            f"made under another key ceremony (context_id {update.context_id!r}, "
            f"server has {ctx.context_id!r})"
        )
    if update.length != length:
        raise _RejectedError(f"wrong length {update.length}, expected {length}")
    expected = n_chunks(length, ctx.slots)
    if len(update.chunks) != expected:
        kind = "extra chunk(s)" if len(update.chunks) > expected else "missing chunk(s)"
        raise _RejectedError(f"{kind}: {len(update.chunks)} ciphertexts, expected {expected}")
    return update


class Accumulator:
    """Running encrypted sum; add updates as they arrive (server side).

    The sum is kept as raw coefficients: every ciphertext's ``c0`` half is
    added with numpy (low 32 bits and high bits in separate uint64/uint32
    accumulators, so nothing overflows and one reduction modulo ``q`` at the
    end suffices), and its seed is appended. No TenSEAL or SEAL object and no
    key is involved; see :mod:`fedcrm.crypto.wire`.

    Parameters
    ----------
    ctx
        The server's public context.
    length
        Expected number of values per update.
    """

    def __init__(self, ctx: PublicContext, *, length: int) -> None:
        if length <= 0:
            raise EncryptionError(f"length must be positive, got {length}")
        self.ctx = ctx
        self.length = int(length)
        self.sizes = chunk_sizes(self.length, ctx.slots)
        self.layout = _layout(ctx)
        self.accepted: list[str] = []
        self.rejected: dict[str, str] = {}
        rows = (len(self.sizes) + 1, self.layout.n_primes, self.layout.poly_degree)
        self._lo = np.zeros(rows, dtype=np.uint64)
        self._hi = np.zeros(rows, dtype=np.uint32) if self.layout.hi_bytes else None
        self._seeds: list[list[bytes]] = [[] for _ in range(rows[0])]
        self._seal_version: tuple[int, int] | None = None

    def add(self, branch_id: str, update: Any) -> str | None:
        """Validate and add one update; return the rejection reason or None.

        Every ciphertext of the update is parsed and checked before any is
        added, so a rejected update leaves no trace in the running sum.
        """
        try:
            upd = _check_shape(self.ctx, update, self.length)
            parsed = [
                _parse(self.layout, data, size, f"chunk {i}")
                for i, (data, size) in enumerate(zip(upd.chunks, self.sizes, strict=True))
            ]
            parsed.append(_parse(self.layout, upd.weight, self.ctx.slots, "encrypted weight"))
            for i, chunk in enumerate(parsed):
                if chunk.n_seeds != 1:
                    what = f"chunk {i}" if i < len(self.sizes) else "encrypted weight"
                    raise _RejectedError(
                        f"{what} is not a fresh ciphertext ({chunk.n_seeds} seeds, expected 1)"
                    )
        except _RejectedError as exc:
            self.rejected[branch_id] = str(exc.args[0])
            return self.rejected[branch_id]
        for row, chunk in enumerate(parsed):
            np.add(self._lo[row], chunk.lo, out=self._lo[row])
            if self._hi is not None:
                np.add(self._hi[row], chunk.hi, out=self._hi[row])
            self._seeds[row].append(chunk.seeds)
        if self._seal_version is None:
            self._seal_version = parsed[0].seal_version
        self.accepted.append(branch_id)
        return None

    def result(self) -> EncryptedUpdate:
        """Return the encrypted sum of the accepted updates.

        Raises
        ------
        EncryptionError
            No update was accepted.
        """
        if not self.accepted or self._seal_version is None:
            reasons = "; ".join(f"{b}: {r}" for b, r in sorted(self.rejected.items()))
            raise EncryptionError(f"no valid encrypted update to aggregate ({reasons or 'none'})")
        total = self._lo.copy()
        if self._hi is not None:
            total += self._hi.astype(np.uint64) << np.uint64(32)
        wire.reduce(self.layout, total)
        packed = [
            wire.pack(
                self.layout,
                total[row],
                b"".join(self._seeds[row]),
                n_values=size,
                seal_version=self._seal_version,
            )
            for row, size in enumerate([*self.sizes, self.ctx.slots])
        ]
        return EncryptedUpdate(self.ctx.context_id, self.length, packed[:-1], packed[-1])


def expected_length(updates: Mapping[str, Any], context_id: str) -> int:
    """The most common declared length among updates of the right context.

    Ties go to the length declared by the first branch in sorted order.
    """
    lengths = [
        u.length
        for _, u in sorted(updates.items())
        if isinstance(u, EncryptedUpdate) and u.context_id == context_id and u.length > 0
    ]
    if not lengths:
        raise EncryptionError("no update declares a usable length for this context")
    counts = Counter(lengths)
    top = max(counts.values())
    return next(n for n in lengths if counts[n] == top)


def aggregate(
    ctx: PublicContext, updates: Mapping[str, EncryptedUpdate], *, length: int | None = None
) -> tuple[EncryptedUpdate, dict[str, str]]:
    """Add encrypted updates without decrypting.

    Parameters
    ----------
    ctx
        The server's public context (holds no secret key).
    updates
        branch_id -> encrypted update.
    length
        Expected vector length; default: the length most branches declare.

    Returns
    -------
    tuple[EncryptedUpdate, dict[str, str]]
        The encrypted sum over the accepted updates, and branch_id -> reason
        for every rejected one.

    Raises
    ------
    EncryptionError
        No update could be accepted.
    """
    if length is None:
        length = expected_length(updates, ctx.context_id)
    acc = Accumulator(ctx, length=length)
    for branch_id in sorted(updates):
        acc.add(branch_id, updates[branch_id])
    return acc.result(), dict(acc.rejected)


def to_ckks_vectors(ctx: PublicContext | SecretContext, agg: EncryptedUpdate) -> list[Any]:
    """The aggregate's ciphertexts as TenSEAL ``CKKSVector`` objects (chunks, then weight).

    SEAL expands the seeds; works with the public context (the vectors then
    cannot be decrypted). For tests and inspection.
    """
    layout = _layout(ctx)
    sizes = [*chunk_sizes(agg.length, ctx.slots), ctx.slots]
    out = []
    for i, (data, size) in enumerate(zip([*agg.chunks, agg.weight], sizes, strict=True)):
        try:
            out.append(
                wire.to_ckks_vector(ctx.context, layout, _parse(layout, data, size, f"#{i}"))
            )
        except _RejectedError as exc:
            raise EncryptionError(str(exc.args[0])) from exc
    return out


def _decrypt(ctx: SecretContext, layout: wire.Layout, data: Any, size: int, what: str) -> list:
    chunk = _parse(layout, data, size, what)
    try:
        vec = wire.to_ckks_vector(ctx.context, layout, chunk)
    except Exception as exc:  # SEAL refuses what it cannot load
        raise _RejectedError(f"{what} is not a valid SEAL ciphertext: {exc}") from exc
    return vec.decrypt()


def decrypt_sum(ctx: SecretContext, agg: EncryptedUpdate) -> tuple[np.ndarray, float]:
    """Decrypt an aggregate into (sum of weighted values, total weight).

    Raises
    ------
    EncryptionError
        Another context, malformed aggregate, or an implausible total weight
        (what a ciphertext from another key decrypts to).
    """
    if agg.context_id != ctx.context_id:
        raise EncryptionError(
            f"aggregate made under context {agg.context_id!r}, this branch holds "
            f"{ctx.context_id!r}: the branches and the server use different key ceremonies"
        )
    sizes = chunk_sizes(agg.length, ctx.slots)
    if agg.length <= 0 or len(agg.chunks) != len(sizes):
        raise EncryptionError(
            f"aggregate has {len(agg.chunks)} ciphertexts for {agg.length} values, "
            f"expected {len(sizes)}"
        )
    layout = _layout(ctx)
    try:
        parts = [
            np.asarray(_decrypt(ctx, layout, data, size, f"chunk {i}"), dtype=np.float64)
            for i, (data, size) in enumerate(zip(agg.chunks, sizes, strict=True))
        ]
        weight = float(np.mean(_decrypt(ctx, layout, agg.weight, ctx.slots, "encrypted weight")))
    except _RejectedError as exc:
        raise EncryptionError(f"aggregate rejected: {exc.args[0]}") from exc
    total = np.concatenate(parts)
    bound = 1.5 * ctx.max_abs_sum
    if not math.isfinite(weight) or weight <= 0 or np.max(np.abs(total)) > bound:
        raise EncryptionError(
            "decrypted aggregate is out of range (total weight not positive or |sum| > "
            f"{bound:.3g}): it holds ciphertexts from another key, is corrupt, or the "
            "sum overflowed the CKKS range"
        )
    return total, weight


def decrypt_average(ctx: SecretContext, agg: EncryptedUpdate) -> np.ndarray:
    """Decrypt an aggregate and divide the weighted sum by the total weight."""
    total, weight = decrypt_sum(ctx, agg)
    return total / weight
