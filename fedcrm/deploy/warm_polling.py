"""How often the warm SuperExec asks its SuperNode for tasks, and whether it is still there.

Each poll of the SuperNode's Runtime API is an HTTP call, so the SuperExec
polls fast only just after a task ended (when the next one is likely queued)
and slowly otherwise: :func:`poll_interval` reads the configured fast
interval and :func:`poll_delay` picks the wait before the next poll. The
SuperExec stops serving once its SuperNode has gone, which
:func:`_pid_alive` tells even for an exited process nobody has reaped.
"""

from __future__ import annotations

import os

POLL_INTERVAL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
DEFAULT_POLL_INTERVAL = 0.1  # what `fedcrm node start` sets (deploy/processes.py)
# Each poll is an HTTP call costing the SuperNode and this process ~10 ms of CPU, so
# polling fast all the time costs a fifth of a core per branch. A SuperNode takes its
# next message right after a reply (when one is queued), so polls are fast only for
# BURST_S after a child ends and every IDLE_POLL_S otherwise, also while a child runs
# (a child stuck on a dead run's task must not keep the next task waiting); between
# polls the loop only reaps children, so a child's end is noticed within CHILD_CHECK_S.
BURST_S = 2.0
RUNTIME_API_RETRY_S = 5.0
IDLE_POLL_S = 0.5
CHILD_CHECK_S = 0.02


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(0) is all there is
    return state not in (b"Z", b"X")


def poll_interval() -> float:
    """Seconds between task polls after a task: ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` or 0.1."""
    raw = os.environ.get(POLL_INTERVAL_ENV)
    if raw is None:
        return DEFAULT_POLL_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{POLL_INTERVAL_ENV} must be a number of seconds, got {raw!r}") from None
    if not 0.01 <= value <= 60:
        raise SystemExit(f"{POLL_INTERVAL_ENV} must be between 0.01 and 60 s, got {value}")
    return value


def poll_delay(interval: float, last_exit: float, now: float) -> float:
    """Seconds to the next task poll: ``interval`` within ``BURST_S`` of a child's end."""
    return interval if now - last_exit < BURST_S else max(interval, IDLE_POLL_S)
