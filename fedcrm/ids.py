"""Path-safe ids: branch ids, run ids and model names become file names.

:func:`check_id` accepts ASCII letters, digits, ``-`` and ``_``, 1 to
:data:`MAX_ID_LENGTH` characters, not starting with ``-`` (it would read as a
flag); nothing else, so an id can never name another directory (``../x``,
``/x``, ``.``). No other fedcrm import but the errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fedcrm.errors import ConfigError

MAX_ID_LENGTH = 64
_ID = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{MAX_ID_LENGTH - 1}}}")


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is a path-safe id (see the module docstring)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: object, field_name: str) -> str:
    """Return ``value`` when it is a path-safe id, else raise naming ``field_name``.

    Parameters
    ----------
    value
        A branch id, run id or model name, as given.
    field_name
        What to name in the error: a flag (``--branch-id``), a node-config key
        (``node config `branch-id```) or a message field (``run id``).

    Raises
    ------
    ConfigError
        Saying which characters are allowed; the offending value is shown
        shortened (an id is never customer data).
    """
    if is_valid_id(value):
        return str(value)
    shown = repr(value)[:40] + ("..." if len(repr(value)) > 40 else "")
    raise ConfigError(
        f"{field_name} {shown} is not a valid id: use 1-{MAX_ID_LENGTH} ASCII letters, digits, "
        "'-' and '_', not starting with '-' (ids become file names)"
    )


def id_path(
    directory: str | os.PathLike[str],
    ident: str,
    field_name: str,
    *,
    prefix: str = "",
    suffix: str = "",
) -> Path:
    """``directory / (prefix + ident + suffix)`` after checking ``ident`` with :func:`check_id`.

    ``prefix`` and ``suffix`` are the caller's constants (``"model-"``,
    ``".jsonl"``); only ``ident`` comes from outside.

    Raises
    ------
    ConfigError
        When ``ident`` is not a path-safe id (naming ``field_name``).
    """
    return Path(directory) / f"{prefix}{check_id(ident, field_name)}{suffix}"


__all__ = ["MAX_ID_LENGTH", "check_id", "id_path", "is_valid_id"]
