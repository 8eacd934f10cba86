"""Server -> branches -> server exchanges on Flower's public Grid API.

Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls in deployment; a
push followed by a short-interval pull loop returns as soon as the last reply
lands. Every exchange is a few seconds in deployment (FLOWER_NOTES), so the
protocols here are written to need few of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

PULL_INTERVAL_S = 0.05


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


def exchange(grid: Grid, messages: Sequence[Message], *, timeout: float) -> list[Reply]:
    """Send ``messages`` and collect one :class:`Reply` per destination node.

    Nodes that do not answer within ``timeout`` or answer with a Flower error
    get a reply with ``error`` set; the exchange never raises for them.
    """
    by_id = {}
    ids = list(grid.push_messages(messages))
    for mid, msg in zip(ids, messages, strict=True):
        by_id[mid] = msg.metadata.dst_node_id
    pending = set(ids)
    replies: dict[int, Reply] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for res in grid.pull_messages(list(pending)):
            mid = res.metadata.reply_to_message_id
            if mid not in pending:
                continue
            pending.discard(mid)
            node = by_id[mid]
            if res.has_error():
                replies[node] = Reply(node, None, f"Flower error: {res.error.reason}")
            else:
                replies[node] = Reply(node, res)
        if pending:
            time.sleep(PULL_INTERVAL_S)
    for mid in pending:
        node = by_id[mid]
        replies[node] = Reply(node, None, f"no reply within {timeout:.0f} s")
    return [replies[m.metadata.dst_node_id] for m in messages]
