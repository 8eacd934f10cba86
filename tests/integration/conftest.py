"""Real Flower processes on 127.0.0.1 for the integration tests.

Every test gets its own federation directory (``fedcrm federation init``),
free ports, and ``FLWR_HOME``. Each branch makes its own keys in its own folder
(``fedcrm node init``, as on the branch's machine) and is admitted from its
request file (``fedcrm server register --request``); its SuperNode starts with
the federation's kit and its folder (``fedcrm node start --federation KIT
--branch-dir DIR``), pinning this repository's app (``--approve-app``). The
SuperLink and SuperNodes run under fedcrm's supervisor, each in its own
process group, and every group is killed in the fixture's teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FEDCRM = str(BIN / "fedcrm")
FLWR = str(BIN / "flwr")

# Tiny jobs: a 2-round LSTM run with 3 branches takes ~30 s on 2 shared cores.
# (Add federation.round_timeout per test: Hydra refuses a key given twice.)
# The synthetic data's public cutoff: DP jobs need a fixed one.
TINY = (
    "model.hidden_size=8 model.embedding_dim=4 task.max_events=10 baseline=false "
    "task.cutoff=2024-10-02"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Proc:
    """A started process group with its output files."""

    name: str
    popen: subprocess.Popen
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Signal the main process only (its children notice their parent is gone)."""
        if self.alive():
            os.kill(self.pid, sig)

    def kill_group(self) -> None:
        """Terminate the whole process group (the Flower process and its children)."""
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # Children may outlive the leader briefly; make sure the group is gone.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            break


