"""Benchmark: one large branch (1,000,000 customers, ~30,000,000 events) end to end.

Run ``python bench/branch_scale.py`` (never part of the test run; about half
an hour on 2 cores). Each step runs in its own process, so that its peak RSS
is its own:

``generate``
    :func:`fedcrm.data.synthetic.write_synthetic_branch` writes the CSV export.
``validate``
    :func:`fedcrm.data.validate.inspect_dir` without the events table, what
    ``fedcrm data validate`` runs.
``featurise``
    what a branch's ClientApp does first (:mod:`fedcrm.client.branch`):
    validate, consent-filter and sort (``load_s``), build the features
    (``features_s``), split and write the feature cache (``split_write_s``).
``dp_round``
    one DP-SGD round of the LSTM through the client's own code path
    (:func:`fedcrm.client.lstm_round.train_round`: evaluation of the global
    model on the test customers, the budget check, one local epoch with
    Poisson-sampled customers, the signed ledger entry).

Prints one JSON object: per step ``seconds`` and ``peak_rss_gb`` (plus the
step's own figures), the sizes, ``swap_used_mb`` (the swap in use at the end
minus at the start; the machine must not swap) and ``load_average`` (the
machine's 1-minute load at the end: the machine is shared). ``--customers``
scales it down for a quick check; ``--work DIR --steps validate,featurise``
reruns steps on a kept export.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _results import add_save_flag, emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BRANCH = "branch_00"


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _swap_mb() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(info["SwapTotal"].split()[0])
    free = int(info["SwapFree"].split()[0])
    return (total - free) / 1024


def step_generate(work: Path, customers: int) -> dict[str, Any]:
    """Write the export."""
    from fedcrm.data.synthetic import write_synthetic_branch

    t0 = time.perf_counter()
    write_synthetic_branch(work / "export", customers=customers, seed=0)
    sizes = {p.name: round(p.stat().st_size / 1e9, 2) for p in (work / "export").iterdir()}
    return {"seconds": time.perf_counter() - t0, "file_gb": sizes}


def step_validate(work: Path) -> dict[str, Any]:
    """Validate the export (the data validate command's work)."""
    from fedcrm.data.validate import inspect_dir

    t0 = time.perf_counter()
    found = inspect_dir(work / "export", events=False)
    assert found.customers is not None
    return {
        "seconds": time.perf_counter() - t0,
        "problems": found.log.count,
        "customers": len(found.customers),
    }


def step_featurise(work: Path) -> dict[str, Any]:
    """Load, featurise, split and cache as the ClientApp does."""
    from fedcrm.client.branch import write_feature_cache
    from fedcrm.config import TaskConfig
    from fedcrm.data.features import build_features, stratified_split
    from fedcrm.data.loader import load_crm

    task = TaskConfig()
    t0 = time.perf_counter()
    crm = load_crm(work / "export")
    t1 = time.perf_counter()
    fs = build_features(
        crm, cutoff=task.cutoff, horizon_days=task.horizon_days, max_events=task.max_events
    )
    t2 = time.perf_counter()
    del crm
    train, test = stratified_split(fs, test_fraction=task.test_fraction, seed=42)
    write_feature_cache(work / "features", fs.subset(train), fs.subset(test), 0)
    t3 = time.perf_counter()
    return {
        "seconds": t3 - t0,
        "load_s": t1 - t0,
        "features_s": t2 - t1,
        "split_write_s": t3 - t2,
        "customers_in_task": len(fs),
        "churn_rate": round(float(fs.labels.mean()), 3),
    }


def step_dp_round(work: Path) -> dict[str, Any]:
    """One DP-SGD round of the LSTM through the client's code path."""
    from fedcrm.client.branch import BranchSettings, load_branch_data
    from fedcrm.client.lstm_round import initial_weights, train_round
    from fedcrm.config import JobSpec, LSTMModelConfig, PrivacyConfig, TaskConfig
    from fedcrm.privacy.signing import generate_signing_key

    keys = work / "keys"
    if not (keys / f"{BRANCH}.key").exists():
        generate_signing_key(keys, BRANCH)
    settings = BranchSettings(
        branch_id=BRANCH,
        data_path=work / "features",
        ledger_path=work / "ledger.jsonl",
        signing_key=keys / f"{BRANCH}.key",
    )
    spec = JobSpec(
        # A new run each time: a round already in the ledger would be re-sent, not trained.
        run_id=f"scale-{uuid.uuid4().hex[:8]}",
        model=LSTMModelConfig(),
        task=TaskConfig(),
        privacy=PrivacyConfig(mode="dp", noise_multiplier=1.0),
        rounds=1,
        local_epochs=1,
        seed=42,
    )
    t0 = time.perf_counter()
    data = load_branch_data(settings, spec.task, spec.seed)
    t1 = time.perf_counter()
    weights = initial_weights(spec, data.n_tabular)
    outcome = train_round(spec, 1, settings, data, weights, {})
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "read_features_s": t1 - t0,
        "round_s": t2 - t1,
        "train_s": outcome.metrics.get("train_seconds"),
        "train_customers": outcome.num_examples,
        "epsilon": outcome.metrics.get("epsilon"),
        "refusal": outcome.refusal,
    }


STEPS = {
    "validate": step_validate,
    "featurise": step_featurise,
    "dp_round": step_dp_round,
}


def _child(step: str, work: Path, customers: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--step", step, "--work", str(work)]
    cmd += ["--customers", str(customers)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run every step in its own process and print the JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--work", help="keep the export and features here (an export there is reused)")
    p.add_argument(
        "--steps",
        default=",".join(STEPS),
        help="comma-separated steps to run after generating (default: all)",
    )
    p.add_argument("--step", choices=["generate", *STEPS], help=argparse.SUPPRESS)
    add_save_flag(p)
    args = p.parse_args()
    if args.step:
        torch_threads = os.environ.get("FEDCRM_TORCH_THREADS")
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        work = Path(args.work)
        if args.step == "generate":
            result = step_generate(work, args.customers)
        else:
            result = STEPS[args.step](work)
        result["peak_rss_gb"] = round(_rss_gb(), 2)
        print(json.dumps(result, default=float))
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fedcrm-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    swap0 = _swap_mb()
    out: dict[str, Any] = {"customers": args.customers, "cores": os.cpu_count()}
    try:
        if not (work / "export" / "events.csv").exists():
            out["generate"] = _child("generate", work, args.customers)
        for step in args.steps.split(","):
            out[step] = _child(step, work, args.customers)
        out["swap_used_mb"] = round(_swap_mb() - swap0, 1)
        out["load_average"] = os.getloadavg()[0]
        emit("branch_scale", out, save=args.save)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
