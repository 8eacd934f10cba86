"""Benchmark: verify a 1,000-entry privacy ledger, recomputing epsilon at every entry.

Run ``python bench/ledger.py`` (never part of the test run). Prints one JSON
object. For each ledger shape and accountant: ``verify_1000_s``, the wall time
of :func:`fedcrm.privacy.verify.verify_ledger` on 1,000 signed entries with
cold caches (signatures, hash chain and the cumulative epsilon of every entry
recomputed); ``append_s``, one more :meth:`Ledger.append` on that ledger (what
a branch pays per round); ``final_epsilon``; and, for PRV, the same epsilon
from a plain Opacus ``PRVAccountant`` (``opacus_epsilon``), the time of that
one call (``opacus_call_s``) and ``ratio_naive`` = 1,000 such calls (what
recomputing every entry with Opacus directly would take) / ``verify_1000_s``.

Shapes (delta 1e-5, ending below epsilon 3):

* ``dp_sgd``: 4 runs x 250 rounds of 10 DP-SGD steps at sample rate 0.01,
  noise multiplier 2.0 / 2.2 / 2.4 / 2.6 (10,000 steps);
* ``trees``: 4 runs x 250 Gaussian histogram releases (sample rate 1), noise
  multiplier 40 / 45 / 50 / 55.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _results import add_save_flag, emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opacus.accountants import PRVAccountant

from fedcrm.privacy import composition
from fedcrm.privacy.accounting import Mechanism, epsilon_trajectory, merge_history
from fedcrm.privacy.ledger import GENESIS_HASH, Ledger, canonical_json, entry_hash
from fedcrm.privacy.signing import generate_signing_key, key_id, load_private_key, sign
from fedcrm.privacy.verify import verify_ledger

DELTA = 1e-5
N = 1000


def shape(name: str) -> list[Mechanism]:
    if name == "dp_sgd":
        sigmas = (2.0, 2.2, 2.4, 2.6)
        return [
            Mechanism(
                "dp-sgd",
                noise_multiplier=sigmas[i * 4 // N],
                sample_rate=0.01,
                steps=10,
                max_grad_norm=1.0,
            )
            for i in range(N)
        ]
    sigmas = (40.0, 45.0, 50.0, 55.0)
    return [
        Mechanism.gaussian(noise_multiplier=sigmas[i * 4 // N], sensitivity=1.0) for i in range(N)
    ]


def clear_caches() -> None:
    for cached in (
        composition._rdp_per_step,
        composition._domain,
        composition._truncated_mean,
        composition._discretised,
        composition._power,
    ):
        cached.cache_clear()


def write_ledger(path: Path, key_path: Path, mechanisms: list[Mechanism], accountant: str) -> None:
    """A signed 1,000-entry ledger, epsilons from the same code Ledger.append uses."""
    key = load_private_key(key_path)
    epsilons = epsilon_trajectory(mechanisms, deltas=[DELTA] * N, accountants=[accountant] * N)
    prev, lines = GENESIS_HASH, []
    for seq, (m, epsilon) in enumerate(zip(mechanisms, epsilons, strict=True)):
        entry = {
            "branch_id": "b1",
            "seq": seq,
            "run_id": f"run-{seq * 4 // N}",
            "round": seq % 250,
            "model": "lstm" if m.name == "dp-sgd" else "gbdt",
            "mechanism": m.name,
            "noise_multiplier": m.noise_multiplier,
            "sample_rate": m.sample_rate,
            "steps": m.steps,
            "max_grad_norm": m.max_grad_norm,
            "sensitivity": m.sensitivity,
            "delta": DELTA,
            "epsilon": epsilon,
            "accountant": accountant,
            "time": "2026-01-01T00:00:00.000Z",
            "key_id": key_id(key),
            "prev_hash": prev,
        }
        entry["hash"] = prev = entry_hash(entry)
        entry["signature"] = sign(key, bytes.fromhex(entry["hash"]))
        lines.append(canonical_json(entry) + b"\n")
    path.write_bytes(b"".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_save_flag(ap)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # Opacus: log(1 - q) at q = 1, largest RDP order
    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        key_path, pub_path = generate_signing_key(Path(tmp), "b1")
        for name in ("dp_sgd", "trees"):
            mechanisms = shape(name)
            out[name] = {}
            for accountant in ("prv", "rdp"):
                path = Path(tmp) / f"{name}-{accountant}.jsonl"
                write_ledger(path, key_path, mechanisms, accountant)
                clear_caches()
                start = time.perf_counter()
                result = verify_ledger(path, pub_path, branch_id="b1")
                verify_s = time.perf_counter() - start
                assert result.ok, result.problems[:3]
                ledger = Ledger(path, branch_id="b1", signing_key=key_path)
                start = time.perf_counter()
                ledger.append(
                    run_id="next",
                    round=0,
                    model="lstm",
                    mechanism=mechanisms[-1],
                    delta=DELTA,
                    accountant=accountant,
                )
                row = {
                    "verify_1000_s": round(verify_s, 3),
                    "append_s": round(time.perf_counter() - start, 3),
                    "final_epsilon": round(float(result.epsilon or 0.0), 5),
                }
                if accountant == "prv":
                    opacus = PRVAccountant()
                    opacus.history = merge_history(mechanisms)
                    start = time.perf_counter()
                    row["opacus_epsilon"] = round(float(opacus.get_epsilon(DELTA)), 5)
                    row["opacus_call_s"] = round(time.perf_counter() - start, 3)
                    row["ratio_naive"] = round(N * row["opacus_call_s"] / verify_s, 1)
                out[name][accountant] = row
    emit("ledger", out, save=args.save)


if __name__ == "__main__":
    main()
