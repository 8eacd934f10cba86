"""The branch's side of keeping its SuperNode warm: ``query.standby`` (deployment only).

The server queues a standby message behind each real one
(:mod:`fedcrm.server.exchange`). Answering it at the moment the server expects
to have pushed the next real message keeps the SuperNode from Flower's 3 s
idle sleep. The handler reads no settings and no data, and this module
imports nothing heavy: every message runs in a fresh ClientApp process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcrm import protocol as P

STANDBY_MAX_HOLD_S = 60.0


def register_standby(app: ClientApp) -> None:
    """Answer ``query.standby`` at its deadline (the server's keep-warm messages).

    Deployment only. The handler reads no settings and no data: its only effect
    is that the SuperNode, busy with it, asks for its next message when the
    server expects to have pushed it instead of sleeping 3 s first
    (:mod:`fedcrm.server.exchange`). The hold is capped at 60 s whatever the
    server asks.
    """

    @app.query("standby")
    def standby(message: Message, context: Context) -> Message:
        del context
        time.sleep(standby_hold(message.content.get(P.JOB, {})))
        return Message(RecordDict(), reply_to=message)


def standby_hold(job: Mapping[str, Any], now: float | None = None) -> float:
    """Seconds a standby message holds the branch: until ``until`` or for ``hold_s``.

    Bad or missing values hold for nothing; no hold exceeds the message's own
    ``hold_s`` or 60 s.
    """
    try:
        until = float(job.get("until", 0.0))  # type: ignore[arg-type]
        cap = float(job.get("hold_s", 0.0))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    if not (math.isfinite(until) and math.isfinite(cap)):
        return 0.0
    hold = until - (time.time() if now is None else now) if until > 0 else cap
    return max(0.0, min(hold, cap, STANDBY_MAX_HOLD_S))
