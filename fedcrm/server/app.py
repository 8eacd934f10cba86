"""The fedcrm ServerApp.

Deployment: ``flwr run . <connection> --run-config "config-overrides='...'
output-dir='runs/x' server-dir='/path/to/server'"``; the module-level ``app``
composes the packaged Hydra config with those overrides (the ``branch``
section is ignored: branch-side settings come from each SuperNode's node
config), relays the branches' key ceremony when the run is encrypted (the
server holds no key), and writes the run directory. The released model's bundle is signed with
``<server-dir>/release.key`` (created there on first use; without
``server-dir``, in the run directory's ``keys/``).

Simulation builds its ServerApp with :func:`make_server_app`.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcrm.config import RunConfig, compose
from fedcrm.errors import FedCRMError
from fedcrm.identity import ROSTER_FILE, RosterFile
from fedcrm.server.branch_state import Reporter
from fedcrm.server.exchange import KeepWarm
from fedcrm.server.ledger_store import LedgerStore, keys_from_dir
from fedcrm.server.lstm_job import LSTMJob
from fedcrm.server.outputs import write_outputs
from fedcrm.server.round_lines import log_progress_to_stderr, logging_reporter, status_line
from fedcrm.server.run_dir import RunDir

log = logging.getLogger(__name__)


def keep_warm_policy(cfg: RunConfig) -> KeepWarm | None:
    """The standby policy of a deployment run (``None`` when ``keep_warm_s=0``)."""
    hold = cfg.federation.keep_warm_s
    return KeepWarm(max_hold_s=hold) if hold > 0 else None


def run_job(
    grid: Grid,
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    run_id: str | None = None,
    reporter: Reporter | None = None,
    roster: Any | None = None,
    node_wait_s: float = 120.0,
    deployment: bool = False,
    expected_nodes: int | None = None,
    server_dir: str | Path | None = None,
    signing_keys: str | Path | None = None,
    identities: RosterFile | None = None,
) -> dict[str, Any]:
    """Run a configured job on ``grid`` and write its run directory.

    ``deployment`` turns on keeping SuperNodes warm between exchanges
    (``federation.keep_warm_s``); simulated nodes never sleep.
    ``expected_nodes`` (simulation) makes the job wait for that many SuperNodes
    before the first round instead of ``federation.min_branches``.
    ``server_dir`` (deployment) holds the server's ledger copies across runs
    (``ledgers/``) and the branches' public signing keys (``keys/``);
    ``signing_keys`` names another folder of public keys (simulation).
    ``identities`` (deployment) is the admitted list each joining node is checked
    against (:func:`fedcrm.identity.check_node_identity`).
    """
    t0 = time.perf_counter()
    if cfg.privacy.dp and cfg.task.cutoff is None:
        raise FedCRMError(
            "a job with differential privacy needs task.cutoff=YYYY-MM-DD: a cutoff derived "
            "from each branch's data would let one customer move every other customer's "
            "features (branches refuse such a job)"
        )
    run_dir = RunDir(out_dir)
    roster = _job_roster(cfg, run_dir, roster, identities)
    run_id = run_id or uuid.uuid4().hex[:12]
    keys = Path(signing_keys) if signing_keys else None
    ledgers = _ledger_store(run_dir, server_dir, keys, identities)
    job_class: Any = LSTMJob
    if cfg.model.name == "gbdt":
        from fedcrm.server.gbdt_job import GBDTJob

        job_class = GBDTJob
    job = job_class(
        grid,
        cfg,
        run_dir,
        run_id=run_id,
        reporter=reporter,
        roster=roster,
        node_wait_s=node_wait_s,
        keep_warm=keep_warm_policy(cfg) if deployment else None,
        expected_nodes=expected_nodes,
        ledgers=ledgers,
        identities=identities,
    )
    try:
        result = job.run()
    finally:
        # The run directory verifies on its own: its branches' ledgers and public keys.
        ledgers.export(run_dir.path, [b.branch_id for b in job.branches.values()], keys)
    if deployment:
        result["standby_messages"] = job.courier.standby_sent
        result["fab_hash"] = _fab_hash(grid)
    result["run_id"] = job.spec.run_id  # a resumed run keeps its first id
    result.setdefault("timings", {})["federated_total_s"] = time.perf_counter() - t0
    return result


def _job_roster(
    cfg: RunConfig, run_dir: RunDir, roster: Any | None, identities: RosterFile | None
) -> Any | None:
    """The encrypted job's roster (the admitted branches' keys in deployment), written out."""
    if cfg.privacy.he and roster is None and identities is not None:
        roster = identities.roster().crypto_roster()
    if roster is not None:
        # Public: what a branch may review and pin (node config `roster`).
        (run_dir.path / "roster.json").write_bytes(roster.to_json())
        log.info("encrypted job: roster %s (%d branches)", roster.digest[:16], roster.n)
    return roster


def _ledger_store(
    run_dir: RunDir,
    server_dir: str | Path | None,
    keys: Path | None,
    identities: RosterFile | None,
) -> LedgerStore:
    """The server's ledger copies: across runs in ``server_dir``, else in the run directory."""
    # The branches' signing keys: the admitted list in deployment, key files in simulation.
    lookup = identities.signing_keys if identities is not None else keys_from_dir(keys)
    if server_dir:
        return LedgerStore(Path(server_dir), public_keys=lookup)
    return LedgerStore(run_dir.path, ledger_dir="ledger", public_keys=lookup)


