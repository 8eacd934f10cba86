"""``fedcrm privacy verify|report``: ledgers and the compliance report."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from fedcrm.cli._common import EXIT_INVALID, console, handles, out, subparsers


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify signatures, hash chains and epsilon; 1 on any problem."""
    from fedcrm.privacy.verify import format_table, verify_path

    results = verify_path(
        Path(args.path),
        keys_dir=Path(args.keys) if args.keys else None,
        anchor=Path(args.anchor) if args.anchor else None,
    )
    out.print(format_table(results), markup=False, highlight=False)
    bad = [r for r in results if not r.ok]
    for r in bad:
        for problem in r.problems:
            console.print(f"[red]branch {r.branch_id}[/red]: {problem}", markup=True)
    return EXIT_INVALID if bad or not results else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML privacy report; 1 when its ledgers do not verify."""
    from fedcrm.privacy.report import build_report

    report = build_report(Path(args.path), keys_dir=Path(args.keys) if args.keys else None)
    written = report.write(Path(args.out))
    if not report.verified:
        failed = [r.branch_id for r in report.results if not r.ok]
        why = report.error or f"branch(es) {', '.join(failed)} failed"
        console.print(
            f"privacy report written to {escape(str(written))}; [red]ledger verification "
            f"FAILED[/red]: {escape(why)} (`fedcrm privacy verify` lists every problem)",
            highlight=False,
        )
        return EXIT_INVALID
    console.print(
        f"privacy report written to {escape(str(written))}; every ledger verified",
        highlight=False,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``privacy`` group."""
    priv = sub.add_parser("privacy", help="verify ledgers, write the compliance report")
    psub = subparsers(priv, "privacy_cmd")
    pv = psub.add_parser("verify", help="verify signatures, hash chain and epsilon")
    pv.add_argument("path", help="a ledger file, a directory of ledgers, or a run directory")
    pv.add_argument(
        "--keys", help="a directory of <branch_id>.pub files or the central team's admitted.json"
    )
    pv.add_argument(
        "--anchor",
        help="the branch's ledger anchor (default for a ledger file: state/anchor.json beside it)",
    )
    handles(pv, cmd_verify, error_exit=EXIT_INVALID)
    pr = psub.add_parser(
        "report",
        help="self-contained HTML privacy report",
        description="Verifies the ledgers on the way; exits 1 when any does not verify (the "
        "report is still written and says why).",
    )
    pr.add_argument("path", help="a run directory or a ledger directory")
    pr.add_argument("--out", required=True)
    pr.add_argument(
        "--keys",
        help="the branches' public keys: a directory of <branch_id>.pub files or the central "
        "team's admitted.json (default: the run directory's keys/)",
    )
    handles(pr, cmd_report, error_exit=EXIT_INVALID)
