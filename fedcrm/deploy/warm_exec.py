"""A warm SuperExec for a branch's SuperNode: one fork per message, not one new Python.

Flower's SuperNode hands every message to a SuperExec, which by default starts a
new ``flwr-clientapp`` Python per message; that process re-imports flwr, torch,
opacus, tenseal and pandas before it can run a single line of the ClientApp (1.5-4 s
on two busy cores, paid on every exchange). This SuperExec imports those
libraries once and, per message, forks a child that runs Flower's own
``run_clientapp`` - the body of ``flwr-clientapp`` - with the task's token.

Isolation is unchanged: every message still runs in a fresh process with its own
memory, pulls its Message and Context through the Runtime API and exits. The
ClientApp's own code (``fedcrm``) is *not* preloaded: the child imports it from the
FAB the server shipped, exactly as ``flwr-clientapp`` does.

No Flower code is changed: the SuperNode runs with ``--isolation process`` (its
documented mode for an externally run SuperExec) and this process implements
Flower's ``Executor`` protocol behind Flower's ``AutoExecPlugin``, the extension
point Flower's own executors (subprocess, Kubernetes) use.

Run by ``fedcrm node start`` (``--executor warm``, the default); by hand:
``python -m fedcrm.deploy.warm_exec --runtime-api-address 127.0.0.1:9095 --insecure``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

from fedcrm.deploy.warm_polling import (
    BURST_S,
    CHILD_CHECK_S,
    DEFAULT_POLL_INTERVAL,
    IDLE_POLL_S,
    POLL_INTERVAL_ENV,
    RUNTIME_API_RETRY_S,
    _pid_alive,
    poll_delay,
    poll_interval,
)
from fedcrm.deploy.warm_preload import PRELOAD, _preload_and_announce, preload

__all__ = [
    "BURST_S",
    "CHILD_CHECK_S",
    "DEFAULT_POLL_INTERVAL",
    "IDLE_POLL_S",
    "POLL_INTERVAL_ENV",
    "PRELOAD",
    "PYCACHE_ENV",
    "RDP_CACHE_ENV",
    "RUNTIME_API_RETRY_S",
    "ForkExecutor",
    "main",
    "poll_delay",
    "poll_interval",
    "preload",
    "serve",
]

PYCACHE_ENV = "FEDCRM_WARM_PYCACHE"  # set by serve(): the children's bytecode cache
# Set by serve(): per-step RDP vectors shared by the children (fedcrm.privacy.composition;
# 0.3-0.5 s of every DP message otherwise). Named here so the parent imports no fedcrm.
RDP_CACHE_ENV = "FEDCRM_RDP_CACHE"


class ForkExecutor:
    """Flower ``Executor`` that forks this warm process once per ClientApp task.

    Task types other than ClientApp (none are expected on a SuperNode) go to
    Flower's ordinary ``SubprocessExecutor``.
    """

    def __init__(self) -> None:
        from flwr.supercore.superexec.executor import SubprocessExecutor

        self._fallback = SubprocessExecutor()
        self.children: set[int] = set()
        self.launched = 0
        self.last_exit = 0.0  # time.monotonic() when a child was last reaped

    def get_eligible_capacity(
        self,
        supported_task_types: set,
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set, set[str]]:
        """Every supported task type can start at once (as with subprocesses)."""
        del insecure, root_certificates_path
        return supported_task_types, set()

    def wait_for_capacity(self, task_type: object = None, **_: object) -> None:
        """No capacity gate: a fork is always possible."""

    def launch(self, spec: object) -> object:
        """Fork a child that runs Flower's ``run_clientapp`` for ``spec.token``."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:  # type: ignore[attr-defined]
            return self._fallback.launch(spec)  # type: ignore[arg-type]
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as err:
            return LaunchResult.failed(f"fork failed: {err}")
        if pid == 0:  # pragma: no cover - runs in the child, which _exits
            _run_child(spec)
        self.children.add(pid)
        self.launched += 1
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children so none lingers as a zombie."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)
                self.last_exit = time.monotonic()

    def close(self) -> None:
        """Children finish their task on their own (they watch this process)."""
        self.reconcile()


