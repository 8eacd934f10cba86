"""The HTML privacy report for a compliance officer.

One self-contained file (inline CSS and SVG, no external asset, a two-line
script that only marks the page as rendered): per branch epsilon spent
against its ceiling, delta, rounds trained and refused, customers excluded
for consent or opt-out; the spend of training and of evaluation and how they
compose; a chart of cumulative epsilon; the mechanisms and their parameters;
how the run ended, whether updates were encrypted and whether evaluation was
differentially private; the result of verifying the signed ledgers; and what
all of it means in plain language. Every piece of text from a file is escaped.
Its tables (:mod:`fedcrm.privacy.report_tables`) fit the page: long cells wrap.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcrm.errors import ConfigError, LedgerError
from fedcrm.plots.privacy import coinciding_series, epsilon_chart_svg
from fedcrm.privacy.ledger_format import charges
from fedcrm.privacy.report_tables import (
    branch_table,
    e,
    get,
    mechanism_table,
    num,
    purpose_table,
    verification_section,
)
from fedcrm.privacy.verify import BranchVerification, verify_path

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a1a1a;
 max-width:1100px;margin:2em auto;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.6em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.fit{max-width:100%;overflow-x:auto}.fit table{font-size:12px}
.fit th,.fit td{padding:3px 5px}.fit td{overflow-wrap:break-word}
.fit td.id{overflow-wrap:anywhere}
.ok{color:#05661e;font-weight:600}.bad{color:#a40000;font-weight:600}
.muted{color:#666}.bar{background:#eee;height:8px;width:100%;max-width:120px;border-radius:4px}
.bar>span{display:block;height:8px;border-radius:4px;background:#0072B2}
.bar>span.full{background:#a40000}.facts td:first-child{width:30%;font-weight:600}
li{margin:.3em 0}.note{font-size:13px;color:#444}
"""

PASSED = "<span class='ok'>passed</span>"
FAILED = "<span class='bad'>FAILED</span>"
DEFAULT_MIN_CELL_COUNT = 10
"""A branch's ``min-cell-count`` unless it sets another (see ``fedcrm.client.branch``)."""


@dataclass
class Report:
    """A rendered privacy report and the verification it shows."""

    html: str
    results: list[BranchVerification] = field(default_factory=list)
    error: str | None = None

    @property
    def verified(self) -> bool:
        """Whether every ledger was found and verified."""
        return bool(self.results) and self.error is None and all(r.ok for r in self.results)

    def write(self, out_path: str | os.PathLike[str]) -> Path:
        """Write the HTML file (its folder created)."""
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.html, encoding="utf-8")
        return out


def _load_summary(root: Path) -> dict[str, Any] | None:
    for candidate in (root / "summary.json", root.parent / "summary.json"):
        if candidate.is_file():
            try:
                loaded = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return None
            return loaded if isinstance(loaded, dict) else None
    return None


def _ledger_entries(path: str | None) -> list[dict[str, Any]]:
    """Entries of a ledger read leniently (the verification reports what is wrong)."""
    entries: list[dict[str, Any]] = []
    if path is None:
        return entries
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError:
        return entries
    for line in lines:
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("epsilon"), (int, float)):
            entries.append(entry)
    return entries


def _charge_label(entry: Mapping[str, Any]) -> str:
    step = entry.get("step") or f"round {entry.get('round')}"
    return f"{entry.get('purpose', 'train')} {step} of run {entry.get('run_id')}"


def _coinciding_note(series: Mapping[str, Any]) -> str:
    notes = [
        f"{', '.join(e(b) for b in names[:-1])} and {e(names[-1])} spent the same epsilon at "
        "every charge: their lines lie on top of each other (each drawn thinner than the one "
        "before, so every colour still shows)."
        for names in coinciding_series(series)
    ]
    return "".join(f'<p class="note coinciding">{n}</p>' for n in notes)


def _describe_model(model: object) -> str:
    if isinstance(model, Mapping):
        model = model.get("name") or json.dumps(model, sort_keys=True, default=str)
    return "&ndash;" if model in (None, "") else e(model)


def evaluation_kind(summary: Mapping[str, Any] | None, entries: Mapping[str, list]) -> str | None:
    """``"dp"`` or ``"thresholded"`` (the summary's, else ``dp`` when a ledger holds one)."""
    mechanism = get(summary, "evaluation", "mechanism")
    if mechanism in ("dp", "thresholded"):
        return str(mechanism)
    if any(x.get("mechanism") == "dp-eval" for items in entries.values() for x in items):
        return "dp"
    return None


