"""``fedcrm node init|start|app-hash``: a branch's keys and its SuperNode (branch IT).

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

from fedcrm.cli._common import console, handles, subparsers
from fedcrm.deploy.processes import passthrough, run_flower, say, start_detached
from fedcrm.deploy.supervise import RestartPolicy
from fedcrm.errors import ConfigError


def cmd_init(args: argparse.Namespace) -> int:
    """``fedcrm node init``: a branch's ledger signing key (and federation onboarding)."""
    from fedcrm.privacy.signing import generate_signing_key

    out_dir = Path(args.out)
    if getattr(args, "federation", None):
        from fedcrm.deploy.provision import onboard_branch

        onboard_branch(Path(args.federation), args.branch_id, out_dir)
        return 0
    priv, pub = generate_signing_key(out_dir, args.branch_id)
    console.print(
        f"branch {args.branch_id}: signing key {priv} (keep it at the branch, mode 0600); "
        f"public key {pub} (give it to the compliance officer)"
    )
    return 0


def node_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Path | None]]:
    """The federation, the node config and the branch's files from ``node start`` args."""
    from fedcrm.deploy.provision import load_federation

    fed = load_federation(args.federation)
    files = fed.branch(args.branch_id)

    def pick(flag_value: str | None, key: str) -> Path | None:
        return Path(flag_value).resolve() if flag_value else files.get(key)

    node_config: dict[str, Any] = {
        "branch-id": args.branch_id,
        "data-path": str(Path(args.data_path).resolve()) if args.data_path else "",
        "data-url": args.data_url or "",
        "data-url-file": str(Path(args.data_url_file).resolve()) if args.data_url_file else "",
        "data-spec": str(Path(args.spec).resolve()) if args.spec else "",
        "ledger-path": str(pick(args.ledger_path, "ledger_path") or ""),
        "signing-key": str(pick(args.signing_key, "signing_key") or ""),
        "model-dir": str(pick(args.model_dir, "model_dir") or ""),
        "cache-dir": str(pick(args.cache_dir, "cache_dir") or _default_cache(files)),
    }
    he = pick(args.he_secret_context, "he_secret_context")
    if he is not None:
        node_config["he-secret-context"] = str(he)
    for flag, key in (("epsilon_ceiling", "epsilon-ceiling"), ("delta", "delta")):
        raw = getattr(args, flag)
        if raw is not None:
            try:
                node_config[key] = float(raw)
            except ValueError:
                node_config[key] = str(raw)  # preflight names the key
    resolved = {
        "root_certificates": pick(args.root_certificates, "ca_cert"),
        "auth_key": pick(args.auth_key, "node_auth_private_key"),
    }
    return fed, node_config, resolved


def _default_cache(files: dict[str, Path | None]) -> str:
    """The branch folder's ``cache/`` (federations provisioned before ``cache_dir`` existed)."""
    return str(files["dir"] / "cache") if files.get("dir") else ""


def cmd_start(args: argparse.Namespace) -> int:
    """``fedcrm node start``: preflight, then run flower-supernode (TLS + node auth), supervised."""
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
        node_config_string,
    )
    from fedcrm.deploy.provision import parse_address

    fed, node_config, files = node_settings(args)
    superlink = args.superlink or fed.server_address
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
        check_data(node_config, args.branch_id, report)
    check_port_free("127.0.0.1", args.runtime_port, "--runtime-port", report)
    approved = _approved_apps(args, report)
    report.raise_if_any(f"the SuperNode of branch {args.branch_id}")
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


def _approved_apps(args: argparse.Namespace, report: Any) -> list[str] | None:
    """The FAB hashes of ``--approve-app`` (``None``: any app runs, with a note saying so)."""
    from fedcrm.deploy.approval import resolve_approved

    if not args.approve_app:
        report.notes.append(
            "any app the SuperLink is asked to run will run at this branch; pin the apps "
            "you approved with --approve-app (`fedcrm node app-hash APP_DIR` gives the hash)"
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``node`` group."""
    node = sub.add_parser("node", help="branch IT: keys and the branch's SuperNode")
    nsub = subparsers(node, "node_cmd")
    ni = nsub.add_parser("init", help="create a branch's ledger signing key")
    ni.add_argument("--branch-id", required=True)
    ni.add_argument("--out", required=True)
    ni.add_argument("--federation", help="an existing `fedcrm federation init` directory")
    handles(ni, cmd_init)
    ns = nsub.add_parser(
        "start",
        help="check keys, data and node config, then run flower-supernode (restarted "
        "when it exits)",
    )
    ns.add_argument("--federation", required=True)
    ns.add_argument("--branch-id", required=True)
    ns.add_argument("--data-path", help="the branch export directory")
    ns.add_argument(
        "--data-url",
        help="instead of --data-path: the branch's CRM database (SQLAlchemy URL without "
        "password; the password comes from PGPASSWORD or ~/.pgpass)",
    )
    ns.add_argument("--data-url-file", help="instead: a file (mode 0600) holding the database URL")
    ns.add_argument(
        "--spec", help="the branch's data spec (default: data_spec.yaml in --data-path)"
    )
    ns.add_argument("--epsilon-ceiling", help="most epsilon this branch will ever spend (DP)")
    ns.add_argument("--delta", help="the branch's delta (DP; default below 1/n)")
    ns.add_argument("--ledger-path", help="default: the branch folder's ledger.jsonl")
    ns.add_argument("--model-dir", help="default: the branch folder's models/")
    ns.add_argument(
        "--cache-dir",
        help="where the branch keeps its computed features between messages (private; "
        "default: the branch folder's cache/)",
    )
    ns.add_argument("--signing-key", help="default: the branch folder's signing key")
    ns.add_argument("--he-secret-context", help="default: the branch folder's he_secret.ctx")
    ns.add_argument("--root-certificates", help="default: the branch folder's ca.crt")
    ns.add_argument("--auth-key", help="node auth private key (default: branch folder's)")
    ns.add_argument("--superlink", help="HOST:PORT (default: the federation's address)")
    ns.add_argument(
        "--runtime-port",
        type=int,
        default=9094,
        help="the SuperNode's local runtime API port; unique per SuperNode on a host",
    )
    ns.add_argument(
        "--executor",
        choices=("warm", "subprocess"),
        default="warm",
        help="warm: one preloaded SuperExec forks per message (fast; default); "
        "subprocess: Flower's own, a new Python per message",
    )
    ns.add_argument(
        "--no-connect-check", action="store_true", help="skip the TLS handshake with the SuperLink"
    )
    ns.add_argument(
        "--no-restart",
        action="store_true",
        help="exit when the SuperNode exits (default: start it again, pausing 2 s doubling "
        "to 60 s, e.g. after a SuperLink restart or while the branch is not registered yet)",
    )
    ns.add_argument(
        "--approve-app",
        action="append",
        metavar="HASH|DIR|FILE.fab",
        help="run only this app (repeatable): its FAB hash (`fedcrm node app-hash`), the "
        "app directory you reviewed, or its .fab file (default: any app the SuperLink sends)",
    )
    ns.add_argument("--check-only", action="store_true", help="print the command, do not start")
    ns.add_argument("flower_args", nargs="*", help="after --: passed to flower-supernode")
    handles(ns, cmd_start)
    nh = nsub.add_parser(
        "app-hash",
        help="the FAB hash `flwr run APP_DIR` sends (for --approve-app)",
        description="Build the Flower app in APP_DIR as `flwr run` does (Flower's own "
        "reproducible FAB build) and print its SHA-256, the hash a SuperNode sees.",
    )
    nh.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    handles(nh, cmd_app_hash)
