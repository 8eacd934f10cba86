"""``fedcrm keys init``: homomorphic-encryption keys for simulations and tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcrm.cli._common import console, handles, subparsers


def cmd_init(args: argparse.Namespace) -> int:
    """The CKKS key ceremony into ``--out``."""
    from fedcrm.crypto.ckks import key_ceremony

    secret, public = key_ceremony(Path(args.out), overwrite=args.overwrite)
    console.print(
        f"CKKS secret context (branches only, mode 0600): {secret}\n"
        f"CKKS public context (server; holds no secret key): {public}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``keys`` group."""
    keys = sub.add_parser("keys", help="homomorphic-encryption keys")
    ksub = subparsers(keys, "keys_cmd")
    ki = ksub.add_parser("init", help="CKKS key ceremony")
    ki.add_argument("--out", required=True)
    ki.add_argument("--overwrite", action="store_true")
    handles(ki, cmd_init)
