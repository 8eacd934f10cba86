"""One checker for every id that becomes part of a path: branch ids, run ids, model names.

An id is 1 to 64 ASCII letters, digits, ``-`` and ``_``, not starting with
``-``: no separators, dots or spaces, so ``../../escaped`` can never leave the
folder it names a file in, and no id can pass for a command-line flag.
"""

from __future__ import annotations

import re

from fedcrm.errors import ConfigError

MAX_LENGTH = 64
_ID = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{MAX_LENGTH - 1}}}")


def is_id(value: object) -> bool:
    """Whether ``value`` is a safe id."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: object, what: str) -> str:
    """``value`` if it is a safe id, else a :class:`ConfigError` naming ``what``.

    The message shows the value only through ``repr`` cut to 80 characters: ids
    are not customer data, but a path-like value should be visible to whoever
    has to fix it.
    """
    if not is_id(value):
        shown = repr(value)[:80]
        raise ConfigError(
            f"{what} {shown} is not a safe id: use 1-{MAX_LENGTH} letters, digits, '-' and '_' "
            "(not starting with '-')"
        )
    return str(value)
