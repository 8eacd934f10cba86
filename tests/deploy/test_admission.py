"""The admitted list (``server/admitted.json``) and ``fedcrm server register|unregister|...``.

Registration on a running SuperLink, and its repetition after a SuperLink
restart, are exercised with real processes in ``tests/integration``; here the
SuperLink is down (a free port).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedcrm.cli import main
from fedcrm.deploy.admission import (
    ADMITTED,
    REPLACED,
    ROTATED,
    UNCHANGED,
    admit_request,
    admitted_path,
    load,
    record_node_ids,
    remove_branch,
    revoke_node_key,
    revoke_signing_key,
)
from fedcrm.deploy.branch_dir import init_branch_dir, load_branch_dir, rotate_keys
from fedcrm.deploy.provision import Federation, init_federation, load_federation
from fedcrm.deploy.request import make_request, read_request
from fedcrm.deploy.superlink import register_when_up
from fedcrm.errors import ConfigError
from fedcrm.identity import RETIRED, REVOKED
from fedcrm.privacy import signing

from .conftest import free_port


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    return init_federation(tmp_path / "fed", f"127.0.0.1:{free_port()}")


@pytest.fixture
def b1(tmp_path: Path) -> Path:
    """Branch b1's folder (keys made, request not yet registered)."""
    return init_branch_dir(tmp_path / "b1", "b1")[0].root


def _admit(fed: Federation, branch: Path, **kw: bool) -> str:
    return admit_request(fed, read_request(load_branch_dir(branch).request), **kw).change


def test_a_first_request_admits_the_branch_with_its_public_keys(fed: Federation, b1: Path) -> None:
    assert load(fed).branches == {}
    assert _admit(fed, b1) == ADMITTED
    bd = load_branch_dir(b1)
    identity = load(fed).get("b1")
    assert identity is not None and identity.admitted and identity.node_id is None
    assert identity.node_public_key == bd.node_public_key.read_text().strip()
    assert identity.signing_key is not None
    assert identity.signing_key.key_id == signing.key_id(signing.load_private_key(bd.signing_key))
    assert identity.agreement_public_key == bd.agreement_public_key.read_text()
    assert "PRIVATE" not in admitted_path(fed).read_text()
    assert json.loads(admitted_path(fed).read_text())["format"] == 2
    assert _admit(fed, b1) == UNCHANGED  # the same request again changes nothing


def test_a_rotation_signed_by_the_current_key_is_accepted(fed: Federation, b1: Path) -> None:
    _admit(fed, b1)
    record_node_ids(fed, {"b1": 17})
    bd = load_branch_dir(b1)
    old = load(fed).get("b1")
    assert old is not None and old.node_id == 17 and old.signing_key is not None
    rotate_keys(bd, node=True, signing_key=True)
    admission = admit_request(fed, read_request(bd.request))
    assert admission.change == ROTATED
    assert admission.retired_node_key == old.node_public_key  # to take off the SuperLink
    new = load(fed).get("b1")
    assert new is not None and new.admitted
    assert new.node_id is None  # a new node key is a new SuperNode
    assert new.node_public_key == bd.node_public_key.read_text().strip()
    statuses = {k.key_id: k.status for k in new.signing_keys}
    assert statuses[old.signing_key.key_id] == RETIRED  # old ledger entries still verify
    assert new.signing_key is not None and new.signing_key.key_id != old.signing_key.key_id


def test_a_replayed_old_rotation_is_refused(fed: Federation, b1: Path, tmp_path: Path) -> None:
    _admit(fed, b1)
    bd = load_branch_dir(b1)
    rotate_keys(bd, node=False, signing_key=True)
    first = tmp_path / "first.request.json"
    shutil.copyfile(bd.request, first)
    admit_request(fed, read_request(first))
    rotate_keys(bd, node=False, signing_key=True)
    admit_request(fed, read_request(bd.request))
    with pytest.raises(ConfigError, match=r"retired; a rotation needs a new key"):
        admit_request(fed, read_request(first))


def test_new_keys_for_an_admitted_branch_need_replace(fed: Federation, b1: Path) -> None:
    _admit(fed, b1)
    init_branch_dir(b1, "b1", overwrite=True)  # e.g. the branch lost its keys
    with pytest.raises(ConfigError, match=r"not a key rotation .*fingerprint .*--replace"):
        _admit(fed, b1)
    assert _admit(fed, b1, replace=True) == REPLACED
    identity = load(fed).get("b1")
    assert identity is not None and identity.admitted
    assert [k.status for k in identity.signing_keys] == [RETIRED, "current"]


def test_a_rotation_for_a_branch_not_admitted_is_refused(fed: Federation, b1: Path) -> None:
    rotate_keys(load_branch_dir(b1), node=True, signing_key=False)
    with pytest.raises(ConfigError, match="not admitted; register its first request"):
        _admit(fed, b1)


def test_a_request_carrying_another_branchs_node_key_is_refused(
    fed: Federation, b1: Path, tmp_path: Path
) -> None:
    _admit(fed, b1)
    b2, _ = init_branch_dir(tmp_path / "b2", "b2")
    stolen = make_request(
        branch_id="b2",
        node_public_key=load_branch_dir(b1).node_public_key.read_text(),
        signing_key=signing.load_private_key(b2.signing_key),
        agreement_public_key=b2.agreement_public_key.read_text(),
    )
    b2.request.write_text(json.dumps(stolen))
    with pytest.raises(ConfigError, match="registered for branch b1"):
        admit_request(fed, read_request(b2.request))
    assert load(fed).get("b2") is None


