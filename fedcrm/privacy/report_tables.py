"""The tables of the privacy report, from ledger entries, the run summary and verification.

Pure functions returning HTML fragments; every piece of text from a file is
escaped. The page around them is :mod:`fedcrm.privacy.report`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from fedcrm.errors import PrivacyError
from fedcrm.privacy.accounting import compute_epsilon
from fedcrm.privacy.ledger_format import PURPOSES, charge_of, charges, kind_of
from fedcrm.privacy.mechanisms import parallel_sides
from fedcrm.privacy.verify import BranchVerification

Entries = dict[str, list[dict[str, Any]]]
"""Branch id -> its ledger entries (read leniently; verification says what is wrong)."""

MECHANISM_NAMES = {
    "dp-sgd": "DP-SGD: Poisson-sampled Gaussian steps on training customers",
    "gaussian": "Gaussian mechanism on histograms of training customers",
    "dp-eval": "Gaussian mechanism on evaluation statistics of test customers",
}
MECHANISM_COLUMNS = (
    "run_id",
    "model",
    "purpose",
    "mechanism",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "sensitivity",
    "delta",
    "accountant",
)


def e(value: object) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


def num(value: object, fmt: str = ".4g") -> str:
    """A number formatted, ``-`` for None, anything else escaped."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "&ndash;" if value is None else e(value)
    return e(format(value, fmt))


def get(mapping: object, *keys: str) -> Any:
    """``mapping[k1][k2]...``, None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _count(value: object) -> str:
    if isinstance(value, (list, tuple)):
        shown = ", ".join(str(v) for v in value)
        return f"{len(value)}" + (f" (rounds {e(shown)})" if value else "")
    return num(value, "d") if isinstance(value, int) else num(value)


def _table(table_id: str, headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    return (
        f'<div class="fit"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></div>"
    )


def branch_table(
    branches: list[str],
    results: Mapping[str, BranchVerification],
    entries: Entries,
    summary: Mapping[str, Any] | None,
) -> str:
    """Per branch: epsilon against its ceiling, delta, rounds, exclusions, verification."""
    rows = []
    for b in branches:
        stated = get(summary, "privacy", "per_branch", b) or {}
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
        excluded = get(summary, "per_branch", b, "excluded_customers")
        rows.append(
            "<tr>"
            f"<td>{e(b)}</td><td class='num'>{num(epsilon)}</td>"
            f"<td class='num'>{num(ceiling) if ceiling is not None else 'none'}</td>"
            f"<td>{bar}</td><td class='num'>{num(delta, '.3g')}</td>"
            f"<td class='num'>{_count(stated.get('rounds_trained'))}</td>"
            f"<td class='num'>{_count(stated.get('refused_rounds'))}</td>"
            f"<td class='num'>{_count(excluded)}</td>"
            f"<td class='num'>{len(entries.get(b, []))}</td><td>{verdict}</td>"
            "</tr>"
        )
    headers = [
        "Branch",
        "Epsilon spent",
        "Ceiling",
        "Share of ceiling",
        "Delta",
        "Rounds trained",
        "Rounds refused",
        "Customers excluded (consent / opt-out)",
        "Ledger entries",
        "Ledger verification",
    ]
    return _table("branch-table", headers, rows)


def purpose_spend(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A ledger's spend per purpose, how the purposes compose, and its entry counts.

    Returns ``{"train": eps, "evaluation": eps, "rule": "parallel" | "sequential" |
    "single" | None, "total": eps, "reservations": n, "mechanisms": n, "releases":
    n}`` (epsilon None
    where a purpose has no charge or cannot be recomputed), each side composed
    alone at the delta and with the accountant of the last entry.
    """
    charged = [entry for entry in items if charges(entry)]
    out: dict[str, Any] = {
        "reservations": sum(1 for x in items if kind_of(x) == "reservation"),
        "mechanisms": sum(1 for x in items if kind_of(x) == "mechanism"),
        "releases": sum(1 for x in items if kind_of(x) == "release"),
        "total": items[-1]["epsilon"] if items else None,
        "rule": None,
        **dict.fromkeys(PURPOSES),
    }
    if not charged:
        return out
    last = items[-1]
    try:
        all_charges = [charge_of(x) for x in charged]
        if len({c.purpose for c in all_charges}) == 1:
            out["rule"] = "single"
        else:
            out["rule"] = "sequential" if parallel_sides(all_charges) is None else "parallel"
        for purpose in PURPOSES:
            side = [c.mechanism for c in all_charges if c.purpose == purpose]
            if side:
                out[purpose] = compute_epsilon(
                    side, delta=last["delta"], accountant=last["accountant"]
                )
    except (PrivacyError, KeyError, TypeError, ValueError):
        pass  # a malformed ledger: verification names the problem
    return out


