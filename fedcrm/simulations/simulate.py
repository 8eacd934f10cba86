"""``fedcrm simulate``: Hydra config -> Flower simulation -> run directory.

Each simulated branch gets what a deployed branch has: a node config, its
features, and (for DP/HE runs) its own signing and agreement keys, ledger and
state folder under ``<output_dir>/branches/<branch_id>/``. The server side sees
only Flower messages, exactly as in deployment.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.config import RunConfig, cpu_count
from fedcrm.data.dataset import FeatureSet
from fedcrm.errors import ConfigError
from fedcrm.ids import id_path

log = logging.getLogger(__name__)


def load_run_data(cfg: RunConfig, work_dir: Path) -> Any:
    """The CRM data of a run (synthetic, CDNOW, a CSV/Parquet export or a database)."""
    from fedcrm.data.loader import load_crm
    from fedcrm.data.source import branch_source

    data_cfg = cfg.data
    if data_cfg.kind == "synthetic":
        from fedcrm.data.synthetic import generate

        seed = cfg.seed if data_cfg.seed is None else data_cfg.seed
        return generate(branches=data_cfg.branches, customers=data_cfg.customers, seed=seed)
    if data_cfg.kind == "cdnow":
        from fedcrm.data.cdnow import import_cdnow

        target = work_dir / "cdnow"
        if not (target / "customers.csv").exists():
            import_cdnow(target, source=data_cfg.source)
        return load_crm(target)
    if data_cfg.kind == "sql":
        source = branch_source(
            url=data_cfg.url,
            url_file=data_cfg.url_file,
            spec_path=data_cfg.spec,
            attribute_columns=data_cfg.attribute_columns,
            decimal=data_cfg.decimal,
            currency_symbols=data_cfg.currency_symbols,
        )
    else:
        source = branch_source(
            path=data_cfg.path,
            spec_path=data_cfg.spec,
            attribute_columns=data_cfg.attribute_columns,
            encoding=data_cfg.encoding,
            delimiter=data_cfg.delimiter,
            decimal=data_cfg.decimal,
            currency_symbols=data_cfg.currency_symbols,
        )
    return source.load()


def public_cutoff(cfg: RunConfig) -> RunConfig:
    """Under DP, a cutoff fixed before looking at the data: the data preset's public default.

    ``data=synthetic``: the generator's end date minus the horizon; ``data=cdnow``:
    1997-09-30; ``data=csv`` must set ``task.cutoff``.

    Raises
    ------
    ConfigError
        A DP run on ``data=csv`` without ``task.cutoff``.
    """
    if not cfg.privacy.dp or cfg.task.cutoff is not None:
        return cfg
    if cfg.data.kind == "synthetic":
        from fedcrm.data.synthetic import default_cutoff

        cutoff = default_cutoff(horizon_days=cfg.task.horizon_days)
    elif cfg.data.kind == "cdnow":
        from fedcrm.data.cdnow import PUBLIC_CUTOFF

        cutoff = PUBLIC_CUTOFF
    else:
        raise ConfigError(
            "privacy=dp with data=csv needs task.cutoff=YYYY-MM-DD: under differential privacy "
            "the cutoff must be fixed before looking at the data"
        )
    return cfg.model_copy(update={"task": cfg.task.model_copy(update={"cutoff": cutoff})})


def branch_rng_seed(cfg: RunConfig, branch_id: str) -> int | None:
    """A simulated branch's ``rng-seed``: derived from ``seed`` unless ``branch.rng_seed``."""
    import hashlib

    if cfg.branch.rng_seed == "os":
        return None
    base = cfg.branch.rng_seed if isinstance(cfg.branch.rng_seed, int) else cfg.seed
    digest = hashlib.sha256(f"fedcrm-sim:{base}:{branch_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def branch_settings(cfg: RunConfig, out_dir: Path, branch_id: str) -> dict[str, Any]:
    """The node config of a simulated branch (its files under ``branches/<branch_id>/``)."""
    bdir = id_path(out_dir / "branches", branch_id, "branch_id in the data")
    nc: dict[str, Any] = {
        "branch-id": branch_id,
        "data-path": str(bdir / "features"),
        "model-dir": str(bdir / "model"),
        "state-dir": str(bdir / "state"),
        "min-cell-count": str(cfg.branch.min_cell_count),
        "test-fraction": str(cfg.branch.test_fraction or cfg.task.test_fraction),
    }
    seed = branch_rng_seed(cfg, branch_id)
    if seed is not None:
        nc["rng-seed"] = str(seed)
    return nc


def prepare_branches(
    cfg: RunConfig, out_dir: Path, say: Any
) -> tuple[dict[str, tuple[FeatureSet, FeatureSet]], dict[str, int], dict[str, Any]]:
    """Every branch's features (written where the branch reads them) and its own split.

    The split is computed exactly as the branch computes it
    (:func:`fedcrm.client.branch.split_branch`), so that the baselines see the
    same train and test customers.
    """
    from fedcrm.client.branch import BranchSettings, split_branch, split_key, write_feature_cache
    from fedcrm.data.contract import MIN_BRANCH_CUSTOMERS
    from fedcrm.data.features import build_features, resolve_cutoff
    from fedcrm.data.split import validation_mask

    t0 = time.perf_counter()
    data = load_run_data(cfg, out_dir / "work")
    cutoff = resolve_cutoff(data, cfg.task.cutoff, cfg.task.horizon_days)
    say(
        f"data: {len(data.branches())} branches, cutoff {cutoff}, "
        f"{sum(data.excluded.values())} customers excluded (consent/opt-out)"
    )
    branches: dict[str, tuple[FeatureSet, FeatureSet]] = {}
    validation: dict[str, np.ndarray] = {}
    excluded: dict[str, int] = {}
    for b in data.branches():
        fs = build_features(
            data.branch(b),
            cutoff=cutoff,
            horizon_days=cfg.task.horizon_days,
            max_events=cfg.task.max_events,
        )
        if len(fs) < MIN_BRANCH_CUSTOMERS:
            say(f"branch {b} left out: only {len(fs)} customers active before the cutoff")
            continue
        excluded[b] = int(data.excluded.get(b, 0))
        nc = branch_settings(cfg, out_dir, b)
        write_feature_cache(Path(nc["data-path"]), fs, excluded[b])
        settings = BranchSettings.from_node_config(nc)
        key = split_key(settings)
        train, test, _ = split_branch(fs, b, key, settings.test_fraction)
        branches[b] = (train, test)
        validation[b] = validation_mask(test.customer_ids, b, key, settings.test_fraction)
    info = {
        "cutoff": str(cutoff),
        "prepare_s": time.perf_counter() - t0,
        "validation": validation,
    }
    return branches, excluded, info


def branch_node_configs(
    cfg: RunConfig,
    out_dir: Path,
    branches: dict[str, tuple[FeatureSet, FeatureSet]],
) -> dict[int, dict[str, Any]]:
    """Each simulated branch's keys (DP, HE) and the node config of each partition.

    Keys are made here for the simulated branches (a deployed branch makes its
    own with ``fedcrm node init``); their public halves go to ``keys/``, where
    the simulated server reads the roster of an encrypted job.
    """
    keys_dir = out_dir / "keys"
    node_configs: dict[int, dict[str, Any]] = {}
    if not cfg.privacy.dp and (cfg.branch.epsilon_ceiling or cfg.branch.epsilon_ceilings):
        log.warning(
            "branch epsilon ceilings not applied: privacy=%s has no DP to bound (a deployed "
            "branch with an epsilon-ceiling refuses such a job)",
            cfg.privacy.mode,
        )
    for pid, b in enumerate(sorted(branches)):
        bdir = out_dir / "branches" / b
        nc = branch_settings(cfg, out_dir, b)
        if cfg.privacy.dp or cfg.privacy.he:
            from fedcrm.privacy.signing import generate_signing_key

            key = bdir / f"{b}.key"
            if not key.exists():
                generate_signing_key(bdir, b)
            keys_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(bdir / f"{b}.pub", keys_dir / f"{b}.pub")
            nc["signing-key"] = str(key)
        if cfg.privacy.he:
            from fedcrm.privacy.signing import generate_agreement_key

            agreement = bdir / f"{b}.x25519.key"
            if not agreement.exists():
                generate_agreement_key(bdir, b)
            shutil.copy(bdir / f"{b}.x25519.pub", keys_dir / f"{b}.x25519.pub")
            nc["agreement-key"] = str(agreement)
        if cfg.privacy.dp:
            nc["ledger-path"] = str(bdir / "ledger.jsonl")
            ceiling = cfg.branch.ceiling_for(b)
            if ceiling is not None:
                nc["epsilon-ceiling"] = str(ceiling)
            if cfg.branch.delta is not None:
                nc["delta"] = str(cfg.branch.delta)
        node_configs[pid] = nc
    return node_configs


def backend_config(cfg: RunConfig) -> dict[str, Any]:
    """Ray backend settings; refuses actor sizes Flower would hang on."""
    fed = cfg.federation
    cores = cpu_count()
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "ERROR",
        "log_to_driver": False,
    }
    if fed.ray_address:
        init_args["address"] = fed.ray_address
    else:
        if fed.num_cpus_per_branch > cores:
            raise ConfigError(
                f"federation.num_cpus_per_branch={fed.num_cpus_per_branch} exceeds this "
                f"machine's {cores} cores (Flower's simulation would hang); use at most {cores} "
                "or attach to a Ray cluster with federation.ray_address"
            )
        init_args["num_cpus"] = cores
    return {
        "client_resources": {"num_cpus": fed.num_cpus_per_branch, "num_gpus": 0.0},
        "init_args": init_args,
    }


