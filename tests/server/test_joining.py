"""Branches that connect late, or come back under a new SuperNode id, join the job.

A hand-made Grid answers ``query.info`` for each node as a branch would; the
job logic under test is ``FederatedJob.connect`` / ``join_new_nodes`` (joining
a job; the SuperLink's admitted list is :mod:`fedcrm.deploy.admission`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedcrm import protocol as P
from fedcrm.config import compose
from fedcrm.privacy.accounting import Mechanism
from fedcrm.privacy.ledger import Ledger
from fedcrm.privacy.signing import generate_signing_key
from fedcrm.server.job import FederatedJob
from fedcrm.server.run_dir import RunDir


class InfoGrid:
    """Nodes answer ``query.info`` with their branch (or not at all when ``None``)."""

    def __init__(self, nodes: dict[int, dict[str, Any] | None]) -> None:
        self.nodes = nodes
        self.asked: list[int] = []
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.asked.append(node)
            msg.metadata.__dict__["_message_id"] = msg.object_id
            ids.append(msg.metadata.message_id)
            branch = self.nodes[node]
            if branch is None:
                continue
            reply = Message(
                RecordDict(
                    {
                        P.BRANCH: ConfigRecord(
                            {
                                "branch_id": branch["id"],
                                "status": P.STATUS_OK,
                                "ledger_history": branch.get("history", []),
                            }
                        ),
                        P.METRICS: MetricRecord(
                            {
                                "train_customers": 80,
                                "test_customers": 20,
                                "excluded_customers": 0,
                                "n_tabular": branch.get("n_tabular", 6),
                            }
                        ),
                    }
                ),
                reply_to=msg,
            )
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return [self._replies.pop(i) for i in ids if i in self._replies]


@pytest.fixture
def job_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from flwr.supercore.task_identity import TaskIdentity

    # What a ServerApp process is given by Flower before it builds messages.
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)

    def make(grid: InfoGrid, **kw: Any) -> FederatedJob:
        cfg = compose(["federation.min_branches=2", "federation.round_timeout=1"])
        kw.setdefault("node_wait_s", 1)
        return FederatedJob(grid, cfg, RunDir(tmp_path / "run"), run_id="r1", **kw)  # type: ignore[arg-type]

    return make


def test_late_branch_joins_and_a_restarted_branch_keeps_its_record(job_for: Any) -> None:
    grid = InfoGrid({1: {"id": "a"}, 2: {"id": "b"}})
    job = job_for(grid)
    job.connect()
    assert sorted(b.branch_id for b in job.branches.values()) == ["a", "b"]
    assert job.join_new_nodes() == []  # nothing new: no exchange at all
    assert grid.asked == [1, 2]

    job.branches[1].rounds_trained = 3
    grid.nodes[3] = {"id": "c"}  # started late
    grid.nodes[4] = {"id": "a"}  # a's SuperNode restarted under a new node id
    del grid.nodes[1]
    assert sorted(job.join_new_nodes()) == ["a", "c"]
    by_id = {b.branch_id: b for b in job.branches.values()}
    assert sorted(by_id) == ["a", "b", "c"]
    assert by_id["a"].node_id == 4 and by_id["a"].rounds_trained == 3
    assert sorted(job.branches) == [2, 3, 4]


class RegisteringGrid(InfoGrid):
    """Nodes appear one per look, as Flower's simulation engine registers them."""

    def __init__(self, nodes: dict[int, dict[str, Any] | None]) -> None:
        super().__init__(nodes)
        self.looks = 0

    def get_node_ids(self) -> list[int]:
        self.looks += 1
        return list(self.nodes)[: self.looks]


