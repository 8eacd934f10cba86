"""Secure aggregation, server side: check advertisements, ask for shares, compute the correction.

The server never holds a BFV key nor a branch's long-term private key. Per
step (see :mod:`fedcrm.crypto.masking` for the whole protocol):

1. :func:`verified_advertisements` drops advertisements that do not verify
   against the roster (the branches check again; this only spares them junk);
   the server sends the same accepted set to every branch.
2. After summing the ciphertexts of the live branches ``L``
   (:class:`fedcrm.crypto.bfv_aggregate.Accumulator`), ``D`` = advertisers
   without an accepted upload. When ``D`` is not empty, the server first
   collects endorsements of ``(L, D)`` (``masking.endorse``), then sends
   :func:`reveal_request` to the live branches.
3. :func:`correction` rebuilds each live branch's self-mask seed and each
   dropped branch's ephemeral key from ``T`` revealed shares, checking each
   against the advertisement (commitment, public key) and trying other
   share subsets when a revealer lied, and returns
   ``M = sum_L PRG(b_j) + sum_{j in L, d in D} sign(j, d) PRG(s_jd) mod t``.
   The server sends the encrypted sum and ``M`` to the branches.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcrm.crypto import primitives as pr
from fedcrm.crypto import secagg_wire as sw
from fedcrm.crypto import shamir
from fedcrm.crypto.roster import Roster
from fedcrm.errors import SecureAggregationError

MAX_SUBSETS = 2000  # share subsets tried per secret before giving up


def step_of(roster: Roster, *, run_id: str, step: int, threshold: int) -> sw.Step:
    """The step binding the server puts in its requests."""
    return sw.Step(run_id, step, roster.digest, threshold)


def verified_advertisements(
    roster: Roster, advertisements: Mapping[str, Any], *, run_id: str, step: int, threshold: int
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Keep the advertisements that verify and were sent by the branch they name.

    Returns
    -------
    tuple[dict[str, bytes], dict[str, str]]
        branch_id -> advertisement to forward, and branch_id -> reason for the rest.
    """
    st = step_of(roster, run_id=run_id, step=step, threshold=threshold)
    kept, rejected = {}, {}
    for branch_id, blob in sorted(advertisements.items()):
        try:
            ad = sw.parse_advertisement(roster, st, blob)
        except SecureAggregationError as exc:
            rejected[branch_id] = str(exc)
            continue
        if ad.branch_id != branch_id:
            rejected[branch_id] = f"carries the advertisement of branch {ad.branch_id}"
            continue
        kept[branch_id] = ad.raw
    return kept, rejected


def reveal_request(
    roster: Roster,
    *,
    run_id: str,
    step: int,
    threshold: int,
    live: Sequence[str],
    dropped: Sequence[str],
    endorsements: Sequence[bytes] = (),
) -> bytes:
    """The request for shares sent to every live branch."""
    st = step_of(roster, run_id=run_id, step=step, threshold=threshold)
    return sw.reveal_request(st, live, dropped, endorsements)


def _reconstruct(shares: Mapping[int, bytes], threshold: int, check: Any, what: str) -> bytes:
    if len(shares) < threshold:
        raise SecureAggregationError(f"{what}: {len(shares)} shares revealed, {threshold} needed")
    subsets = itertools.combinations(sorted(shares), threshold)
    for holders in itertools.islice(subsets, MAX_SUBSETS):
        try:
            secret = shamir.combine({x: shares[x] for x in holders}, threshold=threshold)
        except SecureAggregationError:
            continue
        if check(secret):
            return secret
    raise SecureAggregationError(f"{what}: the revealed shares do not rebuild the secret")


def _ephemeral_matches(public: bytes) -> Any:
    def check(secret: bytes) -> bool:
        return pr.public_raw(pr.agreement_key_from_raw(secret)) == public

    return check


def correction(
    roster: Roster,
    advertisements: Mapping[str, Any],
    reveals: Mapping[str, Any],
    *,
    run_id: str,
    step: int,
    threshold: int,
    live: Sequence[str],
    dropped: Sequence[str],
    length: int,
    plain_modulus: int,
) -> np.ndarray:
    """The vector ``M`` that turns the sum of the live masked updates into their plain sum.

    Parameters
    ----------
    roster
        The federation's roster.
    advertisements
        The advertisements sent to the branches (branch_id -> bytes).
    reveals
        branch_id -> its reveal reply; only replies of live branches count.
    run_id, step, threshold
        The step.
    live, dropped
        The claim the reveal request carried.
    length
        Length of the masked vectors.
    plain_modulus
        ``t``.

    Returns
    -------
    numpy.ndarray
        int64 values in ``[0, t)``.

    Raises
    ------
    SecureAggregationError
        A secret cannot be rebuilt from the revealed shares.
    """
    st = step_of(roster, run_id=run_id, step=step, threshold=threshold)
    ads = sw.parse_advertisements(roster, st, list(advertisements.values()))
    live, dropped = sorted(set(live)), sorted(set(dropped))
    if set(live) | set(dropped) != set(ads) or set(live) & set(dropped):
        raise SecureAggregationError("live and dropped must split exactly the advertisers")
    self_shares: dict[str, dict[int, bytes]] = {j: {} for j in live}
    eph_shares: dict[str, dict[int, bytes]] = {d: {} for d in dropped}
    for branch_id, blob in reveals.items():
        if branch_id not in live:
            continue
        try:
            rv = sw.parse_reveal_reply(st, blob)
        except SecureAggregationError:
            continue  # a malformed reply counts as missing
        if rv.revealer != branch_id:
            continue
        x = roster.index(branch_id)
        for j, share in rv.self_mask.items():
            if j in self_shares:
                self_shares[j][x] = share
        for d, share in rv.ephemeral.items():
            if d in eph_shares:
                eph_shares[d][x] = share
    total = np.zeros(length, dtype=np.int64)
    for j in live:
        seed = _reconstruct(
            self_shares[j],
            threshold,
            lambda s, j=j: sw.commitment(st, s, j) == ads[j].commitment,
            f"self-mask seed of branch {j}",
        )
        total += pr.uniform_mod(sw.self_mask_key(st, seed, j), length, plain_modulus)
    for d in dropped:
        raw = _reconstruct(
            eph_shares[d],
            threshold,
            _ephemeral_matches(ads[d].ephemeral_public),
            f"ephemeral key of dropped branch {d}",
        )
        key = pr.agreement_key_from_raw(raw)
        for j in live:
            seed = sw.pairwise_seed(st, pr.agree(key, ads[j].ephemeral_public), j, d)
            total += sw.mask_sign(j, d) * pr.uniform_mod(seed, length, plain_modulus)
        total %= plain_modulus
    return total % plain_modulus
