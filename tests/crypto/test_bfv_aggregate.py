"""Server-side sums of BFV uploads: rejections, and the branch's contributor check."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from fedcrm.crypto import bfv, bfv_aggregate
from fedcrm.crypto.bfv_wire import _HEAD, EncryptedVector, OwnSeeds, pack_chunk, parse_chunk
from fedcrm.errors import ContributorsError, EncryptionError

LENGTH = 9_000  # two chunks: 8192 + 808 values
NAMES = ("b1", "b2", "b3")

Uploads = dict[str, tuple[EncryptedVector, OwnSeeds]]


@pytest.fixture(scope="module")
def values(bfv_ctx: bfv.SecretContext) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {n: rng.integers(0, bfv_ctx.plain_modulus, LENGTH) for n in NAMES}


@pytest.fixture(scope="module")
def uploads(bfv_ctx: bfv.SecretContext, values: dict[str, np.ndarray]) -> Uploads:
    return {n: bfv.encrypt(bfv_ctx, v) for n, v in values.items()}


def _sum(ctx: bfv.SecretContext, values: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return sum(values[n] for n in names) % ctx.plain_modulus


def _with_header(chunk: bytes, **changes: int | bytes) -> bytes:
    fields = list(_HEAD.unpack_from(chunk))
    names = ["magic", "fmt", "major", "minor", "res", "tag", "parms_id", "count", "degree", "k"]
    for key, value in changes.items():
        fields[names.index(key)] = value
    return _HEAD.pack(*fields) + chunk[_HEAD.size :]


def _replace_chunk(up: EncryptedVector, i: int, chunk: bytes) -> EncryptedVector:
    chunks = list(up.chunks)
    chunks[i] = chunk
    return dataclasses.replace(up, chunks=tuple(chunks))


def _doubled_seed(up: EncryptedVector, _: bfv.SecretContext) -> EncryptedVector:
    chunk = up.chunks[0]
    return _replace_chunk(up, 0, _with_header(chunk, k=2) + chunk[-81:])


def _foreign_chunk(up: EncryptedVector, other: bfv.SecretContext) -> EncryptedVector:
    foreign = bfv.encrypt(other, np.ones(LENGTH - 8192, dtype=int))[0].chunks[0]
    return _replace_chunk(up, 1, foreign)


def _chunks(change: Callable[[tuple[bytes, ...]], tuple[bytes, ...]]) -> Callable:
    return lambda up, _: dataclasses.replace(up, chunks=change(up.chunks))


def _chunk(i: int, change: Callable[[bytes], bytes]) -> Callable:
    return lambda up, _: _replace_chunk(up, i, change(up.chunks[i]))


NOT_PARSED = "does not deserialize"
BAD: dict[str, tuple[Callable[[EncryptedVector, bfv.SecretContext], object], str]] = {
    "other_key": (
        lambda u, other: bfv.encrypt(other, np.ones(LENGTH, dtype=int))[0],
        "made under another secret context",
    ),
    "foreign_chunk": (_foreign_chunk, "chunk 1 was made under another secret context"),
    "other_parameters": (
        _chunk(0, lambda c: _with_header(c, degree=4096)),
        f"chunk 0 {NOT_PARSED}: made under other encryption parameters",
    ),
    "not_bfv": (
        _chunk(0, lambda c: _with_header(c, magic=b"FCK1")),
        f"chunk 0 {NOT_PARSED}: not a fedcrm seeded BFV",
    ),
    "not_fresh": (_doubled_seed, "chunk 0 is not a fresh ciphertext (2 seeds)"),
    "truncated": (_chunk(1, lambda c: c[:-100]), f"chunk 1 {NOT_PARSED}"),
    "padded": (_chunk(1, lambda c: c + b"\0"), f"chunk 1 {NOT_PARSED}"),
    "bad_seed": (
        _chunk(0, lambda c: c[:-65] + b"\x07" + c[-64:]),
        f"chunk 0 {NOT_PARSED}: malformed seed",
    ),
    "garbage": (_chunk(0, lambda c: b"\x00garbage" * 9), f"chunk 0 {NOT_PARSED}"),
    "swapped": (_chunks(lambda cs: cs[::-1]), "chunk 0 holds 808 values"),
    "extra_chunk": (_chunks(lambda cs: (*cs, cs[0])), "extra chunk"),
    "missing_chunk": (_chunks(lambda cs: cs[:1]), "missing chunk"),
    "wrong_length": (lambda u, _: dataclasses.replace(u, length=LENGTH + 1), "wrong length"),
    "not_a_vector": (lambda u, _: {"chunks": u.chunks}, "not an EncryptedVector"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_upload_rejected_without_trace(
    case: str,
    bfv_ctx: bfv.SecretContext,
    bfv_other: bfv.SecretContext,
    values: dict[str, np.ndarray],
    uploads: Uploads,
) -> None:
    make_bad, reason = BAD[case]
    acc = bfv_aggregate.Accumulator(bfv_ctx.parameters, length=LENGTH)
    assert acc.add("b1", uploads["b1"][0]) is None
    got = acc.add("b2", make_bad(uploads["b2"][0], bfv_other))
    assert got is not None and reason in got, got
    assert acc.add("b3", uploads["b3"][0]) is None
    assert acc.accepted == ["b1", "b3"] and set(acc.rejected) == {"b2"}
    out = bfv.decrypt(bfv_ctx, acc.result(), own_seeds=uploads["b1"][1], min_contributors=2)
    assert np.array_equal(out, _sum(bfv_ctx, values, ["b1", "b3"]))


def test_replayed_upload_and_second_upload_of_a_branch_rejected(
    bfv_ctx: bfv.SecretContext, uploads: Uploads
) -> None:
    acc = bfv_aggregate.Accumulator(bfv_ctx.parameters, length=LENGTH)
    assert acc.add("b1", uploads["b1"][0]) is None
    assert "replayed or duplicated" in (acc.add("b9", uploads["b1"][0]) or "")
    assert "already contributed" in (acc.add("b1", uploads["b2"][0]) or "")


def test_sum_capacity_is_enforced(bfv_ctx: bfv.SecretContext, uploads: Uploads) -> None:
    params = dataclasses.replace(bfv_ctx.parameters, max_contributions=2)
    acc = bfv_aggregate.Accumulator(params, length=LENGTH)
    assert acc.add("b1", uploads["b1"][0]) is None and acc.add("b2", uploads["b2"][0]) is None
    assert "the most that decrypt exactly" in (acc.add("b3", uploads["b3"][0]) or "")


def test_nothing_accepted_is_an_error(bfv_ctx: bfv.SecretContext, uploads: Uploads) -> None:
    bad = dataclasses.replace(uploads["b1"][0], chunks=uploads["b1"][0].chunks[:1])
    with pytest.raises(EncryptionError, match=r"no valid encrypted update.*b1: missing chunk"):
        bfv_aggregate.aggregate(bfv_ctx.parameters, {"b1": bad}, length=LENGTH)


def test_records_round_trip(uploads: Uploads) -> None:
    up = uploads["b1"][0]
    rec = up.to_records(prefix="sa.")
    assert set(rec) == {"sa.context_id", "sa.length", "sa.chunks"}
    assert EncryptedVector.from_records(rec, prefix="sa.") == up
    with pytest.raises(EncryptionError, match="lacks key"):
        EncryptedVector.from_records({"length": 3})
    with pytest.raises(EncryptionError, match="every chunk must be bytes"):
        EncryptedVector.from_records({**up.to_records(), "chunks": ["x"]})


# -- what a branch refuses to decrypt ----------------------------------------------------------


def _agg(ctx: bfv.SecretContext, ups: list[EncryptedVector]) -> EncryptedVector:
    acc = bfv_aggregate.Accumulator(ctx.parameters, length=LENGTH)
    for i, up in enumerate(ups):
        assert acc.add(f"x{i}", up) is None
    return acc.result()


def _reseed(
    ctx: bfv.SecretContext, agg: EncryptedVector, order: Callable[[int, list], list]
) -> EncryptedVector:
    """The aggregate with each chunk's seed list rewritten by ``order(chunk_index, infos)``."""
    chunks = []
    for i, data in enumerate(agg.chunks):
        chunk = parse_chunk(ctx.parameters, data)
        infos = order(i, chunk.seed_infos())
        chunks.append(
            pack_chunk(
                ctx.parameters,
                chunk.c0,
                b"".join(infos),
                n_values=chunk.n_values,
                seal_version=chunk.seal_version,
            )
        )
    return dataclasses.replace(agg, chunks=tuple(chunks))