def test_a_simulation_waits_for_every_virtual_node_before_round_one(job_for: Any) -> None:
    nodes = {1: {"id": "a"}, 2: {"id": "b"}, 3: {"id": "c"}}
    early = job_for(RegisteringGrid(dict(nodes)))
    early.connect()  # a deployment starts with min_branches and admits later nodes
    assert sorted(b.branch_id for b in early.branches.values()) == ["a", "b"]

    job = job_for(RegisteringGrid(dict(nodes)), expected_nodes=3, node_wait_s=5)
    job.connect()
    assert sorted(b.branch_id for b in job.branches.values()) == ["a", "b", "c"]


def test_a_node_that_cannot_take_part_is_asked_once(job_for: Any) -> None:
    grid = InfoGrid({1: {"id": "a"}, 2: {"id": "b"}})
    job = job_for(grid)
    job.connect()
    grid.nodes[5] = {"id": "odd", "n_tabular": 9}  # another feature set
    grid.nodes[6] = None  # never answers
    assert job.join_new_nodes() == []
    assert job.join_new_nodes() == []
    assert grid.asked.count(5) == 1 and grid.asked.count(6) == 1
    assert sorted(b.branch_id for b in job.branches.values()) == ["a", "b"]


def _history(tmp_path: Path, branch: str, rounds: int) -> list[str]:
    """A branch's ledger after ``rounds`` DP-SGD rounds, as ``query.info`` sends it."""
    key = tmp_path / "keys" / f"{branch}.key"
    if not key.exists():
        generate_signing_key(tmp_path / "keys", branch)
    ledger = Ledger(tmp_path / f"{branch}.jsonl", branch_id=branch, signing_key=key)
    mech = Mechanism("dp-sgd", noise_multiplier=1.5, sample_rate=0.05, steps=20, max_grad_norm=1.0)
    for _ in range(rounds - len(ledger.entries())):
        ledger.append(
            run_id="r1",
            round=len(ledger.entries()) + 1,
            model="lstm",
            mechanism=mech,
            delta=1e-5,
            accountant="rdp",
        )
    return [json.dumps(e, sort_keys=True) for e in ledger.entries()]


def _copy(job: FederatedJob, branch: str) -> list[int]:
    path = job.ledgers.path(branch)
    if not path.exists():
        return []
    return [json.loads(x)["round"] for x in path.read_text().splitlines() if x.strip()]


def test_a_branch_back_after_a_lost_reply_fills_the_gap_in_the_copy(
    job_for: Any, tmp_path: Path
) -> None:
    """It paid for round 2 and died before replying: its new SuperNode sends that entry."""
    grid = InfoGrid({1: {"id": "a", "history": _history(tmp_path, "a", 1)}, 2: {"id": "b"}})
    job = job_for(grid)
    job.connect()
    assert _copy(job, "a") == [1]
    del grid.nodes[1]
    grid.nodes[4] = {"id": "a", "history": _history(tmp_path, "a", 2)}
    assert job.join_new_nodes() == ["a"]
    assert _copy(job, "a") == [1, 2]
    back = job.branches[4]
    assert back.epsilon == pytest.approx(json.loads(_history(tmp_path, "a", 2)[-1])["epsilon"])
    # Round 3's reply now extends the copy instead of breaking its chain.
    entry = _history(tmp_path, "a", 3)[-1]
    problems: dict[str, str] = {}
    assert job._handle_status(back, {"status": P.STATUS_OK, "ledger_entries": [entry]}, problems)
    assert _copy(job, "a") == [1, 2, 3] and problems == {}


def test_a_reply_whose_ledger_entries_do_not_chain_is_not_aggregated(
    job_for: Any, tmp_path: Path
) -> None:
    grid = InfoGrid({1: {"id": "a", "history": _history(tmp_path, "a", 1)}, 2: {"id": "b"}})
    job = job_for(grid)
    job.connect()
    skipped = _history(tmp_path, "a", 3)[-1]  # seq 2: the copy holds seq 0 only
    a = job.branches[1]
    problems: dict[str, str] = {}
    ok = job._handle_status(a, {"status": P.STATUS_OK, "ledger_entries": [skipped]}, problems)
    assert not ok
    assert a.failed_rounds == 1 and a.rounds_trained == 0
    assert problems["a"].startswith("ledger entries rejected") and "seq" in problems["a"]
    assert _copy(job, "a") == [1]  # nothing written
    garbled = {"status": P.STATUS_OK, "ledger_entries": ["{not json"]}
    assert not job._handle_status(a, garbled, problems) and a.failed_rounds == 2


