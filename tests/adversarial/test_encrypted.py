"""A malicious server against encrypted, masked aggregation at real branches.

Three branches (the real ClientApp, their own signing and agreement keys, their
own state folders) hold the BFV key they made among themselves and upload one
masked, encrypted update each. The attacker then tries to have a branch open
what it should not: another branch's upload on its own, a sum without the
branch's own upload, a sum of fewer branches than the branch accepts, a claim
that the branch dropped that no branch endorsed. The branch is asked with
``release`` on, so whatever it decrypts would come back in clear.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message

from fedcrm import protocol as P
from fedcrm.crypto.bfv_aggregate import aggregate
from fedcrm.crypto.bfv_wire import BFVParameters, EncryptedVector
from fedcrm.crypto.roster import Roster, default_threshold
from fedcrm.crypto.unmasking import correction, reveal_request
from fedcrm.models.lstm import build_model, get_weights

from .conftest import BRANCHES, CUTOFF, job, message, node_configs

HE_JOB = [
    "privacy=he",
    "release=true",
    "model.hidden_size=8",
    "model.embedding_dim=4",
    "task.max_events=10",
    "federation.rounds=1",
    f"task.cutoff={CUTOFF}",
]
RUN = "encrypted-attack"


def _branch(reply: Message) -> dict[str, Any]:
    return dict(reply.content[P.BRANCH])


@pytest.fixture
def setup(export: Path, tmp_path: Path, ask: Callable[..., Message]) -> dict[str, Any]:
    """Key ceremony and one honest step with every branch's masked upload."""
    from fedcrm.privacy.signing import generate_agreement_key

    configs = node_configs(tmp_path, export)
    for c in configs.values():
        home = Path(c["signing-key"]).parent
        b = c["branch-id"]
        generate_agreement_key(home, b)
        c.update({"agreement-key": str(home / f"{b}.x25519.key"), "state-dir": str(home)})
    roster = Roster(
        {
            b: Roster.from_key_dir(Path(configs[i]["signing-key"]).parent, [b]).entries[b]
            for i, b in enumerate(BRANCHES)
        }
    )
    spec = job(HE_JOB, RUN)
    by_id = {c["branch-id"]: c for c in configs.values()}

    def secagg(**values: Any) -> dict[str, ConfigRecord]:
        return {P.SECAGG: ConfigRecord({"roster": roster.to_json(), **values})}

    def send(b: str, mtype: str, **records: Any) -> Message:
        return ask(by_id[b], message(spec, mtype, 1, **records))

    holder = BRANCHES[0]
    keys = {b: send(b, P.HE_KEYS, **secagg(holder=holder, step=1, ask="keys")) for b in BRANCHES}
    made = dict(keys[holder].content[P.SECAGG])
    for b in BRANCHES[1:]:
        sealed = made[f"sealed.{b}"]
        accepted = send(b, P.HE_ACCEPT, **secagg(holder=holder, sealed=sealed))
        assert _branch(accepted)["status"] == P.STATUS_OK, _branch(accepted)
    ads = [bytes(keys[b].content[P.SECAGG]["advertisement"]) for b in BRANCHES]
    n_tabular = 0
    from fedcrm.client.branch import BranchSettings, load_branch_data

    settings = BranchSettings.from_node_config(by_id[holder])
    n_tabular = load_branch_data(settings, spec.task).n_tabular
    initial = get_weights(build_model(spec.model, n_tabular, seed=spec.seed))
    uploads: dict[str, Any] = {}
    for b in BRANCHES:
        r = send(
            b,
            P.TRAIN,
            **secagg(step=1, advertisements=ads),
            **{P.WEIGHTS: ArrayRecord(numpy_ndarrays=initial)},
        )
        assert _branch(r)["status"] == P.STATUS_OK, _branch(r)
        uploads[b] = dict(r.content[P.ENCRYPTED])
    params = BFVParameters.from_json(made["parameters"])
    return {
        "send": send,
        "secagg": secagg,
        "roster": roster,
        "params": params,
        "uploads": {1: uploads},
        "ads": {1: dict(zip(BRANCHES, ads, strict=True))},
        "threshold": default_threshold(roster.n),
    }


def _request(s: dict[str, Any], live: list[str], dropped: list[str] = (), step: int = 1) -> bytes:
    return reveal_request(
        s["roster"], run_id=RUN, step=step, threshold=s["threshold"], live=live, dropped=dropped
    )


def _records(agg: EncryptedVector, corr: np.ndarray, step: int) -> ConfigRecord:
    return ConfigRecord(
        {**agg.to_records(), "correction": np.asarray(corr, dtype="<i8").tobytes(), "step": step}
    )


def _open(
    s: dict[str, Any], who: str, agg: EncryptedVector, corr: np.ndarray, step: int = 1
) -> Message:
    """Ask ``who`` to evaluate (and, release on, hand back) the model in ``agg``."""
    return s["send"](
        who, P.EVALUATE, **s["secagg"](step=step + 1), **{P.ENCRYPTED: _records(agg, corr, step)}
    )


def _sum_of(s: dict[str, Any], branches: list[str], step: int = 1) -> EncryptedVector:
    parsed = {b: EncryptedVector.from_records(s["uploads"][step][b]) for b in branches}
    agg, bad = aggregate(s["params"], parsed)
    assert not bad
    return agg


