"""The run directory the ServerApp writes (its files: the README's run-directory table)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
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


@dataclass
class TreeState:
    """Where a tree job stands after an exchange: what a resumed job sends next.

    ``arrays`` is the agreed model (bin edges, finished trees, the tree being
    grown), ``pending`` the aggregate of the last release (plain, encrypted or
    None) and ``step`` the branches' description of that release.
    """

    arrays: dict[str, np.ndarray]
    pending: Any
    step: dict[str, Any] = field(default_factory=dict)


class RunDir:
    """Writes ``rounds.jsonl``, ``summary.json``, the model and checkpoints."""

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

    # ---------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: dict[str, Any], global_state: Any) -> None:
        """Atomically replace ``checkpoint/`` with ``state`` and the global model.

        ``global_state`` is the LSTM's weights (a list of arrays), the
        :class:`~fedcrm.server.secure_agg.SecureState` of an encrypted job (the
        last step's masked sum), or a :class:`TreeState` (trees so far, the
        pending aggregate, the step).
        """
        import shutil

        final = self.path / "checkpoint"
        tmp = self.path / "checkpoint.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        if isinstance(global_state, TreeState):
            np.savez(tmp / "trees.npz", **global_state.arrays)
            pending = global_state.pending
            if pending is None:
                kind = "none"
            elif isinstance(pending, np.ndarray):
                np.save(tmp / "pending.npy", pending)
                kind = "plaintext"
            else:
                save_records(tmp / "pending_encrypted", pending.to_records())
                kind = "encrypted"
            state = {**state, "global": "trees", "pending": kind, "step": global_state.step}
        elif isinstance(global_state, list):
            np.savez(tmp / "global.npz", *global_state)
            state = {**state, "global": "plaintext"}
        else:
            save_records(tmp / "global_encrypted", global_state.to_records())
            state = {**state, "global": "encrypted"}
        (tmp / "state.json").write_text(json.dumps(_jsonable(state), indent=2))
        old = self.path / "checkpoint.old"
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.replace(old)
        tmp.replace(final)
        if old.exists():
            shutil.rmtree(old)

    def load_checkpoint(self) -> tuple[dict[str, Any], Any] | None:
        """The last checkpoint's state and global model, or None."""
        final = self.path / "checkpoint"
        if not (final / "state.json").exists():
            final = self.path / "checkpoint.old"  # crashed between the two renames
            if not (final / "state.json").exists():
                return None
        state = json.loads((final / "state.json").read_text())
        if state["global"] == "trees":
            with np.load(final / "trees.npz") as z:
                arrays = {k: z[k] for k in z.files}
            pending: Any = None
            if state["pending"] == "plaintext":
                pending = np.load(final / "pending.npy")
            elif state["pending"] == "encrypted":
                from fedcrm.server.secure_agg import SecureState

                pending = SecureState.from_records(load_records(final / "pending_encrypted"))
            return state, TreeState(arrays, pending, dict(state["step"]))
        if state["global"] == "plaintext":
            with np.load(final / "global.npz") as z:
                weights = [z[f"arr_{i}"] for i in range(len(z.files))]
            return state, weights
        from fedcrm.server.secure_agg import SecureState

        return state, SecureState.from_records(load_records(final / "global_encrypted"))

    def truncate_rounds(self, last_round: int) -> None:
        """Drop ``rounds.jsonl`` records of rounds after ``last_round`` (before a resume)."""
        kept = [r for r in self.rounds() if r.get("trained_round", last_round + 1) <= last_round]
        path = self.path / "rounds.jsonl"
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def save_model(self, weights: list[np.ndarray], card: dict[str, Any]) -> Path:
        """Save released weights (``model.npz``) with their model card."""
        path = self.path / "model.npz"
        np.savez(path, *weights)
        self.write_json("model_card.json", card)
        return path


def save_records(directory: Path, records: dict[str, Any]) -> None:
    """Write a flat record dict (str/int/float/bytes/list[bytes]) without pickle."""
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {}
    for key, value in records.items():
        if isinstance(value, bytes):
            (directory / f"{key}.bin").write_bytes(value)
            meta[key] = {"bytes": f"{key}.bin"}
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            names = []
            for i, chunk in enumerate(value):
                name = f"{key}.{i}.bin"
                (directory / name).write_bytes(chunk)
                names.append(name)
            meta[key] = {"chunks": names}
        else:
            meta[key] = {"value": value}
    (directory / "records.json").write_text(json.dumps(meta))


def load_records(directory: Path) -> dict[str, Any]:
    """Read what :func:`save_records` wrote."""
    meta = json.loads((directory / "records.json").read_text())
    out: dict[str, Any] = {}
    for key, spec in meta.items():
        if "bytes" in spec:
            out[key] = (directory / spec["bytes"]).read_bytes()
        elif "chunks" in spec:
            out[key] = [(directory / n).read_bytes() for n in spec["chunks"]]
        else:
            out[key] = spec["value"]
    return out
