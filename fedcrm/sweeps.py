"""Reading a sweep (``fedcrm simulate -m ...``) back: privacy-utility curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedcrm.errors import FedCRMError
from fedcrm.plots import plot_privacy_utility


def load_summaries(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``summary.json`` under ``runs_dir`` (a sweep directory or a parent of runs)."""
    found = []
    for path in sorted(runs_dir.rglob("summary.json")):
        try:
            found.append((path.parent, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return found


def spent_epsilon(summary: dict[str, Any]) -> float | None:
    """The largest epsilon any branch spent in a run (None for a non-private run)."""
    per_branch = (summary.get("privacy") or {}).get("per_branch") or {}
    values = [v.get("epsilon") for v in per_branch.values() if v.get("epsilon") is not None]
    return max(values) if values else None


def privacy_utility_plot(
    runs_dir: Path, out: Path | None = None, *, non_private: Path | None = None
) -> Path:
    """Plot final AUC against spent epsilon for every DP run under ``runs_dir``.

    The non-private reference line comes from ``non_private`` (a run directory)
    or from a non-private run found under ``runs_dir``. Also writes the points
    as ``privacy_utility.json`` next to the plot.
    """
    runs = load_summaries(runs_dir)
    points, reference = [], None
    for _, summary in runs:
        auc = (summary.get("final") or {}).get("auc")
        eps = spent_epsilon(summary)
        if auc is None:
            continue
        if eps is None:
            reference = auc
        else:
            points.append((eps, auc))
    if non_private is not None:
        reference = json.loads((non_private / "summary.json").read_text())["final"]["auc"]
    if not points:
        raise FedCRMError(f"no DP run with a summary.json under {runs_dir}")
    out = out or runs_dir / "privacy_utility.png"
    plot_privacy_utility(
        points, out, non_private_auc=reference, title=f"{len(points)} DP runs under {runs_dir.name}"
    )
    (out.parent / "privacy_utility.json").write_text(
        json.dumps(
            {
                "points": [{"epsilon": e, "auc": a} for e, a in sorted(points)],
                "non_private_auc": reference,
            },
            indent=2,
        )
    )
    return out
