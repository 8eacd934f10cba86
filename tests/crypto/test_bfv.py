"""BFV parameters, secret contexts, exact encrypted sums, and a server that holds no key."""

from __future__ import annotations

import math
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedcrm.crypto import bfv, bfv_aggregate, seal_format
from fedcrm.crypto.bfv_wire import BFVParameters, EncryptedVector, parse_chunk
from fedcrm.errors import EncryptionError, KeyFileError

LENGTH = 10_000  # two ciphertexts, the second partly filled


def _uniform(ctx: bfv.SecretContext, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, ctx.plain_modulus, n)


def test_plain_modulus_is_the_largest_meeting_the_failure_target() -> None:
    q = bfv.data_modulus()
    assert q == 1073643521 and q < 2**30
    t = bfv.PLAIN_MODULUS
    assert t % (2 * bfv.POLY_MODULUS_DEGREE) == 1 and bfv._is_prime(t)
    assert bfv.choose_plain_modulus(64) == t
    assert bfv.decryption_failure_log2(plain_modulus=t, data_modulus=q, contributions=64) < -60
    # The next prime = 1 mod 2N is 2277377: it misses the 2**-40 target.
    nxt = next(k * 16384 + 1 for k in range(t // 16384 + 1, 10**6) if bfv._is_prime(k * 16384 + 1))
    assert nxt == 2277377
    assert bfv.decryption_failure_log2(plain_modulus=nxt, data_modulus=q, contributions=64) > -40


def test_failure_bound_matches_the_binomial_tail() -> None:
    # Independent check: one contribution, bound B: P(|Bin(42,1/2) - 21| >= B) * 8192.
    q, t = bfv.data_modulus(), 30_000_000
    bound = math.ceil(q / (2 * t) - 0.5)
    assert bound == 18
    tail = 2 * sum(math.comb(42, k) for k in range(21 + bound, 43)) / 2**42
    got = bfv.decryption_failure_log2(plain_modulus=t, data_modulus=q, contributions=1)
    assert got == pytest.approx(math.log2(tail * 8192))


def test_security_level_from_the_he_standard() -> None:
    assert sum(bfv.COEFF_MOD_BIT_SIZES) == 60 <= bfv.HE_STANDARD_MAX_LOG_Q[256]
    assert bfv.security_level_bits() == 256


def test_sum_of_64_fresh_ciphertexts_is_exact_with_noise_margin(bfv_ctx: bfv.SecretContext) -> None:
    acc = bfv_aggregate.Accumulator(bfv_ctx.parameters, length=bfv_ctx.parameters.slots)
    values, seeds = [], {}
    for k in range(64):
        values.append(_uniform(bfv_ctx, bfv_ctx.parameters.slots, k))
        upload, seeds[k] = bfv.encrypt(bfv_ctx, values[-1])
        assert acc.add(f"b{k}", upload) is None
    agg = acc.result()
    assert bfv.noise_budget_bits(bfv_ctx, agg) >= 1
    total = bfv.decrypt(bfv_ctx, agg, own_seeds=seeds[5], min_contributors=64)
    assert np.array_equal(total, np.sum(values, axis=0) % bfv_ctx.plain_modulus)


def test_round_trip_and_compact_upload(bfv_ctx: bfv.SecretContext) -> None:
    a, b = _uniform(bfv_ctx, LENGTH, 1), _uniform(bfv_ctx, LENGTH, 2)
    (up_a, seeds_a), (up_b, _) = bfv.encrypt(bfv_ctx, a), bfv.encrypt(bfv_ctx, b)
    assert len(up_a.chunks) == 2 and len(seeds_a) == 2
    # One seed and N uint32 coefficients per chunk: about the fp32 bytes of 8192 values.
    assert len(up_a.chunks[0]) / (4 * bfv_ctx.parameters.slots) < 1.01
    agg, rejected = bfv_aggregate.aggregate(bfv_ctx.parameters, {"a": up_a, "b": up_b})
    assert rejected == {}
    out = bfv.decrypt(bfv_ctx, agg, own_seeds=seeds_a, min_contributors=2)
    assert np.array_equal(out, (a + b) % bfv_ctx.plain_modulus)
    # Fresh randomness: the same values never encrypt to the same bytes.
    assert bfv.encrypt(bfv_ctx, a)[0].chunks[0] != up_a.chunks[0]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.array([0.5, 1.0]), "integers"),
        (np.array([-1, 2]), r"\[0, "),
        (np.array([bfv.PLAIN_MODULUS]), r"\[0, "),
        (np.zeros((2, 2), dtype=int), "flat vector"),
        (np.array([], dtype=int), "flat vector"),
    ],
)
def test_encrypt_validates_input(
    bfv_ctx: bfv.SecretContext, values: np.ndarray, match: str
) -> None:
    with pytest.raises(EncryptionError, match=match):
        bfv.encrypt(bfv_ctx, values)


def test_secret_context_file_round_trip(bfv_ctx: bfv.SecretContext, tmp_path: Path) -> None:
    path = bfv_ctx.save(tmp_path / "bfv_secret.ctx")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = bfv.SecretContext.load(path)
    assert loaded.parameters == bfv_ctx.parameters  # same context_id: same key
    with pytest.raises(KeyFileError, match="already exists"):
        bfv_ctx.save(path)
    values = _uniform(bfv_ctx, 100, 3)
    upload, seeds = bfv.encrypt(loaded, values)
    other, _ = bfv.encrypt(bfv_ctx, values)
    agg, _ = bfv_aggregate.aggregate(bfv_ctx.parameters, {"a": upload, "b": other})
    out = bfv.decrypt(bfv_ctx, agg, own_seeds=seeds, min_contributors=2)
    assert np.array_equal(out, 2 * values % bfv_ctx.plain_modulus)
    assert "context_id" in repr(loaded) and str(loaded.serialized[:16]) not in repr(loaded)


