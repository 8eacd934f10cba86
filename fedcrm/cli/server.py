"""``fedcrm server start|register|unregister|revoke-key|nodes``: the SuperLink and who may join.

For the central team.

``server start`` runs the preflight checks (:mod:`fedcrm.deploy.preflight`)
and then ``flower-superlink`` with the federation's TLS and authentication
flags as a supervised child, registering the admitted branches each time it
starts (:mod:`fedcrm.deploy.superlink`). Arguments after ``--`` are passed on
to ``flower-superlink`` unchanged.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcrm.cli._common import handles, subparsers
from fedcrm.deploy.processes import SERVER_TASK_POLL_INTERVAL, passthrough, run_flower, say

if TYPE_CHECKING:
    from fedcrm.deploy.provision import Federation


def cmd_start(args: argparse.Namespace) -> int:
    """``fedcrm server start``: preflight, then exec flower-superlink with TLS + node auth."""
    from fedcrm.deploy.preflight import Report, check_port_free, check_server_files
    from fedcrm.deploy.provision import load_federation
    from fedcrm.deploy.tls import is_ip, parse_address

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
    # Flower's in-memory state by default: the SQLite state costs the SuperLink several
    # times the CPU per message (README, Latency); admitted branches are registered
    # again at every start.
    if args.database:
        cmd += ["--database", str(Path(args.database).resolve())]
    cmd += passthrough(args.flower_args)
    if args.check_only:
        say("preflight checks passed")
        return run_flower(cmd, dry_run=True)

    def register(child: subprocess.Popen) -> None:
        from fedcrm.deploy.superlink import register_when_up

        register_when_up(fed, alive=lambda: child.poll() is None)

    return run_flower(
        cmd,
        dry_run=False,
        task_poll=SERVER_TASK_POLL_INTERVAL,
        name="SuperLink",
        on_start=register,
    )


def cmd_register(args: argparse.Namespace) -> int:
    """``fedcrm server register``: admit branches from their requests; register them if up."""
    import json

    from fedcrm.deploy.admission import admit_request
    from fedcrm.deploy.provision import load_federation
    from fedcrm.deploy.request import read_request
    from fedcrm.deploy.superlink import (
        register_with_superlink,
        superlink_answers,
        unregister_from_superlink,
    )

    fed = load_federation(args.federation)
    requests = [read_request(Path(p)) for p in dict.fromkeys(args.request)]
    admissions = [admit_request(fed, r, replace=args.replace) for r in requests]
    down = superlink_answers(fed)
    results = {}
    if not down:
        for a in admissions:
            if a.retired_node_key:
                unregister_from_superlink(fed, a.retired_node_key)
        keys = {a.identity.branch_id: str(a.identity.node_public_key) for a in admissions}
        results = {r.branch_id: r for r in register_with_superlink(fed, keys)}
    report: dict[str, Any] = {}
    for a in admissions:
        b = a.identity.branch_id
        entry: dict[str, Any] = {"change": a.change, "fingerprint": a.fingerprint}
        r = results.get(b)
        head = f"{b}: {a.change} (fingerprint {a.fingerprint}, signing key "
        head += f"{a.identity.signing_key.key_id if a.identity.signing_key else '-'})"
        if r is None:
            entry["registered"] = False
            print(
                f"{head}; the SuperLink does not answer at {fed.server_address} ({down}), so it "
                "is registered when `fedcrm server start` starts it"
            )
        elif r.ok:
            entry.update({"registered": True, "node-id": r.node_id})
            print(f"{head}; registered as SuperNode {r.node_id}")
        else:
            entry.update({"registered": False, "error": r.error})
            print(f"{head}; the SuperLink refused to register it: {r.error}")
        report[b] = entry
    ok = all(r.ok for r in results.values())
    if args.format == "json":
        print(json.dumps({"success": ok, "branches": report}, sort_keys=True))
    else:
        say(
            f"next: compare each fingerprint with its branch, then hand {fed.kit_dir} (no "
            "secret in it) to every new branch; it starts with `fedcrm node start --federation "
            "kit --branch-dir DIR --data-path ... --approve-app HASH`"
        )
    return 0 if ok else 1


def _take_off(fed: Federation, openssh: str | None) -> str:
    """Unregister a node key from the running SuperLink; what happened, in words."""
    from fedcrm.deploy.superlink import superlink_answers, unregister_from_superlink

    if not openssh:
        return "it held no node key"
    down = superlink_answers(fed)
    if down:
        return f"the SuperLink does not answer ({down}); it will not register it at its next start"
    node = unregister_from_superlink(fed, openssh)
    return f"SuperNode {node} unregistered" if node else "it was not registered"


def cmd_unregister(args: argparse.Namespace) -> int:
    """``fedcrm server unregister``: take a branch off the list and off the running SuperLink."""
    from fedcrm.deploy.admission import remove_branch
    from fedcrm.deploy.provision import load_federation

    fed = load_federation(args.federation)
    identity = remove_branch(fed, args.branch_id)
    where = _take_off(fed, identity.node_public_key if identity.admitted else None)
    print(
        f"{args.branch_id}: no longer admitted; {where}. Its signing keys stay in the list, so "
        "its ledgers still verify"
    )
    return 0


def cmd_revoke_key(args: argparse.Namespace) -> int:
    """``fedcrm server revoke-key``: withdraw a branch's node key or one of its signing keys."""
    from fedcrm.deploy.admission import load, revoke_node_key, revoke_signing_key
    from fedcrm.deploy.provision import load_federation

    fed = load_federation(args.federation)
    b = args.branch_id
    before = load(fed).get(b)
    if args.node:
        where = _take_off(fed, revoke_node_key(fed, b))
        print(
            f"{b}: node key revoked; {where}. The branch is out until it sends a rotation "
            "(`fedcrm node rotate-keys --node`) and you register it"
        )
        return 0
    after = revoke_signing_key(fed, b, args.key_id)
    print(f"{b}: signing key {args.key_id} revoked; ledger entries signed with it no longer verify")
    if after.signing_key is None and before is not None and before.admitted:
        where = _take_off(fed, before.node_public_key)
        print(
            f"{b}: it holds no current signing key, so it is out ({where}) until it makes new "
            "keys and you register them with `fedcrm server register --request FILE --replace`"
        )
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    """``fedcrm server nodes``: SuperLink node ids with the branch each is registered for."""
    import json

    from fedcrm.deploy.provision import load_federation
    from fedcrm.deploy.superlink import node_table

    fed = load_federation(args.federation)
    rows, down = node_table(fed)
    if args.format == "json":
        print(json.dumps({"superlink": down is None, "nodes": rows}, sort_keys=True))
        return 0
    header = ("branch", "node id", "status", "admission", "signing key")
    table = [header] + [
        (
            r["branch"] or "?",
            str(r["node_id"] if r["node_id"] is not None else "-"),
            r["status"] or "-",
            r["admission"],
            r["signing_key_id"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if down:
        say(f"the SuperLink does not answer ({down}): node ids are from the admitted list")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``server`` group."""
    server = sub.add_parser(
        "server", help="central team: start the SuperLink, admit and shut out branches"
    )
    ssub = subparsers(server, "server_cmd")
    _add_start(ssub)
    _add_register(ssub)
    _add_roster_changes(ssub)


def _add_start(ssub: argparse._SubParsersAction) -> None:
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
        "default: the SQLite state costs the SuperLink several times the CPU per message; "
        "the admitted branches are registered again at every start)",
    )
    ss.add_argument("--check-only", action="store_true", help="print the command, do not start")
    ss.add_argument("flower_args", nargs="*", help="after --: passed to flower-superlink")
    handles(ss, cmd_start)


def _add_register(ssub: argparse._SubParsersAction) -> None:
    sr = ssub.add_parser(
        "register",
        help="admit branches from their request files (server/admitted.json) and register "
        "them if the SuperLink is up",
    )
    sr.add_argument("--federation", required=True)
    sr.add_argument(
        "--request",
        action="append",
        required=True,
        metavar="FILE",
        help="a branch's <branch>.request.json from `fedcrm node init` or `fedcrm node "
        "rotate-keys` (repeatable)",
    )
    sr.add_argument(
        "--replace",
        action="store_true",
        help="accept new keys for an admitted branch that its current signing key did not "
        "sign (lost or revoked keys; confirm the fingerprint with the branch first)",
    )
    sr.add_argument("--format", choices=("default", "json"), default="default")
    handles(sr, cmd_register)


def _add_roster_changes(ssub: argparse._SubParsersAction) -> None:
    """``unregister``, ``revoke-key`` and ``nodes``."""
    su = ssub.add_parser(
        "unregister", help="take a branch off the admission list and off the SuperLink"
    )
    su.add_argument("--federation", required=True)
    su.add_argument("--branch-id", required=True)
    handles(su, cmd_unregister)

    sk = ssub.add_parser(
        "revoke-key", help="withdraw a branch's node key or one of its ledger signing keys"
    )
    sk.add_argument("--federation", required=True)
    sk.add_argument("--branch-id", required=True)
    which = sk.add_mutually_exclusive_group(required=True)
    which.add_argument("--node", action="store_true", help="the branch's node key")
    which.add_argument("--key-id", help="a ledger signing key (its 16-hex-digit key id)")
    handles(sk, cmd_revoke_key)

    sn = ssub.add_parser(
        "nodes",
        help="SuperLink node ids with their branches (admitted list) and online status",
    )
    sn.add_argument("--federation", required=True)
    sn.add_argument("--format", choices=("default", "json"), default="default")
    handles(sn, cmd_nodes)