def _cache_bytecode() -> None:
    """Let a child cache the bytecode of the app it imports, outside the source tree.

    Each child imports the app's own package from the FAB; without cached
    bytecode (PYTHONDONTWRITEBYTECODE, or a read-only install) every message
    recompiles it (about 0.3 s of a core on each message). The cache lives in
    a private directory of this SuperExec (``sys.pycache_prefix``), so no
    source directory is written to.
    """
    prefix = os.environ.get(PYCACHE_ENV)
    if prefix:
        sys.pycache_prefix = prefix
        sys.dont_write_bytecode = False


def _run_child(spec: object) -> NoReturn:  # pragma: no cover - exercised in a child process
    """Body of one forked task process: Flower's ``flwr-clientapp`` main, then ``_exit``."""
    code = 1
    t0 = time.perf_counter()
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _cache_bytecode()
        from fedcrm.deploy.approval import approved_from_env, guard_fab_install

        approved = approved_from_env()
        if approved is not None:
            guard_fab_install(approved)
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(
            runtime_api_address=spec.runtime_api_address,  # type: ignore[attr-defined]
            token=spec.token,  # type: ignore[attr-defined]
            insecure=spec.insecure,  # type: ignore[attr-defined]
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path,  # type: ignore[attr-defined]
                spec.insecure,  # type: ignore[attr-defined]
            ),
            parent_pid=spec.parent_pid,  # type: ignore[attr-defined]
            runtime_dependency_install=spec.runtime_dependency_install,  # type: ignore[attr-defined]
        )
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            print(
                f"fedcrm warm SuperExec: task {spec.task_id} ended in "  # type: ignore[attr-defined]
                f"{time.perf_counter() - t0:.2f} s, {time.process_time():.2f} s CPU (exit {code})",
                file=sys.stderr,
            )
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _stop_on_signals(stop: threading.Event) -> dict[signal.Signals, Any]:
    """Set ``stop`` on SIGTERM/SIGINT (from the main thread); returns the handlers replaced."""

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _stop)
    return previous


def _connect(
    runtime_api_address: str,
    insecure: bool,
    root_certificates_path: str | None,
    executor: ForkExecutor,
) -> tuple[Any, Any]:
    """A client of the SuperNode's Runtime API and Flower's task plugin around ``executor``."""
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.superexec.plugin import AutoExecPlugin
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    # Flower's invoker retries for ever; bounded, a vanished SuperNode is noticed.
    retry_invoker = make_simple_http_retry_invoker()
    retry_invoker.max_time = RUNTIME_API_RETRY_S
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=validate_and_resolve_root_certificates(root_certificates_path, insecure),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=retry_invoker,
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates_path,
        runtime_dependency_install=False,
        executor=executor,
    )
    return client, plugin


def _launch_task(plugin: Any, res: Any) -> bool:
    """Launch an acquired task; False when it failed to start (it then expires)."""
    try:
        result = plugin.launch_task(token=res.token, task=res.task)
    except Exception as err:  # noqa: BLE001 - the task expires; keep serving
        print(
            f"fedcrm warm SuperExec: task {res.task.task_id} failed to start: {err}",
            file=sys.stderr,
            flush=True,
        )
        return False
    if str(getattr(result, "status", "accepted")) != "accepted":
        print(
            f"fedcrm warm SuperExec: task {res.task.task_id} not launched: {result.message}",
            file=sys.stderr,
            flush=True,
        )
    return True


