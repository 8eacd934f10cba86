"""Ledger files on disk: exclusive locks, whole reads and durable appends.

A ledger is only ever appended to, under an exclusive advisory lock
(:func:`locked`), so that a check of its content and the append that follows
are one step even with concurrent writers. :func:`append_bytes` writes and
fsyncs an append and, if it fails part-way, cuts the file back to its former
length: a ledger never ends in half an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fedcrm.errors import LedgerError


@contextlib.contextmanager
def locked(path: Path) -> Iterator[int]:
    """Open ``path`` for appending under an exclusive advisory lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def read_all(fd: int) -> bytes:
    """The whole file behind ``fd``."""
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def append_bytes(fd: int, data: bytes, source: str) -> None:
    """Append ``data`` durably; on failure cut the file back to its old length."""
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
            os.fsync(fd)
        raise LedgerError(f"{source}: could not append to the ledger: {exc.strerror}") from None