def _evaluation_text(kind: str | None) -> str:
    if kind == "dp":
        return (
            "Evaluation statistics of held-out test customers (score histograms, confusion "
            "counts) were released with a Gaussian mechanism (<code>dp-eval</code>) and are "
            "accounted in each branch's ledger under the purpose <i>evaluation</i>."
        )
    if kind == "thresholded":
        return (
            "Evaluation statistics of held-out test customers are <b>not differentially "
            "private</b>: each branch released only groups of at least k customers (k is the "
            f"branch's <code>min-cell-count</code>, {DEFAULT_MIN_CELL_COUNT} unless it set "
            "another), never a customer's score or id, from which the pooled AUC, F1 and log "
            "loss are computed. Epsilon does not cover them."
        )
    return "No evaluation release is recorded for this run."


def _status(summary: Mapping[str, Any] | None) -> str:
    status = get(summary, "status")
    reason = get(summary, "stopped_reason") or get(summary, "privacy", "stopped_reason")
    if status == "stopped_early" or reason:
        return f"<span class='bad'>stopped early</span>: {e(reason)}"
    return "unknown" if summary is None else "completed"


def _caveats(mode: str | None, accountants: set[str], evaluation: str | None) -> str:
    encrypted = mode in ("he", "dp_he")
    names = " and ".join(sorted(a.upper() for a in accountants)) or "PRV or RDP"
    if encrypted:
        server = (
            "Updates were masked and encrypted (BFV homomorphic encryption with secure "
            "aggregation): the server only added ciphertexts and never saw any single "
            "branch's update or histogram, nor could it with one branch's help; the "
            "branches opened only sums of at least min_contributors uploads, and the server "
            "saw only what the branches chose to release."
        )
    elif mode is None:
        server = "The run summary was not available, so whether updates were encrypted is unknown."
    else:
        server = (
            "Updates were <b>not</b> encrypted: the server saw each branch's model update "
            "(or noisy histograms) in the clear. Differential privacy still bounds what those "
            "updates reveal about any customer."
        )
    return (
        "<ul>"
        "<li><b>Unit of privacy: one customer.</b> Epsilon bounds how much the released "
        "results can change when any one customer's data (all of their events) is added or "
        "removed at a branch. Smaller is more private.</li>"
        "<li><b>A customer of two branches counts twice.</b> Each branch accounts only for "
        "its own records; someone who is a customer at two branches is protected at each "
        "with that branch's epsilon, and the two add up.</li>"
        "<li><b>Across rounds and runs.</b> Each branch's epsilon composes every mechanism "
        "recorded in its ledger on the same data, in this run and earlier ones.</li>"
        "<li><b>Training and evaluation.</b> A branch trains on its training customers and "
        "evaluates on its held-out test customers; one split, drawn once at the branch and "
        "named in every ledger entry, keeps them apart. When every charge of a ledger names "
        "the same split, no customer is on both sides, so the two sides compose in parallel: "
        "the branch's epsilon is the larger of the two, not their sum. Otherwise (different "
        "or unrecorded splits) they add up.</li>"
        "<li><b>Reservations and releases.</b> A branch writes the epsilon of each step into "
        "its ledger (a <i>reservation</i>) before the step runs, so no two steps can pass its "
        "ceiling together; what it then sent is recorded as a <i>release</i> (the digests of "
        "the request and of the reply, zero epsilon). A repeated request gets the same reply "
        "again and costs nothing more; a changed one is refused.</li>"
        f"<li><b>What the server could see.</b> {server}</li>"
        "<li><b>Collusion.</b> Secure aggregation hides each branch's update from the server "
        "even with one other branch's help; the server with several branches, or all other "
        "branches together (who can subtract their own updates from a sum), can learn more. "
        "Differential privacy still holds for every customer in every case.</li>"
        f"<li><b>Where the numbers come from.</b> Epsilon is computed by Opacus' {names} "
        "accountant from the parameters recorded in each branch's signed ledger (noise "
        "multiplier, sample rate, steps, delta); anyone with the branches' public keys can "
        "recompute it with <code>fedcrm privacy verify</code>. The PRV figure is an upper "
        "bound including its numerical error.</li>"
        "<li>Delta is the small probability with which the epsilon guarantee may fail; it "
        "is set below one over the number of customers of the branch.</li>"
        f"<li><b>Evaluation.</b> {_evaluation_text(evaluation)}</li>"
        "</ul>"
    )


def _verify(
    root: Path, keys_dir: str | os.PathLike[str] | None
) -> tuple[list[BranchVerification], str | None]:
    """The verification of every ledger under ``root``; none and the reason when unreadable."""
    try:
        return verify_path(root, keys_dir=keys_dir), None
    except (LedgerError, ConfigError) as exc:
        return [], str(exc)