def _honest(s: dict[str, Any], step: int = 1, next_step: int | None = None) -> tuple[Any, Any]:
    """The step's real sum and mask correction (every branch live); next step's ads."""
    live = list(BRANCHES)
    req = _request(s, live, step=step)
    reveals, ads = {}, []
    ask = {"step": step, "request": req} | ({"next_step": next_step} if next_step else {})
    for b in live:
        r = s["send"](b, P.SECAGG_REVEAL, **s["secagg"](**ask))
        assert _branch(r)["status"] == P.STATUS_OK, _branch(r)
        reveals[b] = bytes(r.content[P.SECAGG]["reveal"])
        if next_step:
            ads.append(bytes(r.content[P.SECAGG]["advertisement"]))
    agg = _sum_of(s, live, step)
    corr = correction(
        s["roster"], s["ads"][step], reveals, run_id=RUN, step=step, threshold=s["threshold"],
        live=live, dropped=[], length=agg.length, plain_modulus=s["params"].plain_modulus,
    )  # fmt: skip
    if next_step:
        s["ads"][next_step] = dict(zip(live, ads, strict=True))
    return agg, corr


def _refused(reply: Message) -> str:
    """The refusal of a reply that released no weights (the test fails on weights)."""
    info = _branch(reply)
    assert P.WEIGHTS not in reply.content, "the branch decrypted and released the model"
    assert info["status"] != P.STATUS_OK, info
    return str(info.get("message", ""))


@pytest.mark.slow
def test_a_forwarded_single_upload_is_not_opened(setup: dict[str, Any]) -> None:
    s = setup
    single = EncryptedVector.from_records(s["uploads"][1][BRANCHES[1]])
    why = _refused(_open(s, BRANCHES[0], single, np.zeros(single.length, dtype=np.int64)))
    assert "missing-own" in why, why


@pytest.mark.slow
def test_a_sum_without_the_branchs_own_upload_is_not_opened(setup: dict[str, Any]) -> None:
    s = setup
    others = _sum_of(s, list(BRANCHES[1:]))
    why = _refused(_open(s, BRANCHES[0], others, np.zeros(others.length, dtype=np.int64)))
    assert "missing-own" in why, why


@pytest.mark.slow
def test_reveal_refuses_a_dropout_claim_that_leaves_too_few_live(setup: dict[str, Any]) -> None:
    s = setup
    req = _request(s, [BRANCHES[0], BRANCHES[2]], [BRANCHES[1]])
    reply = s["send"](BRANCHES[0], P.SECAGG_REVEAL, **s["secagg"](step=1, request=req))
    info = _branch(reply)
    assert info["status"] != P.STATUS_OK and P.SECAGG not in reply.content, info
    # Three branches: any dropout leaves fewer live than a branch answers for.
    assert "at least 3" in str(info.get("message", "")), info


@pytest.mark.slow
def test_the_honest_sum_opens_and_a_stale_one_does_not(
    setup: dict[str, Any], ask: Callable[..., Message]
) -> None:
    """The real sum opens (so the refusals above are not blanket); an older step's does not."""
    s = setup
    agg1, corr1 = _honest(s, 1, next_step=2)
    reply = _open(s, BRANCHES[0], agg1, corr1)
    assert _branch(reply)["status"] == P.STATUS_OK, _branch(reply)
    weights = reply.content[P.WEIGHTS].to_numpy_ndarrays()
    assert all(np.isfinite(w).all() for w in weights)
    # A weighted average of three trained models: within the range no parameter ever leaves.
    assert 0 < max(float(np.abs(w).max()) for w in weights) < 64

    # Round 2: every branch opens step 1's sum, trains and uploads to step 2.
    ads2 = [s["ads"][2][b] for b in BRANCHES]
    s["uploads"][2] = {}
    for b in BRANCHES:
        r = s["send"](
            b, P.TRAIN, **s["secagg"](step=2, advertisements=ads2),
            **{P.ENCRYPTED: _records(agg1, corr1, 1)},
        )  # fmt: skip
        assert _branch(r)["status"] == P.STATUS_OK, _branch(r)
        s["uploads"][2][b] = dict(r.content[P.ENCRYPTED])
    agg2, corr2 = _honest(s, 2)
    assert _branch(_open(s, BRANCHES[0], agg2, corr2, step=2))["status"] == P.STATUS_OK
    # Step 1's sum, replayed once the branch has moved on, is refused.
    why = _refused(_open(s, BRANCHES[0], agg1, corr1, step=1))
    assert "missing-own" in why, why


@pytest.mark.slow
def test_a_branch_out_of_the_last_sum_rejoins_with_a_zero_upload(setup: dict[str, Any]) -> None:
    """Its own upload missing, a branch trains nothing and adds zeros of weight zero."""
    s = setup
    _, corr1 = _honest(s, 1, next_step=2)
    ads2 = [s["ads"][2][b] for b in BRANCHES]
    others = _sum_of(s, list(BRANCHES[1:]))
    r = s["send"](
        BRANCHES[0], P.TRAIN, **s["secagg"](step=2, advertisements=ads2),
        **{P.ENCRYPTED: _records(others, corr1, 1)},
    )  # fmt: skip
    assert _branch(r)["status"] == P.STATUS_OK, _branch(r)
    assert r.content[P.METRICS]["catching_up"] == 1 and r.content[P.METRICS]["num-examples"] == 0
    assert not _branch(r).get("ledger_entries")
    assert P.WEIGHTS not in r.content and P.ENCRYPTED in r.content
