"""Privacy-utility of the federated DP-LSTM, and end-to-end time per DP engine.

Runs real Flower simulations (same data, same seed) and prints ONE JSON object:

    non_private_auc, auc_by_epsilon {eps: auc}, auc_drop_by_epsilon {eps: drop},
    seconds_by_engine {"fast": s, "opacus": s} (end-to-end DP simulation at engine_epsilon)

Usage: python bench/dp_utility.py [--data synthetic|cdnow] [--eps 1,4,8] [--rounds 5]
       [--engines fast,opacus] [--out runs/bench_dp]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _results import add_save_flag, emit

from fedcrm.config import compose
from fedcrm.simulations.simulate import simulate


def run(overrides: list[str], out: Path) -> dict:
    t0 = time.perf_counter()
    summary = simulate(compose([*overrides, f"output_dir={out}"]), out)
    summary["_wall_s"] = time.perf_counter() - t0
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--eps", default="1,4,8")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--engines", default="fast,opacus")
    p.add_argument("--engine-epsilon", type=float, default=4.0)
    p.add_argument("--delta", default="1e-5")
    p.add_argument("--out", default="runs/bench_dp")
    p.add_argument("--extra", default="", help="more Hydra overrides, space separated")
    add_save_flag(p)
    args = p.parse_args()
    base = [f"data={args.data}", f"federation.rounds={args.rounds}", "baseline=false"]
    if args.data == "cdnow":
        base += ["task.cutoff=1997-09-30", "task.horizon_days=180"]
    base += args.extra.split()
    out = Path(args.out)
    result: dict = {"data": args.data, "rounds": args.rounds, "delta": float(args.delta)}
    plain = run(base, out / "non_private")
    result["non_private_auc"] = plain["final"]["auc"]
    result["non_private_s"] = plain["_wall_s"]
    result["auc_by_epsilon"], result["auc_drop_by_epsilon"], result["epsilon_spent"] = {}, {}, {}
    dp = ["privacy=dp", f"privacy.delta={args.delta}"]
    for eps in [float(e) for e in args.eps.split(",") if e]:
        s = run([*base, *dp, f"privacy.target_epsilon={eps}"], out / f"eps_{eps:g}")
        result["auc_by_epsilon"][f"{eps:g}"] = s["final"]["auc"]
        result["auc_drop_by_epsilon"][f"{eps:g}"] = plain["final"]["auc"] - s["final"]["auc"]
        result["epsilon_spent"][f"{eps:g}"] = max(
            v["epsilon"] for v in s["privacy"]["per_branch"].values()
        )
    result["seconds_by_engine"] = {}
    for engine in [e for e in args.engines.split(",") if e]:
        s = run(
            [
                *base,
                *dp,
                f"privacy.target_epsilon={args.engine_epsilon}",
                f"privacy.engine={engine}",
            ],
            out / f"engine_{engine}",
        )
        result["seconds_by_engine"][engine] = s["timings"]["federated_s"]
        result[f"auc_{engine}"] = s["final"]["auc"]
    if "fast" in result["seconds_by_engine"] and "opacus" in result["seconds_by_engine"]:
        result["engine_time_ratio_opacus_over_fast"] = (
            result["seconds_by_engine"]["opacus"] / result["seconds_by_engine"]["fast"]
        )
    emit("dp_utility", result, save=args.save)


if __name__ == "__main__":
    main()