def test_context_id_fingerprints_the_key(
    bfv_ctx: bfv.SecretContext, bfv_other: bfv.SecretContext
) -> None:
    assert bfv_ctx.parameters.context_id != bfv_other.parameters.context_id
    assert bfv_ctx.parameters.parms_id == bfv_other.parameters.parms_id


def test_bad_context_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        bfv.SecretContext.load(tmp_path / "missing.ctx")
    with pytest.raises(KeyFileError, match="not a TenSEAL context"):
        bfv.SecretContext.from_bytes(b"garbage")
    import tenseal as ts

    ckks = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[40, 40])
    with pytest.raises(KeyFileError, match="BFV parameters"):
        bfv.SecretContext.from_bytes(ckks.serialize(save_secret_key=True))
    public = ts.context(ts.SCHEME_TYPE.BFV, 8192, bfv.PLAIN_MODULUS, coeff_mod_bit_sizes=[30, 30])
    public.make_context_public()
    with pytest.raises(KeyFileError, match="no secret key"):
        bfv.SecretContext.from_bytes(public.serialize())


def test_server_parameters_hold_no_key(bfv_ctx: bfv.SecretContext) -> None:
    params = BFVParameters.from_json(bfv_ctx.parameters.to_json())
    assert params == bfv_ctx.parameters
    fields = vars(params)
    assert all(isinstance(v, int | str | bytes) for v in fields.values())
    assert sum(len(v) for v in fields.values() if isinstance(v, bytes)) == 32  # parms_id only
    assert set(fields) == {
        "poly_modulus_degree",
        "data_modulus",
        "plain_modulus",
        "parms_id",
        "context_id",
        "max_contributions",
    }
    with pytest.raises(EncryptionError, match="not fedcrm BFV parameters"):
        BFVParameters.from_json(b'{"scheme": "CKKS"}')


_SERVER_SCRIPT = """
import sys
sys.modules["tenseal"] = None  # any import of TenSEAL (hence SEAL's encryptor) now fails
from pathlib import Path
from fedcrm.crypto.bfv_aggregate import Accumulator
from fedcrm.crypto.bfv_wire import BFVParameters, EncryptedVector
d = Path(sys.argv[1])
params = BFVParameters.from_json((d / "params.json").read_bytes())
acc = Accumulator(params, length=int(sys.argv[2]))
for name in ("a", "b", "c"):
    chunks = tuple(p.read_bytes() for p in sorted(d.glob(f"{name}.*.chunk")))
    assert acc.add(name, EncryptedVector(params.context_id, int(sys.argv[2]), chunks)) is None
for i, chunk in enumerate(acc.result().chunks):
    (d / f"sum.{i}.chunk").write_bytes(chunk)
assert not any(m == "tenseal" or m.startswith("tenseal.") for m in sys.modules if sys.modules[m])
"""


def test_server_sums_without_tenseal_and_creates_no_ciphertext(
    bfv_ctx: bfv.SecretContext, tmp_path: Path
) -> None:
    values = {n: _uniform(bfv_ctx, LENGTH, i) for i, n in enumerate("abc")}
    uploads = {n: bfv.encrypt(bfv_ctx, v) for n, v in values.items()}
    (tmp_path / "params.json").write_bytes(bfv_ctx.parameters.to_json())
    for n, (up, _) in uploads.items():
        for i, chunk in enumerate(up.chunks):
            (tmp_path / f"{n}.{i}.chunk").write_bytes(chunk)
    subprocess.run(
        [sys.executable, "-c", _SERVER_SCRIPT, str(tmp_path), str(LENGTH)],
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    chunks = tuple(p.read_bytes() for p in sorted(tmp_path.glob("sum.*.chunk")))
    agg = EncryptedVector(bfv_ctx.parameters.context_id, LENGTH, chunks)
    # The server's output holds exactly the branches' seeds: it made no fresh ciphertext.
    params = bfv_ctx.parameters
    for i, chunk in enumerate(agg.chunks):
        got = parse_chunk(params, chunk).seed_identities()
        sent = [parse_chunk(params, uploads[n][0].chunks[i]).seed_identities()[0] for n in "abc"]
        assert got == sent
    out = bfv.decrypt(bfv_ctx, agg, own_seeds=uploads["b"][1], min_contributors=3)
    assert np.array_equal(out, sum(values.values()) % bfv_ctx.plain_modulus)


def test_seed_identity_ignores_the_seal_header(bfv_ctx: bfv.SecretContext) -> None:
    upload, seeds = bfv.encrypt(bfv_ctx, _uniform(bfv_ctx, 10, 9))
    info = parse_chunk(bfv_ctx.parameters, upload.chunks[0]).seed_infos()[0]
    assert seal_format.seed_identity(info) == seeds[0]
    relabelled = info[:2] + b"\x10\x09" + info[4:]  # another SEAL version in the header
    assert seal_format.seed_identity(relabelled) == seeds[0]
