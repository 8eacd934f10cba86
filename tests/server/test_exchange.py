"""The courier: replies collected per node, standby messages queued behind real ones.

A hand-made Grid answers every message at once (a SuperNode's FIFO of one
branch); what is under test is fedcrm's own bookkeeping and timing, not Flower.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcrm import protocol as P
from fedcrm.client.standby import STANDBY_MAX_HOLD_S, register_standby, standby_hold
from fedcrm.server.exchange import (
    SUPERNODE_IDLE_SLEEP_S,
    Courier,
    KeepWarm,
    ReleasePlanner,
)


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    # What a ServerApp process is given by Flower before it builds messages.
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


class EchoGrid:
    """Every node answers every message at once, except ``silent`` and ``failing`` nodes."""

    def __init__(self, silent: set[int] = frozenset(), failing: set[int] = frozenset()) -> None:
        self.silent, self.failing = set(silent), set(failing)
        self.pushed: list[Message] = []
        self.pulls = 0
        self._replies: dict[str, Message] = {}

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.pushed.append(msg)
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            if node in self.silent:
                continue
            if node in self.failing and msg.metadata.message_type != P.STANDBY:
                from flwr.app import Error

                reply = Message(Error(code=0, reason="Node Unavailable"), reply_to=msg)
            else:
                reply = Message(RecordDict({"c": ConfigRecord({"node": node})}), reply_to=msg)
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        self.pulls += 1
        return [self._replies.pop(i) for i in ids if i in self._replies]


def _messages(nodes: list[int]) -> list[Message]:
    return [
        Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="query.ping")
        for n in nodes
    ]


def test_replies_come_back_in_message_order_with_reasons_for_the_missing() -> None:
    grid = EchoGrid(silent={3}, failing={2})
    replies = Courier(grid).exchange(_messages([1, 2, 3]), timeout=0.3)  # type: ignore[arg-type]
    assert [r.node_id for r in replies] == [1, 2, 3]
    assert replies[0].ok and int(replies[0].message.content["c"]["node"]) == 1  # type: ignore[union-attr]
    assert not replies[1].ok and "Node Unavailable" in str(replies[1].error)
    assert not replies[2].ok and "no reply within" in str(replies[2].error)
    assert all(m.metadata.message_type == "query.ping" for m in grid.pushed)


def test_keep_warm_queues_one_standby_behind_each_message_and_swallows_its_reply() -> None:
    grid = EchoGrid()
    courier = Courier(grid, KeepWarm())  # type: ignore[arg-type]
    for _ in range(3):
        replies = courier.exchange(_messages([1, 2]), timeout=5)
        assert [r.ok for r in replies] == [True, True]
        # Standby replies never pass for a branch's answer.
        assert all("c" in r.message.content for r in replies)  # type: ignore[union-attr]
    kinds = [(m.metadata.message_type, m.metadata.dst_node_id) for m in grid.pushed]
    assert kinds[:4] == [("query.ping", 1), ("query.ping", 2), (P.STANDBY, 1), (P.STANDBY, 2)]
    assert courier.standby_sent == 6
    ping, standby = grid.pushed[0], grid.pushed[2]
    # A SuperLink hands a node its messages oldest first: the standby waits its turn.
    assert standby.metadata.created_at >= ping.metadata.created_at
    assert standby.metadata.ttl == KeepWarm().ttl_s
    # The first exchange of a type has no timing yet: a short relative hold.
    assert float(standby.content[P.JOB]["until"]) == 0.0
    assert float(standby.content[P.JOB]["hold_s"]) == KeepWarm().first_hold_s
    # Later ones carry a deadline on the server clock.
    assert float(grid.pushed[-1].content[P.JOB]["until"]) > 0


def test_without_keep_warm_nothing_but_the_real_messages_is_sent() -> None:
    grid = EchoGrid()
    Courier(grid).exchange(_messages([1, 2]), timeout=5)  # type: ignore[arg-type]
    assert [m.metadata.message_type for m in grid.pushed] == ["query.ping", "query.ping"]


def test_planner_deadline_is_pickup_plus_service_plus_server_gap() -> None:
    policy = KeepWarm(margin_s=0.2, release_s=0.5)
    plan = ReleasePlanner(policy)
    first = plan.plan("train", now=100.0)
    assert first == {"until": 0.0, "hold_s": policy.first_hold_s}
    plan.done("train", last_reply=102.0)  # 2 s from push to the last reply
    assert plan.released_at == pytest.approx(102.0 + policy.first_hold_s)

    # Pushed 0.1 s after the last reply, before the branches were released:
    # they pick it up when released, then need the 2 s seen before.
    pickup = 102.5 + 0.5
    assert plan.expected_pickup(102.1) == pytest.approx(pickup)
    second = plan.plan("train", now=102.1)
    assert second["until"] == pytest.approx(pickup + 2.0 + 0.1 + 0.2)
    assert second["hold_s"] == policy.max_hold_s


def test_planner_a_missed_deadline_means_the_next_poll_of_the_sleep_cycle() -> None:
    plan = ReleasePlanner(KeepWarm(release_s=0.5))
    plan.released_at, plan.last_done = 10.0, 9.0
    # The branch asked at 10.5, found nothing and sleeps: it asks again at 13.5, 16.5, ...
    assert plan.expected_pickup(11.0) == pytest.approx(10.5 + SUPERNODE_IDLE_SLEEP_S)
    assert plan.expected_pickup(14.0) == pytest.approx(10.5 + 2 * SUPERNODE_IDLE_SLEEP_S)
    # A late pickup lengthens that exchange but not the estimate (the shortest is kept).
    plan.service["train"] = [1.0]
    plan.plan("train", now=14.0)
    plan.done("train", last_reply=20.0)
    assert min(plan.service["train"]) == pytest.approx(1.0)


def test_planner_never_holds_longer_than_the_cap() -> None:
    plan = ReleasePlanner(KeepWarm(max_hold_s=2.0))
    plan.service["train"] = [50.0]
    plan.released_at = plan.last_done = 99.0
    content = plan.plan("train", now=100.0)
    assert content["until"] == pytest.approx(102.0)


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ({"until": 0.0, "hold_s": 0.5}, 0.5),  # relative
        ({"until": 110.0, "hold_s": 10.0}, 10.0),  # capped by the message's own hold_s
        ({"until": 103.0, "hold_s": 10.0}, 3.0),
        ({"until": 90.0, "hold_s": 10.0}, 0.0),  # deadline passed: answer at once
        ({"until": math.nan, "hold_s": 10.0}, 0.0),
        ({"until": "soon", "hold_s": 10.0}, 0.0),
        ({"until": 0.0, "hold_s": 1e9}, STANDBY_MAX_HOLD_S),
        ({}, 0.0),
    ],
)
def test_standby_hold(job: dict[str, Any], expected: float) -> None:
    assert standby_hold(job, now=100.0) == pytest.approx(expected)


def test_the_branch_answers_a_standby_with_an_empty_reply() -> None:
    app = ClientApp()
    register_standby(app)
    msg = Message(
        RecordDict({P.JOB: ConfigRecord({"until": 0.0, "hold_s": 0.0})}),
        dst_node_id=1,
        message_type=P.STANDBY,
    )
    msg.metadata.__dict__["_message_id"] = msg.object_id
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = app(message=msg, context=ctx)
    assert not reply.has_error()
    assert len(reply.content) == 0
