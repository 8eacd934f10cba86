"""Faults with real Flower processes.

1. A SuperNode killed mid-round (SIGTERM, SIGKILL): the run finishes with the
   others, the summary names the missing branch, and neither its own ledger
   nor the server's copy holds an entry for a round it did not finish.
2. The SuperLink (with its ServerApp) killed mid-run and restarted: a
   ``resume=true`` run with the same ``output-dir`` continues at the next
   round; no round lost or repeated, no ledger entry duplicated.
3. A branch sending a non-finite, then a mis-shaped update is excluded with a
   logged reason. The product has no switch for this: the test runs ``flwr
   run`` on a small test app directory whose ClientApp is fedcrm's, wrapped in
   a Flower client mod that corrupts one branch's replies.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _ledger(path: Path) -> list[dict[str, Any]]:
    """The training rounds a branch paid for: its ledger's train reservations."""
    if not path.exists():
        return []
    entries = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [e for e in entries if e.get("kind") == "reservation" and e["purpose"] == "train"]


def _trained_rounds(run_dir: Path) -> list[int]:
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return [r["trained_round"] for r in rounds if "trained_round" in r]


def _start_all(
    dep: Any, crm: dict[str, Path], ceiling: str | None = "50", app: Path | None = None
) -> dict[str, Any]:
    """Provision, start, register and start every branch; ``app``: the app they pin instead."""
    dep.init()
    server = dep.start_server()
    for b in dep.branches:
        dep.register(b)
    args = ["--epsilon-ceiling", ceiling] if ceiling else []
    if app is not None:
        args += ["--approve-app", str(app)]
    nodes = {b: dep.start_node(b, crm[b], *args) for b in dep.branches}
    dep.wait_online(list(nodes.values()))
    return {"server": server, "nodes": nodes}


def test_supernodes_killed_mid_round(deployment: Any, crm: dict[str, Path], tmp_path: Path) -> None:
    """One SuperNode gets SIGTERM and another SIGKILL in round 1; the run finishes.

    The SIGTERM'd branch is started again and takes part in round 2.
    """
    dep = deployment
    procs = _start_all(dep, crm)
    victims = {dep.branches[-1]: signal.SIGKILL, dep.branches[-2]: signal.SIGTERM}
    survivors = [b for b in dep.branches if b not in victims]
    out = tmp_path / "runs"
    run_id = dep.run(
        f"federation.rounds=2 privacy=dp federation.min_branches=1 "
        f"federation.round_timeout=45 {dep.TINY}",
        out,
    )
    # Each victim is signalled the moment its round-1 message arrives, so that it
    # is usually killed while training (see the ledger check below for the rest).
    pending = dict(victims)

    def signal_arrived() -> bool:
        for victim in list(pending):
            node = procs["nodes"][victim]
            if "Receiving: train message" in node.text():
                node.signal(pending.pop(victim))
        return not pending

    dep.wait_for(signal_arrived, 180, "round 1 at the victims", interval=0.05)
    for victim in victims:
        node = procs["nodes"][victim]
        dep.wait_for(lambda node=node: not node.alive(), 30, "the SuperNode to exit")
    # The SIGTERM'd branch comes back with the same command and trains round 2.
    back = dep.branches[-2]
    dep.start_node(back, crm[back], "--epsilon-ceiling", "50", name=f"node-{back}-again")

    assert dep.wait_run(run_id, timeout=400) == "finished:completed", dep.log(run_id)[-4000:]
    run_dir = dep.run_dir(out, run_id)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["stopped_reason"] is None
    per = summary["per_branch"]
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    first = next(r for r in rounds if r.get("trained_round") == 1)
    assert first["branches_aggregated"] == len(survivors)
    for victim in victims:
        rejoined = victim == back
        assert per[victim]["failed_rounds"] >= 1, per
        assert per[victim]["rounds_trained"] == (1 if rejoined else 0), per
        assert per[victim]["last_problem"].startswith("round ")
        assert "round 1" in first["problems"][victim]
        # No ledger entry for a round the victim did not finish. A victim killed
        # while training has none for round 1; one that finished training (and paid)
        # an instant before the signal keeps that entry, since its update may have
        # been on its way. Either way round 1 was aggregated without it (above), and
        # the server's copy is the branch's own ledger once it is back.
        own = [e["round"] for e in _ledger(dep.ledger(victim)) if e["run_id"] == str(run_id)]
        copy = [e["round"] for e in _ledger(run_dir / "ledger" / f"{victim}.jsonl")]
        assert own in (([2], [1, 2]) if rejoined else ([], [1])), own
        assert copy == (own if rejoined else []), (copy, own)
    for b in survivors:
        assert per[b]["rounds_trained"] == 2 and per[b]["failed_rounds"] == 0, per
        assert sorted(e["round"] for e in _ledger(run_dir / "ledger" / f"{b}.jsonl")) == [1, 2]
    assert _trained_rounds(run_dir) == [1, 2]


