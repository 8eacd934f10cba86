"""``fedcrm federation ...``, ``fedcrm server start`` and ``fedcrm node start``.

``fedcrm.cli`` calls :func:`add_federation_parser`; every parser here sets
``cmd="federation"`` and ``handler`` so that ``fedcrm.cli.main`` dispatches
to ``args.handler``.

``server start`` / ``node start`` run the preflight checks
(:mod:`fedcrm.deploy.preflight`) and then run ``flower-superlink`` /
``flower-supernode`` with the federation's TLS and authentication flags as a
supervised child (:mod:`fedcrm.deploy.supervise`): the server side registers
the admitted branches each time the SuperLink starts
(:mod:`fedcrm.deploy.admission`), the node side starts its SuperNode again when
it exits on its own. Arguments after ``--`` are passed on to the Flower command
unchanged.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcrm.deploy.supervise import RestartPolicy, Supervisor
from fedcrm.errors import ConfigError

# Flower's SuperExec polls for new tasks every second by default. On a SuperNode,
# 0.1 s takes ~0.9 s off each exchange (FLOWER_NOTES "Latency"); the warm SuperExec
# polls at this interval only just after a message (warm_exec.poll_delay). The
# SuperLink's SuperExec only starts ServerApps, so it keeps Flower's 1 s: each poll
# is an HTTP call costing the SuperLink CPU. Overridable from the environment.
NODE_TASK_POLL_INTERVAL = "0.1"
SERVER_TASK_POLL_INTERVAL = "1.0"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _flower_env(task_poll: str = NODE_TASK_POLL_INTERVAL) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    # flower-superlink/-supernode start flower-superexec and flwr-*app from PATH.
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", task_poll)
    return env


def _run_flower(
    cmd: list[str],
    *,
    dry_run: bool,
    task_poll: str = NODE_TASK_POLL_INTERVAL,
    name: str = "Flower process",
    policy: RestartPolicy | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Print ``cmd`` (``dry_run``), or run it under :class:`fedcrm.deploy.supervise.Supervisor`."""
    line = shlex.join(cmd)
    if dry_run:
        print(line, flush=True)
        return 0
    env = _flower_env(task_poll)
    if shutil.which(cmd[0], path=env["PATH"]) is None:
        raise ConfigError(
            f"{cmd[0]} not found on PATH; install fedcrm's dependencies (flwr) in this environment"
        )
    _say(f"start {line}")
    return Supervisor(
        cmd, env, name=name, policy=policy or RestartPolicy(restart=False), on_start=on_start
    ).run()


