"""Provisioning: CA, server certificate SANs, file modes, the kit, and no branch key anywhere."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from fedcrm.cli import main
from fedcrm.deploy.provision import (
    init_federation,
    load_federation,
    load_kit,
    reissue_server_cert,
)
from fedcrm.deploy.tls import cert_sans, parse_address
from fedcrm.errors import ConfigError

PRIVATE_MARKERS = (b"PRIVATE KEY-----",)  # PEM and OpenSSH private keys alike


@pytest.fixture(scope="module")
def fed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fed") / "federation"
    init_federation(out, "127.0.0.1:9092", extra_sans=["superlink.example.com"])
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
    init_federation(tmp_path / "f", "superlink.corp:443")
    cert = _cert(tmp_path / "f" / "server" / "server.pem")
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ext.get_values_for_type(x509.DNSName) == ["superlink.corp"]


def test_the_only_private_keys_are_the_ca_and_tls_keys_mode_0600(fed_dir: Path) -> None:
    holding = sorted(
        str(p.relative_to(fed_dir))
        for p in fed_dir.rglob("*")
        if p.is_file() and any(m in p.read_bytes() for m in PRIVATE_MARKERS)
    )
    assert holding == ["ca/ca.key", "server/server.key"]
    assert not [p for p in fed_dir.rglob("*") if p.suffix == ".ctx"]  # no HE context either
    for rel in holding:
        assert stat.S_IMODE((fed_dir / rel).stat().st_mode) == 0o600, rel
    for folder in ("ca", "server"):
        assert stat.S_IMODE((fed_dir / folder).stat().st_mode) == 0o700, folder


def test_the_kit_holds_the_ca_certificate_and_the_address_only(fed_dir: Path) -> None:
    kit = fed_dir / "kit"
    assert sorted(p.name for p in kit.iterdir()) == ["ca.crt", "kit.json"]
    assert (kit / "ca.crt").read_bytes() == (fed_dir / "ca" / "ca.crt").read_bytes()
    loaded = load_kit(kit)
    assert loaded.server_address == "127.0.0.1:9092" and loaded.ca_cert == kit / "ca.crt"
    # The central team may point at the whole federation directory: its kit is used.
    assert load_kit(fed_dir) == loaded
    with pytest.raises(ConfigError, match=r"--federation .*no kit.json"):
        load_kit(fed_dir / "server")


def test_a_new_address_reaches_the_kit(tmp_path: Path) -> None:
    fed = load_federation(init_federation(tmp_path / "f", "127.0.0.1:9092").root)
    reissue_server_cert(fed, server_address="10.0.0.7:9443")
    assert load_kit(tmp_path / "f" / "kit").server_address == "10.0.0.7:9443"
    assert "10.0.0.7" in cert_sans(_cert(tmp_path / "f" / "server" / "server.pem"))


def test_federation_json_describes_the_layout(fed_dir: Path) -> None:
    data = json.loads((fed_dir / "federation.json").read_text())
    assert data["format"] == 2 and data["server_address"] == "127.0.0.1:9092"
    assert "branches" not in data and "he" not in data
    fed = load_federation(fed_dir)
    assert fed.server_dir == fed_dir / "server" and fed.kit_dir == fed_dir / "kit"


def test_a_federation_of_the_old_central_key_layout_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "federation.json").write_text(json.dumps({"format": 1, "server_address": "h:1"}))
    with pytest.raises(ConfigError, match=r"format 1; .*fedcrm node init"):
        load_federation(old)


def test_cli_init_prints_the_branch_born_key_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["federation", "init", "--out", str(tmp_path / "f"), "--server-address", "10.1.2.3:9092"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for step in (
        "holds no branch key",
        "fedcrm node init --branch-id",
        "fedcrm server register --federation",
        "--request",
        "kit/",
        "fedcrm node start --federation kit",
        "--approve-app",
        "server-dir=",
        "fedcrm server nodes",
    ):
        assert step in text, step
    # An existing federation is not overwritten by accident; --overwrite starts afresh.
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize("bad", ["localhost", "host:0", "host:99999", ":9092", "h:x"])
def test_bad_server_address_names_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError, match="--server-address"):
        parse_address(bad)
