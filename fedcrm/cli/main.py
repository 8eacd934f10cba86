"""Assembles the ``fedcrm`` parser from the command-group modules and dispatches."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.markup import escape

from fedcrm.cli import data, federation, node, plot, privacy, score, server
from fedcrm.cli._common import EXIT_USAGE, console
from fedcrm.errors import FedCRMError

GROUPS = (data, node, privacy, plot, federation, server, score)
"""Command groups in the order ``fedcrm --help`` lists them (after ``simulate``)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command but ``simulate`` (Hydra parses that)."""
    p = argparse.ArgumentParser(
        prog="fedcrm",
        description="Privacy-preserving federated learning for CRM data on Flower.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("simulate", help="run a simulated federation (Hydra overrides, -m sweeps)")
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedcrm`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "simulate":
        from fedcrm.cli.simulate import cmd_simulate

        return cmd_simulate(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except FedCRMError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return int(getattr(args, "error_exit", EXIT_USAGE))
    except ModuleNotFoundError as exc:
        # A broken install must not look like a usage error: name what is missing.
        console.print(
            f"[red]error:[/red] fedcrm is not completely installed: module "
            f"{escape(str(exc.name))!s} is missing (reinstall with `pip install -e .`)",
            highlight=False,
        )
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
