"""``fedcrm data validate|synth|import-cdnow``: branch exports (branch IT, researchers)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedcrm.cli._common import EXIT_INVALID, console, handles, out, subparsers


def cmd_validate(args: argparse.Namespace) -> int:
    """Check an export against the data contract; one problem per line on stdout."""
    from fedcrm.data.validate import validate_dir

    problems = validate_dir(Path(args.dir))
    if problems:
        for p in problems:
            out.print(str(p), markup=False, highlight=False)
        console.print(f"[red]{len(problems)} problem(s)[/red] in {args.dir}")
        return EXIT_INVALID
    console.print(f"[green]valid[/green]: {args.dir} follows the data contract")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic multi-branch CRM."""
    from fedcrm.data.synthetic import write_synthetic

    t0 = time.perf_counter()
    path = write_synthetic(
        Path(args.out), branches=args.branches, customers=args.customers, seed=args.seed
    )
    console.print(
        f"wrote a synthetic CRM ({args.branches} branches, ~{args.customers} customers "
        f"each) to {path} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_import_cdnow(args: argparse.Namespace) -> int:
    """Convert the CDNOW transaction log to the data contract."""
    from fedcrm.data.cdnow import import_cdnow

    path = import_cdnow(Path(args.out), source=Path(args.source) if args.source else None)
    console.print(f"wrote CDNOW in the fedcrm data contract to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` group."""
    data = sub.add_parser("data", help="validate, generate or import CRM data")
    dsub = subparsers(data, "data_cmd")
    v = dsub.add_parser("validate", help="check a branch export against the data contract")
    v.add_argument("dir")
    handles(v, cmd_validate, error_exit=EXIT_INVALID)
    s = dsub.add_parser("synth", help="write a synthetic multi-branch CRM")
    s.add_argument("--branches", type=int, default=5)
    s.add_argument("--customers", type=int, default=2000, help="customers per branch (mean)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    handles(s, cmd_synth, error_exit=EXIT_INVALID)
    c = dsub.add_parser("import-cdnow", help="convert the CDNOW transaction log")
    c.add_argument("--out", required=True)
    c.add_argument("--source", help="CDNOW_master.txt (default: the copy in `lifetimes`)")
    handles(c, cmd_import_cdnow, error_exit=EXIT_INVALID)
