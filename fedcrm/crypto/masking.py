"""Secure aggregation, branch side: SecAgg+-style double masking under BFV.

Protocol of one aggregation step ``(run_id, step)``
---------------------------------------------------
Roster: the ``n`` branches with their long-term Ed25519 signing and X25519
agreement public keys, loaded by every branch from its own trusted copy.
Threshold ``T`` (default :func:`~fedcrm.crypto.roster.default_threshold`).
All branches share one BFV secret context, made by an elected branch and
sealed to each peer (:mod:`fedcrm.crypto.sealing`); the server holds its
parameters only.

1. **advertise** (branch -> server). :func:`start_round`: fresh ephemeral
   X25519 key ``e_i`` and self-mask seed ``b_i`` (OS CSPRNG). Both are split
   into Shamir shares (``T`` of ``n``); the share pair for roster branch ``j``
   is encrypted to ``j``'s long-term agreement key; the advertisement (``e_i``
   public, shares, a commitment to ``b_i``) is signed with ``i``'s Ed25519 key.
2. **submit** (server -> branches: every advertisement; branch -> server:
   ciphertexts). :func:`receive_advertisements` verifies each against the
   roster (a server can neither forge nor substitute a key), requires the
   branch's own advertisement unchanged and at least ``T`` advertisers, and
   decrypts this branch's shares. :func:`submit` masks the quantized update,
   ``y_i = q(x_i) + PRG(b_i) + sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij) mod t``
   over the advertisers ``j`` (``s_ij`` = HKDF of ``X25519(e_i, e_j)``),
   BFV-encrypts ``y_i``, keeps its ciphertext seeds, erases ``e_i`` and
   ``b_i``, and refuses to mask a second time in the step.
3. The server sums the ciphertexts of the live branches ``L``; ``D`` = the
   advertisers that did not submit. **endorse** (only when ``D`` is not
   empty; server -> live branches: ``(L, D)``; branch -> server: signature):
   :func:`endorse` signs the claim, once per step.
4. **reveal** (server -> live branches: ``(L, D)`` and, when ``D`` is not
   empty, ``T`` endorsements of exactly that claim; branch -> server: shares).
   :func:`reveal` returns the shares of ``b_j`` for ``j`` in ``L`` and of
   ``e_d`` for ``d`` in ``D``.
5. **unmask** (server): :func:`fedcrm.crypto.unmasking.correction` rebuilds
   ``b_j`` and ``e_d`` from ``T`` shares and computes ``M = sum_L PRG(b_j) +
   the pairwise terms live branches added for dropped ones``. Server ->
   branches: the encrypted sum and ``M``. :func:`open_aggregate` checks the
   contributor set (own contribution present, exactly ``|L|`` contributions),
   decrypts, and subtracts ``M``: ``sum_L q(x_j) mod t``.

Round trips: three per step (advertise, submit, reveal), four when a branch
dropped; the next step's advertisement may travel with this step's reply.

What a branch refuses (the safety rules)
-----------------------------------------
* A claim where ``L`` and ``D`` overlap, ``L + D`` is not exactly the
  advertisers it saw, it is not itself live, or ``|L| < min_live``.
* A second, different claim in the same step (to endorse or reveal): a
  branch therefore never reveals both ``b_j`` and ``e_j`` for the same ``j``,
  and a repeated request gets the same bytes. The claim and the reply are
  saved (file mode 0600) before the reply leaves.
* Revealing ``e`` shares without ``T`` endorsements of exactly that claim
  from distinct live branches.

What this guarantees
--------------------
Masks are uniform mod ``t`` (exact hiding); BFV hides even the masked
vectors from the server alone. Against the server colluding with ``c``
branches (which hold the BFV key, their masks and shares): if ``2T > n + c``,
no honest branch's individual update is revealed; what can be unmasked are
sums in which at least two honest branches' updates are added. Reason:
revealing ``x_i`` needs ``b_i`` (``T`` shares from branches told "i live") and every
pairwise seed of ``i`` with an honest peer (the peer's ``e``, from branches
told "peer dropped"); honest branches decide once per step, and two groups of
``T - c`` honest branches acting on different claims do not fit in ``n - c``.
Up to ``n - T`` branches may drop out after advertising. Every step uses
fresh ``e_i``, ``b_i`` and step-bound derivations: secrets revealed in one
step unmask no other.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcrm.crypto import bfv, shamir
from fedcrm.crypto import primitives as pr
from fedcrm.crypto import secagg_wire as sw
from fedcrm.crypto.bfv_wire import EncryptedVector
from fedcrm.crypto.roster import (
    BranchIdentity,
    Roster,
    default_threshold,
    open_message,
    sign_message,
)
from fedcrm.crypto.round_state import RoundState, save_state
from fedcrm.errors import RevealRefusedError, SecureAggregationError


def start_round(
    identity: BranchIdentity,
    roster: Roster,
    *,
    run_id: str,
    step: int,
    threshold: int | None = None,
    min_live: int | None = None,
) -> tuple[RoundState, bytes]:
    """Fresh round secrets and this branch's signed advertisement.

    Returns
    -------
    tuple[RoundState, bytes]
        The state to save (:func:`save_state`) and the advertisement to send.
    """
    if roster.entry(identity.branch_id) != identity.entry:
        raise SecureAggregationError("this branch's keys differ from its roster entry")
    threshold = default_threshold(roster.n) if threshold is None else threshold
    min_live = threshold if min_live is None else min_live
    if not 2 <= threshold <= roster.n or min_live < threshold:
        raise SecureAggregationError(
            f"need 2 <= threshold <= {roster.n} branches and min_live >= threshold"
        )
    st = sw.Step(run_id, step, roster.digest, threshold)
    ephemeral = pr.new_agreement_key()
    e_raw, b_seed = pr.private_raw(ephemeral), secrets.token_bytes(32)
    b_shares = shamir.split(b_seed, n=roster.n, threshold=threshold)
    e_shares = shamir.split(e_raw, n=roster.n, threshold=threshold)
    boxes = {}
    for j, b_share, e_share in zip(roster.ids, b_shares, e_shares, strict=True):
        shared = pr.agree(ephemeral, roster.entry(j).agreement_public)
        key = sw.share_key(st, shared, identity.branch_id, j)
        aad = st.context("share", identity.branch_id, j)
        boxes[j] = pr.aead_encrypt(key, b_share + e_share, aad)
    body = sw.advertisement_body(
        st, pr.public_raw(ephemeral), sw.commitment(st, b_seed, identity.branch_id), boxes
    )
    ad = sign_message(identity, "advertisement", body)
    state = RoundState(
        identity.branch_id, run_id, step, roster.digest, threshold, min_live, ad, e_raw, b_seed
    )
    return state, ad


def receive_advertisements(
    state: RoundState, identity: BranchIdentity, roster: Roster, advertisements: Sequence[bytes]
) -> tuple[str, ...]:
    """Verify the step's advertisements and decrypt this branch's shares; return the view.

    Raises
    ------
    SecureAggregationError
        A forged or foreign advertisement, this branch's own advertisement
        missing or altered, fewer than ``T`` advertisers, a share that does not
        decrypt (naming its sender), or a different set than accepted before.
    """
    _check_roster(state, roster)
    ads = sw.parse_advertisements(roster, state.step_id, advertisements)
    if ads.get(state.branch_id) is None or ads[state.branch_id].raw != state.advertisement:
        raise SecureAggregationError("this branch's own advertisement is missing or altered")
    if len(ads) < state.threshold:
        raise SecureAggregationError(
            f"{len(ads)} branches advertised, at least {state.threshold} needed"
        )
    me, st = state.branch_id, state.step_id
    peers = {}
    for j, ad in ads.items():
        shared = pr.agree(identity.agreement_key, ad.ephemeral_public)
        try:
            pair = pr.aead_decrypt(
                sw.share_key(st, shared, j, me), ad.shares[me], st.context("share", j, me)
            )
        except SecureAggregationError:
            raise SecureAggregationError(f"the share sent by branch {j} does not decrypt") from None
        peers[j] = {"ephemeral": ad.ephemeral_public, "shares": pair}
    if state.peers is not None and state.peers != peers:
        raise SecureAggregationError("other advertisements were accepted before in this step")
    state.peers = peers
    return state.view


def mask(state: RoundState, values: Any, *, plain_modulus: int) -> np.ndarray:
    """``values`` (ints mod t) plus this branch's masks, once per step; erases the round secrets.

    Changes ``state`` in memory only; :func:`submit` also encrypts and saves it.

    Raises
    ------
    SecureAggregationError
        No advertisements accepted yet, or the masks were already used.
    """
    if state.masked or state.ephemeral_private is None or state.self_mask_seed is None:
        raise SecureAggregationError(
            "this step's masks were already used: a second masked update would reveal the "
            "difference between the two; start a new step"
        )
    view = state.view
    vec = np.asarray(values, dtype=np.int64)
    if vec.ndim != 1 or vec.size == 0 or vec.min() < 0 or vec.max() >= plain_modulus:
        raise SecureAggregationError("mask() takes a flat vector of integers mod t")
    st, me, n = state.step_id, state.branch_id, vec.size
    total = vec + pr.uniform_mod(sw.self_mask_key(st, state.self_mask_seed, me), n, plain_modulus)
    ephemeral = pr.agreement_key_from_raw(state.ephemeral_private)
    assert state.peers is not None
    for j in view:
        if j == me:
            continue
        seed = sw.pairwise_seed(st, pr.agree(ephemeral, state.peers[j]["ephemeral"]), me, j)
        total += sw.mask_sign(me, j) * pr.uniform_mod(seed, n, plain_modulus)
    state.masked, state.ephemeral_private, state.self_mask_seed = True, None, None
    return total % plain_modulus


def submit(
    state: RoundState, ctx: bfv.SecretContext, values: Any, *, state_path: str | os.PathLike[str]
) -> EncryptedVector:
    """Mask, BFV-encrypt, remember the ciphertext seeds, save the state, return the upload."""
    masked = mask(state, values, plain_modulus=ctx.plain_modulus)
    upload, seeds = bfv.encrypt(ctx, masked)
    state.own_seeds = seeds
    save_state(state, state_path)
    return upload


def _check_claim(state: RoundState, live: Sequence[str], dropped: Sequence[str]) -> None:
    if not state.masked or state.own_seeds is None:
        raise RevealRefusedError("this branch did not submit in this step")
    if set(live) | set(dropped) != set(state.view) or set(live) & set(dropped):
        raise RevealRefusedError("live and dropped must split exactly the step's advertisers")
    if state.branch_id not in live:
        raise RevealRefusedError("the claim declares this branch dropped")
    if len(live) < state.min_live:
        raise RevealRefusedError(f"{len(live)} branches declared live, at least {state.min_live}")
    claim = (tuple(live), tuple(dropped))
    if state.claim is not None and state.claim != claim:
        raise RevealRefusedError(
            "this step's live/dropped claim contradicts the one this branch already acted on"
        )


def endorse(
    state: RoundState,
    identity: BranchIdentity,
    live: Sequence[str],
    dropped: Sequence[str],
    *,
    state_path: str | os.PathLike[str],
) -> bytes:
    """Sign the server's (live, dropped) claim for this step; at most one claim per step."""
    live, dropped = tuple(sorted(set(live))), tuple(sorted(set(dropped)))
    _check_claim(state, live, dropped)
    if state.endorsement is None:
        state.claim = (live, dropped)
        state.endorsement = sign_message(
            identity, "endorsement", sw.claim_body(state.step_id, live, dropped)
        )
        save_state(state, state_path)
    return state.endorsement


