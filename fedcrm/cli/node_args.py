"""The ``fedcrm node`` command group's arguments (the commands are in :mod:`fedcrm.cli.node`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fedcrm.cli._common import handles, subparsers

Command = Callable[[argparse.Namespace], int]


def register_node(sub: argparse._SubParsersAction, commands: dict[str, Command]) -> None:
    """Add the ``node`` group; ``commands`` maps each sub-command to its function."""
    node = sub.add_parser("node", help="branch IT: keys and the branch's SuperNode")
    nsub = subparsers(node, "node_cmd")
    handles(_init(nsub), commands["init"])
    handles(_restore_ledger(nsub), commands["restore-ledger"], error_exit=1)
    handles(_rotate_keys(nsub), commands["rotate-keys"])
    ns = _start(nsub)
    _start_flower(ns)
    handles(ns, commands["start"])
    handles(_app_hash(nsub), commands["app-hash"])


def _init(nsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ni = nsub.add_parser(
        "init",
        help="make this branch's keys (node, ledger signing, key agreement) and its request file",
    )
    ni.add_argument("--branch-id", required=True)
    ni.add_argument("--out", required=True, help="the branch's folder (created, mode 0700)")
    ni.add_argument(
        "--overwrite",
        action="store_true",
        help="replace keys made before (the central team must then register with --replace)",
    )
    return ni


def _restore_ledger(nsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    nr = nsub.add_parser(
        "restore-ledger",
        help="rebuild a deleted or rolled-back privacy ledger from the server's copy",
        description="Every DP step is refused while a branch's ledger is behind its anchor. "
        "This rebuilds it from copies the branch signed itself: the server's copy of its "
        "ledger (<server-dir>/ledgers/<branch>.jsonl, or ledger/<branch>.jsonl of a run "
        "directory), backups, and the entries the anchor keeps.",
    )
    nr.add_argument("--branch-id", required=True)
    nr.add_argument("--ledger-path", required=True, help="the branch's ledger file to rebuild")
    nr.add_argument("--state-dir", help="the branch's state folder (default: state/ beside it)")
    nr.add_argument(
        "--public-key",
        action="append",
        required=True,
        help="the branch's public signing key (repeat for retired keys)",
    )
    nr.add_argument(
        "--from", dest="source", action="append", default=[], help="a copy or backup (repeatable)"
    )
    return nr


def _rotate_keys(nsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    nk = nsub.add_parser(
        "rotate-keys",
        help="new node and/or signing key; writes a request signed by the old signing key",
    )
    nk.add_argument("--branch-dir", required=True, help="the folder `fedcrm node init` made")
    nk.add_argument("--node", action="store_true", help="rotate the node key")
    nk.add_argument(
        "--signing", action="store_true", help="rotate the ledger signing key (default: both)"
    )
    return nk


def _start(nsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``node start``: the branch's data and node-config settings."""
    ns = nsub.add_parser(
        "start",
        help="check keys, data and node config, then run flower-supernode (restarted "
        "when it exits)",
    )
    ns.add_argument(
        "--federation",
        required=True,
        metavar="KIT",
        help="the kit folder from the central team (CA certificate, SuperLink address)",
    )
    ns.add_argument(
        "--branch-dir",
        help="the folder `fedcrm node init` made (default: the kit's parent folder when it is "
        "one, else the current directory)",
    )
    ns.add_argument("--branch-id", help="checked against the branch folder's id when given")
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
    ns.add_argument(
        "--roster",
        help="the roster (branch ids and public keys) this branch trusts for encrypted jobs "
        "(a run directory's roster.json, reviewed); a job with another is refused",
    )
    ns.add_argument(
        "--min-contributors",
        help="fewest contributions an aggregate must hold before this branch decrypts it "
        "(default 3)",
    )
    return ns


def _start_flower(ns: argparse.ArgumentParser) -> None:
    """``node start``: the SuperNode, its connection and the apps it may run."""
    ns.add_argument("--root-certificates", help="default: the kit's ca.crt")
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
        "app directory you reviewed, or its .fab file; required when the branch holds an "
        "epsilon ceiling, a signing key or HE keys",
    )
    ns.add_argument("--check-only", action="store_true", help="print the command, do not start")
    ns.add_argument("flower_args", nargs="*", help="after --: passed to flower-supernode")


def _app_hash(nsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    nh = nsub.add_parser(
        "app-hash",
        help="the FAB hash `flwr run APP_DIR` sends (for --approve-app)",
        description="Build the Flower app in APP_DIR as `flwr run` does (Flower's own "
        "reproducible FAB build) and print its SHA-256, the hash a SuperNode sees.",
    )
    nh.add_argument("app", nargs="?", default=".", help="the Flower app directory (default: .)")
    return nh
