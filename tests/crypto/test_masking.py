"""Double masking, branch side: exact sums with dropouts, and what a branch refuses."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable

import numpy as np
import pytest

from fedcrm.crypto import bfv, fixed_point, masking
from fedcrm.crypto.primitives import canonical
from fedcrm.crypto.roster import (
    BranchIdentity,
    Roster,
    default_threshold,
    max_colluders,
    max_dropouts,
    sign_message,
)
from fedcrm.crypto.round_state import delete_state, load_state
from fedcrm.errors import ContributorsError, RevealRefusedError, SecureAggregationError

from .conftest import BRANCHES, Federation

LENGTH, SCALE = 5_000, 256.0
ALL = list(BRANCHES)


@pytest.fixture(scope="module")
def updates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {b: rng.normal(0.0, 1.0, LENGTH) for b in BRANCHES}


def _quantized(ctx: bfv.SecretContext, updates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        b: fixed_point.quantize(
            x, scale=SCALE, plain_modulus=ctx.plain_modulus, max_contributors=len(updates)
        )
        for b, x in updates.items()
    }


@pytest.mark.parametrize("dropped", [[], ["b3"], ["b2", "b5"]], ids=["none", "one", "two"])
def test_exact_sum_with_dropouts(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
    dropped: list[str],
) -> None:
    fed = federation(threshold=3)  # 5 branches, T = 3: up to 2 dropouts
    quantized = _quantized(bfv_ctx, updates)
    agg, correction, live, _ = fed.run(quantized, dropped)
    expected = sum(quantized[b] for b in live) % bfv_ctx.plain_modulus
    for b in live:  # every live branch gets the same exact sum
        got = masking.open_aggregate(fed.state(b), bfv_ctx, agg, correction)
        assert np.array_equal(got, expected)
    real = fixed_point.dequantize(expected, scale=SCALE, plain_modulus=bfv_ctx.plain_modulus)
    assert np.max(np.abs(real - sum(updates[b] for b in live))) <= len(live) * 0.5 / SCALE
    # Without the correction the decrypted sum is masked: nothing like the true sum.
    masked = masking.open_aggregate(fed.state(live[0]), bfv_ctx, agg, np.zeros(LENGTH, int))
    assert np.mean(masked == expected) < 0.01


def test_round_state_on_disk(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    fed = federation()
    path = fed.path("b1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = fed.state("b1")
    assert before.ephemeral_private is not None and before.self_mask_seed is not None
    fed.run(_quantized(bfv_ctx, updates))
    after = load_state(path)
    # The round secrets are gone once the update is masked; the claim acted on is kept.
    assert after.ephemeral_private is None and after.self_mask_seed is None
    assert after.masked and after.own_seeds and after.claim == (tuple(ALL), ())
    assert b"ephemeral_private" in path.read_bytes() and after.reveal is not None
    delete_state(path)
    delete_state(path)  # idempotent
    assert not path.exists()
    with pytest.raises(SecureAggregationError, match="cannot read round state"):
        load_state(path)
    path.write_bytes(b"{}")
    with pytest.raises(SecureAggregationError, match="not a fedcrm secure-aggregation round state"):
        load_state(path)


def test_masks_serve_one_update_only(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    fed = federation()
    fed.receive()
    q = _quantized(bfv_ctx, updates)
    fed.submit({"b1": q["b1"]})
    with pytest.raises(SecureAggregationError, match="masks were already used"):
        fed.submit({"b1": q["b2"]})


def test_reveal_is_repeatable_and_then_binding(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    fed = federation()
    fed.receive()
    fed.submit(_quantized(bfv_ctx, updates))
    request = fed.request(ALL, [])
    first = fed.reveal("b1", request)
    assert fed.reveal("b1", request) == first
    body = json.loads(first)
    assert sorted(body["self_mask"]) == ALL and body["ephemeral"] == {}
    # The fake-dropout attack: after b1 revealed b2's self-mask share, the server claims
    # b2 dropped (even with T endorsements of that claim) to get b2's ephemeral key too.
    claim = (["b1", "b3", "b4", "b5"], ["b2"])
    endorsements = [fed.endorse(b, *claim) for b in ("b3", "b4", "b5")]
    endorsements.append(
        sign_message(fed.identities["b2"], "endorsement", json.loads(endorsements[0])["body"])
    )
    with pytest.raises(RevealRefusedError, match="contradicts"):
        fed.reveal("b1", fed.request(*claim, endorsements))
    with pytest.raises(RevealRefusedError, match="contradicts"):
        fed.endorse("b1", *claim)
    # b3 endorsed the dropout claim: it now refuses the all-live claim (never both for b2).
    with pytest.raises(RevealRefusedError, match="contradicts"):
        fed.reveal("b3", request)


def test_dropped_keys_need_endorsements_of_the_same_claim(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    fed = federation(threshold=3)
    fed.receive()
    q = _quantized(bfv_ctx, updates)
    fed.submit({b: q[b] for b in ("b1", "b2", "b3", "b4")})
    live, dropped = ["b1", "b2", "b3", "b4"], ["b5"]
    with pytest.raises(RevealRefusedError, match="needs 3 endorsements"):
        fed.reveal("b1", fed.request(live, dropped))
    own = fed.endorse("b1", live, dropped)
    twice = [own, own, fed.endorse("b2", live, dropped)]  # one signer counts once
    with pytest.raises(RevealRefusedError, match="got 2"):
        fed.reveal("b1", fed.request(live, dropped, twice))
    other_claim = sign_message(
        fed.identities["b4"],
        "endorsement",
        {**json.loads(own)["body"], "live": ["b1", "b2", "b4"], "dropped": ["b3", "b5"]},
    )
    by_dropped = sign_message(fed.identities["b5"], "endorsement", json.loads(own)["body"])
    with pytest.raises(RevealRefusedError, match="got 2"):  # other claim; a dropped signer
        fed.reveal("b1", fed.request(live, dropped, [*twice, other_claim, by_dropped]))
    outsider = BranchIdentity.generate("b9")
    with pytest.raises(SecureAggregationError, match="not in the roster"):
        fed.reveal(
            "b1", fed.request(live, dropped, [*twice, sign_message(outsider, "endorsement", {})])
        )
    reply = fed.reveal("b1", fed.request(live, dropped, [*twice, fed.endorse("b3", live, dropped)]))
    assert list(json.loads(reply)["ephemeral"]) == ["b5"]


@pytest.mark.parametrize(
    ("live", "dropped", "match"),
    [
        (["b2", "b3", "b4", "b5"], ["b1"], "declares this branch dropped"),
        (["b1", "b2"], ["b3", "b4", "b5"], "2 branches declared live, at least 4"),
        (["b1", "b2", "b3", "b4"], [], "split exactly the step's advertisers"),
        (["b1", "b2", "b3", "b4", "b5", "b6"], [], "split exactly"),
    ],
)
def test_unsafe_claims_refused(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
    live: list[str],
    dropped: list[str],
    match: str,
) -> None:
    fed = federation()  # default T = 4 for 5 branches; min_live = T
    fed.receive()
    fed.submit({"b1": _quantized(bfv_ctx, updates)["b1"]})
    with pytest.raises(RevealRefusedError, match=match):
        fed.endorse("b1", live, dropped)
    with pytest.raises(RevealRefusedError, match=match):
        fed.reveal("b1", fed.request(live, dropped))


def test_branch_that_did_not_submit_reveals_nothing(federation: Callable[..., Federation]) -> None:
    fed = federation()
    fed.receive()
    with pytest.raises(RevealRefusedError, match="did not submit"):
        fed.reveal("b1", fed.request(ALL, []))


def _resigned(ad: bytes, signer: BranchIdentity, **changes: object) -> bytes:
    body = {**json.loads(ad)["body"], **changes}
    return sign_message(signer, "advertisement", body)


def test_forged_advertisements_refused(
    federation: Callable[..., Federation], identities: dict[str, BranchIdentity]
) -> None:
    fed = federation()
    ads = dict(fed.ads)
    other_key = json.loads(ads["b1"])["body"]["ephemeral"]
    mallory = BranchIdentity("b2", identities["b1"].signing_key, identities["b1"].agreement_key)
    swapped = json.loads(ads["b2"])
    swapped["body"]["ephemeral"] = other_key  # the server substitutes b2's key, keeps its signature
    cases = {
        "does not verify": canonical(swapped),
        "does not verify with its roster key": _resigned(ads["b2"], mallory, ephemeral=other_key),
        "not in the roster": sign_message(BranchIdentity.generate("b9"), "advertisement", {}),
        "another run, step": federation(step=2).ads["b2"],  # replayed from another step
    }
    for match, forged in cases.items():
        with pytest.raises(SecureAggregationError, match=match):
            fed.receive([*[a for b, a in ads.items() if b != "b2"], forged])
    equivocation = _resigned(ads["b2"], identities["b2"], ephemeral=other_key)
    with pytest.raises(SecureAggregationError, match="advertised twice"):
        fed.receive([*ads.values(), equivocation])
    with pytest.raises(SecureAggregationError, match="own advertisement is missing or altered"):
        fed.receive([a for b, a in ads.items() if b != "b1"])
    with pytest.raises(SecureAggregationError, match="3 branches advertised, at least 4"):
        fed.receive([ads["b1"], ads["b2"], ads["b3"]])
    fed.receive()  # the genuine set passes
    assert fed.state("b1").view == tuple(ALL)


def test_roster_and_threshold_rules(
    federation: Callable[..., Federation], roster: Roster, identities: dict[str, BranchIdentity]
) -> None:
    assert [default_threshold(n) for n in (2, 3, 4, 5, 6, 10)] == [2, 3, 3, 4, 4, 6]
    assert (max_colluders(5, 4), max_dropouts(5, 4)) == (2, 1)
    assert max_colluders(5, 3) == 0  # the majority of 5 is not safe against one colluder
    assert Roster.from_json(roster.to_json()) == roster and len(roster.digest) == 64
    fed = federation()
    smaller = Roster({b: identities[b].entry for b in ("b1", "b2", "b3")})
    with pytest.raises(SecureAggregationError, match="roster changed"):
        masking.receive_advertisements(
            fed.state("b1"), identities["b1"], smaller, list(fed.ads.values())
        )
    impostor = BranchIdentity.generate("b1")
    with pytest.raises(SecureAggregationError, match="differ from its roster entry"):
        masking.start_round(impostor, roster, run_id="r", step=1)
    with pytest.raises(SecureAggregationError, match="threshold"):
        masking.start_round(identities["b1"], roster, run_id="r", step=1, threshold=6)


def test_aggregate_of_another_live_set_refused(
    federation: Callable[..., Federation],
    bfv_ctx: bfv.SecretContext,
    updates: dict[str, np.ndarray],
) -> None:
    from fedcrm.crypto import bfv_aggregate

    fed = federation()
    agg, correction, live, uploads = fed.run(_quantized(bfv_ctx, updates))
    fewer, _ = bfv_aggregate.aggregate(bfv_ctx.parameters, {b: uploads[b] for b in live[:4]})
    with pytest.raises(ContributorsError, match="expected 5"):
        masking.open_aggregate(fed.state("b1"), bfv_ctx, fewer, correction)
    with pytest.raises(SecureAggregationError, match="correction does not match"):
        masking.open_aggregate(fed.state("b1"), bfv_ctx, agg, correction[:-1])
