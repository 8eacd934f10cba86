"""Approved apps: a branch runs only the Flower apps (FABs) it has pinned.

In Flower 1.41 anyone who can reach the SuperLink's Control API (TLS with the
federation CA is all it asks) can ``flwr run`` an app, and that app's
ClientApp code then runs at every SuperNode, next to the branch's CRM export.
A branch closes that door by pinning the apps it has reviewed:

    fedcrm node app-hash .                       # the hash `flwr run .` will send
    fedcrm node start ... --approve-app <hash>   # or --approve-app DIR / FILE.fab

The SuperNode's warm SuperExec then checks the SHA-256 of the FAB bytes it is
handed (the same hash ``flwr run`` prints and the SuperLink keys the FAB by)
before installing it; any other app is answered with a Flower error reply that
names the hash, and none of its code is imported. Flower builds FABs
reproducibly (sorted files, a fixed timestamp), so the same source gives the
same hash at the central team and at the branch.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fedcrm.errors import ConfigError, FedCRMError

#: Environment variable through which the warm SuperExec hands the list to its children.
APPROVED_ENV = "FEDCRM_APPROVED_FABS"
_HASH = re.compile(r"^[0-9a-f]{64}$")


class AppNotApprovedError(FedCRMError):
    """The SuperLink asked this branch to run an app it has not approved."""


def fab_hash_of_dir(app: str | os.PathLike[str]) -> str:
    """The FAB hash ``flwr run <app>`` sends for the app directory ``app``.

    Raises
    ------
    ConfigError
        When ``app`` is not a Flower app directory (no ``pyproject.toml`` with
        a ``[tool.flwr.app]`` table) or Flower cannot build it.
    """
    from flwr.cli.build import build_fab_from_disk

    path = Path(app)
    if not (path / "pyproject.toml").is_file():
        raise ConfigError(f"{path}: not a Flower app directory (no pyproject.toml)")
    try:
        fab = build_fab_from_disk(path)
    except Exception as exc:  # noqa: BLE001 - Flower raises ValueError or click errors
        raise ConfigError(f"{path}: Flower cannot build an app from it: {exc}") from None
    return hashlib.sha256(fab).hexdigest()


def resolve_approved(values: Iterable[str], flag: str = "--approve-app") -> list[str]:
    """Turn ``--approve-app`` values (a hash, an app directory or a ``.fab`` file) into hashes.

    Raises
    ------
    ConfigError
        Naming ``flag`` and the value that is none of the three.
    """
    hashes: list[str] = []
    for raw in values:
        value = raw.strip()
        path = Path(value).expanduser()
        if _HASH.match(value.lower()):
            digest = value.lower()
        elif path.is_dir():
            digest = fab_hash_of_dir(path)
        elif path.is_file() and path.suffix == ".fab":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            raise ConfigError(
                f"{flag} {value!r}: expected a 64-hex-digit FAB hash (`fedcrm node app-hash`), "
                "a Flower app directory or a .fab file"
            )
        if digest not in hashes:
            hashes.append(digest)
    return hashes


def approved_from_env(environ: dict[str, str] | None = None) -> frozenset[str] | None:
    """The approved hashes handed down by the warm SuperExec; ``None`` when any app may run."""
    raw = (os.environ if environ is None else environ).get(APPROVED_ENV)
    if raw is None:
        return None
    return frozenset(h for h in raw.split(",") if h)


def check_fab(fab: bytes, approved: frozenset[str]) -> str:
    """Return the FAB's hash, or raise :class:`AppNotApprovedError` when it is not approved."""
    digest = hashlib.sha256(fab).hexdigest()
    if digest not in approved:
        raise AppNotApprovedError(
            f"this branch runs only the apps it approved; FAB {digest} is not one of them "
            "(the branch adds it with `fedcrm node start --approve-app`)"
        )
    return digest


def guard_fab_install(approved: frozenset[str]) -> None:
    """Make this process's ``run_clientapp`` check each FAB before installing it.

    Called in a warm SuperExec child before Flower's ``run_clientapp``: the
    check wraps the FAB installation step, so an unapproved app is refused
    before any of its files is written or imported, and Flower's own error
    path sends the refusal (with its reason) back to the server.
    """
    import flwr.supernode.runtime.run_clientapp as runner

    install: Callable[..., Any] = runner.install_from_fab
    if getattr(install, "_fedcrm_guarded", False):
        return

    def checked_install(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(fab_file, bytes):
            raise AppNotApprovedError("this branch runs only approved apps given as FAB bytes")
        check_fab(fab_file, approved)
        return install(fab_file, *args, **kwargs)

    checked_install._fedcrm_guarded = True  # type: ignore[attr-defined]
    runner.install_from_fab = checked_install  # type: ignore[assignment]
