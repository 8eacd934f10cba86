"""``fedcrm data validate|synth|import-cdnow``: branch exports (branch IT, researchers)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.markup import escape

from fedcrm.cli._common import EXIT_INVALID, EXIT_USAGE, console, handles, out, subparsers


def cmd_validate(args: argparse.Namespace) -> int:
    """Check an export (or a database) against the data contract.

    stdout: one summary line per kind of problem, then with ``--max-problems N``
    the first N problems as ``file:line: column: what``; stderr: warnings and
    the verdict.
    """
    from fedcrm.data.source import branch_source
    from fedcrm.errors import DataSourceError

    source = branch_source(
        path=args.dir,
        url=args.url,
        url_file=args.url_file,
        spec_path=args.spec,
        encoding=args.encoding,
        delimiter=args.delimiter,
        decimal=args.decimal,
        currency_symbols=args.currency_symbols,
    )
    where = source.describe()
    try:
        inspection = source.inspect(max_problems=args.max_problems, events=False)
    except DataSourceError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    for line in inspection.summaries:
        out.print(str(line), markup=False, highlight=False)
    for p in inspection.problems[: args.max_problems]:
        out.print(str(p), markup=False, highlight=False)
    for w in inspection.warnings:
        console.print(f"warning: {w}", markup=False, highlight=False)
    if inspection.log:
        count = inspection.log.count
        console.print(
            f"[red]{count:,} problem(s)[/red] of {len(inspection.summaries)} kind(s) in "
            f"{escape(where)}",
            highlight=False,
        )
        return EXIT_INVALID
    console.print(
        f"[green]valid[/green]: {escape(where)} follows the data contract", highlight=False
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic multi-branch CRM (one export, or one folder per branch)."""
    from fedcrm.data.synthetic import default_branch_ids, write_synthetic

    ids = [b.strip() for b in args.branch_ids.split(",")] if args.branch_ids else None
    branches = args.branches if args.branches is not None else len(ids) if ids else 5
    t0 = time.perf_counter()
    path = write_synthetic(
        Path(args.out),
        branches=branches,
        customers=args.customers,
        seed=args.seed,
        branch_ids=ids,
        per_branch=args.per_branch,
    )
    names = ids or default_branch_ids(branches)
    where = (
        f"one folder per branch in {path} ({', '.join(names)})"
        if args.per_branch
        else f"{path} (branches {', '.join(names)})"
    )
    console.print(
        f"wrote a synthetic CRM ({branches} branches, ~{args.customers} customers each) to "
        f"{escape(where)} in {time.perf_counter() - t0:.1f} s",
        highlight=False,
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
    v = dsub.add_parser(
        "validate",
        help="check a branch export (or database) against the data contract",
        description="One line per kind of problem on stdout: FILE: COLUMN: WHAT in N rows "
        "(lines A, B, C, ...): FIX; with --max-problems N also the first N problems as "
        "FILE:LINE: COLUMN: WHAT. Never a field value.",
    )
    v.add_argument("dir", nargs="?", help="the export directory (or give --url/--url-file)")
    v.add_argument("--url", help="a database URL without password (PGPASSWORD, ~/.pgpass)")
    v.add_argument("--url-file", help="a file (mode 0600) holding the database URL")
    v.add_argument("--spec", help="the data spec (default: data_spec.yaml in DIR)")
    v.add_argument("--encoding", help="auto (default), utf-8, utf-16, cp1252, latin-1, ...")
    v.add_argument("--delimiter", choices=("auto", "comma", "semicolon", "tab", "pipe"))
    v.add_argument("--decimal", choices=("dot", "comma"), help="the decimal mark of numbers")
    v.add_argument(
        "--currency-symbols",
        choices=("error", "strip"),
        help="strip: accept amounts such as $1,234.50 (symbols and thousands separators)",
    )
    v.add_argument(
        "--max-problems",
        type=int,
        default=0,
        metavar="N",
        help="also list the first N problems, one per line with its line number (default 0)",
    )
    handles(v, cmd_validate, error_exit=EXIT_USAGE)
    s = dsub.add_parser(
        "synth",
        help="write a synthetic multi-branch CRM",
        description="One export with a branch_id column, or with --per-branch one folder per "
        "branch (OUT/<branch_id>/customers.csv, events.csv) as each branch would export it.",
    )
    s.add_argument("--branches", type=int, help="number of branches (default 5, or the ids')")
    s.add_argument(
        "--branch-ids",
        metavar="B1,B2,...",
        help="the branches' ids, comma-separated, instead of branch_00, branch_01, ...",
    )
    s.add_argument(
        "--per-branch", action="store_true", help="one export folder per branch under --out"
    )
    s.add_argument("--customers", type=int, default=2000, help="customers per branch (mean)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    handles(s, cmd_synth, error_exit=EXIT_USAGE)
    c = dsub.add_parser("import-cdnow", help="convert the CDNOW transaction log")
    c.add_argument("--out", required=True)
    c.add_argument("--source", help="CDNOW_master.txt (default: the copy in `lifetimes`)")
    handles(c, cmd_import_cdnow, error_exit=EXIT_INVALID)
