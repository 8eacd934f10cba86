"""Provisioning: CA, server certificate SANs, node key formats, file modes, federation.json."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcrm.cli import main
from fedcrm.deploy.provision import (
    cert_sans,
    init_federation,
    load_federation,
    onboard_branch,
    parse_address,
)
from fedcrm.errors import ConfigError


@pytest.fixture(scope="module")
def fed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fed") / "federation"
    init_federation(out, ["b1", "b2"], "127.0.0.1:9092", extra_sans=["superlink.example.com"])
    return out


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_covers_the_address_and_is_signed_by_the_ca(fed_dir: Path) -> None:
    ca, cert = _cert(fed_dir / "ca" / "ca.crt"), _cert(fed_dir / "server" / "server.pem")
    assert set(cert_sans(cert)) == {"127.0.0.1", "superlink.example.com"}
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ext.get_values_for_type(x509.IPAddress)[0].exploded == "127.0.0.1"  # an IP SAN
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def test_dns_address_gets_a_dns_san(tmp_path: Path) -> None:
    init_federation(tmp_path / "f", ["b1"], "superlink.corp:443", he=False)
    cert = _cert(tmp_path / "f" / "server" / "server.pem")
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ext.get_values_for_type(x509.DNSName) == ["superlink.corp"]


def test_node_auth_keys_are_p384_in_openssh_format(fed_dir: Path) -> None:
    for b in ("b1", "b2"):
        priv = fed_dir / "branches" / b / "node_auth_key"
        assert priv.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        key = serialization.load_ssh_private_key(priv.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        pub_text = (fed_dir / "public" / "nodes" / f"{b}.pub").read_bytes()
        assert pub_text.startswith(b"ecdsa-sha2-nistp384 ")
        pub = serialization.load_ssh_public_key(pub_text)
        assert pub.public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


def test_flower_accepts_the_node_public_key(fed_dir: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(fed_dir / "public" / "nodes" / "b1.pub")


def test_private_keys_are_mode_0600(fed_dir: Path) -> None:
    secrets = [
        fed_dir / "ca" / "ca.key",
        fed_dir / "server" / "server.key",
        fed_dir / "he" / "he_secret.ctx",
        *[
            fed_dir / "branches" / b / n
            for b in ("b1", "b2")
            for n in ("node_auth_key", "he_secret.ctx")
        ],
        *[fed_dir / "branches" / b / "signing" / f"{b}.key" for b in ("b1", "b2")],
    ]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not (fed_dir / "server" / "he_secret.ctx").exists()  # the server holds no HE secret


def test_federation_json_describes_the_layout(fed_dir: Path) -> None:
    data = json.loads((fed_dir / "federation.json").read_text())
    assert data["server_address"] == "127.0.0.1:9092"
    fed = load_federation(fed_dir)
    for b in ("b1", "b2"):
        files = fed.branch(b)
        for key in ("ca_cert", "node_auth_private_key", "signing_key", "he_secret_context"):
            assert files[key] is not None and files[key].exists(), (b, key)
    with pytest.raises(ConfigError, match="--branch-id"):
        fed.branch("nope")


def test_onboard_branch_adds_one_branch(fed_dir: Path, tmp_path: Path) -> None:
    files = onboard_branch(fed_dir, "b3", tmp_path / "b3", echo=None)
    assert (tmp_path / "b3" / "node_auth_key").exists()
    assert (fed_dir / "public" / "nodes" / "b3.pub").exists()
    assert files["he_secret_context"] is not None
    assert "b3" in load_federation(fed_dir).branches
    with pytest.raises(ConfigError, match="already"):
        onboard_branch(fed_dir, "b3", tmp_path / "again", echo=None)


def test_cli_init_prints_next_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "federation",
            "init",
            "--out",
            str(tmp_path / "f"),
            "--branches",
            "a,b",
            "--server-address",
            "10.1.2.3:9092",
            "--no-he",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "--enable-supernode-auth" in text and "fedcrm server register" in text
    assert "fedcrm node start" in text and "flwr run . fedcrm" in text
    # An existing federation is not overwritten by accident.
    assert (
        main(
            [
                "federation",
                "init",
                "--out",
                str(tmp_path / "f"),
                "--branches",
                "a",
                "--server-address",
                "10.1.2.3:9092",
                "--no-he",
            ]
        )
        == 2
    )


def test_cli_node_init_with_federation_onboards(
    fed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "node",
            "init",
            "--federation",
            str(fed_dir),
            "--branch-id",
            "b4",
            "--out",
            str(tmp_path / "b4"),
        ]
    )
    assert rc == 0
    assert "fedcrm server register" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["localhost", "host:0", "host:99999", ":9092", "h:x"])
def test_bad_server_address_names_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError, match="--server-address"):
        parse_address(bad)


def test_bad_branch_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--branches"):
        init_federation(tmp_path / "f", ["ok", "not ok/"], "127.0.0.1:1", he=False)
    with pytest.raises(ConfigError, match="twice"):
        init_federation(tmp_path / "g", ["a", "a"], "127.0.0.1:1", he=False)
