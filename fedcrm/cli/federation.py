"""``fedcrm federation init|cert|connection``: provisioning a real deployment (central team)."""

from __future__ import annotations

import argparse

from fedcrm.cli._common import handles, subparsers


def cmd_init(args: argparse.Namespace) -> int:
    """Create the federation directory."""
    from fedcrm.deploy.provision import init_federation, next_steps

    fed = init_federation(
        args.out,
        args.server_address,
        extra_sans=args.extra_san or (),
        cert_days=args.cert_days,
        overwrite=args.overwrite,
    )
    print(next_steps(fed), flush=True)
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    """Re-issue the server certificate with the federation's CA."""
    from fedcrm.deploy.provision import load_federation, reissue_server_cert

    fed = load_federation(args.federation)
    sans = reissue_server_cert(
        fed, server_address=args.server_address, extra_sans=args.extra_san or (), days=args.days
    )
    print(
        f"server certificate re-issued for {', '.join(sans)} (valid {args.days} days); "
        f"{fed.kit_dir} holds the address: hand it to the branches again if it changed"
    )
    return 0


def cmd_connection(args: argparse.Namespace) -> int:
    """Add the SuperLink to ``$FLWR_HOME/config.toml``."""
    from fedcrm.deploy.flwr_config import write_connection

    path = write_connection(args.federation, name=args.name, flwr_home=args.flwr_home)
    print(f"connection `{args.name}` written to {path}; use `flwr run . {args.name}`")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``federation`` group."""
    fed = sub.add_parser("federation", help="provision a real deployment (CA, TLS, branch kit)")
    fsub = subparsers(fed, "federation_cmd")

    fi = fsub.add_parser(
        "init",
        help="CA, server certificate and the kit for branches (no branch key: branches make "
        "their own with `fedcrm node init`)",
    )
    fi.add_argument("--out", required=True, help="the federation directory to create")
    fi.add_argument(
        "--server-address", required=True, help="HOST:PORT SuperNodes use to reach the SuperLink"
    )
    fi.add_argument(
        "--extra-san", action="append", help="another DNS name or IP for the server certificate"
    )
    fi.add_argument("--cert-days", type=int, default=365)
    fi.add_argument("--overwrite", action="store_true")
    handles(fi, cmd_init)

    fc = fsub.add_parser("cert", help="re-issue the server certificate (expired, new address)")
    fc.add_argument("--federation", required=True)
    fc.add_argument("--server-address", help="new HOST:PORT (default: the federation's)")
    fc.add_argument("--extra-san", action="append")
    fc.add_argument("--days", type=int, default=365)
    handles(fc, cmd_cert)

    fn = fsub.add_parser(
        "connection", help="add the SuperLink to $FLWR_HOME/config.toml for `flwr run`"
    )
    fn.add_argument("--federation", required=True)
    fn.add_argument("--name", default="fedcrm", help="connection name (default: fedcrm)")
    fn.add_argument("--flwr-home", help="default: $FLWR_HOME or ~/.flwr")
    handles(fn, cmd_connection)
