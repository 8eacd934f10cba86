"""Branch keys: Ed25519 signing and X25519 key agreement files, permissions, signatures."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from fedcrm.errors import KeyFileError
from fedcrm.privacy import signing
from fedcrm.privacy.signing import (
    agreement_public_key_from_pem,
    generate_agreement_key,
    generate_signing_key,
    key_id,
    load_agreement_private_key,
    load_agreement_public_key,
    load_private_key,
    load_public_key,
    load_public_keys,
    sign,
    verify_signature,
)


def test_key_files_round_trip(tmp_path: Path) -> None:
    private_path, public_path = generate_signing_key(tmp_path / "keys", "b1")

    private, public = load_private_key(private_path), load_public_key(public_path)
    signature = sign(private, b"entry hash")

    assert (private_path.name, public_path.name) == ("b1.key", "b1.pub")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert verify_signature(public, b"entry hash", signature)
    assert not verify_signature(public, b"another hash", signature)
    assert key_id(private) == key_id(public)
    assert len(key_id(public)) == 16


def test_another_branch_key_does_not_verify(tmp_path: Path) -> None:
    a, _ = generate_signing_key(tmp_path, "a")
    _, b_pub = generate_signing_key(tmp_path, "b")

    signature = sign(load_private_key(a), b"data")

    assert not verify_signature(load_public_key(b_pub), b"data", signature)
    assert not verify_signature(load_public_key(b_pub), b"data", "not base64!")
    assert key_id(load_private_key(a)) != key_id(load_public_key(b_pub))


def test_existing_key_is_never_overwritten_by_default(tmp_path: Path) -> None:
    private_path, _ = generate_signing_key(tmp_path, "b1")
    before = private_path.read_bytes()

    with pytest.raises(KeyFileError, match="already exists"):
        generate_signing_key(tmp_path, "b1")
    assert private_path.read_bytes() == before

    generate_signing_key(tmp_path, "b1", overwrite=True)
    assert private_path.read_bytes() != before


def test_key_file_errors_are_clear(tmp_path: Path) -> None:
    private_path, public_path = generate_signing_key(tmp_path, "b1")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")

    with pytest.raises(KeyFileError, match="not found"):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(KeyFileError, match="holds a public key"):
        load_private_key(public_path)
    with pytest.raises(KeyFileError, match="holds a private key"):
        load_public_key(private_path)
    with pytest.raises(KeyFileError, match="not a PEM"):
        load_public_key(garbage)
    with pytest.raises(KeyFileError, match="cannot name a key file"):
        generate_signing_key(tmp_path, "../escape")


def test_readable_private_key_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    private_path, _ = generate_signing_key(tmp_path, "b1")
    private_path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="fedcrm.privacy.signing"):
        load_private_key(private_path)

    assert "chmod 600" in caplog.text


def test_agreement_keys_round_trip_and_agree(tmp_path: Path) -> None:
    a_priv, a_pub = generate_agreement_key(tmp_path / "a", "a")
    b_priv, b_pub = generate_agreement_key(tmp_path / "b", "b")

    assert (a_priv.name, a_pub.name) == ("a.x25519.key", "a.x25519.pub")
    assert stat.S_IMODE(a_priv.stat().st_mode) == 0o600
    assert a_priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    a, b = load_agreement_private_key(a_priv), load_agreement_private_key(b_priv)
    # Each side derives the same pairwise secret from the other's public key file.
    assert a.exchange(load_agreement_public_key(b_pub)) == b.exchange(
        load_agreement_public_key(a_pub)
    )
    assert key_id(a) == key_id(load_agreement_public_key(a_pub))
    with pytest.raises(KeyFileError, match="already exists"):
        generate_agreement_key(tmp_path / "a", "a")


def test_agreement_and_signing_keys_are_not_mistaken_for_each_other(tmp_path: Path) -> None:
    sign_priv, sign_pub = generate_signing_key(tmp_path, "b1")
    agree_priv, agree_pub = generate_agreement_key(tmp_path, "b1")

    with pytest.raises(KeyFileError, match="not an X25519 private key"):
        load_agreement_private_key(sign_priv)
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(agree_pub)
    with pytest.raises(KeyFileError, match="not an X25519 public key"):
        agreement_public_key_from_pem(sign_pub.read_text(), "request")
    with pytest.raises(KeyFileError, match="holds a private key"):
        agreement_public_key_from_pem(agree_priv.read_text(), "request")


def test_a_verifier_file_may_hold_a_branchs_current_and_retired_keys(tmp_path: Path) -> None:
    _, old = generate_signing_key(tmp_path / "old", "b1")
    _, new = generate_signing_key(tmp_path / "new", "b1")
    both = tmp_path / "b1.pub"
    both.write_text(old.read_text() + new.read_text())

    keys = load_public_keys(both)

    assert [key_id(k) for k in keys] == [key_id(load_public_key(p)) for p in (old, new)]
    assert key_id(load_public_key(both)) == key_id(keys[0])


def test_agreement_key_files_round_trip(tmp_path: Path) -> None:
    private_path, public_path = signing.generate_agreement_key(tmp_path, "branch-a")
    assert private_path.name == "branch-a.x25519.key" and public_path.name == "branch-a.x25519.pub"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = signing.load_agreement_private_key(private_path)
    pub = signing.load_agreement_public_key(public_path)
    raw = signing.raw_public_bytes(pub)
    assert len(raw) == 32 and raw == signing.raw_public_bytes(key)
    assert signing.raw_public_bytes(signing.agreement_public_from_raw(raw)) == raw
    with pytest.raises(KeyFileError, match="already exists"):
        signing.generate_agreement_key(tmp_path, "branch-a")


def test_signing_and_agreement_keys_are_not_interchangeable(tmp_path: Path) -> None:
    sign_priv, sign_pub = signing.generate_signing_key(tmp_path, "b")
    agree_priv, _ = signing.generate_agreement_key(tmp_path, "b")
    with pytest.raises(KeyFileError, match="not an X25519 private key"):
        signing.load_agreement_private_key(sign_priv)
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        signing.load_private_key(agree_priv)
    with pytest.raises(KeyFileError, match="not an X25519 public key"):
        signing.load_agreement_public_key(sign_pub)
    with pytest.raises(KeyFileError, match="holds a private key"):
        signing.load_agreement_public_key(agree_priv)
    raw = signing.raw_public_bytes(signing.load_public_key(sign_pub))
    assert signing.raw_public_bytes(signing.signing_public_from_raw(raw)) == raw
    with pytest.raises(KeyFileError, match="32 raw bytes"):
        signing.signing_public_from_raw(b"short")
