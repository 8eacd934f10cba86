"""Run a Flower process as a child and keep it running: ``server start`` / ``node start``.

The SuperLink keeps its state in memory (Flower's default; its SQLite state
costs the SuperLink about 2.4 times the CPU per message, see the README,
Latency). Two things follow, and this module handles both:

* After a SuperLink restart the registrations are gone, so ``fedcrm server
  start`` registers the federation's admitted branches again as soon as the
  SuperLink answers (:mod:`fedcrm.deploy.admission`), through ``on_start``.
* A SuperNode whose SuperLink forgot it (restart) is told so and exits; one
  refused because it is not registered yet, or because the SuperLink still
  holds its previous connection (about a minute after a SIGKILL), exits too.
  ``fedcrm node start`` therefore starts it again, with a growing pause, until
  it is stopped: branch IT does not have to watch it.

Signals: SIGTERM/SIGINT/SIGHUP to the supervisor stop the child (forwarded)
and then the supervisor, with the child's exit code. The child is started with
the parent-death signal SIGKILL (Linux), so a supervisor killed with SIGKILL
takes its Flower process with it, as when the Flower process was exec'd.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _say(text: str) -> None:
    print(f"fedcrm: {text}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL this (child) process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class RestartPolicy:
    """When and how soon a child that exited on its own is started again.

    Parameters
    ----------
    restart
        Start the child again when it exits without being asked to.
    first_delay_s, max_delay_s
        The pause before a restart doubles from ``first_delay_s`` up to
        ``max_delay_s`` while the child keeps exiting quickly ...
    healthy_after_s
        ... and falls back to ``first_delay_s`` once a child ran this long.
    give_up_codes
        Exit codes that mean a restart cannot help (2: a bad command line).
    """

    restart: bool = True
    first_delay_s: float = 2.0
    max_delay_s: float = 60.0
    healthy_after_s: float = 120.0
    give_up_codes: frozenset[int] = frozenset({2})

    def next_delay(self, previous: float | None, ran_s: float) -> float:
        """The pause before the next start, given the last pause and how long the child ran."""
        if previous is None or ran_s >= self.healthy_after_s:
            return self.first_delay_s
        return min(previous * 2, self.max_delay_s)


class Supervisor:
    """Runs ``cmd`` as a child, forwards stop signals, restarts it per ``policy``.

    Parameters
    ----------
    cmd, env
        The Flower command and its environment.
    name
        What the child is, in the supervisor's messages ("SuperNode").
    policy
        The restart policy; ``RestartPolicy(restart=False)`` runs it once.
    on_start
        Called (in a thread) after each start with the child; for example to
        register branches once the SuperLink answers. Its errors are reported,
        never raised.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str],
        *,
        name: str,
        policy: RestartPolicy | None = None,
        on_start: Callable[[subprocess.Popen], None] | None = None,
    ) -> None:
        self.cmd = list(cmd)
        self.env = dict(env)
        self.name = name
        self.policy = policy or RestartPolicy()
        self.on_start = on_start
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None
        self.starts = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum if signum != signal.SIGHUP else signal.SIGTERM)

    def _start(self) -> subprocess.Popen:
        child = subprocess.Popen(self.cmd, env=self.env, preexec_fn=_die_with_parent)
        self.child = child
        self.starts += 1
        if self.on_start is not None:

            def hook() -> None:
                try:
                    self.on_start(child)  # type: ignore[misc]
                except Exception as err:  # noqa: BLE001 - a hook must not stop the child
                    _say(f"after starting the {self.name}: {type(err).__name__}: {err}")

            threading.Thread(target=hook, name=f"{self.name}-on-start", daemon=True).start()
        return child

    def run(self) -> int:
        """Run until stopped (or, without restarts, until the child exits).

        Returns the child's last exit code, 128 + N when signal N ended it (as a shell does).
        """
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        delay: float | None = None
        code = 0
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                child = self._start()
                code = child.wait()
                ran = time.monotonic() - started
                if self.stopping.is_set() or not self.policy.restart:
                    break
                if code in self.policy.give_up_codes:
                    _say(f"the {self.name} exited with code {code}; not restarting it")
                    break
                delay = self.policy.next_delay(delay, ran)
                _say(
                    f"the {self.name} exited with code {code} after {ran:.0f} s; "
                    f"starting it again in {delay:.0f} s (stop with Ctrl-C or SIGTERM)"
                )
                self.stopping.wait(delay)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 128 - code if code < 0 else code
