"""Sum BFV uploads with parameters only (server side), and check an aggregate's contributors.

The server feeds an :class:`Accumulator` as replies arrive (or calls
:func:`aggregate`): every upload is parsed and checked in full (parameters,
context tag, length, chunk count, one fresh seed per chunk, no seed seen
before) before its ``c0`` halves are added modulo ``q`` with numpy and its
seeds appended. Nothing here imports TenSEAL; see :mod:`fedcrm.crypto.bfv_wire`
for the format.

A branch calls :func:`check_contributors` before it decrypts (``bfv.decrypt``
does it for it): the aggregate must hold the branch's own contribution of the
current step exactly once, at the same position in every chunk, no seed
twice, and at least ``min_contributors`` contributions. This is what makes a
forwarded single reply, a stale aggregate, or a sum of too few branches
useless to a server that wants a branch to decrypt for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcrm.crypto.bfv_wire import (
    BFVParameters,
    Chunk,
    ChunkError,
    EncryptedVector,
    chunk_sizes,
    pack_chunk,
    parse_vector,
)
from fedcrm.errors import ContributorsError, EncryptionError


class Accumulator:
    """Running encrypted sum of uploads, with parameters only (server side).

    Each upload is parsed and checked in full before anything is added, so a
    rejected upload leaves no trace in the sum. Contributions are kept in the
    order they were accepted (:attr:`accepted`), which is also the order of the
    seeds in every chunk of :meth:`result`.

    Parameters
    ----------
    params
        The public BFV parameters.
    length
        Number of values every upload must hold.
    """

    def __init__(self, params: BFVParameters, *, length: int) -> None:
        if length < 1:
            raise EncryptionError(f"length must be positive, got {length}")
        self.params = params
        self.length = int(length)
        self.sizes = chunk_sizes(self.length, params.slots)
        self.accepted: list[str] = []
        self.rejected: dict[str, str] = {}
        self._sum = np.zeros((len(self.sizes), params.poly_modulus_degree), dtype=np.uint64)
        self._seeds: list[list[bytes]] = [[] for _ in self.sizes]
        self._seen: set[bytes] = set()
        self._version: tuple[int, int] | None = None

    def _check(self, branch_id: str, update: Any) -> list[Chunk]:
        if branch_id in self.accepted:
            raise ChunkError("this branch already contributed to the sum")
        if len(self.accepted) >= self.params.max_contributions:
            raise ChunkError(
                f"the sum already holds {self.params.max_contributions} contributions, the most "
                "that decrypt exactly"
            )
        chunks = parse_vector(self.params, update, self.length)
        ids: list[bytes] = []
        for i, chunk in enumerate(chunks):
            if chunk.n_seeds != 1:
                raise ChunkError(f"chunk {i} is not a fresh ciphertext ({chunk.n_seeds} seeds)")
            ids.extend(chunk.seed_identities())
        if len(set(ids)) != len(ids) or self._seen.intersection(ids):
            raise ChunkError("repeats a ciphertext seed (a replayed or duplicated contribution)")
        return chunks

    def add(self, branch_id: str, update: Any) -> str | None:
        """Validate and add one upload; return the rejection reason or None."""
        try:
            chunks = self._check(branch_id, update)
        except ChunkError as exc:
            self.rejected[branch_id] = str(exc.args[0])
            return self.rejected[branch_id]
        for row, chunk in enumerate(chunks):
            np.add(self._sum[row], chunk.c0, out=self._sum[row])
            self._seeds[row].append(chunk.seeds)
            self._seen.update(chunk.seed_identities())
        self._version = self._version or chunks[0].seal_version
        self.accepted.append(branch_id)
        return None

    def result(self) -> EncryptedVector:
        """The encrypted sum of the accepted uploads.

        Raises
        ------
        EncryptionError
            No upload was accepted.
        """
        if not self.accepted or self._version is None:
            reasons = "; ".join(f"{b}: {r}" for b, r in sorted(self.rejected.items()))
            raise EncryptionError(f"no valid encrypted update to aggregate ({reasons or 'none'})")
        total = self._sum % np.uint64(self.params.data_modulus)
        chunks = tuple(
            pack_chunk(
                self.params,
                total[row],
                b"".join(self._seeds[row]),
                n_values=size,
                seal_version=self._version,
            )
            for row, size in enumerate(self.sizes)
        )
        return EncryptedVector(self.params.context_id, self.length, chunks)


def expected_length(params: BFVParameters, updates: Mapping[str, Any]) -> int:
    """The most common length among updates of this context (ties: first branch, sorted)."""
    lengths = [
        u.length
        for _, u in sorted(updates.items())
        if isinstance(u, EncryptedVector) and u.context_id == params.context_id and u.length > 0
    ]
    if not lengths:
        raise EncryptionError("no update declares a usable length for this context")
    counts = Counter(lengths)
    return next(n for n in lengths if counts[n] == max(counts.values()))


def aggregate(
    params: BFVParameters, updates: Mapping[str, Any], *, length: int | None = None
) -> tuple[EncryptedVector, dict[str, str]]:
    """Sum encrypted uploads without any key (branches in sorted order).

    Returns
    -------
    tuple[EncryptedVector, dict[str, str]]
        The encrypted sum, and branch_id -> reason for every rejected upload.

    Raises
    ------
    EncryptionError
        No upload could be accepted.
    """
    acc = Accumulator(params, length=length or expected_length(params, updates))
    for branch_id in sorted(updates):
        acc.add(branch_id, updates[branch_id])
    return acc.result(), dict(acc.rejected)


def check_contributors(
    params: BFVParameters,
    agg: EncryptedVector,
    own_seeds: Sequence[bytes],
    *,
    min_contributors: int,
    expected_contributors: int | None = None,
) -> int:
    """Refuse to decrypt an aggregate unless its contributor set is what a branch expects.

    Parameters
    ----------
    params
        The branch's BFV parameters.
    agg
        The aggregate the server sent.
    own_seeds
        The branch's own seed identities for the current step (from
        :func:`fedcrm.crypto.bfv.encrypt`), one per chunk.
    min_contributors
        Fewest contributions the branch accepts to decrypt.
    expected_contributors
        When given, the exact number of contributions (e.g. the live set of the step).

    Returns
    -------
    int
        The number of contributions.

    Raises
    ------
    ContributorsError
        ``reason`` says which rule failed: ``malformed``, ``misaligned`` (chunks
        hold different numbers of contributions, or the branch's own seed sits
        at different positions), ``duplicate`` (a seed appears twice),
        ``missing-own`` (the branch's current contribution is absent: a stale
        round or someone else's aggregate), ``single`` (one contribution: a
        forwarded reply), ``too-few`` or ``too-many``.
    """
    if min_contributors < 2:
        raise ValueError("min_contributors must be at least 2")
    try:
        chunks = parse_vector(params, agg, None)
    except ChunkError as exc:
        raise ContributorsError("malformed", f"aggregate rejected: {exc.args[0]}") from None
    if len(own_seeds) != len(chunks):
        raise ContributorsError(
            "missing-own",
            f"the branch contributed {len(own_seeds)} chunk(s) this step, the aggregate has "
            f"{len(chunks)}: it is not the sum of this step",
        )
    counts = {c.n_seeds for c in chunks}
    if len(counts) != 1:
        raise ContributorsError("misaligned", "chunks hold different numbers of contributions")
    ids = [c.seed_identities() for c in chunks]
    flat = [s for row in ids for s in row]
    if len(set(flat)) != len(flat):
        raise ContributorsError("duplicate", "a contribution appears more than once")
    positions = set()
    for row, own in zip(ids, own_seeds, strict=True):
        if own not in row:
            raise ContributorsError(
                "missing-own",
                "the aggregate does not hold this branch's contribution of the current step "
                "(stale round or another branch's aggregate)",
            )
        positions.add(row.index(own))
    if len(positions) != 1:
        raise ContributorsError("misaligned", "this branch's contribution moves between chunks")
    (k,) = counts
    if k == 1:
        raise ContributorsError("single", "the aggregate holds a single contribution")
    if k < min_contributors:
        raise ContributorsError("too-few", f"{k} contributions, at least {min_contributors} needed")
    if k > params.max_contributions:
        raise ContributorsError("too-many", f"{k} contributions exceed the exact-decryption bound")
    if expected_contributors is not None and k != expected_contributors:
        raise ContributorsError(
            "too-few" if k < expected_contributors else "too-many",
            f"{k} contributions, expected {expected_contributors}",
        )
    return k