def _refused(
    ctx: bfv.SecretContext, agg: EncryptedVector, own: OwnSeeds, reason: str, **kw: int
) -> None:
    kw.setdefault("min_contributors", 2)
    with pytest.raises(ContributorsError) as err:
        bfv.decrypt(ctx, agg, own_seeds=own, **kw)
    assert err.value.reason == reason


def test_refuses_a_forwarded_single_reply(bfv_ctx: bfv.SecretContext, uploads: Uploads) -> None:
    _refused(bfv_ctx, _agg(bfv_ctx, [uploads["b1"][0]]), uploads["b1"][1], "single")
    # Another branch's reply, forwarded alone or with others, lacks this branch's contribution.
    _refused(bfv_ctx, _agg(bfv_ctx, [uploads["b1"][0]]), uploads["b2"][1], "missing-own")
    _refused(
        bfv_ctx,
        _agg(bfv_ctx, [uploads["b1"][0], uploads["b3"][0]]),
        uploads["b2"][1],
        "missing-own",
    )


def test_refuses_a_stale_round(
    bfv_ctx: bfv.SecretContext, values: dict[str, np.ndarray], uploads: Uploads
) -> None:
    old = _agg(bfv_ctx, [u for u, _ in uploads.values()])
    _, fresh_seeds = bfv.encrypt(bfv_ctx, values["b2"])  # b2's upload of the current step
    _refused(bfv_ctx, old, fresh_seeds, "missing-own")


