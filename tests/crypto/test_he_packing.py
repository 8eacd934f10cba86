"""Packing, encrypted aggregation and rejection of bad updates (real TenSEAL)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from fedcrm.crypto import ckks, packing
from fedcrm.crypto.packing import EncryptedUpdate
from fedcrm.errors import EncryptionError

LENGTH = 9_000  # three ciphertexts, the last one partly filled
WEIGHTS = {"b1": 120.0, "b2": 800.0, "b3": 45.0}


@pytest.fixture(scope="module")
def keys_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ckks.key_ceremony(tmp_path_factory.mktemp("keys_a"))


@pytest.fixture(scope="module")
def keys_b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ckks.key_ceremony(tmp_path_factory.mktemp("keys_b"))


@pytest.fixture(scope="module")
def secret_a(keys_a: tuple[Path, Path]) -> ckks.SecretContext:
    return ckks.load_secret_context(keys_a[0])


@pytest.fixture(scope="module")
def public_a(keys_a: tuple[Path, Path]) -> ckks.PublicContext:
    return ckks.load_public_context(keys_a[1])


@pytest.fixture(scope="module")
def secret_b(keys_b: tuple[Path, Path]) -> ckks.SecretContext:
    return ckks.load_secret_context(keys_b[0])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def plain() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {b: rng.normal(0.0, 0.3, LENGTH) for b in WEIGHTS}


@pytest.fixture(scope="module")
def encrypted(
    secret_a: ckks.SecretContext, plain: dict[str, np.ndarray]
) -> dict[str, EncryptedUpdate]:
    return {b: packing.encrypt_update(secret_a, plain[b] * w, weight=w) for b, w in WEIGHTS.items()}


def _average(plain: dict[str, np.ndarray], branches: list[str]) -> np.ndarray:
    total = sum(plain[b] * WEIGHTS[b] for b in branches)
    return total / sum(WEIGHTS[b] for b in branches)


def test_round_trip_single_branch(
    secret_a: ckks.SecretContext, public_a: ckks.PublicContext, plain: dict[str, np.ndarray]
) -> None:
    upd = packing.encrypt_update(secret_a, plain["b1"], weight=1.0)
    assert len(upd.chunks) == 3 and upd.length == LENGTH
    agg, rejected = packing.aggregate(public_a, {"b1": upd})
    assert rejected == {}
    total, weight = packing.decrypt_sum(secret_a, agg)
    assert total.shape == (LENGTH,)
    assert weight == pytest.approx(1.0, abs=1e-4)  # averaged over all slots: ~64x less noise
    # fresh-encryption noise: rms ~2e-4 per coordinate (see ckks module docstring)
    assert np.max(np.abs(total - plain["b1"])) < 3e-3


def test_aggregate_equals_plaintext_weighted_average(
    secret_a: ckks.SecretContext,
    public_a: ckks.PublicContext,
    plain: dict[str, np.ndarray],
    encrypted: dict[str, EncryptedUpdate],
) -> None:
    agg, rejected = packing.aggregate(public_a, encrypted)
    assert rejected == {}
    assert agg.context_id == public_a.context_id and agg.length == LENGTH
    avg = packing.decrypt_average(secret_a, agg)
    assert _rel(avg, _average(plain, list(WEIGHTS))) <= 1e-4


def test_server_side_holds_no_secret_key(
    public_a: ckks.PublicContext, encrypted: dict[str, EncryptedUpdate]
) -> None:
    acc = packing.Accumulator(public_a, length=LENGTH)
    for b, upd in encrypted.items():
        assert acc.add(b, upd) is None
    assert not acc.ctx.context.is_private()
    assert not acc.ctx.context.has_secret_key()
    vec = ts.ckks_vector_from(public_a.context, acc.result().chunks[0])
    with pytest.raises(ValueError):
        vec.decrypt()


def test_records_round_trip(encrypted: dict[str, EncryptedUpdate]) -> None:
    upd = encrypted["b1"]
    rec = upd.to_records(prefix="he.")
    assert set(rec) == {"he.context_id", "he.length", "he.chunks", "he.weight"}
    assert all(isinstance(v, bytes | int | str | list) for v in rec.values())
    assert EncryptedUpdate.from_records(rec, prefix="he.") == upd
    with pytest.raises(EncryptionError, match="lacks key"):
        EncryptedUpdate.from_records({"he.length": 3}, prefix="he.")
    with pytest.raises(EncryptionError, match="chunk must be bytes"):
        EncryptedUpdate.from_records({**upd.to_records(), "chunks": ["x"]})


def _other_context(upd: EncryptedUpdate, secret_b: ckks.SecretContext) -> EncryptedUpdate:
    vals = np.ones(upd.length)
    return packing.encrypt_update(secret_b, vals, weight=1.0)


def _other_params(upd: EncryptedUpdate, _: ckks.SecretContext) -> EncryptedUpdate:
    small = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 40])
    small.global_scale = 2.0**20
    chunk = ts.ckks_vector(small, [1.0] * 2048).serialize()
    return dataclasses.replace(upd, chunks=[chunk, *upd.chunks[1:]])


BAD: dict[str, tuple[Callable[[EncryptedUpdate, ckks.SecretContext], EncryptedUpdate], str]] = {
    "different_context": (_other_context, "another key ceremony"),
    "other_parameters": (_other_params, "does not deserialize"),
    "truncated_chunk": (
        lambda u, _: dataclasses.replace(u, chunks=[u.chunks[0], u.chunks[1][:-200], u.chunks[2]]),
        "chunk 1 does not deserialize",
    ),
    "extra_chunk": (
        lambda u, _: dataclasses.replace(u, chunks=[*u.chunks, u.chunks[0]]),
        "extra chunk",
    ),
    "missing_chunk": (
        lambda u, _: dataclasses.replace(u, chunks=u.chunks[:2]),
        "missing chunk",
    ),
    "wrong_length": (lambda u, _: dataclasses.replace(u, length=u.length + 1), "wrong length"),
    "garbage_bytes": (
        lambda u, _: dataclasses.replace(u, chunks=[b"\x00garbage" * 50, *u.chunks[1:]]),
        "chunk 0 does not deserialize",
    ),
    "swapped_chunks": (
        lambda u, _: dataclasses.replace(u, chunks=[u.chunks[2], u.chunks[1], u.chunks[0]]),
        "chunk 0 holds",
    ),
    "garbage_weight": (lambda u, _: dataclasses.replace(u, weight=b"xyz"), "encrypted weight"),
    "not_an_update": (lambda u, _: {"chunks": u.chunks}, "not an EncryptedUpdate"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_update_rejected_and_others_summed(
    case: str,
    secret_a: ckks.SecretContext,
    secret_b: ckks.SecretContext,
    public_a: ckks.PublicContext,
    plain: dict[str, np.ndarray],
    encrypted: dict[str, EncryptedUpdate],
) -> None:
    make_bad, reason = BAD[case]
    updates = dict(encrypted)
    updates["b2"] = make_bad(encrypted["b2"], secret_b)
    agg, rejected = packing.aggregate(public_a, updates, length=LENGTH)
    assert set(rejected) == {"b2"}
    assert reason in rejected["b2"]
    avg = packing.decrypt_average(secret_a, agg)
    assert _rel(avg, _average(plain, ["b1", "b3"])) <= 1e-4


def test_length_inferred_by_majority(
    public_a: ckks.PublicContext, encrypted: dict[str, EncryptedUpdate]
) -> None:
    updates = {**encrypted, "b3": dataclasses.replace(encrypted["b3"], length=LENGTH - 5)}
    _, rejected = packing.aggregate(public_a, updates)
    assert set(rejected) == {"b3"} and "wrong length" in rejected["b3"]


def test_all_rejected_is_an_error(
    public_a: ckks.PublicContext, encrypted: dict[str, EncryptedUpdate]
) -> None:
    bad = dataclasses.replace(encrypted["b1"], chunks=encrypted["b1"].chunks[:1])
    with pytest.raises(EncryptionError, match=r"no valid encrypted update.*b1: missing chunk"):
        packing.aggregate(public_a, {"b1": bad}, length=LENGTH)


def test_spoofed_context_id_detected_at_decryption(
    secret_a: ckks.SecretContext, public_a: ckks.PublicContext, secret_b: ckks.SecretContext
) -> None:
    # Same parameters, another key, but claiming the right context_id: the server
    # cannot tell; the branch's range check on the decrypted sum does.
    foreign = dataclasses.replace(
        packing.encrypt_update(secret_b, np.ones(LENGTH), weight=1.0),
        context_id=public_a.context_id,
    )
    agg, rejected = packing.aggregate(public_a, {"x": foreign})
    assert rejected == {}
    with pytest.raises(EncryptionError, match="another key"):
        packing.decrypt_average(secret_a, agg)


def test_decrypt_refuses_other_ceremony(
    secret_b: ckks.SecretContext,
    public_a: ckks.PublicContext,
    encrypted: dict[str, EncryptedUpdate],
) -> None:
    agg, _ = packing.aggregate(public_a, encrypted)
    with pytest.raises(EncryptionError, match="different key ceremonies"):
        packing.decrypt_average(secret_b, agg)


@pytest.mark.parametrize(
    ("values", "weight", "match"),
    [
        (np.array([1.0, np.nan]), 1.0, "NaN"),
        (np.ones((2, 2)), 1.0, "flat vector"),
        (np.array([]), 1.0, "flat vector"),
        (np.ones(3), 0.0, "weight"),
        (np.ones(3), float("inf"), "weight"),
        (np.array([1.0, 3e5]), 1.0, "exceeds the CKKS range"),
    ],
)
def test_encrypt_validates_input(
    secret_a: ckks.SecretContext, values: np.ndarray, weight: float, match: str
) -> None:
    with pytest.raises(EncryptionError, match=match):
        packing.encrypt_update(secret_a, values, weight=weight)


def test_chunk_sizes() -> None:
    assert packing.chunk_sizes(9000, 4096) == [4096, 4096, 808]
    assert packing.chunk_sizes(8192, 4096) == [4096, 4096]
    assert packing.chunk_sizes(5, 4096) == [5]
