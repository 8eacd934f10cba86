"""Server side of double masking, and what a server colluding with one branch can learn."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from fedcrm.crypto import bfv, fixed_point, shamir, unmasking
from fedcrm.crypto import primitives as pr
from fedcrm.crypto import secagg_wire as sw
from fedcrm.crypto.bfv_wire import EncryptedVector
from fedcrm.crypto.round_state import RoundState
from fedcrm.errors import RevealRefusedError, SecureAggregationError

from .conftest import BRANCHES, Federation

LENGTH, SCALE = 5_000, 256.0
TARGET, COLLUDER = "b1", "b5"


@pytest.fixture(scope="module")
def updates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    return {b: rng.normal(0.0, 1.0, LENGTH) for b in BRANCHES}


def _q(ctx: bfv.SecretContext, updates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    t = ctx.plain_modulus
    return {
        b: fixed_point.quantize(x, scale=SCALE, plain_modulus=t, max_contributors=5)
        for b, x in updates.items()
    }


# -- the attacker's tools: the colluding branch holds the BFV key and its own round secrets ---


def _decrypt_single(ctx: bfv.SecretContext, upload: EncryptedVector) -> np.ndarray:
    """What the colluder's BFV key gives for one upload (bypassing the contributor check)."""
    parts = [np.asarray(v.decrypt(), dtype=np.int64)[:n] for v, n in bfv._ciphertexts(ctx, upload)]
    return np.concatenate(parts) % ctx.plain_modulus


def _pairwise(
    st: sw.Step, ephemeral: bytes, owner: str, peer: str, peer_public: bytes, t: int
) -> np.ndarray:
    seed = sw.pairwise_seed(
        st, pr.agree(pr.agreement_key_from_raw(ephemeral), peer_public), owner, peer
    )
    return sw.mask_sign(owner, peer) * pr.uniform_mod(seed, LENGTH, t)


def _publics(fed: Federation) -> dict[str, bytes]:
    st = sw.Step(fed.run_id, fed.step, fed.roster.digest, fed.threshold)
    return {
        b: ad.ephemeral_public
        for b, ad in sw.parse_advertisements(fed.roster, st, list(fed.ads.values())).items()
    }


def _combine(shares: dict[int, bytes], threshold: int) -> bytes:
    return shamir.combine(shares, threshold=threshold)


