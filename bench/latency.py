"""Deployment latency on loopback with real Flower processes; prints ONE JSON object.

Measures, over TLS with SuperNode authentication (``fedcrm federation init``,
``fedcrm server start``, ``fedcrm node start``):

1. The round trip of one server -> branches -> server exchange of a tiny
   message with 3 SuperNodes, using a small ping app, for
   - ``keepwarm``: fedcrm's courier with standby messages (``federation.keep_warm_s``),
   - ``pushpull``: the courier's push + backing-off pull loop alone,
   - ``stock``: Flower's ``grid.send_and_receive`` (3 s between pulls),
   under ``exchange_warm`` (fedcrm's settings: warm SuperExec, task poll 0.1 s),
   ``exchange_warm_one_node`` (the same with one SuperNode, as when each branch
   has its own machine), ``exchange_subprocess`` (Flower's SuperExec, one new
   Python per message, poll 0.1 s) and ``exchange_flower_defaults`` (Flower's
   SuperExec, poll 1 s). ``to_branch`` / ``back`` split each round trip at the
   moment the slowest branch ran its handler. The SuperLink keeps its state in
   memory (fedcrm's default); ``exchange_warm_sqlite_state`` repeats
   ``exchange_warm`` with ``fedcrm server start --database`` (Flower's SQLite
   state), side by side: ``sqlite_over_memory`` holds the ratios of SuperLink
   CPU per exchange and of the standby round trip.
2. ``init_to_finished``: wall time from ``fedcrm federation init`` to a
   finished 2-round DP-LSTM run with 3 branches (the real fedcrm app), along
   the README's walk-through: ``fedcrm node init`` at each branch, ``fedcrm
   server register --request``, ``fedcrm node app-hash``, ``fedcrm server
   start``, ``fedcrm node start --federation KIT --branch-dir DIR
   --approve-app HASH``, ``flwr run``; and
   ``init_to_finished_subprocess_executor``, the same with Flower's SuperExec
   (``flower-supernode`` started directly: ``fedcrm node start`` runs a branch
   with keys only under the warm executor, which can pin the app).
3. ``ten_supernodes``: a 2-round (``--ten-rounds``) LSTM run with 10 SuperNodes
   on this machine.

Usage: ``python bench/latency.py [--reps 5] [--skip-ten] [--skip-stock]
[--skip-subprocess] [--skip-sqlite] [--skip-e2e] [--only-ten] [--only-e2e]
[--keep DIR]``.
Never part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import add_save_flag, emit

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The synthetic data's public cutoff: DP jobs need a fixed one.
TINY = (
    "model.hidden_size=8 model.embedding_dim=4 task.max_events=10 baseline=false "
    "task.cutoff=2024-10-02"
)

PING_APP = """
import json, time
from flwr.app import ConfigRecord, Message, RecordDict, Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from fedcrm.client.standby import register_standby
from fedcrm.server.exchange import Courier, KeepWarm, wait_for_nodes

app = ServerApp()

@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = wait_for_nodes(grid, int(cfg["nodes"]), timeout=300)
    def msgs():
        return [Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=n,
                        message_type="query.ping") for n in nodes]
    out = {"nodes": len(nodes)}
    for mode in str(cfg["modes"]).split(","):
        courier = Courier(grid, KeepWarm() if mode == "keepwarm" else None)
        times, there, back = [], [], []
        for i in range(int(cfg["reps"]) + 1):  # the first one warms up (FAB install)
            t0, w0 = time.perf_counter(), time.time()
            if mode in ("pushpull", "keepwarm"):
                got = [r.message for r in courier.exchange(msgs(), timeout=120) if r.ok]
            else:
                got = [r for r in grid.send_and_receive(msgs(), timeout=120) if not r.has_error()]
            w1 = time.time()
            if i:
                times.append(time.perf_counter() - t0)
                # Same clock (loopback): when the slowest branch ran its handler.
                handled = max(float(m.content["c"]["t"]) for m in got)
                there.append(handled - w0)
                back.append(w1 - handled)
            assert len(got) == len(nodes), (mode, len(got))
        out[mode] = times
        out[mode + "_there"] = there
        out[mode + "_back"] = back
    with open(str(cfg["out"]), "w") as fh:
        json.dump(out, fh)

