"""The supervisor behind ``fedcrm server start`` / ``fedcrm node start``.

Each test runs a real supervisor process over a small Python child, and
signals it as a user or an init system would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedcrm.deploy.supervise import RestartPolicy

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# The child appends its pid to a file, then sleeps or exits with a code.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    with open(sys.argv[1], "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    if sys.argv[2] == "sleep":
        time.sleep(120)
    sys.exit(int(sys.argv[2]))
    """
)


def _supervisor(tmp_path: Path, mode: str, restart: bool = True) -> subprocess.Popen:
    starts = tmp_path / "starts"
    script = textwrap.dedent(
        f"""
        import os, sys
        from fedcrm.deploy.supervise import RestartPolicy, Supervisor
        policy = RestartPolicy(restart={restart}, first_delay_s=0.05, max_delay_s=0.2)
        cmd = [sys.executable, "-c", {CHILD!r}, {str(starts)!r}, {mode!r}]
        sys.exit(Supervisor(cmd, dict(os.environ), name="child", policy=policy).run())
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _pids(tmp_path: Path, at_least: int, timeout: float = 30.0) -> list[int]:
    path = tmp_path / "starts"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(x) for x in path.read_text().split()] if path.exists() else []
        if len(pids) >= at_least:
            return pids
        time.sleep(0.05)
    pytest.fail(f"the child was not started {at_least} time(s)")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of a dead parent is reaped by init soon
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_a_child_that_exits_on_its_own_is_started_again(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "0")
    try:
        _pids(tmp_path, 3)
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=10)
    assert "starting it again" in sup.stderr.read()  # type: ignore[union-attr]


def test_sigterm_stops_the_child_and_the_supervisor(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "sleep")
    (child,) = _pids(tmp_path, 1)
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=10) == 128 + signal.SIGTERM  # the child's end, as a shell says it
    assert _gone(child)
    assert len(_pids(tmp_path, 1)) == 1  # not restarted


def test_a_supervisor_killed_with_sigkill_takes_its_child_along(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    sup = _supervisor(tmp_path, "sleep")
    (child,) = _pids(tmp_path, 1)
    sup.send_signal(signal.SIGKILL)
    sup.wait(timeout=10)
    assert _gone(child), "the Flower process outlived its supervisor"


def test_without_restarts_the_childs_exit_code_is_returned(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "7", restart=False)
    assert sup.wait(timeout=30) == 7
    assert len(_pids(tmp_path, 1)) == 1


def test_a_bad_command_line_is_not_restarted(tmp_path: Path) -> None:
    sup = _supervisor(tmp_path, "2")
    assert sup.wait(timeout=30) == 2
    assert "not restarting" in sup.stderr.read()  # type: ignore[union-attr]


def test_restart_pause_doubles_and_resets_after_a_healthy_run() -> None:
    policy = RestartPolicy(first_delay_s=2, max_delay_s=60, healthy_after_s=120)
    delays = [policy.next_delay(None, 1.0)]
    for _ in range(6):
        delays.append(policy.next_delay(delays[-1], 1.0))
    assert delays == [2, 4, 8, 16, 32, 60, 60]
    assert policy.next_delay(60, 500.0) == 2
