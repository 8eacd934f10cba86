"""Packing, encrypted aggregation and rejection of bad updates (real TenSEAL)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import tenseal as ts

from fedcrm.crypto import ckks, packing, wire
from fedcrm.crypto.packing import EncryptedUpdate
from fedcrm.errors import EncryptionError

LENGTH = 9_000  # three ciphertexts, the last one partly filled
WEIGHTS = {"b1": 120.0, "b2": 800.0, "b3": 45.0}


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
    plain: dict[str, np.ndarray],
    secret_a: ckks.SecretContext,
    public_a: ckks.PublicContext,
    encrypted: dict[str, EncryptedUpdate],
) -> None:
    acc = packing.Accumulator(public_a, length=LENGTH)
    for b, upd in encrypted.items():
        assert acc.add(b, upd) is None
    assert not acc.ctx.context.is_private()
    assert not acc.ctx.context.has_secret_key()
    # The server's state is numpy coefficients and public seeds, nothing else.
    held = [v for v in vars(acc).values() if not isinstance(v, str | int | list | dict | tuple)]
    assert all(isinstance(v, np.ndarray | ckks.PublicContext | wire.Layout) for v in held), held
    total = acc.result()
    # The sum is a genuine SEAL ciphertext: the public context loads it, cannot decrypt it ...
    vecs = packing.to_ckks_vectors(public_a, total)
    assert len(vecs) == len(total.chunks) + 1
    with pytest.raises(ValueError):
        vecs[0].decrypt()
    # ... and a branch's secret context decrypts it to the plaintext sum.
    secret_vec = packing.to_ckks_vectors(secret_a, total)[0]
    expected = sum(plain[b][:4096] * w for b, w in WEIGHTS.items())
    assert np.max(np.abs(np.asarray(secret_vec.decrypt()) - expected)) < 1e-2


def test_upload_is_seeded_and_compact(
    secret_a: ckks.SecretContext, public_a: ckks.PublicContext, plain: dict[str, np.ndarray]
) -> None:
    upd = packing.encrypt_update(secret_a, plain["b1"], weight=1.0)
    layout = packing._layout(public_a)
    assert layout.moduli[0].bit_length() == 40 and layout.hi_bytes == 1
    for data in [*upd.chunks, upd.weight]:
        chunk = wire.parse(layout, data)
        assert chunk.n_seeds == 1 and len(data) == layout.chunk_bytes(1)
        assert int(chunk.c0().max()) < layout.moduli[0]
    # 5 bytes per c0 coefficient + one seed: 2.5x the fp32 bytes of a full chunk.
    assert len(upd.chunks[0]) / (4 * secret_a.slots) < 2.52
    # Fresh seeds: no two ciphertexts share their uniform half.
    seeds = {wire.parse(layout, d).seeds for d in [*upd.chunks, upd.weight]}
    assert len(seeds) == len(upd.chunks) + 1
    # The same values encrypt differently every time.
    again = packing.encrypt_update(secret_a, plain["b1"], weight=1.0)
    assert again.chunks[0] != upd.chunks[0]


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


def _small_secret() -> ckks.SecretContext:
    """A secret context with N=4096 (other parameters) but the same context_id."""
    small = ts.context(
        ts.SCHEME_TYPE.CKKS,
        4096,
        coeff_mod_bit_sizes=[40, 40],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    small.global_scale = 2.0**20
    return ckks.SecretContext(context=small, context_id="0" * 16, slots=2048, scale=2.0**20)


def _other_params(upd: EncryptedUpdate, _: ckks.SecretContext) -> EncryptedUpdate:
    small = _small_secret()
    other = packing.encrypt_update(small, np.ones(2048), weight=1.0)
    return dataclasses.replace(upd, chunks=[other.chunks[0], *upd.chunks[1:]])


def _tenseal_format(upd: EncryptedUpdate, _: ckks.SecretContext) -> EncryptedUpdate:
    small = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 40])
    small.global_scale = 2.0**20
    chunk = ts.ckks_vector(small, [1.0] * 2048).serialize()
    return dataclasses.replace(upd, chunks=[chunk, *upd.chunks[1:]])


def _foreign_chunk(upd: EncryptedUpdate, secret_b: ckks.SecretContext) -> EncryptedUpdate:
    # Right context_id on the update, but chunk 1 comes from another key ceremony.
    other = packing.encrypt_update(secret_b, np.ones(upd.length), weight=1.0)
    return dataclasses.replace(upd, chunks=[upd.chunks[0], other.chunks[1], upd.chunks[2]])


def _with_tag(data: bytes, tag: bytes) -> bytes:
    return data[:8] + tag + data[16:]


def _replayed_sum(upd: EncryptedUpdate, _: ckks.SecretContext) -> EncryptedUpdate:
    # A chunk that carries two seeds (a sum) is not a fresh upload.
    layout_chunk = upd.chunks[0]
    seed = layout_chunk[-wire.INFO_SIZE :]
    head = bytearray(layout_chunk[: wire._HEAD.size])
    wire._HEAD.pack_into(head, 0, *(*wire._HEAD.unpack_from(head)[:-1], 2))
    doubled = bytes(head) + layout_chunk[wire._HEAD.size :] + seed
    return dataclasses.replace(upd, chunks=[doubled, *upd.chunks[1:]])


BAD: dict[str, tuple[Callable[[EncryptedUpdate, ckks.SecretContext], EncryptedUpdate], str]] = {
    "different_context": (_other_context, "another key ceremony"),
    "other_parameters": (_other_params, "chunk 0 does not deserialize: made under other"),
    "tenseal_format": (_tenseal_format, "chunk 0 does not deserialize"),
    "foreign_chunk": (_foreign_chunk, "chunk 1 was made under another key ceremony"),
    "replayed_sum": (_replayed_sum, "chunk 0 is not a fresh ciphertext"),
    "padded_chunk": (
        lambda u, _: dataclasses.replace(u, chunks=[u.chunks[0], u.chunks[1] + b"\0", u.chunks[2]]),
        "chunk 1 does not deserialize",
    ),
    "bad_seed": (
        lambda u, _: dataclasses.replace(u, weight=u.weight[:-65] + b"\x07" + u.weight[-64:]),
        "encrypted weight does not deserialize: malformed seed",
    ),
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
    # Same parameters, another key, claiming the right context_id and carrying the
    # right context tag in every chunk: the server cannot tell; the branch's range
    # check on the decrypted sum does.
    tag = bytes.fromhex(public_a.context_id)
    other = packing.encrypt_update(secret_b, np.ones(LENGTH), weight=1.0)
    foreign = EncryptedUpdate(
        public_a.context_id,
        LENGTH,
        [_with_tag(c, tag) for c in other.chunks],
        _with_tag(other.weight, tag),
    )
    agg, rejected = packing.aggregate(public_a, {"x": foreign})
    assert rejected == {}
    with pytest.raises(EncryptionError, match="another key"):
        packing.decrypt_average(secret_a, agg)


def test_decrypt_refuses_malformed_aggregate(
    secret_a: ckks.SecretContext,
    public_a: ckks.PublicContext,
    encrypted: dict[str, EncryptedUpdate],
) -> None:
    agg, _ = packing.aggregate(public_a, encrypted)
    assert all(wire.parse(packing._layout(public_a), c).n_seeds == 3 for c in agg.chunks)
    cut = dataclasses.replace(agg, chunks=[agg.chunks[0][:-1], *agg.chunks[1:]])
    with pytest.raises(EncryptionError, match="aggregate rejected: chunk 0 does not deserialize"):
        packing.decrypt_average(secret_a, cut)


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