def test_a_branch_whose_ledger_history_is_tampered_is_left_out(
    job_for: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = [json.loads(x) for x in _history(tmp_path, "c", 2)]
    history[1]["epsilon"] = 0.01  # rewrites the spend: the entry hash no longer matches
    grid = InfoGrid({1: {"id": "a"}, 2: {"id": "b"}})
    job = job_for(grid)
    job.connect()
    grid.nodes[3] = {"id": "c", "history": [json.dumps(e, sort_keys=True) for e in history]}
    with caplog.at_level("WARNING"):
        assert job.join_new_nodes() == []
    assert "branch c left out: its ledger does not verify" in caplog.text
    assert sorted(b.branch_id for b in job.branches.values()) == ["a", "b"]
    assert _copy(job, "c") == []


def test_a_branch_whose_ledger_went_backwards_is_left_out(
    job_for: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's copy holds two entries; the branch comes back with one (rolled back)."""
    grid = InfoGrid({1: {"id": "a", "history": _history(tmp_path, "a", 2)}, 2: {"id": "b"}})
    job = job_for(grid)
    job.connect()
    assert _copy(job, "a") == [1, 2]
    del grid.nodes[1]
    grid.nodes[4] = {"id": "a", "history": _history(tmp_path, "a", 2)[:1]}
    with caplog.at_level("WARNING"):
        assert job.join_new_nodes() == []
    assert "ledger-behind-anchor" in caplog.text
    assert _copy(job, "a") == [1, 2]  # the copy keeps what it held


def _roster_file(tmp_path: Path, bindings: dict[str, int]) -> Any:
    """An admitted list binding each branch id to a SuperLink node id."""
    from fedcrm.identity import BranchIdentity, Roster, RosterFile, SigningKey, save_roster

    roster = Roster(
        {
            b: BranchIdentity(b, f"ecdsa-sha2-nistp384 KEY{b}", (SigningKey(b * 8, "PEM"),), "x",
                              node_id=node)
            for b, node in bindings.items()
        }
    )  # fmt: skip
    return RosterFile(save_roster(roster, tmp_path / "server" / "admitted.json"))


def test_a_node_presenting_another_branchs_id_is_refused_and_the_job_goes_on(
    job_for: Any, tmp_path: Path
) -> None:
    """Node 3 is registered for branch c but announces branch a; a's own node joins."""
    grid = InfoGrid({3: {"id": "a"}, 1: {"id": "a"}, 2: {"id": "b"}})
    job = job_for(grid, identities=_roster_file(tmp_path, {"a": 1, "b": 2, "c": 3}))
    job.connect()
    assert {n: b.branch_id for n, b in job.branches.items()} == {1: "a", 2: "b"}
    assert 3 in job.left_out
    # Nor does a node no branch is registered with take a's slot while a's SuperNode is away.
    del grid.nodes[1]
    grid.nodes[4] = {"id": "a"}
    assert job.join_new_nodes() == []
    assert sorted(job.branches) == [1, 2] and 4 in job.left_out


def test_a_branch_id_that_is_not_path_safe_never_names_a_file(job_for: Any, tmp_path: Path) -> None:
    history = _history(tmp_path, "a", 1)
    grid = InfoGrid(
        {1: {"id": "a"}, 2: {"id": "b"}, 3: {"id": "../../escaped", "history": history}}
    )
    job = job_for(grid)  # simulation: no admitted list, the id's form is still checked
    job.connect()
    assert sorted(b.branch_id for b in job.branches.values()) == ["a", "b"]
    assert not (tmp_path / "escaped.jsonl").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "ledger").iterdir()) == []