def reveal(
    state: RoundState, roster: Roster, request: bytes, *, state_path: str | os.PathLike[str]
) -> bytes:
    """Answer a reveal request with this branch's shares (saved before they leave).

    Raises
    ------
    RevealRefusedError
        The claim breaks a safety rule (see the module docstring).
    SecureAggregationError
        A malformed request or endorsement.
    """
    _check_roster(state, roster)
    st = state.step_id
    live, dropped, endorsements = sw.parse_reveal_request(st, request)
    _check_claim(state, live, dropped)
    if state.reveal is not None:
        return state.reveal
    if dropped:
        signers = set()
        for blob in endorsements:
            signer, body = open_message(roster, "endorsement", blob)
            if signer in live and sw.parse_claim(st, body, "endorsement") == (live, dropped):
                signers.add(signer)
        if len(signers) < state.threshold:
            raise RevealRefusedError(
                f"revealing a dropped branch's key needs {state.threshold} endorsements of the "
                f"same claim, got {len(signers)}"
            )
    assert state.peers is not None
    half = shamir.SHARE_BYTES
    answer = sw.Reveal(
        revealer=state.branch_id,
        self_mask={j: state.peers[j]["shares"][:half] for j in live},
        ephemeral={d: state.peers[d]["shares"][half:] for d in dropped},
    )
    state.claim, state.reveal = (live, dropped), sw.reveal_reply(st, answer)
    save_state(state, state_path)
    return state.reveal