client = ClientApp()
register_standby(client)

@client.query("ping")
def ping(message: Message, context: Context) -> Message:
    return Message(RecordDict({"c": ConfigRecord({"t": time.time()})}), reply_to=message)
"""

PING_PYPROJECT = """
[project]
name = "fedcrm-ping"
version = "0.1.0"
dependencies = []

[tool.flwr.app]
publisher = "fedcrm-bench"

[tool.flwr.app.components]
serverapp = "pingapp:app"
clientapp = "pingapp:client"

[tool.flwr.app.config]
nodes = 3
reps = 5
modes = "pushpull"
out = ""
"""


def log(msg: str) -> None:
    print(f"[latency] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Local:
    """A federation on loopback: SuperLink + SuperNodes as process groups."""

    def __init__(
        self,
        root: Path,
        branches: list[str],
        poll: str,
        executor: str = "warm",
        database: bool = False,
    ) -> None:
        self.root, self.branches, self.executor = root, branches, executor
        self.database = database  # SQLite state instead of Flower's in-memory default
        self.fed = root / "federation"
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ)
        self.env.update(
            FLWR_HOME=str(root / "flwr_home"),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            FLWR_SUPEREXEC_TASK_POLL_INTERVAL=poll,
            FLWR_TELEMETRY_ENABLED="0",
            OMP_NUM_THREADS="1",
            FEDCRM_TORCH_THREADS="1",
        )
        self.address = f"127.0.0.1:{free_port()}"
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def sh(self, *cmd: str) -> str:
        res = subprocess.run(
            list(cmd), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=600
        )
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
        return res.stdout

    def spawn(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        logs = self.root / "logs"
        p = subprocess.Popen(
            cmd, cwd=REPO, env=env or self.env, start_new_session=True,
            stdout=(logs / f"{name}.out").open("wb"), stderr=(logs / f"{name}.err").open("wb"),
        )  # fmt: skip
        self.procs.append(p)
        return p

    def up(self, data: dict[str, Path], app: Path | str) -> None:
        """The README's walk-through: keys made at each branch, registered, kit, nodes pinned."""
        fedcrm = str(BIN / "fedcrm")
        self.sh(fedcrm, "federation", "init", "--out", str(self.fed), "--server-address",
                self.address)  # fmt: skip
        self.sh(fedcrm, "federation", "connection", "--federation", str(self.fed))
        for b in self.branches:
            bdir = self.root / "branches" / b
            self.sh(fedcrm, "node", "init", "--branch-id", b, "--out", str(bdir))
            # Admitted before the start: `fedcrm server start` registers them once the
            # SuperLink answers.
            self.sh(fedcrm, "server", "register", "--federation", str(self.fed), "--request",
                    str(bdir / f"{b}.request.json"))  # fmt: skip
        # What each branch pins after reviewing the app (the same hash for all).
        fab = self.sh(fedcrm, "node", "app-hash", str(app)).strip()
        # The SuperLink's SuperExec only starts ServerApps: Flower's 1 s poll is plenty.
        server_cmd = [fedcrm, "server", "start", "--federation", str(self.fed)]
        if self.database:
            server_cmd += ["--database", str(self.root / "superlink.db")]
        self.spawn(
            "superlink", server_cmd, env={**self.env, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"}
        )
        deadline = time.monotonic() + 120
        logs = self.root / "logs" / "superlink.err"
        while time.monotonic() < deadline:
            if logs.exists() and b"registered the admitted" in logs.read_bytes():
                break
            time.sleep(0.3)
        for b in self.branches:
            bdir = self.root / "branches" / b
            if self.executor == "warm":
                cmd = [fedcrm, "node", "start", "--federation", str(self.fed / "kit"),
                       "--branch-dir", str(bdir), "--data-path", str(data[b]),
                       "--epsilon-ceiling", "50", "--runtime-port", str(free_port()),
                       "--no-connect-check", "--approve-app", fab]  # fmt: skip
            else:
                # Flower's own executor cannot pin an app, so `fedcrm node start` refuses a
                # branch with keys on it: run flower-supernode as node start would otherwise.
                config = (
                    f'branch-id="{b}" data-path="{data[b]}" ledger-path="{bdir}/ledger.jsonl" '
                    f'signing-key="{bdir}/keys/{b}.key" model-dir="{bdir}/models" '
                    f'cache-dir="{bdir}/cache" epsilon-ceiling=50.0'
                )
                cmd = ["flower-supernode", "--root-certificates", str(self.fed / "kit" / "ca.crt"),
                       "--superlink", self.address, "--auth-supernode-private-key",
                       str(bdir / "keys" / "node_auth_key"), "--node-config", config,
                       "--port", str(free_port())]  # fmt: skip
            self.spawn(f"node-{b}", cmd)
        if self.executor == "warm":
            # Measure exchanges, not the warm SuperExecs' one-off imports (~10 s of CPU each).
            deadline = time.monotonic() + 300
            logs = [self.root / "logs" / f"node-{b}.err" for b in self.branches]
            while time.monotonic() < deadline and not all(
                p.exists() and b"; serving " in p.read_bytes() for p in logs
            ):
                time.sleep(0.5)

    def run(self, app: Path | str, run_config: str) -> int:
        out = self.sh(str(BIN / "flwr"), "run", str(app), "fedcrm", "--run-config", run_config,
                      "--format", "json")  # fmt: skip
        return int(json.loads(out)["run-id"])

    def wait(self, run_id: int, timeout: float = 1800, until_file: Path | None = None) -> str:
        # Each `flwr ls` is a new Python process (about a second of CPU): polling it
        # often would load the very machine whose latency is measured. Until
        # ``until_file`` appears it runs only every 10 s (to catch a failed run).
        deadline = time.monotonic() + timeout
        last_ls = -math.inf
        while time.monotonic() < deadline:
            ready = until_file is None or until_file.exists()
            if ready or time.monotonic() - last_ls >= 10.0:
                last_ls = time.monotonic()
                status = self.status(run_id)
                if status.startswith("finished"):
                    return status
            time.sleep(3.0 if ready else 0.2)
        return "timeout"

    def status(self, run_id: int) -> str:
        out = subprocess.run(
            [str(BIN / "flwr"), "ls", "fedcrm", "--run-id", str(run_id), "--format", "json"],
            cwd=REPO, env=self.env, capture_output=True, text=True,
        ).stdout  # fmt: skip
        try:
            return str(json.loads(out)["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            return ""

    def down(self) -> None:
        for p in reversed(self.procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(timeout=5)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue


def crm(root: Path, branches: int, customers: int) -> dict[str, Path]:
    import pandas as pd

    from fedcrm.data.synthetic import write_synthetic

    write_synthetic(root / "all", branches=branches, customers=customers, seed=7)
    cust = pd.read_csv(root / "all" / "customers.csv", dtype=str, keep_default_na=False)
    ev = pd.read_csv(root / "all" / "events.csv", dtype=str, keep_default_na=False)
    owner = dict(zip(cust["customer_id"], cust["branch_id"], strict=True))
    out = {}
    for b, part in cust.groupby("branch_id"):
        d = root / "split" / str(b)
        d.mkdir(parents=True)
        part.to_csv(d / "customers.csv", index=False)
        ev[ev["customer_id"].map(owner) == b].to_csv(d / "events.csv", index=False)
        out[str(b)] = d
    return out


def summarize(times: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "n": len(times),
    }


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid`` (with reaped children)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[2] is the process group
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def bench_exchange(
    tmp: Path,
    data: dict[str, Path],
    poll: str,
    modes: str,
    reps: int,
    executor: str = "warm",
    nodes: int = 3,
    database: bool = False,
) -> dict:
    name = f"{poll}-{executor}-{nodes}" + ("-sqlite" if database else "")
    app = tmp / f"pingapp-{name}"
    app.mkdir()
    (app / "pingapp.py").write_text(PING_APP)
    (app / "pyproject.toml").write_text(PING_PYPROJECT)
    branches = sorted(data)[:nodes]
    local = Local(tmp / f"exchange-{name}", branches, poll, executor, database=database)
    try:
        local.up({b: data[b] for b in branches}, app)
        out = tmp / f"ping-{name}.json"
        superlink = local.procs[0].pid  # its own process group: supervisor + SuperLink
        cpu0 = group_cpu_s(superlink)
        rid = local.run(app, f"nodes={nodes} reps={reps} modes='{modes}' out='{out}'")
        status = local.wait(rid, timeout=900, until_file=out)
        cpu = group_cpu_s(superlink) - cpu0
        if status != "finished:completed":
            raise RuntimeError(f"ping run {status}")
        raw = json.loads(out.read_text())
    finally:
        local.down()
    exchanges = len(modes.split(",")) * (reps + 1)
    out: dict[str, Any] = {
        "superlink_state": "sqlite" if database else "memory",
        # The SuperLink (with its SuperExec and the ping ServerApp) over the whole ping
        # run, per exchange (every mode, warm-up included).
        "superlink_cpu_s_per_exchange": round(cpu / exchanges, 3),
    }
    for m in modes.split(","):
        out[m] = summarize(raw[m])
        # Split of the round trip: server push -> the slowest branch's handler runs,
        # and that handler -> the server holds every reply.
        out[m]["to_branch_median_s"] = round(statistics.median(raw[m + "_there"]), 3)
        out[m]["back_median_s"] = round(statistics.median(raw[m + "_back"]), 3)
    return out


def bench_end_to_end(
    tmp: Path, data: dict[str, Path], rounds: int, name: str, executor: str = "warm"
) -> dict[str, Any]:
    t0 = time.perf_counter()
    local = Local(tmp / name, sorted(data), "0.1", executor)
    try:
        local.up(data, REPO)
        t_up = time.perf_counter() - t0
        outdir = tmp / name / "runs"
        rid = local.run(
            ".",
            f"config-overrides='federation.rounds={rounds} privacy=dp "
            f"federation.min_branches={len(data)} {TINY}' output-dir='{outdir}' "
            f"server-dir='{local.fed / 'server'}'",
        )
        status = local.wait(rid)
        total = time.perf_counter() - t0
        run_dir = outdir / f"run-{rid}"
        summary = json.loads((run_dir / "summary.json").read_text())
        rounds_s = [
            round(json.loads(x)["seconds"], 2)
            for x in (run_dir / "rounds.jsonl").read_text().splitlines()
            if "trained_round" in json.loads(x)
        ]
    finally:
        local.down()
    return {
        "status": status,
        "executor": executor,
        "branches": len(data),
        "rounds": summary["rounds"],
        "total_s": round(total, 1),
        "provision_and_start_s": round(t_up, 1),
        "connect_s": round(summary["timings"].get("connect_s", float("nan")), 1),
        "round_s": rounds_s,
        "final_evaluation_s": round(summary["timings"].get("final_evaluation_s", float("nan")), 1),
        "auc": summary["final"].get("auc"),
        "stopped_reason": summary.get("stopped_reason"),
        "problems": {
            b: v["last_problem"] for b, v in summary["per_branch"].items() if v["last_problem"]
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-ten", action="store_true")
    ap.add_argument("--skip-stock", action="store_true", help="skip the 1 s poll interval runs")
    ap.add_argument(
        "--skip-subprocess",
        action="store_true",
        help="skip the runs with Flower's own subprocess executor (fedcrm's default is warm)",
    )
    ap.add_argument("--only-ten", action="store_true", help="only the 10-SuperNode run")
    ap.add_argument(
        "--only-e2e", action="store_true", help="only the init-to-finished run (warm executor)"
    )
    ap.add_argument("--skip-e2e", action="store_true", help="skip the init-to-finished runs")
    ap.add_argument(
        "--skip-sqlite",
        action="store_true",
        help="skip the 3-SuperNode exchange with the SuperLink's state in SQLite",
    )
    ap.add_argument("--ten-rounds", type=int, default=2, help="rounds of the 10-SuperNode run")
    ap.add_argument("--keep", type=Path, help="keep logs and run directories here")
    add_save_flag(ap)
    args = ap.parse_args()
    result: dict[str, Any] = {"load_average_at_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = args.keep
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedcrm-latency-")))
        data3 = crm(tmp / "crm3", 3, 150)
        if args.only_ten or args.only_e2e:
            args.skip_stock = args.skip_subprocess = True
        if args.only_e2e:
            args.skip_ten = True
        if not (args.only_ten or args.only_e2e):
            log("exchange latency, fedcrm's settings: warm executor, poll interval 0.1 s")
            result["exchange_warm"] = bench_exchange(
                tmp, data3, "0.1", "keepwarm,pushpull,stock", args.reps
            )
            if not args.skip_sqlite:
                log("the same with the SuperLink's state in SQLite (`server start --database`)")
                result["exchange_warm_sqlite_state"] = bench_exchange(
                    tmp, data3, "0.1", "keepwarm,pushpull,stock", args.reps, database=True
                )
                mem, sql = result["exchange_warm"], result["exchange_warm_sqlite_state"]
                result["sqlite_over_memory"] = {
                    "superlink_cpu": round(
                        sql["superlink_cpu_s_per_exchange"]
                        / max(mem["superlink_cpu_s_per_exchange"], 1e-9),
                        2,
                    ),
                    "keepwarm_median": round(
                        sql["keepwarm"]["median_s"] / mem["keepwarm"]["median_s"], 2
                    ),
                }
            log("the same with one SuperNode (no other branch competing for the cores)")
            result["exchange_warm_one_node"] = bench_exchange(
                tmp, data3, "0.1", "keepwarm,pushpull", args.reps, nodes=1
            )
        if not args.skip_subprocess:
            log("exchange latency, Flower's subprocess executor, poll interval 0.1 s")
            result["exchange_subprocess"] = bench_exchange(
                tmp, data3, "0.1", "pushpull,stock", args.reps, executor="subprocess"
            )
        if not args.skip_stock:
            log("exchange latency, Flower's subprocess executor, default poll interval 1 s")
            result["exchange_flower_defaults"] = bench_exchange(
                tmp, data3, "1.0", "pushpull,stock", args.reps, executor="subprocess"
            )
        if not (args.only_ten or args.skip_e2e):
            log("federation init -> finished 2-round LSTM run, 3 branches")
            result["init_to_finished"] = bench_end_to_end(tmp, data3, 2, "e2e3")
        if not (args.skip_subprocess or args.skip_e2e):
            log("the same with Flower's subprocess executor")
            result["init_to_finished_subprocess_executor"] = bench_end_to_end(
                tmp, data3, 2, "e2e3-subprocess", executor="subprocess"
            )
        if not args.skip_ten:
            log(f"10 SuperNodes, {args.ten_rounds}-round LSTM run")
            data10 = crm(tmp / "crm10", 10, 60)
            result["ten_supernodes"] = bench_end_to_end(tmp, data10, args.ten_rounds, "e2e10")
    result["load_average_at_end"] = os.getloadavg()[0]
    emit("latency", result, save=args.save)


if __name__ == "__main__":
    main()
