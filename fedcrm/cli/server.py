"""``fedcrm server start|register|unregister``: the SuperLink and who may join (central team).

``server start`` runs the preflight checks (:mod:`fedcrm.deploy.preflight`)
and then ``flower-superlink`` with the federation's TLS and authentication
flags as a supervised child, registering the admitted branches each time it
starts (:mod:`fedcrm.deploy.admission`). Arguments after ``--`` are passed on
to ``flower-superlink`` unchanged.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

from fedcrm.cli._common import handles, subparsers
from fedcrm.deploy.processes import SERVER_TASK_POLL_INTERVAL, passthrough, run_flower, say
from fedcrm.errors import ConfigError


def cmd_start(args: argparse.Namespace) -> int:
    """``fedcrm server start``: preflight, then exec flower-superlink with TLS + node auth."""
    from fedcrm.deploy.preflight import Report, check_port_free, check_server_files
    from fedcrm.deploy.provision import is_ip, load_federation, parse_address

    fed = load_federation(args.federation)
    host, port = parse_address(fed.server_address)
    bind_host = args.host or (host if is_ip(host) else "0.0.0.0")
    bind_port = args.port or port
    srv = fed.data["server"]
    ca = Path(args.ssl_ca_certfile) if args.ssl_ca_certfile else fed.path(srv["ca_cert"])
    cert = Path(args.ssl_certfile) if args.ssl_certfile else fed.path(srv["cert"])
    key = Path(args.ssl_keyfile) if args.ssl_keyfile else fed.path(srv["key"])
    report = Report()
    check_server_files(ca_path=ca, cert_path=cert, key_path=key, host=host, report=report)
    check_port_free(bind_host, bind_port, "--port", report)
    report.raise_if_any("the SuperLink")
    for note in report.notes:
        say(f"note: {note}")
    cmd = [
        "flower-superlink",
        "--ssl-ca-certfile",
        str(ca),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        bind_host,
        "--port",
        str(bind_port),
    ]
    # Flower's in-memory state by default: the SQLite state costs 2.4x the CPU per message
    # (README, Latency); admitted branches are registered again at every start.
    if args.database:
        cmd += ["--database", str(Path(args.database).resolve())]
    cmd += passthrough(args.flower_args)
    if args.check_only:
        say("preflight checks passed")
        return run_flower(cmd, dry_run=True)

    def register(child: subprocess.Popen) -> None:
        from fedcrm.deploy.admission import register_when_up

        register_when_up(fed, alive=lambda: child.poll() is None)

    return run_flower(
        cmd,
        dry_run=False,
        task_poll=SERVER_TASK_POLL_INTERVAL,
        name="SuperLink",
        on_start=register,
    )


def cmd_register(args: argparse.Namespace) -> int:
    """``fedcrm server register``: admit branches, and register them if the SuperLink is up."""
    import json

    from fedcrm.deploy.admission import admit, register_with_superlink, superlink_answers
    from fedcrm.deploy.provision import load_federation

    fed = load_federation(args.federation)
    branches = sorted(fed.branches) if args.all else list(dict.fromkeys(args.branch_id or []))
    if not branches:
        raise ConfigError("name the branches to admit with --branch-id B (repeatable) or --all")
    if args.public_key and len(branches) != 1:
        raise ConfigError("--public-key goes with exactly one --branch-id")
    keys = {b: admit(fed, b, Path(args.public_key) if args.public_key else None) for b in branches}
    down = superlink_answers(fed)
    results = {} if down else {r.branch_id: r for r in register_with_superlink(fed, keys)}
    report: dict[str, Any] = {}
    for b in branches:
        r = results.get(b)
        if r is None:
            report[b] = {"admitted": True, "registered": False}
            print(
                f"{b}: admitted; the SuperLink does not answer at {fed.server_address} ({down}), "
                "so it is registered when `fedcrm server start` starts it"
            )
        elif r.ok:
            report[b] = {"admitted": True, "registered": True, "node-id": r.node_id}
            node = f"as SuperNode {r.node_id}" if r.node_id else "(it was already)"
            print(f"{b}: admitted and registered {node}")
        else:
            report[b] = {"admitted": True, "registered": False, "error": r.error}
            print(f"{b}: admitted, but the SuperLink refused to register it: {r.error}")
    ok = all(r.ok for r in results.values())
    if args.format == "json":
        print(json.dumps({"success": ok, "branches": report}, sort_keys=True))
    return 0 if ok else 1


def cmd_unregister(args: argparse.Namespace) -> int:
    """``fedcrm server unregister``: take a branch off the list and off the running SuperLink."""
    from fedcrm.deploy.admission import revoke, superlink_answers, unregister_from_superlink
    from fedcrm.deploy.provision import load_federation

    fed = load_federation(args.federation)
    key = revoke(fed, args.branch_id)
    down = superlink_answers(fed)
    if down:
        print(f"{args.branch_id}: no longer admitted (the SuperLink does not answer: {down})")
        return 0
    node = unregister_from_superlink(fed, key)
    where = f"SuperNode {node} unregistered" if node else "it was not registered"
    print(f"{args.branch_id}: no longer admitted; {where}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``server`` group."""
    server = sub.add_parser(
        "server", help="central team: start the SuperLink, admit and shut out branches"
    )
    ssub = subparsers(server, "server_cmd")
    ss = ssub.add_parser(
        "start", help="check certificates, run flower-superlink, register the admitted branches"
    )
    ss.add_argument("--federation", required=True)
    ss.add_argument(
        "--host", help="bind address (default: the address's host if an IP, else 0.0.0.0)"
    )
    ss.add_argument("--port", type=int, help="port (default: the federation's)")
    ss.add_argument("--ssl-ca-certfile")
    ss.add_argument("--ssl-certfile")
    ss.add_argument("--ssl-keyfile")
    ss.add_argument(
        "--database",
        help="keep the SuperLink's state in this SQLite file (default: in memory, Flower's "
        "default: the SQLite state costs the SuperLink about 2.4x the CPU per message; the "
        "admitted branches are "
        "registered again at every start)",
    )
    ss.add_argument("--check-only", action="store_true", help="print the command, do not start")
    ss.add_argument("flower_args", nargs="*", help="after --: passed to flower-superlink")
    handles(ss, cmd_start)

    sr = ssub.add_parser(
        "register",
        help="admit branches (server/admitted.json) and register them if the SuperLink is up",
    )
    sr.add_argument("--federation", required=True)
    sr.add_argument("--branch-id", action="append", help="a branch to admit (repeatable)")
    sr.add_argument("--all", action="store_true", help="every branch of federation.json")
    sr.add_argument(
        "--public-key", help="the branch's node public key (default: public/nodes/<branch>.pub)"
    )
    sr.add_argument("--format", choices=("default", "json"), default="default")
    handles(sr, cmd_register)

    su = ssub.add_parser(
        "unregister", help="take a branch off the admission list and off the SuperLink"
    )
    su.add_argument("--federation", required=True)
    su.add_argument("--branch-id", required=True)
    handles(su, cmd_unregister)