def purpose_table(branches: list[str], entries: Entries) -> str:
    """Per branch: epsilon of training and of evaluation, how they compose, entries by kind."""
    rows = []
    for b in branches:
        spend = purpose_spend(entries.get(b, []))
        rule = {
            "parallel": "parallel (one split): the larger side",
            "sequential": "sequential: the sides add up",
            "single": "one purpose only",
        }.get(spend["rule"], "&ndash;")
        rows.append(
            f"<tr><td>{e(b)}</td><td class='num'>{num(spend['train'])}</td>"
            f"<td class='num'>{num(spend['evaluation'])}</td><td>{rule}</td>"
            f"<td class='num'>{num(spend['total'])}</td>"
            f"<td class='num'>{spend['reservations'] + spend['mechanisms']}</td>"
            f"<td class='num'>{spend['releases']}</td></tr>"
        )
    headers = [
        "Branch",
        "Epsilon of training",
        "Epsilon of evaluation",
        "Composition",
        "Epsilon of the branch",
        "Charges (reservations)",
        "Releases (zero epsilon)",
    ]
    return _table("purpose-table", headers, rows)


def mechanism_table(entries: Entries) -> str:
    """Every mechanism run, grouped by branch, run, purpose and parameters, then a key."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for branch, items in sorted(entries.items()):
        for entry in items:
            if not charges(entry):
                continue
            key = (branch, *(entry.get(k) for k in MECHANISM_COLUMNS))
            step = entry.get("step") or f"round {entry.get('round')}"
            groups.setdefault(key, []).append(str(step))
    if not groups:
        return "<p class='muted'>No mechanism in the ledgers.</p>"
    rows, names = [], set()
    for (
        branch,
        run,
        model,
        purpose,
        name,
        sigma,
        q,
        steps,
        clip,
        sens,
        delta,
        acc,
    ), done in groups.items():
        names.add(str(name))
        shown = ", ".join(done[:12]) + (" ..." if len(done) > 12 else "")
        # DP-SGD clips each customer's gradient; a Gaussian release has a sensitivity.
        bound = f"clip {num(clip)}" if clip is not None else f"sens. {num(sens)}"
        rows.append(
            f"<tr><td class='id'>{e(branch)}</td><td class='id'>{e(run)}</td><td>{e(model)}</td>"
            f"<td>{e(purpose or 'train')}</td><td><code>{e(name)}</code></td>"
            f"<td class='num'>{num(sigma)}</td><td class='num'>{num(q)}</td>"
            f"<td class='num'>{num(steps)}</td><td class='num'>{bound}</td>"
            f"<td class='num'>{num(delta, '.3g')}</td><td>{e(acc)}</td>"
            f"<td class='id'>{len(done)}: {e(shown)}</td></tr>"
        )
    headers = [
        "Branch",
        "Run",
        "Model",
        "Purpose",
        "Mechanism",
        "Noise multiplier",
        "Sample rate",
        "Steps per entry",
        "Clipping norm or sensitivity",
        "Delta",
        "Accountant",
        "Entries: steps released",
    ]
    key = "".join(
        f"<li><code>{e(n)}</code>: {e(MECHANISM_NAMES.get(n, 'unknown mechanism'))}</li>"
        for n in sorted(names)
    )
    return _table("mechanism-table", headers, rows) + f'<ul class="note">{key}</ul>'


def verification_section(results: list[BranchVerification], error: str | None) -> str:
    """Whether every ledger verified, else each failing branch's problems."""
    if error is not None:
        return f"<p class='bad'>Ledgers could not be verified: {e(error)}</p>"
    parts = []
    if results and all(r.ok for r in results):
        parts.append(
            "<p class='ok'>Every ledger verified: all signatures, the hash chains and every "
            "stated epsilon recomputed from the recorded parameters.</p>"
        )
    for r in results:
        if r.ok:
            continue
        items = "".join(f"<li>{e(p)}</li>" for p in r.problems[:20])
        more = len(r.problems) - 20
        if more > 0:
            items += f"<li>... and {more} more (run <code>fedcrm privacy verify</code>)</li>"
        parts.append(f"<p class='bad'>Branch {e(r.branch_id)} failed:</p><ul>{items}</ul>")
    return "".join(parts)


__all__ = [
    "MECHANISM_NAMES",
    "branch_table",
    "e",
    "get",
    "mechanism_table",
    "num",
    "purpose_spend",
    "purpose_table",
    "verification_section",
]
