"""The ``flwr`` CLI's connection file (``$FLWR_HOME/config.toml``, default ``~/.flwr``)."""

from __future__ import annotations

import os
from pathlib import Path

import tomli
import tomli_w

from fedcrm.deploy.provision import load_federation


def flwr_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$FLWR_HOME``, else ``~/.flwr``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("FLWR_HOME")
    return Path(env) if env else Path.home() / ".flwr"


def write_connection(
    federation_dir: str | os.PathLike[str],
    *,
    name: str = "fedcrm",
    flwr_home: str | os.PathLike[str] | None = None,
    address: str | None = None,
) -> Path:
    """Add or replace ``[superlink.<name>]`` (TLS with the federation's CA) in config.toml."""
    fed = load_federation(federation_dir)
    home = globals()["flwr_home"](flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    data: dict = {}
    if path.exists():
        data = tomli.loads(path.read_text())
    links = data.setdefault("superlink", {})
    links.setdefault("default", name)
    ca = fed.path(fed.data["ca"]["cert"])
    links[name] = {
        "address": address or fed.server_address,
        "root-certificates": str(Path(str(ca)).resolve()),
    }
    path.write_text(tomli_w.dumps(data))
    return path
