"""Shared helpers of the deployment tests: a free port, a federation, a branch, an export."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fedcrm.cli import build_parser

#: A FAB hash for ``--approve-app`` where no real app is built (``--check-only`` runs).
SOME_APP = "ab" * 32


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(argv: list[str]) -> int:
    """A ``fedcrm federation|server|node ...`` command, in this process."""
    args = build_parser().parse_args(argv)
    assert args.cmd in ("federation", "server", "node"), args.cmd
    return int(args.handler(args))


def branch_dir(fed: Path, branch: str = "b1") -> Path:
    """Where the :func:`fed` fixture's branch keeps its keys (beside the federation)."""
    return fed.parent / branch


def node_start(fed: Path, data: Path, *extra: str, approve: bool = True) -> int:
    """``fedcrm node start --check-only`` for branch b1 on a free runtime port.

    The branch pins :data:`SOME_APP` unless ``approve`` is false or ``extra``
    gives its own ``--approve-app``.
    """
    pin = ["--approve-app", SOME_APP] if approve and "--approve-app" not in extra else []
    return run_cli(
        ["node", "start", "--federation", str(fed / "kit"), "--branch-dir",
         str(branch_dir(fed)), "--data-path", str(data), "--runtime-port", str(free_port()),
         "--check-only", *pin, *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-branch synthetic export."""
    from fedcrm.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("crm") / "b1", branches=1, customers=40, seed=3)


def add_branch(fed: Path, branch: str) -> Path:
    """``fedcrm node init`` for ``branch`` beside ``fed``, its request admitted (SuperLink down)."""
    from fedcrm.deploy.admission import admit_request
    from fedcrm.deploy.branch_dir import init_branch_dir
    from fedcrm.deploy.provision import load_federation
    from fedcrm.deploy.request import read_request

    bd, _ = init_branch_dir(branch_dir(fed, branch), branch)
    admit_request(load_federation(fed), read_request(bd.request))
    return bd.root


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    """A federation whose SuperLink address is a free port, with branch b1 made and admitted."""
    from fedcrm.deploy.provision import init_federation

    out = tmp_path / "fed"
    init_federation(out, f"127.0.0.1:{free_port()}")
    add_branch(out, "b1")
    return out