def _serve_tasks(
    stop: threading.Event,
    parent_pid: int | None,
    interval: float,
    executor: ForkExecutor,
    client: Any,
    plugin: Any,
) -> None:
    """Poll for tasks and launch them until ``stop`` is set or ``parent_pid`` has gone."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest

    next_poll = 0.0
    while not stop.is_set():
        if parent_pid is not None and not _pid_alive(parent_pid):
            break
        ended = executor.last_exit
        executor.reconcile()
        now = time.monotonic()
        if executor.last_exit != ended:  # a child just ended: its successor is near
            next_poll = min(next_poll, now + interval)
        if now < next_poll:
            stop.wait(min(CHILD_CHECK_S, next_poll - now))  # a waitpid, no HTTP call
            continue
        next_poll = now + poll_delay(interval, executor.last_exit, now)
        types, fab_hashes = executor.get_eligible_capacity(set(plugin.supported_task_types))
        try:
            res = client.AcquireTask(
                AcquireTaskRequest(supported_task_types=types, agentapp_fab_hashes=fab_hashes)
            )
        except Exception as err:  # noqa: BLE001 - the SuperNode may be restarting
            print(f"fedcrm warm SuperExec: Runtime API: {err}", file=sys.stderr, flush=True)
            stop.wait(1.0)
            continue
        if res.HasField("task") and res.token and _launch_task(plugin, res):
            next_poll = 0.0  # another task may be waiting: ask again at once


def serve(
    runtime_api_address: str,
    *,
    insecure: bool,
    root_certificates_path: str | None = None,
    parent_pid: int | None = None,
    preload_modules: Sequence[str] = PRELOAD,
    stop: threading.Event | None = None,
    approved_fabs: Sequence[str] | None = None,
) -> ForkExecutor:
    """Acquire tasks from the SuperNode's Runtime API and fork one child per task.

    Returns when ``stop`` is set, on SIGTERM/SIGINT, or when ``parent_pid``
    (the SuperNode) has gone. With ``approved_fabs``, a child refuses any app
    whose FAB hash is not listed (:mod:`fedcrm.deploy.approval`).
    """
    from fedcrm.deploy.approval import APPROVED_ENV

    if approved_fabs is not None:
        os.environ[APPROVED_ENV] = ",".join(approved_fabs)
    interval = poll_interval()
    _preload_and_announce(preload_modules, runtime_api_address, approved_fabs)
    stop = stop or threading.Event()
    previous = _stop_on_signals(stop)
    executor = ForkExecutor()
    pycache = tempfile.mkdtemp(prefix="fedcrm-warm-pycache-")
    os.environ[PYCACHE_ENV] = pycache
    rdp_cache = tempfile.mkdtemp(prefix="fedcrm-warm-rdp-")
    os.environ[RDP_CACHE_ENV] = rdp_cache
    client, plugin = _connect(runtime_api_address, insecure, root_certificates_path, executor)
    try:
        _serve_tasks(stop, parent_pid, interval, executor, client, plugin)
    finally:
        client.close()
        executor.close()
        shutil.rmtree(pycache, ignore_errors=True)
        shutil.rmtree(rdp_cache, ignore_errors=True)
        os.environ.pop(PYCACHE_ENV, None)
        os.environ.pop(RDP_CACHE_ENV, None)
        if approved_fabs is not None:
            os.environ.pop(APPROVED_ENV, None)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return executor


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m fedcrm.deploy.warm_exec --runtime-api-address HOST:PORT``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedcrm.deploy.warm_exec",
        description="Warm SuperExec for a SuperNode started with --isolation process.",
    )
    parser.add_argument("--runtime-api-address", required=True)
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true")
    tls.add_argument("--root-certificates")
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process (the SuperNode) ends"
    )
    parser.add_argument(
        "--preload",
        default=",".join(PRELOAD),
        help="comma-separated modules whose dependencies to import once (default: %(default)s)",
    )
    parser.add_argument(
        "--approved-fabs",
        help="comma-separated FAB hashes: run only these apps (default: any app)",
    )
    args = parser.parse_args(argv)
    approved = None
    if args.approved_fabs is not None:
        from fedcrm.deploy.approval import resolve_approved

        approved = resolve_approved(
            [h for h in args.approved_fabs.split(",") if h], "--approved-fabs"
        )
    serve(
        args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
        preload_modules=[m for m in args.preload.split(",") if m],
        approved_fabs=approved,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
