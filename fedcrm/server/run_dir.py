"""The run directory the ServerApp writes (see DESIGN.md "Run directory")."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


class RunDir:
    """Writes ``rounds.jsonl``, ``summary.json``, ``ledger/``, the model and checkpoints."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "ledger").mkdir(exist_ok=True)
        (self.path / "plots").mkdir(exist_ok=True)

    def append_round(self, record: dict[str, Any]) -> None:
        """Append one round's record to ``rounds.jsonl``."""
        with open(self.path / "rounds.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")

    def rounds(self) -> list[dict[str, Any]]:
        """Every round record written so far."""
        path = self.path / "rounds.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as pretty JSON (NaN becomes null)."""
        path = self.path / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    def copy_ledger_entries(self, branch_id: str, entries: list[dict[str, Any]]) -> None:
        """Extend the server's copy of a branch's ledger (chain checked, never re-signed)."""
        if not entries:
            return
        from fedcrm.privacy.ledger import append_entries

        append_entries(self.ledger_path(branch_id), entries)

    def ledger_path(self, branch_id: str) -> Path:
        """Where the server keeps its copy of ``branch_id``'s ledger."""
        return self.path / "ledger" / f"{branch_id}.jsonl"

    def save_model(self, weights: list[np.ndarray], card: dict[str, Any]) -> Path:
        """Save released weights (``model.npz``) with their model card."""
        path = self.path / "model.npz"
        np.savez(path, *weights)
        self.write_json("model_card.json", card)
        return path
