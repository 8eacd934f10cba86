"""Starting Flower's own processes (``flower-superlink``, ``flower-supernode``).

``fedcrm server start`` and ``fedcrm node start`` run the Flower command as a
supervised child (:mod:`fedcrm.deploy.supervise`) with an environment in which
Flower finds its helper programs, or print it (``--check-only``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fedcrm.deploy.supervise import RestartPolicy, Supervisor
from fedcrm.errors import ConfigError

# Flower's SuperExec polls for new tasks every second by default. On a SuperNode,
# 0.1 s takes ~0.9 s off each exchange; the warm SuperExec polls at this interval
# only just after a message (warm_exec.poll_delay). The SuperLink's SuperExec only
# starts ServerApps, so it keeps Flower's 1 s: each poll is an HTTP call costing the
# SuperLink CPU. Overridable from the environment.
NODE_TASK_POLL_INTERVAL = "0.1"
SERVER_TASK_POLL_INTERVAL = "1.0"


def say(text: str) -> None:
    """One line on stderr (what the supervisor of a Flower process reports)."""
    print(text, file=sys.stderr, flush=True)


def flower_env(task_poll: str = NODE_TASK_POLL_INTERVAL) -> dict[str, str]:
    """This environment, with the venv's ``bin/`` on PATH and the SuperExec poll interval.

    ``flower-superlink`` / ``flower-supernode`` start ``flower-superexec`` and
    ``flwr-*app`` from PATH.
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", task_poll)
    return env


def run_flower(
    cmd: list[str],
    *,
    dry_run: bool,
    task_poll: str = NODE_TASK_POLL_INTERVAL,
    name: str = "Flower process",
    policy: RestartPolicy | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Print ``cmd`` (``dry_run``), or run it under :class:`Supervisor`; returns its exit code.

    Raises
    ------
    ConfigError
        When the Flower command is not installed in this environment.
    """
    line = shlex.join(cmd)
    if dry_run:
        print(line, flush=True)
        return 0
    env = flower_env(task_poll)
    if shutil.which(cmd[0], path=env["PATH"]) is None:
        raise ConfigError(
            f"{cmd[0]} not found on PATH; install fedcrm's dependencies (flwr) in this environment"
        )
    say(f"start {line}")
    return Supervisor(
        cmd, env, name=name, policy=policy or RestartPolicy(restart=False), on_start=on_start
    ).run()


def passthrough(flower_args: Sequence[str] | None) -> list[str]:
    """Arguments given after ``--`` for the Flower command."""
    extra = list(flower_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return extra


def start_detached(cmd: list[str]) -> None:
    """Start a helper process (the warm SuperExec) that outlives this call."""
    say(f"start {shlex.join(cmd)}")
    sys.stdout.flush()
    sys.stderr.flush()
    subprocess.Popen(cmd, env=flower_env(), stdin=subprocess.DEVNULL)