def test_removing_keeps_the_keys_and_a_comeback_needs_replace(fed: Federation, b1: Path) -> None:
    _admit(fed, b1)
    remove_branch(fed, "b1")
    identity = load(fed).get("b1")
    assert identity is not None and identity.status == "removed" and not identity.admitted
    assert identity.signing_key is not None  # its ledgers still verify
    assert load(fed).admitted() == {}
    with pytest.raises(ConfigError, match=r"--branch-id b1 is not admitted"):
        remove_branch(fed, "b1")
    with pytest.raises(ConfigError, match="--replace"):
        _admit(fed, b1)
    assert _admit(fed, b1, replace=True) == REPLACED
    assert load(fed).get("b1").admitted  # type: ignore[union-attr]


def test_revoking_the_current_signing_key_shuts_the_branch_out(fed: Federation, b1: Path) -> None:
    _admit(fed, b1)
    key_id = load(fed).get("b1").signing_key.key_id  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="--key-id 0000000000000000 is not a signing key"):
        revoke_signing_key(fed, "b1", "0" * 16)
    after = revoke_signing_key(fed, "b1", key_id)
    assert not after.admitted and after.signing_keys[0].status == REVOKED
    # A rotation signed by the revoked key is no rotation: new keys need --replace.
    rotate_keys(load_branch_dir(b1), node=False, signing_key=True)
    with pytest.raises(ConfigError, match="--replace"):
        _admit(fed, b1)


def test_revoking_the_node_key_waits_for_a_rotation(fed: Federation, b1: Path) -> None:
    _admit(fed, b1)
    old = revoke_node_key(fed, "b1")
    identity = load(fed).get("b1")
    assert identity is not None and not identity.admitted
    assert identity.revoked_node_keys == (old,)
    rotate_keys(load_branch_dir(b1), node=True, signing_key=False)
    assert _admit(fed, b1) == ROTATED
    assert load(fed).get("b1").admitted  # type: ignore[union-attr]


def test_a_corrupt_or_old_list_is_reported_and_left_untouched(fed: Federation, b1: Path) -> None:
    path = admitted_path(fed)
    for text in ("{ broken", json.dumps({"format": 1, "branches": {}})):
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"not a fedcrm admitted list .*left untouched"):
            _admit(fed, b1)
        assert path.read_text() == text


def test_cli_register_while_the_superlink_is_down(
    fed: Federation, b1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b2, _ = init_branch_dir(tmp_path / "b2", "b2")
    argv = ["server", "register", "--federation", str(fed.root), "--format", "json",
            "--request", str(b1 / "b1.request.json"), "--request", str(b2.request)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "registered when `fedcrm server start` starts it" in out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["success"] is True
    entry = report["branches"]["b1"]
    assert entry["change"] == ADMITTED and entry["registered"] is False
    assert entry["fingerprint"] == read_request(b1 / "b1.request.json").fingerprint
    assert sorted(load(fed).admitted()) == ["b1", "b2"]

    assert main(["server", "unregister", "--federation", str(fed.root), "--branch-id", "b2"]) == 0
    assert sorted(load(fed).admitted()) == ["b1"]
    key_id = load(fed).get("b1").signing_key.key_id  # type: ignore[union-attr]
    argv = ["server", "revoke-key", "--federation", str(fed.root), "--branch-id", "b1"]
    assert main([*argv, "--key-id", key_id]) == 0
    assert "holds no current signing key" in capsys.readouterr().out
    assert load(fed).admitted() == {}


def test_cli_register_refuses_a_tampered_request_and_changes_nothing(
    fed: Federation, b1: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = b1 / "b1.request.json"
    body = json.loads(path.read_text())
    body["branch_id"] = "b9"
    path.write_text(json.dumps(body))
    assert main(["server", "register", "--federation", str(fed.root), "--request", str(path)]) == 2
    assert "signature does not verify" in capsys.readouterr().err
    assert not admitted_path(fed).exists()


def test_cli_nodes_lists_branches_with_node_ids_when_the_superlink_is_down(
    fed: Federation, b1: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _admit(fed, b1)
    record_node_ids(fed, {"b1": 4242})
    assert main(["server", "nodes", "--federation", str(fed.root), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["superlink"] is False
    (row,) = report["nodes"]
    assert row["branch"] == "b1" and row["node_id"] == 4242 and row["status"] is None
    assert row["admission"] == "admitted"
    assert main(["server", "nodes", "--federation", str(fed.root)]) == 0
    captured = capsys.readouterr()
    assert "b1" in captured.out and "4242" in captured.out
    assert "does not answer" in captured.err


def test_nothing_to_register_says_how_to_admit(fed: Federation) -> None:
    said: list[str] = []
    assert register_when_up(load_federation(fed.root), alive=lambda: True, say=said.append) == []
    assert "fedcrm server register" in said[0] and "--request" in said[0]


def test_a_superlink_that_died_is_not_waited_for(fed: Federation, b1: Path) -> None:
    _admit(fed, b1)
    said: list[str] = []
    assert register_when_up(fed, alive=lambda: False, say=said.append, timeout=60) == []
    assert said == []