def _facts(
    root: Path,
    summary: Mapping[str, Any] | None,
    mode: object,
    evaluation: str | None,
    verified: bool,
    keys_dir: str | os.PathLike[str] | None,
) -> list[tuple[str, str]]:
    """The run at a glance: (name, HTML value) rows for the top of the report."""
    keys_text = f" with the keys in {e(keys_dir)}" if keys_dir is not None else ""
    return [
        ("Source", e(root)),
        ("Model", _describe_model(get(summary, "model"))),
        ("Run", _status(summary)),
        (
            "Updates encrypted (HE)",
            "unknown" if mode is None else ("yes" if mode in ("he", "dp_he") else "no"),
        ),
        ("Privacy mode", e(mode or "unknown")),
        (
            "Evaluation",
            {
                "dp": "differentially private (<code>dp-eval</code>, in the ledgers)",
                "thresholded": "<b>not DP</b>: groups of at least k customers",
            }.get(evaluation or "", "unknown"),
        ),
        (
            "Ledger verification",
            (PASSED if verified else FAILED) + keys_text,
        ),
        ("Final AUC", num(get(summary, "final", "auc"), ".3f")),
    ]


def _page(body: str) -> str:
    """A self-contained HTML page of the report around ``body``, stamped with the time now."""
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedcrm privacy report</title><style>{_CSS}</style>
<script>window.addEventListener("error",function(){{
document.documentElement.setAttribute("data-script-error","1");}});</script>
</head><body>
<h1>Privacy report</h1>
<p class="muted">Generated {e(generated)} by fedcrm from the signed privacy ledgers.</p>
{body}
<script>document.documentElement.setAttribute("data-rendered","1");</script>
</body></html>
"""


def build_report(
    run_or_ledger_dir: str | os.PathLike[str],
    *,
    summary: dict[str, Any] | None = None,
    keys_dir: str | os.PathLike[str] | None = None,
) -> Report:
    """Verify the ledgers of a run (or a directory of ledgers) and render the report.

    Parameters
    ----------
    run_or_ledger_dir
        A run directory (``ledger/``, ``keys/``, ``summary.json``), a directory
        of ledgers, or one ledger file.
    summary
        The run summary; read from ``summary.json`` in the directory when not given.
    keys_dir
        The branches' public keys: a directory of ``<branch_id>.pub`` files or
        the central team's ``admitted.json`` (default: ``keys/`` beside the ledgers).
    """
    root = Path(run_or_ledger_dir)
    if summary is None:
        summary = _load_summary(root if root.is_dir() else root.parent)
    results, error = _verify(root, keys_dir)
    by_branch = {r.branch_id: r for r in results}
    entries = {r.branch_id: _ledger_entries(r.path) for r in results}
    per_branch = get(summary, "privacy", "per_branch") or {}
    branches = sorted(set(by_branch) | set(per_branch))
    ceilings = {b: get(per_branch, b, "ceiling") for b in branches}
    series = {
        b: [(_charge_label(x), float(x["epsilon"])) for x in items if charges(x)]
        for b, items in entries.items()
    }
    mode = get(summary, "privacy", "mode")
    accountants = {str(x.get("accountant")) for items in entries.values() for x in items}
    evaluation = evaluation_kind(summary, entries)
    report = Report("", results, error)
    facts = _facts(root, summary, mode, evaluation, report.verified, keys_dir)
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in facts)
    report.html = _page(f"""<table class="facts"><tbody>{rows}
</tbody></table>
<h2>Per branch</h2>
{branch_table(branches, by_branch, entries, summary)}
<h2>Training and evaluation</h2>
<p class="note">Each side composed alone; the branch's epsilon is the larger side when both
name one split (parallel composition), their composition otherwise. Releases record what
left the branch for a reserved step and charge nothing.</p>
{purpose_table(branches, entries)}
<h2>Cumulative epsilon</h2>
{epsilon_chart_svg(series, ceilings=ceilings)}
{_coinciding_note(series)}
<h2>Mechanisms and parameters</h2>
{mechanism_table(entries)}
<h2>Ledger verification</h2>
{verification_section(results, error)}
<h2>What this means</h2>
{_caveats(mode if isinstance(mode, str) else None, accountants, evaluation)}""")
    return report


def write_report(
    run_or_ledger_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    summary: dict[str, Any] | None = None,
    keys_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML privacy report of a run (see :func:`build_report`); returns ``out_path``."""
    return build_report(run_or_ledger_dir, summary=summary, keys_dir=keys_dir).write(out_path)
