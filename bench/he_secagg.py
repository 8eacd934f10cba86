"""Exact secure aggregation figures for bench/he.py (BFV + double masking), one process run.

Every phase of one step is timed with the caller's timer (minimum over
repeats, CPU time recorded under ``secagg_*``): a branch's advertisement; its
quantize + mask + encrypt of an ``n``-value update; the server's sum of ``k``
uploads; the server's correction (no dropout, and one branch dropped after
advertising); a branch's check + decrypt + unmask. The sum is checked exact.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.crypto import bfv, bfv_aggregate, fixed_point, masking, unmasking
from fedcrm.crypto.roster import BranchIdentity, Roster, default_threshold
from fedcrm.crypto.round_state import RoundState

Timer = Callable[..., tuple[float, float, Any]]


def _secagg_step(
    roster: Roster, idents: dict[str, BranchIdentity], step: int
) -> tuple[dict[str, RoundState], dict[str, bytes], int]:
    """Advertise and receive for every branch; return states, advertisements, threshold."""
    threshold = default_threshold(roster.n)
    states, ads = {}, {}
    for b, ident in idents.items():
        states[b], ads[b] = masking.start_round(
            ident, roster, run_id="bench", step=step, threshold=threshold
        )
    for b, ident in idents.items():
        masking.receive_advertisements(states[b], ident, roster, list(ads.values()))
    return states, ads, threshold


def bfv_secagg(n: int, k: int, repeat: int, _timed: Timer) -> dict[str, Any]:
    """Exact secure aggregation of ``k`` branches' ``n``-value updates, each phase timed."""
    ctx = bfv.generate()
    t, params = ctx.plain_modulus, ctx.parameters
    scale = 2.0**10
    rng = np.random.default_rng(1)
    updates = {f"branch-{i:02d}": rng.normal(0.0, 1.0, n) for i in range(k)}
    idents = {b: BranchIdentity.generate(b) for b in updates}
    roster = Roster({b: i.entry for b, i in idents.items()})
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        first = sorted(updates)[0]
        adv_s, _, (_, ad0) = _timed(
            lambda: masking.start_round(idents[first], roster, run_id="bench", step=0),
            repeat,
            "secagg_advertise_s",
        )
        states, ads, threshold = _secagg_step(roster, idents, 1)

        def quantize(b: str) -> np.ndarray:
            return fixed_point.quantize(
                updates[b], scale=scale, plain_modulus=t, max_contributors=k
            )

        def encrypt_mask() -> Any:
            state = copy.deepcopy(states[first])  # masks serve one update: a fresh copy each time
            return masking.submit(state, ctx, quantize(first), state_path=tmp / "state.json")

        enc_s, enc_med, one = _timed(encrypt_mask, repeat, "secagg_quantize_mask_encrypt_s")
        uploads = {
            b: masking.submit(states[b], ctx, quantize(b), state_path=tmp / f"{b}.json")
            for b in updates
        }
        agg_s, agg_med, (agg, rejected) = _timed(
            lambda: bfv_aggregate.aggregate(params, uploads), repeat, "secagg_aggregate_s"
        )
        assert not rejected, rejected
        live = sorted(updates)
        request = unmasking.reveal_request(
            roster, run_id="bench", step=1, threshold=threshold, live=live, dropped=[]
        )
        reveals = {
            b: masking.reveal(states[b], roster, request, state_path=tmp / f"{b}.json")
            for b in live
        }
        corr_s, _, correction = _timed(
            lambda: unmasking.correction(
                roster,
                ads,
                reveals,
                run_id="bench",
                step=1,
                threshold=threshold,
                live=live,
                dropped=[],
                length=n,
                plain_modulus=t,
            ),
            repeat,
            "secagg_unmask_correction_s",
        )
        dec_s, dec_med, total = _timed(
            lambda: masking.open_aggregate(states[first], ctx, agg, correction),
            repeat,
            "secagg_decrypt_unmask_s",
        )
        exact = bool(np.array_equal(total, sum(quantize(b) for b in live) % t))
        real = fixed_point.dequantize(total, scale=scale, plain_modulus=t)
        max_err = float(np.max(np.abs(real - sum(updates.values()))))

        # One branch drops after advertising: endorsements, then its pairwise masks removed.
        states2, ads2, _ = _secagg_step(roster, idents, 2)
        dropped, live2 = [live[-1]], live[:-1]
        for b in live2:
            masking.submit(states2[b], ctx, quantize(b), state_path=tmp / f"{b}.json")
        ends = [
            masking.endorse(states2[b], idents[b], live2, dropped, state_path=tmp / f"{b}.json")
            for b in live2
        ]
        req2 = unmasking.reveal_request(
            roster,
            run_id="bench",
            step=2,
            threshold=threshold,
            live=live2,
            dropped=dropped,
            endorsements=ends,
        )
        rev2 = {
            b: masking.reveal(states2[b], roster, req2, state_path=tmp / f"{b}.json") for b in live2
        }
        corr1_s, _, _ = _timed(
            lambda: unmasking.correction(
                roster,
                ads2,
                rev2,
                run_id="bench",
                step=2,
                threshold=threshold,
                live=live2,
                dropped=dropped,
                length=n,
                plain_modulus=t,
            ),
            repeat,
            "secagg_unmask_correction_1_dropped_s",
        )
    upload = one.nbytes
    q_bits = params.data_modulus.bit_length()
    return {
        "params": {
            "scheme": "BFV",
            "library": f"tenseal {bfv.ts.__version__}",
            "encryption_type": "symmetric (seeded)",
            "poly_modulus_degree": bfv.POLY_MODULUS_DEGREE,
            "slots": params.slots,
            "coeff_mod_bit_sizes": list(bfv.COEFF_MOD_BIT_SIZES),
            "data_modulus": params.data_modulus,
            "plain_modulus": t,
            "plain_modulus_bits": round(float(np.log2(t)), 2),
            "max_contributions": params.max_contributions,
            "decryption_failure_log2_at_max": bfv.decryption_failure_log2(
                plain_modulus=t,
                data_modulus=params.data_modulus,
                contributions=params.max_contributions,
            ),
            "log2_q_total": sum(bfv.COEFF_MOD_BIT_SIZES),
            "he_standard_max_log2_q_n8192": bfv.HE_STANDARD_MAX_LOG_Q,
            "security_level_bits": bfv.security_level_bits(),
            "fixed_point_scale": scale,
            "fixed_point_max_abs_value": fixed_point.max_abs_value(
                scale=scale, plain_modulus=t, max_contributors=k
            ),
            "threshold": threshold,
        },
        "n_values": n,
        "n_branches": k,
        "chunks_per_update": len(one.chunks),
        "upload_bytes": upload,
        "upload_ratio": upload / (4 * n),
        "upload_ratio_method": (
            "ciphertext bytes of one masked update / fp32 bytes of the same values; each "
            f"chunk = 60-byte header + {params.slots} uint32 c0 coefficients ({q_bits}-bit "
            "prime) + one 81-byte SEAL seed; the last chunk is partly filled"
        ),
        "download_ratio_sum_and_correction": (agg.nbytes + 4 * n) / (4 * n),
        "advertisement_bytes": len(ad0),
        "reveal_bytes": len(next(iter(reveals.values()))),
        "advertise_s": adv_s,
        "quantize_mask_encrypt_s": enc_s,
        "quantize_mask_encrypt_s_median": enc_med,
        "quantize_mask_encrypt_method": (
            f"one branch: fixed-point quantize, self mask + {k - 1} pairwise masks (X25519, "
            "HKDF, ChaCha20 with rejection sampling), BFV seeded encryption, state saved"
        ),
        f"aggregate_s_{k}": agg_s,
        f"aggregate_s_{k}_median": agg_med,
        "aggregate_method": (
            f"bfv_aggregate.aggregate over {k} serialized uploads with parameters only: parse "
            "and validate every chunk, add c0 modulo q with numpy, serialize the sum and seeds"
        ),
        "unmask_correction_s": corr_s,
        "unmask_correction_1_dropped_s": corr1_s,
        "unmask_correction_method": (
            f"server: rebuild {k} self-mask seeds from {threshold} Shamir shares each "
            "(checked against the commitments) and expand them; with one dropped branch "
            f"also its ephemeral key and {k - 1} pairwise masks"
        ),
        "decrypt_unmask_s": dec_s,
        "decrypt_unmask_s_median": dec_med,
        "decrypt_method": (
            f"one branch: contributor check, SEAL expands {k} seeds per chunk, adds, "
            "decrypts, subtracts the correction"
        ),
        "exact": exact,
        "max_abs_error_after_dequantize": max_err,
    }
