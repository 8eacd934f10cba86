"""A branch's computed features, kept on its own disk between messages.

In deployment each message runs in a fresh ClientApp process, so without
this every round would read, validate and featurise the whole export again
(1.8 s for 20,000 customers on one core, every message; a tree job exchanges
dozens of messages). The cache lives in the branch's ``cache-dir`` (node
config; ``fedcrm node start`` uses the branch folder's ``cache/``), never
leaves the branch, and holds what the export holds in another form: it is
created private (0700 directory, 0600 files) and should be deleted with the
export.

An entry is found by a fingerprint of

* every ``.csv``/``.parquet`` file of the export (relative path, size,
  modification time): a changed export is read again;
* the job's task settings, seed and the branch id;
* the source of the code that featurises (:data:`CODE_MODULES`): a new
  fedcrm version featurises again.

Only the newest :data:`KEEP` entries are kept. A cache that cannot be read or
written is reported in the branch's log and bypassed; it never fails a round.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

KEEP = 3
EXPORT_SUFFIXES = (".csv", ".parquet")
CODE_MODULES = (
    "fedcrm.data.contract",
    "fedcrm.data.reading",
    "fedcrm.data.csvfile",
    "fedcrm.data.feature_blocks",
    "fedcrm.data.values",
    "fedcrm.data.checks",
    "fedcrm.data.spec",
    "fedcrm.data.validate",
    "fedcrm.data.loader",
    "fedcrm.data.features",
    "fedcrm.data.dataset",
    "fedcrm.client.branch",
)
PREFIX = "features-"


def export_files(data_path: Path) -> list[list[Any]]:
    """``[relative path, size, mtime_ns]`` of every export file under ``data_path``."""
    out = []
    for path in sorted(data_path.rglob("*")):
        rel = path.relative_to(data_path)
        hidden = any(part.startswith(".") for part in rel.parts)
        if path.suffix.lower() in EXPORT_SUFFIXES and not hidden and path.is_file():
            st = path.stat()
            out.append([rel.as_posix(), st.st_size, st.st_mtime_ns])
    return out


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the featurising code's source (changes with every fedcrm change to it)."""
    h = hashlib.sha256()
    for name in CODE_MODULES:
        module = importlib.import_module(name)
        h.update(name.encode())
        h.update(Path(str(module.__file__)).read_bytes())
    return h.hexdigest()


def cache_key(data_path: Path, fingerprint: Mapping[str, Any]) -> str:
    """The entry name for ``data_path`` as it is now, under ``fingerprint``."""
    blob = json.dumps(
        {"files": export_files(data_path), "code": code_digest(), **fingerprint},
        sort_keys=True,
        default=str,
    )
    return PREFIX + hashlib.sha256(blob.encode()).hexdigest()[:32]


def _private(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def _prune(cache_dir: Path, keep: str) -> None:
    entries = sorted(
        (p for p in cache_dir.glob(PREFIX + "*") if p.is_dir() and p.name != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[KEEP - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def cached_features(
    cache_dir: Path,
    data_path: Path,
    *,
    fingerprint: Mapping[str, Any],
    compute: Callable[[], T],
    read: Callable[[Path], T],
    write: Callable[[Path, T], None],
) -> T:
    """``read`` the entry for the export as it is now, or ``compute`` and ``write`` one.

    Errors of ``compute`` (an invalid export) propagate; errors of the cache
    itself are logged and bypassed.
    """
    try:
        key = cache_key(data_path, fingerprint)
        entry = cache_dir / key
        if entry.is_dir():
            try:
                value = read(entry)
                os.utime(entry)  # most recently used: pruned last
                return value
            except Exception as exc:  # noqa: BLE001 - a broken entry is recomputed
                log.warning("feature cache entry %s unreadable (%s); recomputing", key, exc)
                shutil.rmtree(entry, ignore_errors=True)
    except OSError as exc:
        log.warning("feature cache in %s unusable (%s); featurising the export", cache_dir, exc)
        return compute()
    value = compute()
    try:
        _private(cache_dir)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir))
        write(tmp, value)
        for f in tmp.iterdir():
            os.chmod(f, 0o600)
        try:
            tmp.rename(entry)
        except OSError:  # another process wrote the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(cache_dir, keep=key)
    except OSError as exc:
        log.warning("feature cache in %s not written (%s)", cache_dir, exc)
    return value
