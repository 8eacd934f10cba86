"""Server -> branches -> server exchanges on Flower's public Grid API.

Two waits dominate an exchange in Flower 1.41 deployment (see the README's Latency section):

* ``Grid.send_and_receive`` sleeps 3 s between pulls. :class:`Courier` pushes
  and then pulls after 0.1 s, backing off to a tenth of the time waited, so it
  returns soon after the last reply lands without loading the SuperLink.
* A SuperNode that finds no message waiting sleeps 3 s before it asks again,
  and it asks the moment it has sent its reply - before the server can have
  the next message ready. Back-to-back exchanges therefore pay almost the
  whole 3 s. With a :class:`KeepWarm` policy the courier queues one
  *standby* message (``query.standby``) behind each real one. The branch
  answers it, without touching any data, at the moment the courier expects
  to push its next message (:class:`ReleasePlanner`), and asks for that
  message right then. All branches of an exchange get the same deadline on
  the server's clock (Flower's TTLs already assume synchronised clocks). A
  wrong estimate costs at most the 3 s sleep (too early) or the overshoot
  (too late); ``max_hold_s`` caps it.

The protocols are still written to need few exchanges.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcrm import protocol as P

log = logging.getLogger(__name__)

# Every pull is an HTTP request that costs the SuperLink tens of milliseconds of CPU,
# so the pull loop backs off: it waits a tenth of the time since the push or the last
# reply (at least MIN, at most MAX), costing at most ~10 % of an exchange's length.
MIN_PULL_INTERVAL_S = 0.1
MAX_PULL_INTERVAL_S = 1.0
SUPERNODE_IDLE_SLEEP_S = 3.0  # Flower 1.41's SuperNode, when it finds no message


@dataclass
class Reply:
    """A branch's reply, or the reason there is none."""

    node_id: int
    message: Message | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether a reply with content arrived."""
        return self.message is not None and self.error is None


@dataclass(frozen=True)
class KeepWarm:
    """How to keep SuperNodes out of their idle sleep between exchanges (deployment only).

    Parameters
    ----------
    max_hold_s
        The longest a branch is held by one standby message.
    first_hold_s
        The hold after a message type the courier has not timed yet.
    margin_s
        Added to every estimate: asking a little late costs the margin, asking
        too early costs up to the 3 s sleep.
    release_s
        From a standby's deadline to the SuperNode asking for its next message
        (Flower notices a finished reply in steps of 0.5 s).
    history
        Exchanges of one message type whose shortest service time is the estimate.
    ttl_s
        Lifetime of a standby message at the SuperLink (it waits behind real
        work such as a training round).
    """

    max_hold_s: float = 10.0
    first_hold_s: float = 0.5
    margin_s: float = 0.3
    release_s: float = 0.5
    history: int = 8
    ttl_s: float = 900.0


@dataclass
class ReleasePlanner:
    """When to let branches ask for their next message (server clock, Unix seconds).

    For each exchange it predicts when the branches will pick the message up -
    just after the previous standby deadline, or, if that deadline passed
    before the push, at the next poll of their 3 s sleep cycle - and adds the
    message type's service time (pickup to the last reply at the server; the
    shortest seen, since a late pickup only lengthens it) and the server's own
    time between exchanges. As the pickup is predicted from the real release,
    one missed deadline does not throw the following ones off.
    """

    policy: KeepWarm
    service: dict[str, list[float]] = field(default_factory=dict)
    gap: float = 0.0
    released_at: float | None = None
    last_done: float | None = None
    _pickup: float | None = None
    _pushed: float = 0.0

    def expected_pickup(self, now: float) -> float | None:
        """When the slowest branch will pick up a message pushed at ``now``."""
        if self.released_at is None or self.last_done is None:
            return None
        poll = max(self.released_at, self.last_done) + self.policy.release_s
        if poll >= now:
            return poll
        return poll + SUPERNODE_IDLE_SLEEP_S * math.ceil((now - poll) / SUPERNODE_IDLE_SLEEP_S)

    def plan(self, message_type: str, now: float) -> dict[str, float]:
        """The standby content for an exchange of ``message_type`` pushed at ``now``.

        ``until``: the deadline (0 when it cannot be predicted yet); ``hold_s``:
        the hold to use then, and the cap on any hold.
        """
        policy = self.policy
        if self.last_done is not None:
            self.gap = min(max(now - self.last_done, 0.0), policy.max_hold_s)
        self._pushed = now
        self._pickup = self.expected_pickup(now)
        seen = self.service.get(message_type)
        if self._pickup is None or not seen:
            self.released_at = None
            return {"until": 0.0, "hold_s": policy.first_hold_s}
        until = self._pickup + min(seen) + self.gap + policy.margin_s
        until = min(max(until, now), now + policy.max_hold_s)
        self.released_at = until
        return {"until": until, "hold_s": policy.max_hold_s}

    def done(self, message_type: str, last_reply: float) -> None:
        """Record that the exchange's last reply arrived at ``last_reply``."""
        start = self._pickup if self._pickup is not None else self._pushed
        seen = self.service.setdefault(message_type, [])
        seen.append(max(last_reply - start, 0.0))
        del seen[: -self.policy.history]
        if self.released_at is None:  # a relative hold: about that long after the last reply
            self.released_at = last_reply + self.policy.first_hold_s
        self.last_done = last_reply


