"""What every ``fedcrm`` command group shares: the consoles and the exit codes.

Exit codes: 0 success, 1 the checked thing is invalid (data, ledger, a failed
verification), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

Handler = Callable[[argparse.Namespace], int]

EXIT_INVALID = 1
EXIT_USAGE = 2


def _console(*, stderr: bool) -> Console:
    # Piped or redirected output is parsed by scripts, one message per line: never
    # wrap it (rich would wrap at 80 columns without a terminal).
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    width = int(os.environ.get("COLUMNS", "0") or 0) or 10_000
    return Console(stderr=stderr, width=width, soft_wrap=True)


console = _console(stderr=True)
"""Progress, notes and errors (stderr)."""
out = _console(stderr=False)
"""Results a user may pipe on (stdout)."""


def say(text: str) -> None:
    """One progress line on stderr, never wrapped, no markup."""
    print(text, file=sys.stderr, flush=True)


def handles(
    parser: argparse.ArgumentParser, handler: Handler, *, error_exit: int = EXIT_USAGE
) -> None:
    """Make ``parser`` dispatch to ``handler``; a :class:`FedCRMError` exits with ``error_exit``."""
    parser.set_defaults(handler=handler, error_exit=error_exit)


def subparsers(parser: argparse.ArgumentParser, dest: str) -> Any:
    """The required sub-command group of ``parser``."""
    return parser.add_subparsers(dest=dest, required=True)