def _fab_hash(grid: Grid) -> str | None:
    """The app the branches were asked to run, as their ``--approve-app`` pins it."""
    try:
        return grid.run.fab_hash or None
    except Exception:  # noqa: BLE001 - a Grid without run details (tests)
        return None


def make_server_app(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    run_id: str,
    reporter: Reporter | None = None,
    roster: Any | None = None,
    results: dict[str, Any] | None = None,
    expected_nodes: int | None = None,
    signing_keys: str | Path | None = None,
) -> ServerApp:
    """A ServerApp for the simulation; the result lands in ``results["federated"]``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_job(
            grid,
            cfg,
            out_dir,
            run_id=run_id,
            reporter=reporter,
            roster=roster,
            expected_nodes=expected_nodes,
            signing_keys=signing_keys,
        )
        if results is not None:
            results["federated"] = result

    return app


def resolve_run_dir(output_dir: str, run_id: str, *, resume: bool = False) -> str:
    """The run directory of a deployment run.

    ``output-dir`` with ``{run_id}`` is filled in; otherwise each run gets
    ``<output-dir>/run-<run-id>``. A ``resume=true`` run is a new Flower run
    (new run id) that must continue in the interrupted run's directory: either
    ``output-dir`` is that directory (it holds ``checkpoint/``), or the run
    directory under ``output-dir`` whose checkpoint is the most recent.
    """
    if "{run_id}" in output_dir:
        return output_dir.replace("{run_id}", run_id)
    base = Path(output_dir)
    if resume:
        if any((base / c / "state.json").exists() for c in ("checkpoint", "checkpoint.old")):
            return str(base)
        found = [
            state
            for c in ("checkpoint", "checkpoint.old")
            for state in base.glob(f"run-*/{c}/state.json")
        ]
        if found:
            latest = max(found, key=lambda p: p.stat().st_mtime).parent.parent
            log.info("resume: continuing the run directory %s", latest)
            return str(latest)
    return str(base / f"run-{run_id}")


def load_identities(server_dir: str) -> RosterFile:
    """The admitted list in the run-config key ``server-dir`` (the federation's ``server/``).

    Raises
    ------
    FedCRMError
        When the key is empty or names a folder without an admitted list: a
        deployment run never takes a node's word for its branch id.
    """
    if not server_dir.strip():
        raise FedCRMError(
            "deployment runs need the run-config key server-dir: the federation's server/ "
            "folder, whose admitted.json binds each branch id to its SuperNode "
            "(flwr run . fedcrm --run-config \"server-dir='/srv/fed/server' ...\")"
        )
    return RosterFile(Path(server_dir).expanduser() / ROSTER_FILE)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Deployment entry point: compose the config from the run config and run.

    Each round's line (:mod:`fedcrm.server.round_lines`) is logged at INFO, which
    ``flwr log <run-id> <connection> --show`` shows.
    """
    t0 = time.perf_counter()
    log_progress_to_stderr()
    overrides = shlex.split(str(context.run_config.get("config-overrides", "")))
    cfg = compose(overrides)
    identities = load_identities(str(context.run_config.get("server-dir", "")))
    out_dir = resolve_run_dir(
        str(context.run_config.get("output-dir", "")) or cfg.output_dir,
        str(context.run_id),
        resume=cfg.resume,
    )
    log.info("fedcrm job %s writing to %s", context.run_id, out_dir)
    server_dir = str(context.run_config.get("server-dir", ""))
    # The branches' ledger keys beside the ledger copies (`fedcrm privacy verify RUN_DIR`).
    identities.roster().write_signing_keys(Path(out_dir) / "keys")
    result = run_job(
        grid,
        cfg,
        out_dir,
        run_id=str(context.run_id),
        reporter=logging_reporter(cfg),
        deployment=True,
        identities=identities,
        server_dir=server_dir,
    )
    identities.roster().write_signing_keys(Path(out_dir) / "keys")
    result.setdefault("timings", {})["total_s"] = time.perf_counter() - t0
    summary = write_outputs(
        Path(out_dir), cfg, result, release_key_dir=Path(server_dir) if server_dir else None
    )
    log.info(
        "fedcrm job %s %s; run directory %s", context.run_id, status_line(cfg, summary), out_dir
    )