def test_superlink_restart_and_resume(
    deployment: Any, crm: dict[str, Path], tmp_path: Path
) -> None:
    dep = deployment
    procs = _start_all(dep, crm)
    out = tmp_path / "runs"
    overrides = (
        f"federation.rounds=3 privacy=dp federation.min_branches=3 "
        f"federation.round_timeout=120 {dep.TINY}"
    )
    run_id = dep.run(overrides, out)
    run_dir = dep.run_dir(out, run_id)
    state = run_dir / "checkpoint" / "state.json"

    def checkpointed() -> bool:
        try:
            return json.loads(state.read_text())["round"] >= 1
        except (OSError, ValueError, KeyError):
            return False

    dep.wait_for(checkpointed, 240, "the round-1 checkpoint", interval=0.2)
    # Crash the SuperLink with its SuperExec and ServerApp (one process group).
    import os

    os.killpg(procs["server"].pid, signal.SIGKILL)
    procs["server"].popen.wait(timeout=10)
    dep.start_server()

    run2 = dep.run(f"{overrides} resume=true", out)
    assert dep.wait_run(run2, timeout=400) == "finished:completed", dep.log(run2)[-4000:]
    assert not dep.run_dir(out, run2).exists(), "the resumed run must continue the old directory"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["stopped_reason"] is None, summary
    assert _trained_rounds(run_dir) == [1, 2, 3]
    for b in dep.branches:
        own = _ledger(dep.ledger(b))
        copy = _ledger(run_dir / "ledger" / f"{b}.jsonl")
        assert [e["seq"] for e in own] == sorted({e["seq"] for e in own})
        rounds = [e["round"] for e in own]
        assert rounds == sorted(set(rounds)), f"{b}: a round was paid twice: {rounds}"
        assert set(rounds) == {1, 2, 3} and copy == own
        assert summary["per_branch"][b]["rounds_trained"] == 3


FAULTY_CLIENT = '''
"""Test ClientApp: fedcrm's, with a mod corrupting one branch's train replies."""

import numpy as np
from flwr.app import ArrayRecord

from fedcrm import protocol as P
from fedcrm.client.app import make_client_app

BAD = "{bad}"


def corrupt(message, context, call_next):
    reply = call_next(message, context)
    if (
        context.node_config.get("branch-id") != BAD
        or message.metadata.message_type != P.TRAIN
        or reply.has_error()
        or P.WEIGHTS not in reply.content
    ):
        return reply
    arrays = reply.content[P.WEIGHTS].to_numpy_ndarrays()
    if int(message.content[P.JOB]["round"]) == 1:
        arrays[0] = np.full_like(arrays[0], np.nan)
    else:
        arrays = [a[..., :1] for a in arrays]
    reply.content[P.WEIGHTS] = ArrayRecord(numpy_ndarrays=arrays)
    return reply


app = make_client_app(mods=[corrupt])
'''

FAULTY_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedcrm-faulty-branch"
version = "0.1.0"
dependencies = []

[tool.flwr.app]
publisher = "fedcrm-tests"

[tool.flwr.app.components]
serverapp = "fedcrm.server.app:app"
clientapp = "faulty_client:app"

[tool.flwr.app.config]
"config-overrides" = ""
"output-dir" = ""
"server-dir" = ""
"""


def test_faulty_branch_update_is_excluded(
    deployment: Any, crm: dict[str, Path], tmp_path: Path
) -> None:
    dep = deployment
    bad = dep.branches[-1]
    app = tmp_path / "faulty_app"
    app.mkdir()
    (app / "pyproject.toml").write_text(textwrap.dedent(FAULTY_PYPROJECT))
    (app / "faulty_client.py").write_text(FAULTY_CLIENT.replace("{bad}", bad))
    # No epsilon ceiling: a branch holding one refuses this job without DP. The branches
    # pin this test app (their ledger keys make them run only an app they approved).
    _start_all(dep, crm, ceiling=None, app=app)
    out = tmp_path / "runs"
    run_id = dep.run(
        f"federation.rounds=2 federation.min_branches=2 federation.round_timeout=120 {dep.TINY}",
        out,
        app=app,
    )
    assert dep.wait_run(run_id, timeout=300) == "finished:completed", dep.log(run_id)[-4000:]
    run_dir = dep.run_dir(out, run_id)
    summary = json.loads((run_dir / "summary.json").read_text())
    per = summary["per_branch"]
    assert summary["rounds"] == 2
    assert per[bad]["failed_rounds"] == 2 and per[bad]["rounds_trained"] == 0, per
    assert "rejected" in per[bad]["last_problem"]
    for b in dep.branches[:-1]:
        assert per[b]["rounds_trained"] == 2 and per[b]["failed_rounds"] == 0
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    trained = [r for r in rounds if "trained_round" in r]
    assert [r["branches_aggregated"] for r in trained] == [2, 2]
    reasons = [r["problems"][bad] for r in trained]
    assert "non-finite" in reasons[0].lower() or "nan" in reasons[0].lower(), reasons
    assert "shape" in reasons[1].lower(), reasons
    # The reason is logged by the ServerApp (flwr log shows it to the central team).
    log = dep.log(run_id)
    assert f"branch {bad}" in log and "rejected" in log, log[-3000:]
