"""Rich progress output for simulations: one line per round and a final table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from fedcrm.config import RunConfig


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
        self.console.print(f"[dim]·[/dim] {text}")

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
        """Called by the ServerApp after every round and after the final evaluation."""
        total = self.cfg.federation.rounds
        if self.cfg.model.name == "gbdt" and "trained_round" in rec:
            n = rec["trained_round"]
            self.console.print(
                f"trees {n}/{self.cfg.model.n_estimators}  {rec.get('seconds', 0):5.1f} s  "
                f"branches {rec.get('branches_aggregated', '-')}"
            )
            if self._status is not None:
                self._status.update(f"growing tree {n + 1}...")
            return
        if "trained_round" in rec:
            r = rec["trained_round"]
            eps = rec.get("epsilon") or {}
            eps_txt = f"  ε max {max(eps.values()):.3g}" if eps else ""
            problems = rec.get("problems") or {}
            warn = f"  [yellow]{len(problems)} branch problem(s)[/yellow]" if problems else ""
            self.console.print(
                f"round {r}/{total}  {rec.get('seconds', 0):5.1f} s  "
                f"train loss {_fmt(rec.get('train_loss'))}  "
                f"AUC(after round {r - 1}) {_fmt(rec.get('auc'))}  "
                f"branches {rec.get('branches_aggregated')}/{rec.get('branches_sampled')}"
                f"{eps_txt}{warn}"
            )
            if self._status is not None and r < total:
                self._status.update(f"round {r + 1}/{total} running...")
        else:
            self.console.print(
                f"[bold]final[/bold] (after round {rec['round']}): AUC {_fmt(rec.get('auc'))}  "
                f"F1 {_fmt(rec.get('f1'))}  log loss {_fmt(rec.get('logloss'))}"
            )

    def final(self, summary: dict[str, Any]) -> None:
        """Federated vs centralized vs local-only, side by side."""
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
        if summary.get("stopped_reason"):
            self.console.print(f"[yellow]stopped early:[/yellow] {summary['stopped_reason']}")
        self.console.print(f"total {summary['timings'].get('total_s', 0):.1f} s")
