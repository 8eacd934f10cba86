"""The HTML privacy report for a compliance officer.

One self-contained file (inline CSS and SVG, no external asset, a two-line
script that only marks the page as rendered): per branch epsilon spent
against its ceiling, delta, rounds trained and refused, customers excluded
for consent or opt-out, a chart of cumulative epsilon, the mechanisms and
their parameters, whether updates were encrypted, the result of verifying the
signed ledgers, and what all of it means in plain language. Every piece of
text from a file is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcrm.errors import LedgerError
from fedcrm.plots.privacy import epsilon_chart_svg
from fedcrm.privacy.verify import BranchVerification, verify_path

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a1a1a;
 max-width:1100px;margin:2em auto;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.6em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#05661e;font-weight:600}.bad{color:#a40000;font-weight:600}
.muted{color:#666}.bar{background:#eee;height:8px;width:120px;border-radius:4px}
.bar>span{display:block;height:8px;border-radius:4px;background:#0072B2}
.bar>span.full{background:#a40000}.facts td:first-child{width:30%;font-weight:600}
li{margin:.3em 0}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, fmt: str = ".4g") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "&ndash;" if value is None else _e(value)
    return _e(format(value, fmt))


def _get(mapping: object, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


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


def _describe_model(model: object) -> str:
    if isinstance(model, Mapping):
        model = model.get("name") or json.dumps(model, sort_keys=True, default=str)
    return "&ndash;" if model in (None, "") else _e(model)


def _count(value: object) -> str:
    if isinstance(value, (list, tuple)):
        shown = ", ".join(str(v) for v in value)
        return f"{len(value)}" + (f" (rounds {_e(shown)})" if value else "")
    return _num(value, "d") if isinstance(value, int) else _num(value)


def _branch_table(
    branches: list[str],
    results: dict[str, BranchVerification],
    entries: dict[str, list[dict[str, Any]]],
    summary: dict[str, Any] | None,
) -> str:
    rows = []
    for b in branches:
        stated = _get(summary, "privacy", "per_branch", b) or {}
        last = entries[b][-1] if entries.get(b) else {}
        epsilon = last.get("epsilon", stated.get("epsilon"))
        ceiling = stated.get("ceiling")
        delta = last.get("delta", stated.get("delta"))
        bar = "&ndash;"
        if isinstance(epsilon, (int, float)) and isinstance(ceiling, (int, float)) and ceiling > 0:
            share = min(epsilon / ceiling, 1.0)
            full = " full" if share >= 0.999 else ""
            bar = (
                f'<div class="bar" title="{share:.0%} of the ceiling">'
                f'<span class="{full.strip()}" style="width:{share * 100:.1f}%"></span></div>'
            )
        result = results.get(b)
        if result is None:
            verdict = '<span class="muted">no ledger</span>'
        elif result.ok:
            verdict = '<span class="ok">verified</span>'
        else:
            verdict = f'<span class="bad">FAILED ({len(result.problems)})</span>'
        excluded = _get(summary, "per_branch", b, "excluded_customers")
        rows.append(
            "<tr>"
            f"<td>{_e(b)}</td><td class='num'>{_num(epsilon)}</td>"
            f"<td class='num'>{_num(ceiling) if ceiling is not None else 'none'}</td>"
            f"<td>{bar}</td><td class='num'>{_num(delta, '.3g')}</td>"
            f"<td class='num'>{_count(stated.get('rounds_trained'))}</td>"
            f"<td class='num'>{_count(stated.get('refused_rounds'))}</td>"
            f"<td class='num'>{_count(excluded)}</td>"
            f"<td class='num'>{len(entries.get(b, []))}</td><td>{verdict}</td>"
            "</tr>"
        )
    return (
        '<table id="branch-table"><thead><tr><th>Branch</th><th>Epsilon spent</th>'
        "<th>Ceiling</th><th>Share of ceiling</th><th>Delta</th><th>Rounds trained</th>"
        "<th>Rounds refused</th><th>Customers excluded (consent / opt-out)</th>"
        "<th>Ledger entries</th><th>Ledger verification</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _mechanism_table(entries: dict[str, list[dict[str, Any]]]) -> str:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for branch, items in sorted(entries.items()):
        for entry in items:
            key = tuple(
                entry.get(k)
                for k in (
                    "run_id",
                    "model",
                    "mechanism",
                    "noise_multiplier",
                    "sample_rate",
                    "steps",
                    "max_grad_norm",
                    "sensitivity",
                    "delta",
                    "accountant",
                )
            )
            groups.setdefault((branch, *key), []).append(entry.get("round"))
    if not groups:
        return "<p class='muted'>No ledger entries.</p>"
    rows = []
    for (
        branch,
        run,
        model,
        name,
        sigma,
        q,
        steps,
        clip,
        sens,
        delta,
        acc,
    ), rounds in groups.items():
        rounds_text = ", ".join(str(r) for r in rounds[:12]) + (" ..." if len(rounds) > 12 else "")
        rows.append(
            f"<tr><td>{_e(branch)}</td><td>{_e(run)}</td><td>{_e(model)}</td><td>{_e(name)}</td>"
            f"<td class='num'>{_num(sigma)}</td><td class='num'>{_num(q)}</td>"
            f"<td class='num'>{_num(steps)}</td><td class='num'>{_num(clip)}</td>"
            f"<td class='num'>{_num(sens)}</td><td class='num'>{_num(delta, '.3g')}</td>"
            f"<td>{_e(acc)}</td><td class='num'>{len(rounds)}</td><td>{_e(rounds_text)}</td></tr>"
        )
    return (
        '<table id="mechanism-table"><thead><tr><th>Branch</th><th>Run</th><th>Model</th>'
        "<th>Mechanism</th><th>Noise multiplier</th><th>Sample rate</th><th>Steps per entry</th>"
        "<th>Clipping norm</th><th>Sensitivity</th><th>Delta</th><th>Accountant</th>"
        "<th>Entries</th><th>Rounds</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _verification_section(results: list[BranchVerification], error: str | None) -> str:
    if error is not None:
        return f"<p class='bad'>Ledgers could not be verified: {_e(error)}</p>"
    parts = []
    if results and all(r.ok for r in results):
        parts.append(
            "<p class='ok'>Every ledger verified: all signatures, the hash chains and every "
            "stated epsilon recomputed from the recorded parameters.</p>"
        )
    for r in results:
        if r.ok:
            continue
        items = "".join(f"<li>{_e(p)}</li>" for p in r.problems[:20])
        more = len(r.problems) - 20
        if more > 0:
            items += f"<li>... and {more} more (run <code>fedcrm privacy verify</code>)</li>"
        parts.append(f"<p class='bad'>Branch {_e(r.branch_id)} failed:</p><ul>{items}</ul>")
    return "".join(parts)


def _caveats(mode: str | None, accountants: set[str]) -> str:
    encrypted = mode in ("he", "dp_he")
    names = " and ".join(sorted(a.upper() for a in accountants)) or "PRV or RDP"
    if encrypted:
        server = (
            "Updates were encrypted (CKKS homomorphic encryption): the server only added "
            "ciphertexts and never saw any single branch's update or histogram, only the "
            "aggregate the branches chose to release."
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
        f"<li><b>What the server could see.</b> {server}</li>"
        "<li><b>Collusion.</b> If the server colludes with one branch, encryption no longer "
        "hides the other branches' updates; differential privacy still holds for every "
        "customer.</li>"
        f"<li><b>Where the numbers come from.</b> Epsilon is computed by Opacus' {names} "
        "accountant from the parameters recorded in each branch's signed ledger (noise "
        "multiplier, sample rate, steps, delta); anyone with the branches' public keys can "
        "recompute it with <code>fedcrm privacy verify</code>. The PRV figure is an upper "
        "bound including its numerical error.</li>"
        "<li>Delta is the small probability with which the epsilon guarantee may fail; it "
        "is set below one over the number of customers of the branch.</li>"
        "<li><b>Evaluation.</b> Test customers are held out of training and not covered by "
        "epsilon: each branch reports only aggregate statistics about them (a histogram of "
        "model scores and confusion counts, never a customer's score or id), from which the "
        "pooled AUC, F1 and log loss are computed.</li>"
        "</ul>"
    )


def write_report(
    run_or_ledger_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write the HTML privacy report of a run (or a directory of ledgers).

    Parameters
    ----------
    run_or_ledger_dir
        A run directory (``ledger/``, ``keys/``, ``summary.json``), a directory
        of ledgers, or one ledger file; the ledgers are verified on the way.
    out_path
        The HTML file to write.
    summary
        The run summary; read from ``summary.json`` in the directory when not given.

    Returns
    -------
    Path
        ``out_path``.
    """
    root = Path(run_or_ledger_dir)
    if summary is None:
        summary = _load_summary(root if root.is_dir() else root.parent)
    error = None
    try:
        results = verify_path(root)
    except LedgerError as exc:
        results, error = [], str(exc)
    by_branch = {r.branch_id: r for r in results}
    entries = {r.branch_id: _ledger_entries(r.path) for r in results}
    per_branch = _get(summary, "privacy", "per_branch") or {}
    branches = sorted(set(by_branch) | set(per_branch))
    ceilings = {b: _get(per_branch, b, "ceiling") for b in branches}
    series = {
        b: [(f"run {e.get('run_id')} round {e.get('round')}", float(e["epsilon"])) for e in items]
        for b, items in entries.items()
    }
    mode = _get(summary, "privacy", "mode")
    accountants = {str(e.get("accountant")) for items in entries.values() for e in items}
    verified = bool(results) and error is None and all(r.ok for r in results)
    stopped = _get(summary, "privacy", "stopped_reason")
    auc = _get(summary, "final", "auc")
    facts = [
        ("Source", _e(root)),
        ("Model", _describe_model(_get(summary, "model"))),
        (
            "Updates encrypted (HE)",
            "unknown" if mode is None else ("yes" if mode in ("he", "dp_he") else "no"),
        ),
        ("Privacy mode", _e(mode or "unknown")),
        (
            "Ledger verification",
            "<span class='ok'>passed</span>" if verified else "<span class='bad'>FAILED</span>",
        ),
        ("Run ended early", _e(stopped) if stopped else "no"),
        ("Final AUC", _num(auc, ".3f")),
    ]
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedcrm privacy report</title><style>{_CSS}</style>
<script>window.addEventListener("error",function(){{
document.documentElement.setAttribute("data-script-error","1");}});</script>
</head><body>
<h1>Privacy report</h1>
<p class="muted">Generated {_e(generated)} by fedcrm from the signed privacy ledgers.</p>
<table class="facts"><tbody>{"".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in facts)}
</tbody></table>
<h2>Per branch</h2>
{_branch_table(branches, by_branch, entries, summary)}
<h2>Cumulative epsilon</h2>
{epsilon_chart_svg(series, ceilings=ceilings)}
<h2>Mechanisms and parameters</h2>
{_mechanism_table(entries)}
<h2>Ledger verification</h2>
{_verification_section(results, error)}
<h2>What this means</h2>
{_caveats(mode if isinstance(mode, str) else None, accountants)}
<script>document.documentElement.setAttribute("data-rendered","1");</script>
</body></html>
"""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out
