"""Rich progress output for simulations: one line per round (tree) and a final table.

The lines are :mod:`fedcrm.server.round_lines`' (the deployed ServerApp logs the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcrm.config import RunConfig
from fedcrm.server import round_lines


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


class RoundPrinter:
    """Prints per-round progress (round, seconds, loss, AUC, epsilon) and the summary."""

    def __init__(self, cfg: RunConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self._status: Any = None

    def say(self, text: str) -> None:
        """A progress message."""
        self.console.print(f"[dim]·[/dim] {escape(text)}")

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """A spinner while the federation runs."""
        with self.console.status("starting the Flower simulation (Ray actors)...") as status:
            self._status = status
            try:
                yield
            finally:
                self._status = None

    def round(self, rec: dict[str, Any]) -> None:
        """Called by the ServerApp after every round (tree) and after the final evaluation."""
        if "trained_round" not in rec:
            final = round_lines.final_line(self.cfg, rec)
            self.console.print(f"[bold]final[/bold]{escape(final.removeprefix('final'))}")
            return
        line = round_lines.round_line(self.cfg, rec)
        warn = f"  [yellow]{escape(line.problems)}[/yellow]" if line.problems else ""
        self.console.print(escape(line.text) + warn, highlight=False)
        n, total = rec["trained_round"], round_lines.planned(self.cfg)
        if self._status is not None and n < total:
            doing = "growing tree" if round_lines.unit(self.cfg) == "tree" else "round"
            self._status.update(f"{doing} {n + 1}/{total} running...")

    def final(self, summary: dict[str, Any]) -> None:
        """Federated vs centralized vs local-only, side by side, and how the run ended."""
        table = Table(title=f"fedcrm: {summary['model']} on {summary.get('data', '?')} data")
        table.add_column("model")
        for m in ("auc", "f1", "logloss", "accuracy"):
            table.add_column(m, justify="right")
        rows = [("federated", summary["final"])]
        for name, values in (summary.get("baselines") or {}).items():
            rows.append((name.replace("_", "-"), values))
        for name, values in rows:
            table.add_row(
                name, *(_fmt(values.get(m)) for m in ("auc", "f1", "logloss", "accuracy"))
            )
        self.console.print(table)
        priv = summary.get("privacy", {})
        if priv.get("per_branch"):
            eps = [v.get("epsilon") or 0.0 for v in priv["per_branch"].values()]
            self.console.print(
                f"privacy: {priv['mode']}, ε per branch up to {max(eps):.3g}"
                f" ({priv.get('accountant')})"
            )
        status = escape(round_lines.status_line(self.cfg, summary))
        stopped = summary.get("status") == round_lines.STATUS_STOPPED_EARLY
        self.console.print(f"[yellow]{status}[/yellow]" if stopped else status, highlight=False)
        self.console.print(f"total {summary['timings'].get('total_s', 0):.1f} s")