def open_aggregate(
    state: RoundState, ctx: bfv.SecretContext, agg: EncryptedVector, correction: Any
) -> np.ndarray:
    """Check, decrypt and unmask the step's aggregate: ``sum over live of q(x_j) mod t``.

    Raises
    ------
    ContributorsError
        The aggregate lacks this branch's contribution, holds too few or a
        number other than the live set this branch answered for.
    SecureAggregationError
        A correction of the wrong length or range.
    """
    if state.own_seeds is None:
        raise SecureAggregationError("this branch did not submit in this step")
    expected = len(state.claim[0]) if state.claim is not None else None
    total = bfv.decrypt(
        ctx,
        agg,
        own_seeds=state.own_seeds,
        min_contributors=state.min_live,
        expected_contributors=expected,
    )
    return unmask(total, correction, plain_modulus=ctx.plain_modulus)


def unmask(sum_mod_t: Any, correction: Any, *, plain_modulus: int) -> np.ndarray:
    """``sum - correction mod t`` (both int vectors of the same length, values in [0, t))."""
    total, corr = np.asarray(sum_mod_t, dtype=np.int64), np.asarray(correction, dtype=np.int64)
    if corr.shape != total.shape or (corr.size and (corr.min() < 0 or corr.max() >= plain_modulus)):
        raise SecureAggregationError("the correction does not match the aggregate (length/range)")
    return (total - corr) % plain_modulus


def _check_roster(state: RoundState, roster: Roster) -> None:
    if roster.digest != state.roster:
        raise SecureAggregationError("the roster changed since this step started")
