"""``fedcrm score`` and ``fedcrm explain``: the model at work at a branch (branch CRM team).

Both read a signed model bundle (:mod:`fedcrm.models.bundle`) and the branch
export, build features from every event up to ``--as-of`` and run on this
machine only: nothing is sent anywhere. The scores file holds customer ids and
reasons built from customer values: it is written with mode 0600.

Trusted keys: ``--trusted-key`` (repeatable; a PEM public key or a directory
of ``*.pub``). Without it, the keys stored where fedcrm writes bundles are
trusted (:func:`fedcrm.models.bundle.default_key_files`): a run directory's
``keys/release.pub``; for a branch's copy the keys of its model folder's
``keys/``, the branch folder's ``signing/`` and the branch folder. They guard
against a damaged or swapped bundle, not against whoever can write those
folders: for a bundle from elsewhere, pass the key you received out of band.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from fedcrm.cli._common import EXIT_INVALID, console, handles, out, say
from fedcrm.errors import BundleError, ConfigError

OUT_FORMATS = (".csv", ".parquet", ".pq")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date (YYYY-MM-DD)") from None


def open_bundle(path: str, trusted: list[str] | None) -> Any:
    """Find, verify and load the bundle; says which key verified it."""
    from fedcrm.models.bundle import load_bundle
    from fedcrm.models.bundle_find import default_key_files, find_bundle, load_trusted_keys

    bundle_dir = find_bundle(path)
    if trusted:
        files = [Path(p) for p in trusted]
        keys = load_trusted_keys(files, strict=True)
    else:
        files = default_key_files(bundle_dir)
        keys = load_trusted_keys(files, strict=False)
        if not keys:
            raise BundleError(
                f"no trusted public key for {bundle_dir}: none where fedcrm keeps them "
                "(the run directory's keys/release.pub, or the branch's signing keys); pass "
                "--trusted-key with the key that signed it"
            )
    bundle = load_bundle(bundle_dir, trusted_keys=keys)
    m = bundle.manifest
    where = f"branch {m.get('branch_id')}'s copy" if m.get("origin") == "branch" else "release"
    say(
        f"bundle {bundle_dir}: {bundle.kind} model of run {m.get('run_id')} ({where}), "
        f"signature verified with key {bundle.key_id}"
        + ("" if trusted else f" from {', '.join(str(f) for f in files)}")
    )
    return bundle


def _branch_data(args: argparse.Namespace, bundle: Any) -> Any:
    from fedcrm.data.loader import load_crm
    from fedcrm.data.schema import attribute_columns_of

    crm = load_crm(Path(args.data), attribute_columns=attribute_columns_of(bundle.feature_names))
    branches = crm.branches()
    if args.branch_id:
        if args.branch_id not in branches:
            raise ConfigError(f"--branch-id {args.branch_id}: the export holds no such branch")
        crm = crm.branch(args.branch_id)
    elif len(branches) > 1:
        raise ConfigError(f"the export holds {len(branches)} branches; choose one with --branch-id")
    excluded = sum(crm.excluded.values())
    say(f"data: {len(crm.customers)} customers ({excluded} excluded for consent or opt-out)")
    return crm


class _Progress:
    """Progress of scoring on stderr: a bar on a terminal, a line per tenth otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}
        self.last: dict[str, int] = {}
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(console=console, transient=True)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int) -> None:
        label = {
            "score": "scoring customers",
            "sequences": "attributing event sequences",
            "explain": "explaining scores",
        }.get(stage, stage)
        if self.bar is not None:
            if stage not in self.tasks:
                self.tasks[stage] = self.bar.add_task(label, total=total)
            self.bar.update(self.tasks[stage], completed=done)
            return
        tenth = 10 * done // max(total, 1)
        if tenth > self.last.get(stage, -1):
            self.last[stage] = tenth
            say(f"{label}: {done}/{total}")


def _score(args: argparse.Namespace, bundle: Any, options: Any) -> Any:
    from fedcrm.data.scoring_features import scoring_feature_blocks
    from fedcrm.models.scoring import score_blocks

    crm = _branch_data(args, bundle)
    blocks = scoring_feature_blocks(
        crm, as_of=args.as_of, max_events=bundle.task.max_events, block_size=args.block_size
    )
    with _Progress() as progress:
        return score_blocks(
            bundle, blocks, total=len(crm.customers), options=options, progress=progress
        )


def _report_drift(drift: dict[str, Any] | None) -> None:
    if drift is None:
        say(
            "drift: not checked (the bundle holds no training distribution: only a branch's "
            "own copy does)"
        )
        return
    worst = max(drift["psi"].items(), key=lambda kv: kv[1] if kv[1] == kv[1] else -1.0)
    say(f"drift: largest population stability index {worst[1]:.3f} ({worst[0]})")
    major = drift["major_shift"]
    if major:
        moved = ", ".join(f"{n} {drift['psi'][n]:.2f}" for n in major)
        console.print(
            f"[yellow]warning:[/yellow] {len(major)} feature(s) moved a lot since training "
            f"(population stability index > {drift['threshold_major']}): {moved}; scores are "
            "less reliable until the model is retrained",
            highlight=False,
        )


