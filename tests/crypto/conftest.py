"""Keys shared by the crypto tests (real TenSEAL and cryptography; read-only once made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcrm.crypto import bfv, ckks
from fedcrm.crypto.roster import BranchIdentity, Roster


@pytest.fixture(scope="session")
def keys_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ckks.key_ceremony(tmp_path_factory.mktemp("keys_a"))


@pytest.fixture(scope="session")
def keys_b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ckks.key_ceremony(tmp_path_factory.mktemp("keys_b"))


@pytest.fixture(scope="session")
def secret_a(keys_a: tuple[Path, Path]) -> ckks.SecretContext:
    return ckks.load_secret_context(keys_a[0])


@pytest.fixture(scope="session")
def public_a(keys_a: tuple[Path, Path]) -> ckks.PublicContext:
    return ckks.load_public_context(keys_a[1])


@pytest.fixture(scope="session")
def secret_b(keys_b: tuple[Path, Path]) -> ckks.SecretContext:
    return ckks.load_secret_context(keys_b[0])


@pytest.fixture(scope="session")
def bfv_ctx() -> bfv.SecretContext:
    return bfv.generate()


@pytest.fixture(scope="session")
def bfv_other() -> bfv.SecretContext:
    """Same parameters, another secret key."""
    return bfv.generate()


BRANCHES = ("b1", "b2", "b3", "b4", "b5")


@pytest.fixture(scope="session")
def identities() -> dict[str, BranchIdentity]:
    return {b: BranchIdentity.generate(b) for b in BRANCHES}


@pytest.fixture(scope="session")
def roster(identities: dict[str, BranchIdentity]) -> Roster:
    return Roster({b: i.entry for b, i in identities.items()})
