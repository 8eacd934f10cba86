"""Shared helpers of the deployment tests: a free port, a federation, a branch export."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fedcrm.cli import build_parser


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


def node_start(fed: Path, data: Path, *extra: str) -> int:
    """``fedcrm node start --check-only`` for branch b1 on a free runtime port."""
    return run_cli(
        ["node", "start", "--federation", str(fed), "--branch-id", "b1", "--data-path",
         str(data), "--runtime-port", str(free_port()), "--check-only", *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-branch synthetic export."""
    from fedcrm.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("crm") / "b1", branches=1, customers=40, seed=3)


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    """A federation of branch b1 (no HE keys) whose SuperLink address is a free port."""
    from fedcrm.deploy.provision import init_federation

    out = tmp_path / "fed"
    init_federation(out, ["b1"], f"127.0.0.1:{free_port()}", he=False)
    return out
