"""Attack tests: what a hostile server, branch or file may send, and what must not follow.

Each test plays the attacker through a real entry point (a command, a node
config, a message, a file) and checks the damage did not happen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

#: An id that, used as a file name, would climb out of its folder.
ESCAPE = "../../escaped"


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Callable[[], list[Path]]]:
    """A working folder two levels down, and a function listing what ``ESCAPE`` created.

    ``ESCAPE`` used as a file name in the folder (or in a folder below it) would
    land beside it or above it, still inside ``tmp_path``; nothing legitimate
    has "escaped" in its name, so any such path is damage.
    """
    work = tmp_path / "outer" / "inner"
    work.mkdir(parents=True)

    def escaped() -> list[Path]:
        return sorted(tmp_path.rglob("*escaped*"))

    return work, escaped
