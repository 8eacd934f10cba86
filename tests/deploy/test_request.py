"""A branch's request file: nothing in it is trusted before its checks pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedcrm.deploy.branch_dir import init_branch_dir
from fedcrm.deploy.request import make_request, read_request
from fedcrm.errors import ConfigError, FedCRMError, KeyFileError
from fedcrm.privacy import signing


@pytest.fixture
def request_file(tmp_path: Path) -> Path:
    bd, _ = init_branch_dir(tmp_path / "b1", "b1")
    return bd.request


def _edit(path: Path, **changes: Any) -> Path:
    body = json.loads(path.read_text())
    body.update(changes)
    path.write_text(json.dumps(body))
    return path


def test_a_request_altered_in_transit_is_refused(request_file: Path, tmp_path: Path) -> None:
    other, _ = init_branch_dir(tmp_path / "mallory", "mallory")
    swapped = other.node_public_key.read_text().strip()  # someone else's node key
    with pytest.raises(ConfigError, match="signature does not verify"):
        read_request(_edit(request_file, node_public_key=swapped))


def test_a_request_for_another_branch_id_is_refused(request_file: Path) -> None:
    with pytest.raises(ConfigError, match="signature does not verify"):
        read_request(_edit(request_file, branch_id="b2"))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"kind": "something"}, "not a fedcrm branch request"),
        ({"extra": "x"}, "unexpected fields"),
        ({"signature": ""}, "missing fields"),
        ({"created": "yesterday"}, "ISO 8601"),
        ({"signing_key_id": "0" * 16}, "does not match the signing key"),
        ({"previous_signing_key_id": "0" * 16}, "one is missing"),
        ({"agreement_public_key": "x"}, "not a PEM"),
    ],
)
def test_malformed_requests_name_what_is_wrong(
    request_file: Path, changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(FedCRMError, match=expected):
        read_request(_edit(request_file, **changes))


def test_a_private_key_pasted_in_is_refused(request_file: Path, tmp_path: Path) -> None:
    private, _ = signing.generate_signing_key(tmp_path / "k", "x")
    with pytest.raises(KeyFileError, match="holds a private key"):
        read_request(_edit(request_file, signing_public_key=private.read_text()))


def test_a_node_key_flower_would_refuse_is_refused(request_file: Path, tmp_path: Path) -> None:
    ed = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    bd_key = signing.load_private_key(tmp_path / "b1" / "keys" / "b1.key")
    body = make_request(
        branch_id="b1",
        node_public_key=ed,
        signing_key=bd_key,
        agreement_public_key=(tmp_path / "b1" / "keys" / "b1.x25519.pub").read_text(),
    )
    request_file.write_text(json.dumps(body))
    with pytest.raises(KeyFileError, match="NIST curve"):
        read_request(request_file)


def test_fingerprint_is_stable_and_tells_requests_apart(request_file: Path, tmp_path: Path) -> None:
    a = read_request(request_file)
    assert read_request(request_file).fingerprint == a.fingerprint
    other, _ = init_branch_dir(tmp_path / "b2", "b2")
    assert read_request(other.request).fingerprint != a.fingerprint
    assert len(a.fingerprint.replace("-", "")) == 32
