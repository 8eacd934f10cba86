"""Key ceremony and key files (real TenSEAL)."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest

from fedcrm.crypto import ckks
from fedcrm.errors import EncryptionError, KeyFileError


def test_ceremony_writes_files_and_params(keys_a: tuple[Path, Path]) -> None:
    secret, public = keys_a
    assert secret.name == "he_secret.ctx" and public.name == "he_public.ctx"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    params = json.loads((secret.parent / "he_params.json").read_text())
    assert params["poly_modulus_degree"] == 8192
    assert params["coeff_mod_bit_sizes"] == [40, 40]
    assert params["security_level_bits"] == 128
    assert params["global_scale"] == 2.0**20
    assert params["galois_keys"] is False
    assert params["context_id"] == hashlib.sha256(public.read_bytes()).hexdigest()[:16]


def test_contexts_share_id_and_only_branch_holds_secret(
    secret_a: ckks.SecretContext, public_a: ckks.PublicContext, secret_b: ckks.SecretContext
) -> None:
    assert secret_a.context_id == public_a.context_id
    assert secret_b.context_id != public_a.context_id
    assert secret_a.context.is_private() and secret_a.context.has_secret_key()
    assert not public_a.context.is_private()
    assert not public_a.context.has_secret_key()
    assert not public_a.context.has_galois_keys()
    assert public_a.slots == secret_a.slots == 4096


def test_refuses_to_overwrite(keys_a: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        ckks.key_ceremony(keys_a[0].parent)
    first = ckks.key_ceremony(tmp_path)
    old_id = ckks.load_public_context(first[1]).context_id
    second = ckks.key_ceremony(tmp_path, overwrite=True)
    assert ckks.load_public_context(second[1]).context_id != old_id


def test_public_loader_refuses_secret_context(keys_a: tuple[Path, Path]) -> None:
    with pytest.raises(EncryptionError, match=r"secret key.*he_public\.ctx"):
        ckks.load_public_context(keys_a[0])


def test_secret_loader_refuses_public_context(keys_a: tuple[Path, Path]) -> None:
    with pytest.raises(KeyFileError, match="has no secret key"):
        ckks.load_secret_context(keys_a[1])


@pytest.mark.parametrize("loader", [ckks.load_secret_context, ckks.load_public_context])
def test_missing_and_garbage_files(loader, tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        loader(tmp_path / "nope.ctx")
    bad = tmp_path / "bad.ctx"
    bad.write_bytes(b"not a context at all")
    with pytest.raises(KeyFileError, match="not a TenSEAL context"):
        loader(bad)


def test_secret_from_other_ceremony_detected(
    keys_a: tuple[Path, Path], keys_b: tuple[Path, Path], tmp_path: Path
) -> None:
    shutil.copy(keys_b[0], tmp_path / "he_secret.ctx")
    shutil.copy(keys_a[0].parent / "he_params.json", tmp_path / "he_params.json")
    with pytest.raises(KeyFileError, match="different key ceremonies"):
        ckks.load_secret_context(tmp_path / "he_secret.ctx")


def test_secret_without_params_file(keys_a: tuple[Path, Path], tmp_path: Path) -> None:
    shutil.copy(keys_a[0], tmp_path / "he_secret.ctx")
    with pytest.raises(KeyFileError, match=r"he_params\.json does not exist"):
        ckks.load_secret_context(tmp_path / "he_secret.ctx")
    loaded = ckks.load_secret_context(
        tmp_path / "he_secret.ctx", params_path=keys_a[0].parent / "he_params.json"
    )
    assert loaded.context_id == ckks.load_public_context(keys_a[1]).context_id
