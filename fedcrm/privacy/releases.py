"""Replies a branch keeps so that a repeated request gets the same bytes back.

A billed step is computed once. Its exact reply (a flat payload: numpy arrays,
strings, numbers, bytes, lists of bytes) is written to the branch's state
folder before it leaves, and its SHA-256 (:func:`payload_digest`) is recorded
in the ledger's ``release`` entry. A repeat of the same request is answered
from here; a lost file means the step is refused, never recomputed with fresh
noise (two noisy answers to one question would average the noise away).

Files: ``<state>/releases/<run_id>/<step>.npz`` (arrays only, no pickle),
mode 0600. Runs other than the :data:`KEEP_RUNS` most recent are deleted.
Each step may also hold a secret seed (:meth:`ReleaseStore.step_seed`), e.g.
the customer sample of a tree whose levels are released one by one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.errors import LedgerError

Payload = dict[str, Any]
KEEP_RUNS = 8
_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _safe(name: str, what: str) -> str:
    if not _SAFE.fullmatch(name) or name.startswith("."):
        raise LedgerError(f"{what} {name!r} cannot name a file (letters, digits, . _ - only)")
    return name


def _encode(payload: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays, and a JSON description of how to rebuild every value."""
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, Any] = {}
    for i, (key, value) in enumerate(sorted(payload.items())):
        if isinstance(value, np.ndarray):
            arrays[f"a{i}"] = value
            layout[key] = ["array", f"a{i}"]
        elif isinstance(value, bytes):
            arrays[f"a{i}"] = np.frombuffer(value, dtype=np.uint8)
            layout[key] = ["bytes", f"a{i}"]
        elif isinstance(value, list) and all(isinstance(v, bytes) for v in value) and value:
            names = []
            for j, chunk in enumerate(value):
                arrays[f"a{i}_{j}"] = np.frombuffer(chunk, dtype=np.uint8)
                names.append(f"a{i}_{j}")
            layout[key] = ["bytes-list", names]
        elif isinstance(value, (str, int, float, bool)) or value is None:
            layout[key] = ["value", value]
        elif isinstance(value, list):
            layout[key] = ["value", [float(v) if isinstance(v, np.floating) else v for v in value]]
        else:
            raise TypeError(f"cannot keep a {type(value).__name__} in a release payload")
    return arrays, layout


def payload_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 hex of a payload's exact bytes (what the ledger's ``reply`` records)."""
    arrays, layout = _encode(payload)
    h = hashlib.sha256(json.dumps(layout, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


class ReleaseStore:
    """The kept replies of one branch (``state_dir/releases``)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir) / "releases"

    def _path(self, run_id: str, step: str, suffix: str) -> Path:
        return self.root / _safe(run_id, "run id") / f"{_safe(step, 'step')}{suffix}"

    def save(self, run_id: str, step: str, payload: Mapping[str, Any]) -> str:
        """Keep ``payload`` for ``(run_id, step)``; returns its digest."""
        arrays, layout = _encode(payload)
        path = self._path(run_id, step, ".npz")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prune(run_id)
        tmp = path.with_name(path.name + ".tmp.npz")
        layout_bytes = np.frombuffer(json.dumps(layout, sort_keys=True).encode(), dtype=np.uint8)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            np.savez(fh, __layout__=layout_bytes, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        return payload_digest(payload)

    def load(self, run_id: str, step: str) -> Payload | None:
        """The kept payload of ``(run_id, step)``, or ``None``."""
        path = self._path(run_id, step, ".npz")
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            layout = json.loads(z["__layout__"].tobytes().decode())
            out: Payload = {}
            for key, (kind, ref) in layout.items():
                if kind == "array":
                    out[key] = z[ref]
                elif kind == "bytes":
                    out[key] = z[ref].tobytes()
                elif kind == "bytes-list":
                    out[key] = [z[r].tobytes() for r in ref]
                else:
                    out[key] = ref
        return out

    def step_seed(self, run_id: str, step: str) -> int:
        """A secret 128-bit seed of ``(run_id, step)``, made once from the OS (mode 0600)."""
        path = self._path(run_id, step, ".seed")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(16))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # the first process to get here wins
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return int.from_bytes(path.read_bytes(), "little")

    def _prune(self, keep_run: str) -> None:
        if not self.root.is_dir():
            return
        runs = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and p.name != keep_run),
            key=lambda p: p.stat().st_mtime,
        )
        for old in runs[: max(0, len(runs) - (KEEP_RUNS - 1))]:
            shutil.rmtree(old, ignore_errors=True)
