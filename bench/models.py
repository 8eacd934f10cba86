"""Model comparison over seeds: federated vs centralized vs local-only, DP vs non-private.

Run: ``python bench/models.py [--seeds 5] [--models lstm,gbdt] [--epsilon 4]
[--data synthetic] [--branches 5] [--customers 2000] [--rounds 5] [--save]``.

For every seed and model, real Flower simulations through ``fedcrm simulate``'s
code path: one non-private run with its baselines (the federated model, the
same model trained on the pooled data, each branch's own model) and one DP run
at ``--epsilon`` per branch (``model=gbdt_dp`` for trees). Each seed draws its
own synthetic data, splits and initial model. Prints ONE JSON object:

``<model>.<arm>.<metric>`` with ``mean``, ``sd`` (sample sd) and ``values``
(per seed), arms ``federated``, ``centralized``, ``local_only``, ``dp``,
metrics ``auc``, ``f1``, ``logloss``; ``<model>.dp_epsilon_max`` (the largest
epsilon any branch spent, per seed); ``<model>.length`` (rounds, or trees for
GBDT); ``<model>.seconds`` (wall time of the
non-private and DP runs, per seed); ``seeds``, ``overrides``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import add_save_flag, emit

from fedcrm.config import compose
from fedcrm.simulations.simulate import simulate

METRICS = ("auc", "f1", "logloss")


def stats(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample sd of the finite values (``None`` when there are none)."""
    xs = [float(v) for v in values if v is not None and v == v]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "sd": statistics.stdev(xs) if len(xs) > 1 else None,
        "values": values,
    }


def run(overrides: list[str], out: Path) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    summary = simulate(compose([*overrides, f"output_dir={out}"]), out)
    return summary, time.perf_counter() - t0


def compare(model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every arm of one model family over the seeds."""
    arms: dict[str, dict[str, list[float | None]]] = {
        arm: {m: [] for m in METRICS} for arm in ("federated", "centralized", "local_only", "dp")
    }
    eps_max, seconds = [], []
    for seed in range(args.seeds):
        base = [f"data={args.data}", f"federation.rounds={args.rounds}", f"seed={seed}"]
        if args.data == "synthetic":
            base += [f"data.branches={args.branches}", f"data.customers={args.customers}"]
        else:  # CDNOW: the cutoff and horizon of the README's CDNOW example
            base += ["task.cutoff=1997-09-30", "task.horizon_days=180", "task.max_events=20"]
        plain, s_plain = run([*base, f"model={model}"], work / f"{model}-{seed}")
        dp_model = "gbdt_dp" if model == "gbdt" else model
        dp, s_dp = run(
            [
                *base,
                f"model={dp_model}",
                "privacy=dp",
                f"privacy.target_epsilon={args.epsilon}",
                "baseline=false",
            ],
            work / f"{model}-dp-{seed}",
        )
        for m in METRICS:
            arms["federated"][m].append(plain["final"].get(m))
            arms["centralized"][m].append(plain["baselines"]["centralized"].get(m))
            arms["local_only"][m].append(plain["baselines"]["local_only"].get(m))
            arms["dp"][m].append(dp["final"].get(m))
        eps_max.append(max(v["epsilon"] for v in dp["privacy"]["per_branch"].values()))
        seconds.append({"plain": round(s_plain, 1), "dp": round(s_dp, 1)})
        auc = plain["final"]["auc"]
        print(f"{model} seed {seed}: AUC {auc:.4f}, DP {dp['final']['auc']:.4f}", file=sys.stderr)
    out: dict[str, Any] = {
        arm: {m: stats(v) for m, v in metrics.items()} for arm, metrics in arms.items()
    }
    out["length"] = plain["rounds"]  # rounds (LSTM) or trees (GBDT) of the last seed's run
    out["dp_epsilon_max"] = eps_max
    out["seconds"] = seconds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--models", default="lstm,gbdt")
    ap.add_argument("--epsilon", type=float, default=4.0)
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--branches", type=int, default=5)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    add_save_flag(ap)
    args = ap.parse_args()
    if args.seeds < 2:
        ap.error("--seeds must be at least 2 (a standard deviation needs two)")
    result: dict[str, Any] = {
        "seeds": args.seeds,
        "epsilon": args.epsilon,
        "data": args.data,
        "branches": args.branches,
        "customers": args.customers,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="fedcrm-bench-models-") as tmp:
        for model in [m for m in args.models.split(",") if m]:
            result[model] = compare(model, args, Path(tmp))
    emit("models", result, save=args.save)


if __name__ == "__main__":
    main()
