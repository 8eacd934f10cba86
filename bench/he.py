"""Benchmark encrypted, masked aggregation (BFV + SecAgg+); prints ONE JSON object.

Run: ``python bench/he.py [--branches 5] [--rounds 3] [--customers 15000]
[--repeat 3] [--skip-simulation]``.

Two parts, both measured side by side in this one run:

``step`` - one aggregation step of an update the size of the LSTM that the
   simulation trains, with the product's own code at every stage: a branch's
   advertisement, its encode (:class:`~fedcrm.crypto.limbs.LimbCodec`) + mask +
   encrypt, the server's sum of ``--branches`` uploads, the server's mask
   correction (nobody dropped / one branch dropped), a branch's check +
   decrypt + unmask + decode; bytes per value against float32. Timings are
   the minimum over ``--repeat`` runs (the machine is shared), with medians.
``simulation`` - the same federated LSTM job run as ``privacy=none`` and
   ``privacy=he`` (alternately, ``--repeat`` pairs; the fastest of each is
   kept): ``round_time_ratio`` is the median encrypted round time over the
   median plaintext round time, every branch-side and server-side cost
   included; ``upload_ratio`` the bytes uploaded over the plaintext bytes.

Top-level keys: ``round_time_ratio``, ``upload_ratio``, ``n_params``,
``branches``, ``step`` and ``simulation`` (details), ``machine``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _results import add_save_flag, emit

from fedcrm.crypto import bfv, bfv_aggregate, masking, unmasking
from fedcrm.crypto.limbs import LimbCodec
from fedcrm.crypto.roster import BranchIdentity, Roster, default_threshold


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(min wall s, median wall s, last result) over ``repeat`` calls."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def _lstm_size(overrides: list[str]) -> int:
    """Parameters of the LSTM the simulation trains."""
    from fedcrm.config import compose
    from fedcrm.models.lstm import build_model

    cfg = compose(overrides)
    n_tabular = 12  # the synthetic export's tabular features; a few more or less change little
    return sum(p.numel() for p in build_model(cfg.model, n_tabular, seed=0).parameters())


def _advertise_all(
    roster: Roster, idents: dict[str, BranchIdentity], step: int, threshold: int
) -> tuple[dict[str, Any], dict[str, bytes]]:
    states, ads = {}, {}
    for b, ident in idents.items():
        states[b], ads[b] = masking.start_round(
            ident, roster, run_id="bench", step=step, threshold=threshold
        )
    for b, ident in idents.items():
        masking.receive_advertisements(states[b], ident, roster, list(ads.values()))
    return states, ads


def step_figures(n: int, k: int, repeat: int) -> dict[str, Any]:
    """One masked, encrypted aggregation step of ``k`` branches' ``n``-value updates."""
    from fedcrm.client.secure_agg import CODECS

    ctx = bfv.generate()
    t, params = ctx.plain_modulus, ctx.parameters
    codec = LimbCodec.plan(plain_modulus=t, max_contributors=k, **CODECS["update"])
    rng = np.random.default_rng(1)
    updates = {f"branch-{i:02d}": rng.normal(0.0, 0.3, n) for i in range(k)}
    idents = {b: BranchIdentity.generate(b) for b in updates}
    roster = Roster({b: i.entry for b, i in idents.items()})
    threshold = default_threshold(roster.n)
    first = sorted(updates)[0]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        adv_s, _, _ = _timed(
            lambda: masking.start_round(
                idents[first], roster, run_id="bench", step=0, threshold=threshold
            ),
            repeat,
        )
        states, ads = _advertise_all(roster, idents, 1, threshold)

        def upload() -> Any:
            state = copy.deepcopy(states[first])  # masks serve one update: a fresh copy each time
            digits, _ = codec.encode(updates[first])
            return masking.submit(state, ctx, digits, state_path=tmp / "state.json")

        enc_s, enc_med, one = _timed(upload, repeat)
        uploads = {
            b: masking.submit(states[b], ctx, codec.encode(u)[0], state_path=tmp / f"{b}.json")
            for b, u in updates.items()
        }
        agg_s, agg_med, (agg, rejected) = _timed(
            lambda: bfv_aggregate.aggregate(params, uploads), repeat
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

        def corr(ads_: Any, reveals_: Any, step: int, live_: list[str], dropped: list[str]) -> Any:
            return unmasking.correction(
                roster, ads_, reveals_, run_id="bench", step=step, threshold=threshold,
                live=live_, dropped=dropped, length=agg.length, plain_modulus=t,
            )  # fmt: skip

        corr_s, _, correction = _timed(lambda: corr(ads, reveals, 1, live, []), repeat)

        def open_sum() -> np.ndarray:
            digits = masking.open_aggregate(states[first], ctx, agg, correction)
            return codec.decode(digits, k)

        dec_s, dec_med, total = _timed(open_sum, repeat)
        max_err = float(np.max(np.abs(total - sum(updates.values()))))

        # One branch drops after advertising: endorsements, then its pairwise masks removed.
        states2, ads2 = _advertise_all(roster, idents, 2, threshold)
        dropped, live2 = [live[-1]], live[:-1]
        for b in live2:
            digits, _ = codec.encode(updates[b])
            masking.submit(states2[b], ctx, digits, state_path=tmp / f"{b}.json")
        ends = [
            masking.endorse(states2[b], idents[b], live2, dropped, state_path=tmp / f"{b}.json")
            for b in live2
        ]
        req2 = unmasking.reveal_request(
            roster, run_id="bench", step=2, threshold=threshold, live=live2, dropped=dropped,
            endorsements=ends,
        )  # fmt: skip
        rev2 = {
            b: masking.reveal(states2[b], roster, req2, state_path=tmp / f"{b}.json") for b in live2
        }
        corr1_s, _, _ = _timed(lambda: corr(ads2, rev2, 2, live2, dropped), repeat)
    return {
        "n_values": n,
        "n_branches": k,
        "threshold": threshold,
        "scheme": f"BFV N={bfv.POLY_MODULUS_DEGREE}, t={t} (tenseal {bfv.ts.__version__})",
        "security_level_bits": bfv.security_level_bits(),
        "codec": {
            "limbs": codec.limbs,
            "limb_bits": codec.limb_bits,
            "bound": codec.bound,
            "precision": codec.precision,
        },
        "upload_bytes": one.nbytes,
        "upload_ratio": one.nbytes / (4 * n),
        "download_ratio": (agg.nbytes + 8 * agg.length) / (4 * n),
        "advertise_s": adv_s,
        "encode_mask_encrypt_s": enc_s,
        "encode_mask_encrypt_s_median": enc_med,
        "aggregate_s": agg_s,
        "aggregate_s_median": agg_med,
        "correction_s": corr_s,
        "correction_1_dropped_s": corr1_s,
        "open_s": dec_s,
        "open_s_median": dec_med,
        "max_abs_error": max_err,
        "branch_side_s": adv_s + enc_s + dec_s,
        "server_side_s": agg_s + corr_s,
    }


def _one_run(overrides: list[str], privacy: str, out: Path) -> dict[str, Any]:
    from fedcrm.config import compose
    from fedcrm.simulations.simulate import simulate

    cfg = compose([*overrides, f"privacy={privacy}", f"output_dir={out}", "baseline=false"])
    summary = simulate(cfg, out, console=None)
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    seconds = [float(r["seconds"]) for r in rounds if "trained_round" in r and "seconds" in r]
    return {
        "round_s": seconds,
        "round_s_median": statistics.median(seconds),
        "federated_s": summary["timings"].get("federated_s"),
        "key_ceremony_s": summary["timings"].get("key_ceremony_s"),
        "bytes_uploaded": summary["bytes_uploaded"],
        "auc": summary["final"]["auc"],
    }


def simulation_figures(overrides: list[str], repeat: int) -> dict[str, Any]:
    """The same job plaintext and encrypted, alternately; the faster run of each kept."""
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "he": []}
    with tempfile.TemporaryDirectory() as tmp_dir:
        for i in range(repeat):
            for privacy in ("none", "he"):
                out = Path(tmp_dir) / f"{privacy}-{i}"
                runs[privacy].append(_one_run(overrides, privacy, out))
    best = {p: min(r, key=lambda x: x["round_s_median"]) for p, r in runs.items()}
    return {
        "overrides": overrides,
        "plain": best["none"],
        "encrypted": best["he"],
        "round_time_ratio": best["he"]["round_s_median"] / best["none"]["round_s_median"],
        "upload_ratio": best["he"]["bytes_uploaded"] / best["none"]["bytes_uploaded"],
        # Each pair runs the same job: encrypted aggregation must not move the result.
        "auc_pairs": [[a["auc"], b["auc"]] for a, b in zip(runs["none"], runs["he"], strict=True)],
        "same_auc": all(
            abs(a["auc"] - b["auc"]) < 1e-3 for a, b in zip(runs["none"], runs["he"], strict=True)
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--branches", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--customers", type=int, default=15000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-simulation", action="store_true")
    add_save_flag(ap)
    args = ap.parse_args(argv)
    overrides = [
        f"data.branches={args.branches}",
        f"data.customers={args.customers}",
        f"federation.rounds={args.rounds}",
    ]
    n = _lstm_size(overrides)
    result: dict[str, Any] = {"n_params": n, "branches": args.branches}
    result["step"] = step_figures(n + 1, args.branches, args.repeat)
    result["upload_ratio"] = result["step"]["upload_ratio"]
    if not args.skip_simulation:
        sim = simulation_figures(overrides, max(1, args.repeat - 1))
        result["simulation"] = sim
        result["round_time_ratio"] = sim["round_time_ratio"]
        result["upload_ratio"] = sim["upload_ratio"]
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m": os.getloadavg()[0],
    }
    emit("he", result, save=args.save)
    return result


if __name__ == "__main__":
    main()