def wait_for_nodes(grid: Grid, minimum: int, *, timeout: float) -> list[int]:
    """Poll until at least ``minimum`` SuperNodes are connected (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    nodes: list[int] = []
    while time.monotonic() < deadline:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        time.sleep(0.2)
    return nodes


class Courier:
    """Sends messages to branches and collects their replies, optionally keeping nodes warm.

    Parameters
    ----------
    grid
        The ServerApp's Grid.
    keep_warm
        ``None`` (simulation: virtual nodes never sleep) or the standby policy.
    """

    def __init__(self, grid: Grid, keep_warm: KeepWarm | None = None) -> None:
        self.grid = grid
        self.keep_warm = keep_warm
        self.planner = ReleasePlanner(keep_warm) if keep_warm is not None else None
        self._standby: dict[str, float] = {}  # message id -> push time (replies to collect)
        self.standby_sent = 0

    def _standby_message(self, node: int, content: dict[str, float]) -> Message:
        assert self.keep_warm is not None
        return Message(
            RecordDict({P.JOB: ConfigRecord(dict(content))}),
            dst_node_id=node,
            message_type=P.STANDBY,
            ttl=self.keep_warm.ttl_s,
        )

    def _forget_old_standby(self) -> None:
        assert self.keep_warm is not None
        limit = time.monotonic() - self.keep_warm.ttl_s - self.keep_warm.max_hold_s
        for mid, pushed in list(self._standby.items()):
            if pushed < limit:
                del self._standby[mid]

    def exchange(self, messages: Sequence[Message], *, timeout: float) -> list[Reply]:
        """Send ``messages`` and collect one :class:`Reply` per destination node.

        Nodes that do not answer within ``timeout`` or answer with a Flower error
        get a reply with ``error`` set; the exchange never raises for them.
        """
        messages = list(messages)
        nodes = [m.metadata.dst_node_id for m in messages]
        mtype = messages[0].metadata.message_type if messages else ""
        standby = []
        if self.planner is not None and messages:
            # Created after the real ones, so each queues behind its own (FIFO by creation).
            content = self.planner.plan(mtype, time.time())
            standby = [self._standby_message(n, content) for n in nodes]
        ids = list(self.grid.push_messages(messages + standby)) if messages else []
        t_push = time.monotonic()
        by_id: dict[str, int] = {}
        replies: dict[int, Reply] = {}
        for mid, node in zip(ids[: len(messages)], nodes, strict=True):
            if mid:
                by_id[mid] = node
            else:
                replies[node] = Reply(node, None, "the SuperLink did not accept the message")
        for mid in ids[len(messages) :]:
            if mid:
                self._standby[mid] = t_push
                self.standby_sent += 1
        pending = set(by_id)
        answered_at: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        last_event = time.monotonic()
        while pending and time.monotonic() < deadline:
            for res in self.grid.pull_messages(list(pending | set(self._standby))):
                mid = res.metadata.reply_to_message_id
                if self._standby.pop(mid, None) is not None or mid not in pending:
                    continue
                pending.discard(mid)
                node = by_id[mid]
                if res.has_error():
                    replies[node] = Reply(node, None, f"Flower error: {res.error.reason}")
                else:
                    replies[node] = Reply(node, res)
                    answered_at[node] = time.time()
                last_event = time.monotonic()
            if pending:
                waited = time.monotonic() - last_event
                time.sleep(min(MAX_PULL_INTERVAL_S, max(MIN_PULL_INTERVAL_S, 0.1 * waited)))
        for mid in pending:
            node = by_id[mid]
            replies[node] = Reply(node, None, f"no reply within {timeout:.0f} s")
        if self.planner is not None:
            self._forget_old_standby()
            if answered_at:
                self.planner.done(mtype, max(answered_at.values()))
        return [replies[node] for node in nodes]
