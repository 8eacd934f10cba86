"""``fedcrm plot privacy-utility RUNS_DIR``: plots across runs (researchers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcrm.cli._common import console, handles, subparsers


def cmd_privacy_utility(args: argparse.Namespace) -> int:
    """AUC vs epsilon over a sweep directory; warns when the runs differ beyond epsilon."""
    from fedcrm.plots.privacy_utility import privacy_utility_plot

    plotted = privacy_utility_plot(
        Path(args.runs_dir),
        Path(args.out) if args.out else None,
        non_private=Path(args.non_private) if args.non_private else None,
    )
    for warning in plotted.warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False)
    console.print(
        f"privacy-utility plot written to {plotted.path} (points and warnings: "
        f"{plotted.json_path})",
        markup=False,
        highlight=False,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plot`` group."""
    plot = sub.add_parser("plot", help="plots across runs")
    plsub = subparsers(plot, "plot_cmd")
    pu = plsub.add_parser(
        "privacy-utility",
        help="AUC vs epsilon over a sweep directory",
        description="One point per DP run under RUNS_DIR (largest epsilon a branch spent, final "
        "AUC); a run without DP is the reference line. Warns (and writes into the JSON beside "
        "the plot) when the runs' config.yaml differ in more than the privacy level.",
    )
    pu.add_argument("runs_dir")
    pu.add_argument("--out", help="the PNG to write (default RUNS_DIR/privacy_utility.png)")
    pu.add_argument("--non-private", help="a non-private run directory for the reference line")
    handles(pu, cmd_privacy_utility)