@pytest.fixture(scope="session")
def crm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic CRM: 3 branches x ~150 customers, one export directory per branch."""
    from fedcrm.data.synthetic import write_synthetic

    root = write_synthetic(
        tmp_path_factory.mktemp("crm"), branches=3, customers=150, seed=7, per_branch=True
    )
    return {d.name: d for d in sorted(root.iterdir())}


@pytest.fixture
def app_hash() -> str:
    """The FAB hash of this repository's app, as `flwr run .` sends it (what branches pin).

    Per test (about a second): any file of the repository is part of the app, so a
    hash taken earlier in the session may no longer be the one `flwr run .` sends.
    """
    from fedcrm.deploy.approval import fab_hash_of_dir

    return fab_hash_of_dir(REPO)


@dataclass
class Deployment:
    """A federation directory, the branches' own folders, and the Flower processes started."""

    root: Path
    branches: Sequence[str]
    app_hash: str
    port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fed = self.root / "federation"
        self.kit = self.fed / "kit"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.root / "flwr_home"
        self.env = dict(os.environ)
        self.env.update(
            FLWR_HOME=str(self.flwr_home),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.05",
            FLWR_TELEMETRY_ENABLED="0",
            OMP_NUM_THREADS="1",
            FEDCRM_TORCH_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        self.address = f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------ commands
    def _run(
        self, exe: Path | str, args: tuple[str, ...], check: bool, timeout: float
    ) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [exe, *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            pytest.fail(
                f"{Path(exe).name} {' '.join(args)} failed ({res.returncode}):\n"
                f"{res.stdout}\n{res.stderr}"
            )
        return res

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run ``fedcrm ...`` (from the repository root)."""
        return self._run(FEDCRM, args, check, timeout)

    def flwr(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run ``flwr ...`` from the repository root (the app directory ``.``)."""
        return self._run(FLWR, args, check, timeout)

    def init(self) -> None:
        """``fedcrm federation init`` + ``connection``, and ``fedcrm node init`` per branch."""
        self.cli("federation", "init", "--out", str(self.fed), "--server-address", self.address)
        self.cli("federation", "connection", "--federation", str(self.fed))
        for b in self.branches:
            self.node_init(b)

    def branch_dir(self, branch: str) -> Path:
        """The folder a branch keeps its keys, ledger and cache in (its own machine)."""
        return self.root / "branches" / branch

    def ledger(self, branch: str) -> Path:
        """The branch's own privacy ledger."""
        return self.branch_dir(branch) / "ledger.jsonl"

    def node_init(self, branch: str) -> Path:
        """``fedcrm node init`` at the branch; returns its request file."""
        self.cli("node", "init", "--branch-id", branch, "--out", str(self.branch_dir(branch)))
        return self.branch_dir(branch) / f"{branch}.request.json"

    def spawn(self, name: str, cmd: Sequence[str]) -> Proc:
        """Start ``cmd`` in a new process group, output to ``logs/<name>.{out,err}``."""
        n = sum(1 for p in self.procs if p.name.startswith(name))
        tag = name if n == 0 else f"{name}.{n}"
        out, err = self.logs / f"{tag}.out", self.logs / f"{tag}.err"
        popen = subprocess.Popen(
            list(cmd),
            cwd=REPO,
            env=self.env,
            stdout=out.open("wb"),
            stderr=err.open("wb"),
            start_new_session=True,
        )
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def start_server(self, *extra: str) -> Proc:
        """``fedcrm server start`` and wait until the SuperLink accepts TLS connections."""
        proc = self.spawn(
            "superlink", [FEDCRM, "server", "start", "--federation", str(self.fed), *extra]
        )

        def up() -> bool:
            if not proc.alive():
                pytest.fail(f"SuperLink exited ({proc.popen.returncode}):\n{proc.text()[-3000:]}")
            res = self.flwr("ls", "fedcrm", "--format", "json", check=False, timeout=30)
            try:
                return bool(json.loads(res.stdout).get("success"))
            except ValueError:
                return False

        wait_for(up, 60, "the SuperLink", interval=0.5)
        return proc

    def register(self, branch: str) -> dict:
        """``fedcrm server register --request``: admitted, and registered if the SuperLink is up."""
        request = self.branch_dir(branch) / f"{branch}.request.json"
        res = self.cli(
            "server", "register", "--federation", str(self.fed), "--request", str(request),
            "--format", "json",
        )  # fmt: skip
        return dict(json.loads(res.stdout.strip().splitlines()[-1]))

    def start_node(self, branch: str, data: Path, *extra: str, name: str | None = None) -> Proc:
        """``fedcrm node start`` for ``branch`` with the kit and its folder (own runtime port).

        The branch pins this repository's app unless ``extra`` has ``--approve-app``.
        """
        pin = [] if "--approve-app" in extra else ["--approve-app", self.app_hash]
        cmd = [
            FEDCRM, "node", "start", "--federation", str(self.kit),
            "--branch-dir", str(self.branch_dir(branch)), "--data-path", str(data),
            "--runtime-port", str(free_port()), *pin, *extra,
        ]  # fmt: skip
        return self.spawn(name or f"node-{branch}", cmd)

    @staticmethod
    def wait_online(nodes: Sequence[Proc], timeout: float = 120) -> None:
        """Wait until ``nodes`` are online, so that a run starts with all of them.

        A job admits a SuperNode that connects after round 1 began only from the
        next round on; tests that count rounds per branch must not race that.
        Flower's SuperNode logs its node id once the SuperLink has activated it.
        """
        wait_for(
            lambda: all("SuperNode ID:" in n.text() for n in nodes),
            timeout,
            "the SuperNodes to come online",
        )

    def run(self, overrides: str, output_dir: Path, app: Path | str = ".") -> int:
        """``flwr run <app> fedcrm --run-config ...`` with the admitted list; returns the run id."""
        run_config = (
            f"config-overrides='{overrides}' output-dir='{output_dir}' "
            f"server-dir='{self.fed / 'server'}'"
        )
        res = self.flwr("run", str(app), "fedcrm", "--run-config", run_config, "--format", "json")
        data = json.loads(res.stdout)
        assert data.get("success"), data
        return int(data["run-id"])

    def status(self, run_id: int) -> str:
        """The run's status (``flwr ls --run-id``)."""
        res = self.flwr("ls", "fedcrm", "--run-id", str(run_id), "--format", "json", check=False)
        try:
            runs = json.loads(res.stdout)["runs"]
        except (ValueError, KeyError):
            return ""
        return str(runs[0]["status"]) if runs else ""

    def wait_run(self, run_id: int, timeout: float = 240) -> str:
        """Poll until the run is finished; returns its final status."""
        return wait_for(
            lambda: s if (s := self.status(run_id)).startswith("finished") else "",
            timeout,
            f"run {run_id} to finish",
            interval=1.0,
        )

    def log(self, run_id: int) -> str:
        """``flwr log <run> fedcrm --show``."""
        return self.flwr("log", str(run_id), "fedcrm", "--show", check=False, timeout=60).stdout

    TINY = TINY

    @staticmethod
    def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
        """See :func:`wait_for`."""
        return wait_for(predicate, timeout, what, interval)

    @staticmethod
    def run_dir(output_dir: Path, run_id: int) -> Path:
        """Where the ServerApp writes a run (``<output-dir>/run-<run-id>``)."""
        return output_dir / f"run-{run_id}"

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.kill_group()

    def diagnostics(self) -> str:
        return "\n".join(f"==== {p.name} ====\n{p.text()[-4000:]}" for p in self.procs)


@pytest.fixture
def deployment(
    tmp_path: Path, crm: dict[str, Path], app_hash: str, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    """A deployment of the 3 synthetic branches, not provisioned yet (``init()`` does it)."""
    dep = Deployment(tmp_path, sorted(crm), app_hash)
    try:
        yield dep
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(dep.diagnostics())
        dep.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