def write_private_table(table: Any, path: Path, *, overwrite: bool) -> Path:
    """Write the scores as CSV or Parquet (by extension), mode 0600."""
    suffix = path.suffix.lower()
    if suffix not in OUT_FORMATS:
        raise ConfigError(f"--out {path.name}: use a .csv or .parquet file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"--out {path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        if suffix == ".csv":
            fh.write(table.to_csv(index=False, lineterminator="\n").encode("utf-8"))
        else:
            table.to_parquet(fh, index=False)
    tmp.replace(path)
    return path


def cmd_score(args: argparse.Namespace) -> int:
    """Score every eligible customer of the export; write the scores file."""
    from fedcrm.models.scoring import ScoringOptions

    out_path = Path(args.out)
    if out_path.suffix.lower() not in OUT_FORMATS:
        raise ConfigError(f"--out {out_path.name}: use a .csv or .parquet file name")
    bundle = open_bundle(args.bundle, args.trusted_key)
    share = {} if args.sequence_share is None else {"sequence_share": args.sequence_share}
    options = ScoringOptions(reasons=args.reasons, calibrate=not args.no_calibration, **share)
    result = _score(args, bundle, options)
    write_private_table(result.table, out_path, overwrite=args.overwrite)
    cal = "calibrated" if result.calibrated else "uncalibrated (the bundle has no calibration)"
    if args.no_calibration:
        cal = "uncalibrated (--no-calibration)"
    say(f"scored {len(result.table)} customers, probabilities {cal}; written to {out_path}")
    _report_drift(result.drift)
    if args.summary:
        summary = {
            "customers_scored": len(result.table),
            "as_of": str(args.as_of),
            "bundle": {
                "path": str(bundle.path),
                "kind": bundle.kind,
                "run_id": bundle.manifest.get("run_id"),
                "origin": bundle.manifest.get("origin"),
                "key_id": bundle.key_id,
                "content_hash": bundle.content_hash,
            },
            "calibrated": result.calibrated,
            "calibration": bundle.manifest.get("calibration"),
            "drift": result.drift,
            "customers_per_decile": {
                str(d): int(n)
                for d, n in result.table["risk_decile"].value_counts().sort_index().items()
            },
        }
        Path(args.summary).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Print one customer's score and reasons."""
    from fedcrm.models.scoring import ScoringOptions

    bundle = open_bundle(args.bundle, args.trusted_key)
    options = ScoringOptions(
        reasons=0,
        calibrate=not args.no_calibration,
        sequence_share=0.0,
        focus=frozenset({args.customer_id}),
    )
    result = _score(args, bundle, options)
    detail = result.details.get(args.customer_id)
    if detail is None:
        raise ConfigError(
            "the customer given by --customer-id is not scored: not in the export, without "
            "consent or opted out, or without an event up to --as-of"
        )
    if args.json:
        out.print_json(json.dumps(detail))
        return 0
    lines = [
        f"churn probability {detail['churn_probability']:.3f}"
        + (f" (model {detail['probability_model']:.3f}, calibrated)" if result.calibrated else "")
        + f", risk decile {detail['risk_decile']} of 10 (10 = highest risk) among "
        f"{len(result.table)} customers scored as of {args.as_of}",
        "reasons (raise the risk; logit contribution against the typical customer):",
    ]
    lines += [f"  {v:+.2f}  {text}" for text, v in detail["reasons"][: args.reasons]] or ["  none"]
    method = "TreeSHAP" if bundle.kind == "gbdt" else "integrated gradients"
    lines.append(f"tabular features ({method}, logit units, strongest first):")
    ranked = sorted(detail["tabular"].items(), key=lambda kv: -abs(kv[1]))[:10]
    lines += [f"  {v:+.3f}  {name}" for name, v in ranked]
    if detail["sequence"] is not None:
        lines.append("event sequence (integrated gradients, logit units):")
        seq = sorted(detail["sequence"].items(), key=lambda kv: -abs(kv[1]))
        lines += [f"  {v:+.3f}  {name}" for name, v in seq if v != 0.0]
    out.print("\n".join(lines), markup=False, highlight=False)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="a model bundle, a run directory or a branch's model folder")
    p.add_argument("data", help="the branch export directory (the data contract)")
    p.add_argument(
        "--as-of", type=_date, required=True, help="score with every event up to this day"
    )
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="PUB|DIR",
        help="public key(s) the bundle's signature must come from (repeatable; default: the "
        "keys where fedcrm keeps them beside the bundle)",
    )
    p.add_argument("--branch-id", help="the branch to score when the export holds several")
    p.add_argument("--no-calibration", action="store_true", help="the model's own probabilities")
    p.add_argument("--block-size", type=int, default=50_000, help=argparse.SUPPRESS)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``score`` and ``explain``."""
    s = sub.add_parser(
        "score",
        help="branch: churn probability, risk decile and reasons of every customer",
        description="Score every customer with consent and an event up to --as-of, at the "
        "branch. Columns: customer_id, churn_probability, risk_decile (10 = highest), reasons.",
    )
    _common(s)
    s.add_argument("--out", required=True, help="the scores file: .csv or .parquet")
    s.add_argument("--reasons", type=int, default=3, help="reasons per customer (0: none, faster)")
    s.add_argument(
        "--sequence-share",
        type=float,
        help="LSTM: share of customers (the highest scores of each block of 50,000) whose "
        "event sequence is attributed too (default 0.02; 0 = tabular reasons only, faster)",
    )
    s.add_argument("--summary", help="also write a JSON summary (counts, drift, calibration)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    handles(s, cmd_score, error_exit=EXIT_INVALID)
    e = sub.add_parser("explain", help="branch: one customer's churn score and its reasons")
    _common(e)
    e.add_argument("--customer-id", required=True)
    e.add_argument("--reasons", type=int, default=5, help="reasons to show (default 5, up to 10)")
    e.add_argument("--json", action="store_true", help="print the details as JSON")
    handles(e, cmd_explain, error_exit=EXIT_INVALID)