def _estimate(ctx: bfv.SecretContext, masked: np.ndarray, known_mask: np.ndarray) -> np.ndarray:
    t = ctx.plain_modulus
    return fixed_point.dequantize((masked - known_mask) % t, scale=SCALE, plain_modulus=t)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_server_and_one_branch_recover_only_noise(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    fed = federation()  # default T = 4 for 5 branches
    t = bfv_ctx.plain_modulus
    fed.receive()
    colluder: RoundState = fed.state(COLLUDER)  # kept before masking erases its secrets
    target_secrets: RoundState = fed.state(TARGET)  # for the control below only
    uploads = fed.submit(_q(bfv_ctx, updates))
    request = fed.request(list(BRANCHES), [])
    reveals = {b: json.loads(fed.reveal(b, request)) for b in BRANCHES}
    st = colluder.step_id
    pubs = _publics(fed)
    # Everything the protocol lets the server and the colluder have about the target:
    b_shares = {fed.roster.index(b): pr.unb64(r["self_mask"][TARGET]) for b, r in reveals.items()}
    b_target = _combine(b_shares, fed.threshold)
    known = pr.uniform_mod(sw.self_mask_key(st, b_target, TARGET), LENGTH, t)
    known = known - _pairwise(st, colluder.ephemeral_private, COLLUDER, TARGET, pubs[TARGET], t)
    masked = _decrypt_single(bfv_ctx, uploads[TARGET])
    guess = _estimate(bfv_ctx, masked, known)
    x = updates[TARGET]
    # What remains is the pairwise masks with the three honest peers: uniform noise.
    assert abs(_corr(guess, x)) < 0.05
    assert np.sqrt(np.mean((guess - x) ** 2)) > 100 * np.sqrt(np.mean(x**2))
    # Control: with the target's ephemeral key (which no honest branch reveals for a live
    # branch) the same computation recovers the update, so the tools above are right.
    assert target_secrets.ephemeral_private is not None
    full = known.copy()
    for j in BRANCHES:
        if j not in (TARGET, COLLUDER):
            full += _pairwise(st, target_secrets.ephemeral_private, TARGET, j, pubs[j], t)
    assert np.max(np.abs(_estimate(bfv_ctx, masked, full) - x)) <= 0.5 / SCALE + 1e-12


def _split_claim_attack(
    fed: Federation, bfv_ctx: bfv.SecretContext, updates: dict[str, np.ndarray]
) -> np.ndarray:
    """The server tells b1, b2 "all live" and b3, b4 "b1 dropped", with the colluder b5.

    Returns the server's estimate of b1's update (raises if a branch refuses).
    """
    t = bfv_ctx.plain_modulus
    fed.receive()
    colluder = fed.state(COLLUDER)
    uploads = fed.submit(_q(bfv_ctx, updates))
    st, pubs = colluder.step_id, _publics(fed)
    all_live = fed.request(list(BRANCHES), [])
    claim = (["b2", "b3", "b4", "b5"], ["b1"])
    endorsements = [fed.endorse(b, *claim) for b in ("b3", "b4", COLLUDER)]
    dropout = fed.request(*claim, endorsements)
    b_shares = {
        fed.roster.index(b): pr.unb64(json.loads(fed.reveal(b, all_live))["self_mask"][TARGET])
        for b in ("b1", "b2")
    }
    e_shares = {
        fed.roster.index(b): pr.unb64(json.loads(fed.reveal(b, dropout))["ephemeral"][TARGET])
        for b in ("b3", "b4")
    }
    half = shamir.SHARE_BYTES  # the colluder adds both of its own shares
    x5 = fed.roster.index(COLLUDER)
    b_shares[x5] = colluder.peers[TARGET]["shares"][:half]
    e_shares[x5] = colluder.peers[TARGET]["shares"][half:]
    b_target = _combine(b_shares, fed.threshold)
    e_target = _combine(e_shares, fed.threshold)
    mask = pr.uniform_mod(sw.self_mask_key(st, b_target, TARGET), LENGTH, t)
    for j in BRANCHES:
        if j != TARGET:
            mask += _pairwise(st, e_target, TARGET, j, pubs[j], t)
    return _estimate(bfv_ctx, _decrypt_single(bfv_ctx, uploads[TARGET]), mask)


def test_majority_threshold_is_not_enough_against_one_colluder(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    # Why default_threshold(5) is 4, not the majority 3: every branch follows the rules,
    # yet the split claims give the server 3 shares of each of b1's two secrets.
    guess = _split_claim_attack(federation(threshold=3), bfv_ctx, updates)
    assert np.max(np.abs(guess - updates[TARGET])) <= 0.5 / SCALE + 1e-12


def test_default_threshold_refuses_the_split_claim_attack(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    with pytest.raises(RevealRefusedError, match="needs 4 endorsements of the same claim, got 3"):
        _split_claim_attack(federation(), bfv_ctx, updates)


def test_round_secrets_do_not_unmask_another_round(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    t = bfv_ctx.plain_modulus
    first, second = federation(step=1), federation(step=2)
    first.receive()
    leaked = first.state(TARGET)  # suppose every secret of step 1 leaked
    first.submit(_q(bfv_ctx, updates))
    second.receive()
    masked = _decrypt_single(bfv_ctx, second.submit(_q(bfv_ctx, updates))[TARGET])
    assert _publics(first)[TARGET] != _publics(second)[TARGET]  # fresh ephemeral keys
    for fed in (first, second):  # step-1 secrets with step-1 or step-2 derivations
        st, pubs = sw.Step(fed.run_id, fed.step, fed.roster.digest, fed.threshold), _publics(fed)
        mask = pr.uniform_mod(sw.self_mask_key(st, leaked.self_mask_seed, TARGET), LENGTH, t)
        for j in BRANCHES:
            if j != TARGET:
                mask += _pairwise(st, leaked.ephemeral_private, TARGET, j, pubs[j], t)
        guess = _estimate(bfv_ctx, masked, mask)
        assert abs(_corr(guess, updates[TARGET])) < 0.05


def test_correction_survives_a_lying_revealer(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    fed = federation(threshold=3)
    fed.receive()
    q = _q(bfv_ctx, updates)
    fed.submit(q)
    request = fed.request(list(BRANCHES), [])
    reveals = {b: fed.reveal(b, request) for b in BRANCHES}
    lie = json.loads(reveals["b1"])
    lie["self_mask"] = {j: pr.b64(bytes(65) + b"\x01") for j in lie["self_mask"]}
    reveals["b1"] = pr.canonical(lie)
    reveals["b9"] = reveals["b2"]  # not a live branch: ignored
    corr = fed.correction(reveals, list(BRANCHES), [], LENGTH)
    expected = fed.correction(
        {b: fed.reveal(b, request) for b in BRANCHES}, list(BRANCHES), [], LENGTH
    )
    assert np.array_equal(corr, expected)
    few = {b: reveals[b] for b in ("b2", "b3")}
    with pytest.raises(SecureAggregationError, match="2 shares revealed, 3 needed"):
        fed.correction(few, list(BRANCHES), [], LENGTH)


def test_server_forwards_only_verified_advertisements(
    federation: Callable[..., Federation],
) -> None:
    fed = federation()
    sent = {**fed.ads, "b2": fed.ads["b3"], "b9": b"not json"}
    kept, rejected = unmasking.verified_advertisements(
        fed.roster, sent, run_id=fed.run_id, step=fed.step, threshold=fed.threshold
    )
    assert sorted(kept) == ["b1", "b3", "b4", "b5"]
    assert "carries the advertisement of branch b3" in rejected["b2"]
    assert "malformed advertisement" in rejected["b9"]
    _, wrong_step = unmasking.verified_advertisements(
        fed.roster, fed.ads, run_id=fed.run_id, step=fed.step + 1, threshold=fed.threshold
    )
    assert set(wrong_step) == set(BRANCHES)