def _extra(args: argparse.Namespace) -> list[str]:
    extra = list(getattr(args, "flower_args", []) or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return extra


# ------------------------------------------------------------------ handlers
def cmd_init(args: argparse.Namespace) -> int:
    """``fedcrm federation init``."""
    from fedcrm.deploy.provision import init_federation, next_steps

    fed = init_federation(
        args.out,
        [b.strip() for b in args.branches.split(",")],
        args.server_address,
        extra_sans=args.extra_san or (),
        he=not args.no_he,
        cert_days=args.cert_days,
        overwrite=args.overwrite,
    )
    print(next_steps(fed), flush=True)
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    """``fedcrm federation cert``: re-issue the server certificate with the federation's CA."""
    from cryptography.hazmat.primitives import serialization

    from fedcrm.deploy.provision import (
        _pem_key,
        load_federation,
        make_server_cert,
        parse_address,
        server_sans,
        write_cert,
        write_private,
    )

    fed = load_federation(args.federation)
    address = args.server_address or fed.server_address
    host, port = parse_address(address)
    ca_key_path = fed.path(fed.data["ca"]["key"])
    ca_cert_path = fed.path(fed.data["ca"]["cert"])
    assert ca_key_path is not None and ca_cert_path is not None
    if not ca_key_path.exists():
        raise ConfigError(
            f"{ca_key_path} (the CA key) is missing; bring it back from offline storage"
        )
    from cryptography import x509

    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    sans = server_sans(host, args.extra_san or ())
    key, cert = make_server_cert(ca_key, ca_cert, sans, days=args.days)  # type: ignore[arg-type]
    write_cert(fed.root / fed.data["server"]["cert"], cert)
    write_private(fed.root / fed.data["server"]["key"], _pem_key(key))
    fed.data["server"]["sans"] = sans
    fed.data["server_address"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    fed.save()
    print(f"server certificate re-issued for {', '.join(sans)} (valid {args.days} days)")
    return 0


def cmd_connection(args: argparse.Namespace) -> int:
    """``fedcrm federation connection``: add the SuperLink to ``$FLWR_HOME/config.toml``."""
    from fedcrm.deploy.flwr_config import write_connection

    path = write_connection(args.federation, name=args.name, flwr_home=args.flwr_home)
    print(f"connection `{args.name}` written to {path}; use `flwr run . {args.name}`")
    return 0


def cmd_server_start(args: argparse.Namespace) -> int:
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
        _say(f"note: {note}")
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
    cmd += _extra(args)
    if args.check_only:
        _say("preflight checks passed")
        return _run_flower(cmd, dry_run=True)

    def register(child: subprocess.Popen) -> None:
        from fedcrm.deploy.admission import register_when_up

        register_when_up(fed, alive=lambda: child.poll() is None)

    return _run_flower(
        cmd,
        dry_run=False,
        task_poll=SERVER_TASK_POLL_INTERVAL,
        name="SuperLink",
        on_start=register,
    )


def cmd_server_register(args: argparse.Namespace) -> int:
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


def cmd_server_unregister(args: argparse.Namespace) -> int:
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


def node_settings(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Path | None]]:
    """The federation, the node config and the branch's files from ``node start`` args."""
    from fedcrm.deploy.provision import load_federation

    fed = load_federation(args.federation)
    files = fed.branch(args.branch_id)

    def pick(flag_value: str | None, key: str) -> Path | None:
        return Path(flag_value).resolve() if flag_value else files.get(key)

    node_config: dict[str, Any] = {
        "branch-id": args.branch_id,
        "data-path": str(Path(args.data_path).resolve()),
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


def cmd_node_start(args: argparse.Namespace) -> int:
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
    if not any(p.startswith("--data-path") for p in report.problems):
        check_data(Path(node_config["data-path"]), args.branch_id, report)
    check_port_free("127.0.0.1", args.runtime_port, "--runtime-port", report)
    approved = _approved_apps(args, report)
    report.raise_if_any(f"the SuperNode of branch {args.branch_id}")
    for note in report.notes:
        _say(f"note: {note}")
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
    cmd += _extra(args)
    exec_cmd = warm_exec_command(args.runtime_port, os.getpid(), approved)
    if args.check_only:
        _say("preflight checks passed")
        if warm:
            print(shlex.join(exec_cmd), flush=True)
        return _run_flower(cmd, dry_run=True)
    if warm:
        _start_warm_exec(exec_cmd)
    return _run_flower(
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


def cmd_node_app_hash(args: argparse.Namespace) -> int:
    """``fedcrm node app-hash [APP_DIR]``: the FAB hash ``flwr run APP_DIR`` will send."""
    from fedcrm.deploy.approval import fab_hash_of_dir

    print(fab_hash_of_dir(Path(args.app).expanduser()), flush=True)
    return 0


def _start_warm_exec(cmd: list[str]) -> None:
    _say(f"start {shlex.join(cmd)}")
    sys.stdout.flush()
    sys.stderr.flush()
    subprocess.Popen(cmd, env=_flower_env(), stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------ parsers
def _handler(p: argparse.ArgumentParser, fn: Any) -> None:
    p.set_defaults(cmd="federation", handler=fn)


def _subparsers_of(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:  # argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def add_federation_parser(sub: Any) -> None:
    """Register ``federation``, ``server start`` and ``node start`` on ``fedcrm``'s sub-parsers."""
    fed = sub.add_parser("federation", help="provision a real deployment (CA, TLS, node keys)")
    fsub = fed.add_subparsers(dest="federation_cmd", required=True)

    fi = fsub.add_parser(
        "init", help="CA, server certificate, per-branch node and ledger keys, HE key ceremony"
    )
    fi.add_argument("--out", required=True, help="the federation directory to create")
    fi.add_argument("--branches", required=True, help="comma-separated branch ids")
    fi.add_argument(
        "--server-address", required=True, help="HOST:PORT SuperNodes use to reach the SuperLink"
    )
    fi.add_argument(
        "--extra-san", action="append", help="another DNS name or IP for the server certificate"
    )
    fi.add_argument("--no-he", action="store_true", help="skip the CKKS key ceremony")
    fi.add_argument("--cert-days", type=int, default=365)
    fi.add_argument("--overwrite", action="store_true")
    _handler(fi, cmd_init)

    fc = fsub.add_parser("cert", help="re-issue the server certificate (expired, new address)")
    fc.add_argument("--federation", required=True)
    fc.add_argument("--server-address", help="new HOST:PORT (default: the federation's)")
    fc.add_argument("--extra-san", action="append")
    fc.add_argument("--days", type=int, default=365)
    _handler(fc, cmd_cert)

    fn = fsub.add_parser(
        "connection", help="add the SuperLink to $FLWR_HOME/config.toml for `flwr run`"
    )
    fn.add_argument("--federation", required=True)
    fn.add_argument("--name", default="fedcrm", help="connection name (default: fedcrm)")
    fn.add_argument("--flwr-home", help="default: $FLWR_HOME or ~/.flwr")
    _handler(fn, cmd_connection)

    # `fedcrm server start`
    server = sub.add_parser(
        "server", help="central team: start the SuperLink, admit and shut out branches"
    )
    ssub = server.add_subparsers(dest="server_cmd", required=True)
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
    _handler(ss, cmd_server_start)

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
    _handler(sr, cmd_server_register)

    su = ssub.add_parser(
        "unregister", help="take a branch off the admission list and off the SuperLink"
    )
    su.add_argument("--federation", required=True)
    su.add_argument("--branch-id", required=True)
    _handler(su, cmd_server_unregister)

    # `fedcrm node start` joins the existing `node` group when there is one.
    node = sub.choices.get("node") if hasattr(sub, "choices") else None
    nsub = _subparsers_of(node) if node is not None else None
    if nsub is None:
        node = sub.add_parser("node", help="branch IT")
        nsub = node.add_subparsers(dest="node_cmd", required=True)
    ns = nsub.add_parser(
        "start",
        help="check keys, data and node config, then run flower-supernode (restarted "
        "when it exits)",
    )
    ns.add_argument("--federation", required=True)
    ns.add_argument("--branch-id", required=True)
    ns.add_argument("--data-path", required=True, help="the branch export directory")
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
    _handler(ns, cmd_node_start)
    nh = nsub.add_parser(
        "app-hash",
        help="the FAB hash `flwr run APP_DIR` sends (for --approve-app)",
        description="Build the Flower app in APP_DIR as `flwr run` does (Flower's own "
        "reproducible FAB build) and print its SHA-256, the hash a SuperNode sees.",
    )
    nh.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    _handler(nh, cmd_node_app_hash)