def simulate(
    cfg: RunConfig, out_dir: Path, *, console: Any = None, client_mods: list[Any] | None = None
) -> dict[str, Any]:
    """Run a whole simulated federation and write the run directory.

    ``client_mods`` are Flower client mods wrapped around every branch's
    handlers (e.g. to inject faults in tests). Returns the summary written to
    ``summary.json``.
    """
    from fedcrm.client.app import make_client_app
    from fedcrm.server.app import make_server_app
    from fedcrm.server.outputs import write_outputs
    from fedcrm.server.round_lines import header_line
    from fedcrm.simulations.progress import RoundPrinter

    t0 = time.perf_counter()
    printer = RoundPrinter(cfg, console)
    say = printer.say
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = backend_config(cfg)  # validate before any work
    cfg = public_cutoff(cfg)
    branches, info, node_configs, roster = _prepare_federation(cfg, out_dir, say)
    results: dict[str, Any] = {}
    run_id = uuid.uuid4().hex[:12]
    server_app = make_server_app(
        cfg,
        out_dir,
        run_id=run_id,
        reporter=printer.round,
        roster=roster,
        results=results,
        expected_nodes=len(node_configs),
        signing_keys=out_dir / "keys" if cfg.privacy.dp else None,
    )
    client_app = make_client_app(node_configs, mods=client_mods)
    threads = max(1, int(cfg.federation.num_cpus_per_branch))
    os.environ["FEDCRM_TORCH_THREADS"] = str(threads)
    say(header_line(cfg, len(branches)))
    t_fed = time.perf_counter()
    _run_flower(printer, server_app, client_app, len(node_configs), backend)
    if "federated" not in results:
        raise RuntimeError("the federated job did not finish; see the log above")
    result = results["federated"]
    result.setdefault("timings", {})["simulation_s"] = time.perf_counter() - t_fed
    baselines = _baselines(cfg, branches, say, info, result)
    result["timings"].update(prepare_s=info["prepare_s"], total_s=time.perf_counter() - t0)
    summary = write_outputs(
        out_dir,
        cfg,
        result,
        baselines=baselines,
        extra={"cutoff": info["cutoff"], "data": cfg.data.kind},
    )
    printer.final(summary)
    return summary


