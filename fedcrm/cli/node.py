"""``fedcrm node init|rotate-keys|start|app-hash``: a branch's keys and its SuperNode (branch IT).

``node start`` runs the preflight checks (:mod:`fedcrm.deploy.preflight`) and
then ``flower-supernode`` with the federation's TLS and authentication flags
as a supervised child, started again when it exits on its own. Arguments
after ``--`` are passed on to ``flower-supernode`` unchanged.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from fedcrm.cli._common import console
from fedcrm.cli.node_args import register_node
from fedcrm.deploy.processes import passthrough, run_flower, say, start_detached
from fedcrm.deploy.supervise import RestartPolicy
from fedcrm.errors import ConfigError


def cmd_init(args: argparse.Namespace) -> int:
    """``fedcrm node init``: the branch's keys, born here, and its request file."""
    from fedcrm.deploy.branch_dir import init_branch_dir, init_steps
    from fedcrm.deploy.request import fingerprint

    bd, body = init_branch_dir(Path(args.out), args.branch_id, overwrite=args.overwrite)
    print(init_steps(bd, fingerprint(body)), flush=True)
    return 0


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    """``fedcrm node rotate-keys``: new node and/or signing key, a request signed by the old one."""
    from fedcrm.deploy.branch_dir import load_branch_dir, rotate_keys, rotate_steps
    from fedcrm.deploy.request import fingerprint

    both = not (args.node or args.signing)
    node, signing_key = args.node or both, args.signing or both
    bd = load_branch_dir(Path(args.branch_dir))
    body = rotate_keys(bd, node=node, signing_key=signing_key)
    print(rotate_steps(bd, fingerprint(body), node=node, signing_key=signing_key), flush=True)
    return 0


def branch_dir_of(args: argparse.Namespace, kit_root: Path) -> Path:
    """``--branch-dir``, else the kit's parent folder when it is a branch folder, else ``.``."""
    from fedcrm.deploy.branch_dir import BRANCH_FILE

    if args.branch_dir:
        return Path(args.branch_dir)
    if (kit_root.parent / BRANCH_FILE).is_file():
        return kit_root.parent
    return Path.cwd()


def node_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Path | None]]:
    """The kit, the node config and the TLS/auth files from ``node start`` args."""
    from fedcrm.deploy.branch_dir import load_branch_dir
    from fedcrm.deploy.provision import load_kit

    kit = load_kit(args.federation)
    bd = load_branch_dir(branch_dir_of(args, kit.root))
    if args.branch_id and args.branch_id != bd.branch_id:
        raise ConfigError(
            f"--branch-id {args.branch_id} is not the branch of {bd.root} ({bd.branch_id}); "
            "give that branch's folder with --branch-dir"
        )

    def pick(flag_value: str | None, default: Path) -> Path:
        return Path(flag_value).resolve() if flag_value else default

    node_config: dict[str, Any] = {
        "branch-id": bd.branch_id,
        "data-path": str(Path(args.data_path).resolve()) if args.data_path else "",
        "data-url": args.data_url or "",
        "data-url-file": str(Path(args.data_url_file).resolve()) if args.data_url_file else "",
        "data-spec": str(Path(args.spec).resolve()) if args.spec else "",
        "ledger-path": str(pick(args.ledger_path, bd.ledger_path)),
        "signing-key": str(pick(args.signing_key, bd.signing_key)),
        "agreement-key": str(bd.agreement_key),
        "model-dir": str(pick(args.model_dir, bd.model_dir)),
        "cache-dir": str(pick(args.cache_dir, bd.cache_dir)),
    }
    if args.roster:
        node_config["roster"] = str(Path(args.roster).resolve())
    if args.min_contributors:
        node_config["min-contributors"] = str(args.min_contributors)
    for flag, key in (("epsilon_ceiling", "epsilon-ceiling"), ("delta", "delta")):
        raw = getattr(args, flag)
        if raw is not None:
            try:
                node_config[key] = float(raw)
            except ValueError:
                node_config[key] = str(raw)  # preflight names the key
    resolved = {
        "root_certificates": pick(args.root_certificates, kit.ca_cert),
        "auth_key": pick(args.auth_key, bd.node_key),
    }
    return kit, node_config, resolved


def cmd_start(args: argparse.Namespace) -> int:
    """``fedcrm node start``: preflight, then run flower-supernode (TLS + node auth), supervised."""
    from fedcrm.deploy.preflight import node_config_string

    kit, node_config, files = node_settings(args)
    branch_id = node_config["branch-id"]
    superlink = args.superlink or kit.server_address
    report = _preflight(args, node_config, files, superlink)
    ca_path = files["root_certificates"]
    approved = _approved_apps(args, node_config, report)
    report.raise_if_any(f"the SuperNode of branch {branch_id}")
    for note in report.notes:
        say(f"note: {note}")
    cmd = [
        "flower-supernode",
        "--root-certificates",
        str(ca_path),
        "--superlink",
        superlink,
        "--auth-supernode-private-key",
        str(files["auth_key"]),
        "--node-config",
        node_config_string(node_config),
        "--port",
        str(args.runtime_port),
    ]
    warm = args.executor == "warm"
    if warm:
        cmd += ["--isolation", "process"]
    cmd += passthrough(args.flower_args)
    exec_cmd = warm_exec_command(args.runtime_port, os.getpid(), approved)
    if args.check_only:
        say("preflight checks passed")
        if warm:
            print(shlex.join(exec_cmd), flush=True)
        return run_flower(cmd, dry_run=True)
    if warm:
        start_detached(exec_cmd)
    return run_flower(
        cmd, dry_run=False, name="SuperNode", policy=RestartPolicy(restart=not args.no_restart)
    )


