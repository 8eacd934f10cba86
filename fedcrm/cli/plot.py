"""``fedcrm plot privacy-utility RUNS_DIR``: plots across runs (researchers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcrm.cli._common import console, handles, subparsers


def cmd_privacy_utility(args: argparse.Namespace) -> int:
    """AUC vs epsilon over a sweep directory."""
    from fedcrm.sweeps import privacy_utility_plot

    path = privacy_utility_plot(
        Path(args.runs_dir),
        Path(args.out) if args.out else None,
        non_private=Path(args.non_private) if args.non_private else None,
    )
    console.print(f"privacy-utility plot written to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plot`` group."""
    plot = sub.add_parser("plot", help="plots across runs")
    plsub = subparsers(plot, "plot_cmd")
    pu = plsub.add_parser("privacy-utility", help="AUC vs epsilon over a sweep directory")
    pu.add_argument("runs_dir")
    pu.add_argument("--out")
    pu.add_argument("--non-private", help="a non-private run directory for the reference line")
    handles(pu, cmd_privacy_utility)