def test_refuses_duplicated_contributions(bfv_ctx: bfv.SecretContext, uploads: Uploads) -> None:
    agg = _agg(bfv_ctx, [uploads["b1"][0], uploads["b2"][0]])
    twice = _reseed(bfv_ctx, agg, lambda i, infos: [*infos, infos[0]])
    _refused(bfv_ctx, twice, uploads["b2"][1], "duplicate")
    # The same seed under another SEAL header version is the same contribution.
    relabel = _reseed(
        bfv_ctx, agg, lambda i, infos: [*infos, infos[0][:2] + b"\x10\x09" + infos[0][4:]]
    )
    _refused(bfv_ctx, relabel, uploads["b2"][1], "duplicate")


def test_refuses_misaligned_chunks(bfv_ctx: bfv.SecretContext, uploads: Uploads) -> None:
    agg = _agg(bfv_ctx, [u for u, _ in uploads.values()])
    moved = _reseed(bfv_ctx, agg, lambda i, infos: infos if i == 0 else infos[::-1])
    _refused(bfv_ctx, moved, uploads["b1"][1], "misaligned")
    shorter = _reseed(bfv_ctx, agg, lambda i, infos: infos if i == 0 else infos[:2])
    _refused(bfv_ctx, shorter, uploads["b1"][1], "misaligned")


def test_refuses_too_few_or_an_unexpected_count(
    bfv_ctx: bfv.SecretContext, values: dict[str, np.ndarray], uploads: Uploads
) -> None:
    pair = _agg(bfv_ctx, [uploads["b1"][0], uploads["b2"][0]])
    _refused(bfv_ctx, pair, uploads["b1"][1], "too-few", min_contributors=3)
    _refused(bfv_ctx, pair, uploads["b1"][1], "too-few", expected_contributors=3)
    three = _agg(bfv_ctx, [u for u, _ in uploads.values()])
    _refused(bfv_ctx, three, uploads["b1"][1], "too-many", expected_contributors=2)
    out = bfv.decrypt(
        bfv_ctx, three, own_seeds=uploads["b3"][1], min_contributors=3, expected_contributors=3
    )
    assert np.array_equal(out, _sum(bfv_ctx, values, list(NAMES)))


def test_refuses_a_malformed_aggregate(bfv_ctx: bfv.SecretContext, uploads: Uploads) -> None:
    agg = _agg(bfv_ctx, [uploads["b1"][0], uploads["b2"][0]])
    cut = _replace_chunk(agg, 0, agg.chunks[0][:-1])
    _refused(bfv_ctx, cut, uploads["b1"][1], "malformed")
