"""Federated trees through the real Flower simulation: exchanges, bytes and utility per model.

Prints one JSON object. For every ``--privacy`` mode (default ``none``) and both
tree modes, a 50-tree depth-4 model on synthetic 5 x 2,000 customers (change
with ``--trees``, ``--depth``, ``--branches``, ``--customers``):
``exact`` / ``batched`` -> ``auc`` (pooled test customers, from the branches'
score summaries), ``exchanges`` (Flower round trips, info and evaluation
included), ``bytes_per_tree`` (releases uploaded by all branches per tree:
float64 arrays or CKKS ciphertexts), ``seconds`` (the ServerApp's whole job,
Ray start-up excluded). With one privacy mode the top level holds
``exact``/``batched`` directly; with several, one such object per mode. Under
``dp``/``dp_he`` the ``--epsilon`` values give one result per target epsilon
and ``auc_drop`` against the non-private run of the same tree mode.

Run: ``python bench/gbdt_federated.py [--privacy none he] [--epsilon 1 4]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import add_save_flag, emit

from fedcrm.config import compose
from fedcrm.simulations.simulate import simulate


def run(overrides: list[str], out: Path) -> dict[str, Any]:
    """One simulated federation; the figures of its summary."""
    t0 = time.perf_counter()
    cfg = compose([*overrides, "baseline=false", f"output_dir={out}"])
    summary = simulate(cfg, out, console=None)
    timings = summary["timings"]
    return {
        "auc": summary["final"]["auc"],
        "exchanges": summary["exchanges"],
        "bytes_per_tree": summary["bytes_per_tree"],
        "seconds": timings["federated_s"] - timings.get("connect_s", 0.0),
        "seconds_with_startup": time.perf_counter() - t0,
        "trees": summary["trees"],
        "epsilon_max": max(
            (v.get("epsilon") or 0.0 for v in summary["privacy"].get("per_branch", {}).values()),
            default=None,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--privacy", nargs="+", default=["none"])
    parser.add_argument("--epsilon", nargs="+", type=float, default=[1.0, 4.0])
    parser.add_argument("--modes", nargs="+", default=["exact", "batched"])
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--branches", type=int, default=5)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--trees-per-exchange", type=int, default=10)
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides")
    add_save_flag(parser)
    args = parser.parse_args()
    base = [
        "model=gbdt",
        f"model.n_estimators={args.trees}",
        f"model.max_depth={args.depth}",
        f"model.trees_per_exchange={args.trees_per_exchange}",
        f"data.branches={args.branches}",
        f"data.customers={args.customers}",
        *args.extra,
    ]
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for privacy in args.privacy:
            per_mode: dict[str, Any] = {}
            for mode in args.modes:
                over = [*base, f"model.mode={mode}", f"privacy={privacy}"]
                if privacy in ("dp", "dp_he"):
                    per_mode[mode] = {
                        f"eps={eps:g}": run(
                            [*over, f"privacy.target_epsilon={eps:g}"],
                            Path(tmp) / f"{privacy}-{mode}-{eps:g}",
                        )
                        for eps in args.epsilon
                    }
                    plain = result.get("none", {}).get(mode)
                    if plain:
                        for r in per_mode[mode].values():
                            r["auc_drop"] = plain["auc"] - r["auc"]
                else:
                    per_mode[mode] = run(over, Path(tmp) / f"{privacy}-{mode}")
            result[privacy] = per_mode
    emit(
        "gbdt_federated",
        result[args.privacy[0]] if len(args.privacy) == 1 else result,
        save=args.save,
    )


if __name__ == "__main__":
    main()
