"""Scoring at a branch: throughput for a million customers, and what calibration buys.

Prints one JSON object with two parts.

``throughput``: scoring about 1,000,000 synthetic customers (blocks of 50,000,
events up to 2024-12-31) with a branch's bundle of each model kind, with and
without explanations. The models are trained centrally on the synthetic CRM
(5 branches x 2,000 customers) with the default configuration (LSTM: 3
epochs). Feature blocks are built once (``features_s``: seconds for all
customers, from the consent-filtered tables in memory; reading a CSV export is
not included) and stored; each scoring configuration then runs in a fresh
process that reads the blocks one at a time, scores them, explains them and
writes the scores as Parquet, exactly as ``fedcrm score`` does after loading.
Reported per configuration: wall seconds, CPU seconds, peak resident memory
(MB, the process's ``ru_maxrss``) and the memory after imports. LSTM
explanations: integrated gradients over the tabular features for every
customer, over the event sequence for the highest-scoring 2 % of each block
(``sequence_share``, the default of ``fedcrm score``), 16 steps each. The
machine's load average is reported beside: on shared cores wall seconds grow
with others' work, CPU seconds much less.

``calibration``: per data set (``synthetic``: 5 branches x 2,000, a fresh data
seed per run; ``cdnow``: cutoff 1997-09-30, horizon 180 days, 20 events) and
model kind, over ``--seeds`` runs (mean and sd): models trained centrally on
70 % of the customers; the branches' thresholded evaluation releases of one
half of the other 30 % fit the calibration map (as the server does), and the
other half measures it: ECE (10 bins) and Brier score before and after Platt
and isotonic calibration, and the top-decile lift (calibration is monotone:
the ranking, hence the lift, does not change).

Run: ``python bench/scoring.py`` (about 30 minutes on 2 cores);
``--customers 100000 --seeds 2`` for a quick look.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import add_save_flag, emit

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np

# The day before the training cutoff of the synthetic CRM: today's customers look like
# the training customers (the drift check has nothing to report).
AS_OF = dt.date(2024, 10, 1)
BLOCK = 50_000


def _peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss``, not
    inherited from the parent across ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ models
def _train(kind: str, fs: Any, seed: int, max_events: int) -> tuple[Any, Any]:
    """A model of ``kind`` trained centrally on ``fs``: ``(model, config)``."""
    from fedcrm.config import GBDTModelConfig, LSTMModelConfig

    if kind == "gbdt":
        from fedcrm.models.gbdt import HistGBDT

        cfg = GBDTModelConfig()
        return HistGBDT.from_config(cfg).fit(
            fs.tabular, fs.labels, feature_names=fs.tabular_names
        ), cfg
    from fedcrm.models.lstm import build_model, get_weights
    from fedcrm.models.train import train_local

    cfg = LSTMModelConfig()
    model = build_model(cfg, fs.tabular.shape[1], seed=seed)
    train_local(
        model, fs, epochs=3, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, seed=seed
    )
    return get_weights(model), cfg


def _probabilities(kind: str, model: Any, cfg: Any, fs: Any) -> np.ndarray:
    if kind == "gbdt":
        return model.predict_proba(fs.tabular)[:, 1]
    from fedcrm.models.lstm import build_model, set_weights
    from fedcrm.models.train import predict_proba

    lstm = build_model(cfg, fs.tabular.shape[1])
    set_weights(lstm, model)
    return predict_proba(lstm, fs)


# -------------------------------------------------------------- throughput
def prepare_throughput(work: Path, customers: int) -> dict[str, Any]:
    """Bundles of both kinds and the feature blocks of ``customers`` synthetic customers."""
    from fedcrm.config import TaskConfig
    from fedcrm.data.features import build_features
    from fedcrm.data.scoring_features import build_scoring_features
    from fedcrm.data.synthetic import generate
    from fedcrm.models.bundle_writers import write_branch_bundle

    train = build_features(
        generate(branches=5, customers=2000, seed=0), cutoff=None, horizon_days=90, max_events=50
    )
    for kind in ("gbdt", "lstm"):
        model, cfg = _train(kind, train, 0, 50)
        write_branch_bundle(
            work / kind / "models", model=model, model_config=cfg, task=TaskConfig(),
            run_id="bench", branch_id="bench", train=train,
        )  # fmt: skip
    blocks, total, features_s = work / "blocks", 0, 0.0
    blocks.mkdir()
    i = 0
    while total < customers:
        crm = generate(branches=1, customers=BLOCK, seed=1000 + i)
        start = time.perf_counter()
        fs = build_scoring_features(crm, as_of=AS_OF, max_events=50)
        features_s += time.perf_counter() - start
        keep = min(len(fs), customers - total)
        fs = fs.subset(np.arange(keep))
        fs.customer_ids = np.char.add(f"B{i:03d}-", fs.customer_ids.astype(str))
        fs.seq_cat = fs.seq_cat.astype(np.int8)  # vocabularies < 128: a smaller file
        fs.save(str(blocks / f"{i:03d}.npz"))
        total += keep
        i += 1
    return {"customers": total, "blocks": i, "features_s": round(features_s, 1)}


def child(kind: str, explain: bool, work: Path) -> dict[str, Any]:
    """One scoring configuration, in this (fresh) process."""
    import torch

    from fedcrm.cli.score import write_private_table
    from fedcrm.data.dataset import FeatureSet
    from fedcrm.models.bundle import load_bundle
    from fedcrm.models.bundle_find import default_key_files, find_bundle, load_trusted_keys
    from fedcrm.models.scoring import ScoringOptions, score_blocks

    torch.set_num_threads(2)
    imported_mb = _peak_rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    path = find_bundle(work / kind / "models")
    bundle = load_bundle(
        path, trusted_keys=load_trusted_keys(default_key_files(path), strict=False)
    )
    files = sorted((work / "blocks").glob("*.npz"))

    def blocks():  # type: ignore[no-untyped-def]
        for f in files:
            fs = FeatureSet.load(str(f))
            yield fs, len(fs)

    options = ScoringOptions(reasons=3 if explain else 0)
    result = score_blocks(bundle, blocks(), total=0, options=options)
    write_private_table(result.table, work / f"scores-{kind}-{explain}.parquet", overwrite=True)
    return {
        "customers": len(result.table),
        "seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "peak_rss_mb": round(_peak_rss_mb()),
        "rss_after_imports_mb": round(imported_mb),
        "explained": explain,
        "sequence_share": options.sequence_share if (explain and kind == "lstm") else None,
        "largest_psi": round(max(result.drift["psi"].values()), 3) if result.drift else None,
    }


def throughput(customers: int) -> dict[str, Any]:
    """Prepare once, then every configuration in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="fedcrm-scoring-") as tmp:
        work = Path(tmp)
        out: dict[str, Any] = prepare_throughput(work, customers)
        for kind in ("gbdt", "lstm"):
            for explain in (False, True):
                done = subprocess.run(
                    [sys.executable, __file__, "--child", kind, str(int(explain)), str(work)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                name = f"{kind}_{'with' if explain else 'without'}_explanations"
                out[name] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------- calibration
def _dataset(name: str, seed: int) -> tuple[Any, int]:
    from fedcrm.data.features import build_features

    if name == "synthetic":
        from fedcrm.data.synthetic import generate

        data = generate(branches=5, customers=2000, seed=seed)
        return build_features(data, cutoff=None, horizon_days=90, max_events=50), 50
    from fedcrm.data.cdnow import load_cdnow

    data = load_cdnow()
    return build_features(data, cutoff=dt.date(1997, 9, 30), horizon_days=180, max_events=20), 20


def calibration_run(name: str, kind: str, seed: int) -> dict[str, float]:
    """One run: fit on releases of half the test customers, measure on the other half."""
    from fedcrm.data.features import stratified_split
    from fedcrm.models.calibration import fit_calibration
    from fedcrm.models.evaluation import thresholded_release
    from fedcrm.models.pooled import pooled_metrics

    fs, k = _dataset(name, seed)
    train, test = stratified_split(fs, test_fraction=0.3, seed=seed)
    model, cfg = _train(kind, fs.subset(train), seed, k)
    test_fs = fs.subset(test)
    p = _probabilities(kind, model, cfg, test_fs)
    y = test_fs.labels
    rng = np.random.default_rng(seed)
    fit_half = rng.random(y.size) < 0.5
    branches = np.asarray(test_fs.branch_ids).astype(str)
    releases = [
        thresholded_release(y[fit_half & (branches == b)], p[fit_half & (branches == b)])
        for b in sorted(set(branches.tolist()))
    ]

    def exact(q: np.ndarray) -> dict[str, Any]:
        return pooled_metrics([thresholded_release(y[~fit_half], q[~fit_half], min_count=1)])

    before = exact(p)
    out = {
        "ece_before": before["ece"],
        "brier_before": before["brier"],
        "top_decile_lift": before["top_decile_lift"],
        "auc": before["auc"],
    }
    for method in ("platt", "isotonic"):
        cal = fit_calibration(releases, method)  # type: ignore[arg-type]
        after = exact(cal.apply(p)) if cal is not None else before
        out[f"ece_after_{method}"] = after["ece"]
        out[f"brier_after_{method}"] = after["brier"]
        out[f"top_decile_lift_after_{method}"] = after["top_decile_lift"]
    return out


def calibration(seeds: int, datasets: list[str]) -> dict[str, Any]:
    """Mean and sd over ``seeds`` runs of every data set and model kind."""
    out: dict[str, Any] = {}
    for name in datasets:
        for kind in ("gbdt", "lstm"):
            runs = [calibration_run(name, kind, seed) for seed in range(seeds)]
            summary = {
                key: {
                    "mean": round(float(np.mean([r[key] for r in runs])), 4),
                    "sd": round(float(np.std([r[key] for r in runs], ddof=1)), 4)
                    if len(runs) > 1
                    else None,
                }
                for key in runs[0]
            }
            out.setdefault(name, {})[kind] = {"runs": len(runs), **summary}
            print(f"{name}/{kind}: {summary}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    """Parse arguments and print the JSON result."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--datasets", default="synthetic,cdnow")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-calibration", action="store_true")
    p.add_argument("--child", nargs=3, metavar=("KIND", "EXPLAIN", "WORK"), help=argparse.SUPPRESS)
    add_save_flag(p)
    args = p.parse_args()
    if args.child:
        kind, explain, work = args.child
        print(json.dumps(child(kind, explain == "1", Path(work))))
        return
    result: dict[str, Any] = {"cores": os.cpu_count()}
    if not args.skip_throughput:
        load = os.getloadavg()[1]
        result["throughput"] = throughput(args.customers)
        result["throughput"]["load_average_5min"] = [round(load, 1), round(os.getloadavg()[1], 1)]
    if not args.skip_calibration:
        result["calibration"] = calibration(args.seeds, args.datasets.split(","))
    emit("scoring", result, save=args.save)


if __name__ == "__main__":
    main()