def _prepare_federation(
    cfg: RunConfig, out_dir: Path, say: Any
) -> tuple[
    dict[str, tuple[FeatureSet, FeatureSet]], dict[str, Any], dict[int, dict[str, Any]], Any
]:
    """The branches' features and split, their node configs and (HE) the roster."""
    branches, _, info = prepare_branches(cfg, out_dir, say)
    if len(branches) < cfg.federation.min_branches:
        raise ConfigError(
            f"only {len(branches)} branch(es) have customers; "
            f"federation.min_branches={cfg.federation.min_branches}"
        )
    node_configs = branch_node_configs(cfg, out_dir, branches)
    roster = None
    if cfg.privacy.he:
        from fedcrm.crypto.roster import Roster

        roster = Roster.from_key_dir(out_dir / "keys", sorted(branches))
    return branches, info, node_configs, roster


def _run_flower(
    printer: Any, server_app: Any, client_app: Any, num_supernodes: int, backend: dict[str, Any]
) -> None:
    """Run Flower's simulation with its own logging quietened to errors."""
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False  # Flower prints through its own handler
    flwr_level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    with printer.live(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*run_simulation.*")
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_config=backend,
        )
    flwr_logger.setLevel(flwr_level)


def _baselines(
    cfg: RunConfig,
    branches: dict[str, tuple[FeatureSet, FeatureSet]],
    say: Any,
    info: dict[str, Any],
    result: dict[str, Any],
) -> Any:
    """The centralized and local-only baselines when ``baseline=true`` (timed into ``result``)."""
    from fedcrm.simulations.baselines import run_baselines

    baselines = None
    if cfg.baseline:
        tb = time.perf_counter()
        baselines = run_baselines(cfg, branches, progress=say, validation=info.get("validation"))
        result["timings"]["baselines_s"] = time.perf_counter() - tb
    return baselines
