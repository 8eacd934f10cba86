"""The admission list (``server/admitted.json``) and ``fedcrm server register|unregister``.

Registration on a running SuperLink, and its repetition after a SuperLink
restart, are exercised with real processes in ``tests/integration``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcrm.cli import main
from fedcrm.deploy.admission import (
    admit,
    admitted_path,
    key_bytes,
    load_admitted,
    register_when_up,
    revoke,
)
from fedcrm.deploy.provision import init_federation, load_federation
from fedcrm.errors import ConfigError, KeyFileError

from .conftest import free_port


@pytest.fixture
def fed_dir(tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    # A free port nobody listens on: the SuperLink is "down".
    init_federation(out, ["b1", "b2"], f"127.0.0.1:{free_port()}", he=False)
    return out


def test_admitting_records_the_branch_public_key(fed_dir: Path) -> None:
    fed = load_federation(fed_dir)
    assert load_admitted(fed) == {}
    key = admit(fed, "b1")
    assert key == (fed_dir / "public" / "nodes" / "b1.pub").read_text().strip()
    assert load_admitted(fed) == {"b1": key}
    assert len(key_bytes(key, "test")) > 0
    data = json.loads(admitted_path(fed).read_text())
    assert data["format"] == 1 and "admitted" in data["branches"]["b1"]
    assert "PRIVATE" not in admitted_path(fed).read_text()


def test_revoking_takes_the_branch_off(fed_dir: Path) -> None:
    fed = load_federation(fed_dir)
    admit(fed, "b1")
    admit(fed, "b2")
    revoke(fed, "b1")
    assert sorted(load_admitted(fed)) == ["b2"]
    with pytest.raises(ConfigError, match=r"--branch-id b1 is not admitted \(admitted: b2\)"):
        revoke(fed, "b1")


def test_a_branch_without_a_node_key_names_the_flag(fed_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--branch-id b9: no node key"):
        admit(load_federation(fed_dir), "b9")


def test_a_key_flower_would_refuse_is_refused(fed_dir: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    bad = tmp_path / "ed25519.pub"
    bad.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    fed = load_federation(fed_dir)
    with pytest.raises(KeyFileError, match=r"--public-key .*NIST curve"):
        admit(fed, "b1", bad)
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(KeyFileError, match="not an OpenSSH public key"):
        admit(fed, "b1", tmp_path / "junk.pub")
    assert load_admitted(fed) == {}  # nothing half-written


def test_a_corrupt_list_is_reported_and_left_untouched(fed_dir: Path) -> None:
    fed = load_federation(fed_dir)
    path = admitted_path(fed)
    path.write_text("{ broken")
    with pytest.raises(ConfigError, match=r"not a fedcrm admission list .*left untouched"):
        admit(fed, "b1")
    assert path.read_text() == "{ broken"


def test_register_while_the_superlink_is_down_admits_for_the_next_start(
    fed_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["server", "register", "--federation", str(fed_dir), "--all", "--format", "json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "registered when `fedcrm server start` starts it" in out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["success"] is True
    assert report["branches"]["b1"] == {"admitted": True, "registered": False}
    assert sorted(load_admitted(load_federation(fed_dir))) == ["b1", "b2"]
    assert main(["server", "unregister", "--federation", str(fed_dir), "--branch-id", "b2"]) == 0
    assert sorted(load_admitted(load_federation(fed_dir))) == ["b1"]


def test_register_needs_branches(fed_dir: Path) -> None:
    assert main(["server", "register", "--federation", str(fed_dir)]) == 2


def test_nothing_to_register_says_how_to_admit(fed_dir: Path) -> None:
    said: list[str] = []
    assert register_when_up(load_federation(fed_dir), alive=lambda: True, say=said.append) == []
    assert "fedcrm server register" in said[0]


def test_a_superlink_that_died_is_not_waited_for(fed_dir: Path) -> None:
    fed = load_federation(fed_dir)
    admit(fed, "b1")
    said: list[str] = []
    assert register_when_up(fed, alive=lambda: False, say=said.append, timeout=60) == []
    assert said == []