def _preflight(
    args: argparse.Namespace,
    node_config: dict[str, Any],
    files: dict[str, Path | None],
    superlink: str,
) -> Any:
    """The report of the checks before start: address, TLS, keys, node config, data, port."""
    from fedcrm.deploy.preflight import (
        Report,
        check_data,
        check_node_auth_key,
        check_node_config,
        check_port_free,
        check_signing_key,
        check_tls_handshake,
        check_validity,
        load_cert,
    )
    from fedcrm.deploy.tls import parse_address

    branch_id = node_config["branch-id"]
    report = Report()
    try:
        parse_address(superlink)
    except ConfigError:
        report.add("--superlink", f"{superlink!r} must be HOST:PORT")
    ca_path = files["root_certificates"]
    ca = load_cert(ca_path, "--root-certificates", report)
    if ca is not None and ca_path is not None:
        check_validity(ca, ca_path, "--root-certificates", report)
        if not report.problems and not args.no_connect_check:
            check_tls_handshake(ca_path, superlink, report)
    check_node_auth_key(files["auth_key"], "--auth-key", report)
    if node_config.get("signing-key"):
        check_signing_key(Path(node_config["signing-key"]), "--signing-key", report)
    check_node_config(node_config, report)
    if not any(p.startswith(("--data-", "--spec")) for p in report.problems):
        check_data(node_config, branch_id, report)
    check_port_free("127.0.0.1", args.runtime_port, "--runtime-port", report)
    return report


def _approved_apps(
    args: argparse.Namespace, node_config: dict[str, Any], report: Any
) -> list[str] | None:
    """The FAB hashes of ``--approve-app`` (``None``: any app runs).

    A branch holding an epsilon ceiling, a signing key or an HE key (every branch
    folder holds a signing key) must pin the apps it reviewed: otherwise the
    server's app would run next to those keys and bypass every branch-side check.
    """
    from fedcrm.deploy.approval import resolve_approved

    holds = [
        what
        for what, key in (
            ("an epsilon ceiling", "epsilon-ceiling"),
            ("a ledger signing key", "signing-key"),
            ("a key-agreement key for encrypted jobs", "agreement-key"),
        )
        if node_config.get(key) not in (None, "")
    ]
    if not args.approve_app:
        if holds:
            report.add(
                "--approve-app",
                f"this branch holds {' and '.join(holds)}, so it runs only an app it reviewed: "
                "print the hash of the reviewed app with `fedcrm node app-hash APP_DIR` and pass "
                "--approve-app HASH (or the app directory, or its .fab file)",
            )
        return None
    if args.executor != "warm":
        report.add("--approve-app", "needs --executor warm (Flower's own executor cannot check)")
        return None
    try:
        return resolve_approved(args.approve_app)
    except ConfigError as exc:
        report.problems.append(str(exc))
        return None


def warm_exec_command(
    runtime_port: int, supernode_pid: int, approved_fabs: list[str] | None = None
) -> list[str]:
    """The warm SuperExec that serves a ``--isolation process`` SuperNode's Runtime API.

    ``supernode_pid`` is this process's pid (the supervisor of flower-supernode): the
    SuperExec outlives a SuperNode restart and exits when ``fedcrm node start`` ends
    (SIGTERM or SIGKILL alike). With ``approved_fabs`` it runs only those apps.
    """
    cmd = [
        sys.executable,
        "-m",
        "fedcrm.deploy.warm_exec",
        "--runtime-api-address",
        f"127.0.0.1:{runtime_port}",
        "--insecure",  # the Runtime API is on loopback, as with Flower's own SuperExec
        "--parent-pid",
        str(supernode_pid),
    ]
    if approved_fabs is not None:
        cmd += ["--approved-fabs", ",".join(approved_fabs)]
    return cmd


def cmd_app_hash(args: argparse.Namespace) -> int:
    """``fedcrm node app-hash [APP_DIR]``: the FAB hash ``flwr run APP_DIR`` will send."""
    from fedcrm.deploy.approval import fab_hash_of_dir

    print(fab_hash_of_dir(Path(args.app).expanduser()), flush=True)
    return 0


def cmd_restore_ledger(args: argparse.Namespace) -> int:
    """Rebuild a lost or rolled-back ledger from copies the branch signed itself."""
    from fedcrm.privacy.restore import restore_ledger
    from fedcrm.privacy.signing import load_public_key

    ledger = Path(args.ledger_path)
    state = Path(args.state_dir) if args.state_dir else ledger.parent / "state"
    restored = restore_ledger(
        ledger,
        branch_id=args.branch_id,
        public_keys=[load_public_key(p) for p in args.public_key],
        sources=args.source,
        anchor_path=state / "anchor.json",
    )
    console.print(
        f"{ledger}: restored {restored.entries} entries (epsilon {restored.epsilon:.4g}) from "
        + ", ".join(restored.sources or ["nothing"])
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``node`` group."""
    register_node(
        sub,
        {
            "init": cmd_init,
            "restore-ledger": cmd_restore_ledger,
            "rotate-keys": cmd_rotate_keys,
            "start": cmd_start,
            "app-hash": cmd_app_hash,
        },
    )
