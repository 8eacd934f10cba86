"""``fedcrm node init`` and ``fedcrm node rotate-keys``: keys born at the branch."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcrm.cli import main
from fedcrm.deploy.branch_dir import init_branch_dir, load_branch_dir, rotate_keys
from fedcrm.deploy.request import read_request
from fedcrm.errors import ConfigError
from fedcrm.privacy import signing


@pytest.fixture
def branch(tmp_path: Path) -> Path:
    init_branch_dir(tmp_path / "b1", "b1")
    return tmp_path / "b1"


def test_node_init_makes_three_private_keys_readable_only_by_the_owner(branch: Path) -> None:
    bd = load_branch_dir(branch)
    for key in (bd.node_key, bd.signing_key, bd.agreement_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for folder in (branch, bd.keys):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    node = serialization.load_ssh_private_key(bd.node_key.read_bytes(), password=None)
    assert isinstance(node, ec.EllipticCurvePrivateKey) and node.curve.name == "secp384r1"
    assert bd.node_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    signing.load_private_key(bd.signing_key)
    agreement = signing.load_agreement_private_key(bd.agreement_key)
    assert signing.load_agreement_public_key(bd.agreement_public_key).public_bytes_raw() == (
        agreement.public_key().public_bytes_raw()
    )


def test_flower_accepts_the_node_public_key(branch: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(load_branch_dir(branch).node_public_key)


def test_the_request_holds_public_keys_only_and_verifies(branch: Path) -> None:
    bd = load_branch_dir(branch)
    text = bd.request.read_text()
    assert "PRIVATE" not in text
    body = json.loads(text)
    assert body["branch_id"] == "b1" and body["previous_signing_key_id"] is None
    assert body["node_public_key"] == bd.node_public_key.read_text().strip()
    req = read_request(bd.request)
    assert req.signing_key_id == signing.key_id(signing.load_private_key(bd.signing_key))
    assert req.agreement_public_key == bd.agreement_public_key.read_text()


def test_a_second_init_refuses_naming_overwrite_which_works(
    branch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = read_request(load_branch_dir(branch).request)
    argv = ["node", "init", "--branch-id", "b1", "--out", str(branch)]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert read_request(load_branch_dir(branch).request).body == old.body  # nothing changed

    assert main([*argv, "--overwrite"]) == 0
    new = read_request(load_branch_dir(branch).request)
    assert new.signing_key_id != old.signing_key_id
    assert new.node_public_key != old.node_public_key
    # The replaced signing key's public half is kept: old ledger entries still verify.
    retired = branch / "keys" / "retired" / f"b1.{old.signing_key_id}.pub"
    assert signing.key_id(signing.load_public_key(retired)) == old.signing_key_id


def test_cli_init_prints_the_fingerprint_and_next_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "init", "--branch-id", "b7", "--out", str(tmp_path / "b7")]) == 0
    text = capsys.readouterr().out
    fingerprint = read_request(tmp_path / "b7" / "b7.request.json").fingerprint
    assert fingerprint in text
    for step in ("fedcrm server register", "--request b7.request.json", "kit", "app-hash"):
        assert step in text, step
    assert "--branch-dir" in text and "--approve-app" in text


def test_rotating_the_node_key_keeps_the_signing_key(branch: Path) -> None:
    bd = load_branch_dir(branch)
    before = read_request(bd.request)
    body = rotate_keys(bd, node=True, signing_key=False)
    after = read_request(bd.request)
    assert after.body == body
    assert after.node_public_key != before.node_public_key
    assert after.signing_key_id == before.signing_key_id == after.previous_signing_key_id
    assert after.signed_by_previous(before.signing_public_key)


def test_rotating_the_signing_key_is_signed_by_the_old_one(branch: Path) -> None:
    bd = load_branch_dir(branch)
    before = read_request(bd.request)
    old_private = bd.signing_key.read_bytes()
    rotate_keys(bd, node=False, signing_key=True)
    after = read_request(bd.request)
    assert after.signing_key_id != before.signing_key_id
    assert after.previous_signing_key_id == before.signing_key_id
    assert after.node_public_key == before.node_public_key
    assert after.signed_by_previous(before.signing_public_key)
    assert not after.signed_by_previous(after.signing_public_key)
    assert bd.signing_key.read_bytes() != old_private  # the old private key is gone
    assert stat.S_IMODE(bd.signing_key.stat().st_mode) == 0o600
    assert (bd.keys / "retired" / f"b1.{before.signing_key_id}.pub").is_file()


def test_cli_rotate_keys_rotates_both_by_default(
    branch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = read_request(branch / "b1.request.json")
    assert main(["node", "rotate-keys", "--branch-dir", str(branch)]) == 0
    after = read_request(branch / "b1.request.json")
    assert after.node_public_key != before.node_public_key
    assert after.signing_key_id != before.signing_key_id
    assert after.fingerprint in capsys.readouterr().out


def test_a_folder_without_branch_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--branch-dir .*fedcrm node init"):
        load_branch_dir(tmp_path)
