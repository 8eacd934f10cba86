"""Benchmark: per-customer clipped DP step of the LSTM, fast engine vs Opacus vs plain.

Run ``python bench/dp_lstm.py`` (never part of the test run). Prints one JSON
object: ``plain_step_s``, ``opacus_step_s``, ``fast_step_s``, ``ratio_opacus``
and ``ratio_fast`` (DP step / plain step) for T=50 at the top level, and the
same figures for every T under ``T50``, ``T100``. All engines run in one
process on the same batches with the default thread setting (``--threads``
overrides it). The model is a production-sized churn LSTM: one embedding 200 x 32 plus 4
numeric fields, LSTM hidden 192, linear head (183k parameters), batch 64,
full-length sequences. Each time is the median over ``--reps`` steps after a
warm-up and each ratio the median of per-batch ratios of steps run back to
back (robust to load from other processes); a step is forward, backward
(per-customer clipping and noise for DP) and an Adam update.
``train_local_epoch_s`` times one local epoch of ``train_local`` per engine
(512 customers, lengths uniform in 1..T, Poisson sampling for DP), the branch
side of a federated round; the Flower simulation end to end is the
simulation's own benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _results import add_save_flag, emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcrm.data.dataset import FeatureSet
from fedcrm.models.dp_lstm_fast import FastDPStep
from fedcrm.models.dp_opacus import OpacusDPStep
from fedcrm.models.lstm import ChurnLSTM
from fedcrm.models.train import DPSettings, train_local

VOCAB, EMB, NUMERIC, HIDDEN, BATCH = 200, 32, 4, 192, 64


def make_model(engine: str | None) -> ChurnLSTM:
    """The benchmark model; every engine starts from the same weights."""
    model = ChurnLSTM(
        0,
        embedding_dim=EMB,
        hidden_size=HIDDEN,
        head_hidden=0,
        dp_engine=engine,  # type: ignore[arg-type]
        cardinalities=(VOCAB,),
        n_numeric=NUMERIC,
    )
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


def make_batches(steps: int, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "seq_cat": torch.randint(1, VOCAB, (BATCH, steps, 1), generator=gen),
            "seq_num": torch.randn(BATCH, steps, NUMERIC, generator=gen),
            "lengths": torch.full((BATCH,), steps, dtype=torch.long),
            "tabular": torch.zeros(BATCH, 0),
            "y": torch.randint(0, 2, (BATCH,), generator=gen).float(),
        }
        for _ in range(n)
    ]


def timed(fn: Callable[[dict[str, torch.Tensor]], object], batch) -> float:
    start = time.perf_counter()
    fn(batch)
    return time.perf_counter() - start


def bench_t(steps: int, reps: int, opacus_reps: int) -> dict[str, float]:
    """Median step times at sequence length ``steps``.

    Plain and fast steps alternate on the same batches so that a change in
    machine load affects both alike; Opacus steps (slow) run ``opacus_reps``
    times, each next to a plain step on the same batch.
    """
    batches = make_batches(steps, reps + 1)
    gen = torch.Generator().manual_seed(0)

    plain = make_model(None)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def plain_step(b: dict[str, torch.Tensor]) -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(plain(b["seq_cat"], b["seq_num"], b["lengths"], b["tabular"]), b["y"])
        loss.backward()
        opt.step()

    fast = make_model("fast")
    fast_step = FastDPStep(
        fast, torch.optim.Adam(fast.parameters(), lr=1e-3), 1.0, 1.0, float(BATCH), gen
    )
    ref = make_model("opacus")
    opacus_step = OpacusDPStep(
        ref, torch.optim.Adam(ref.parameters(), lr=1e-3), 1.0, 1.0, float(BATCH), gen
    )
    plain_step(batches[0])  # warm-up
    fast_step.step(batches[0])
    opacus_step.step(batches[0])
    plain_t, fast_t, pair_t, opacus_t = [], [], [], []
    for b in batches[1:]:
        plain_t.append(timed(plain_step, b))
        fast_t.append(timed(fast_step.step, b))
    for b in batches[1 : opacus_reps + 1]:
        pair_t.append(timed(plain_step, b))
        opacus_t.append(timed(opacus_step.step, b))
    opacus_step.close()
    med = statistics.median
    return {
        "plain_step_s": med(plain_t),
        "fast_step_s": med(fast_t),
        "opacus_step_s": med(opacus_t),
        "ratio_fast": med(f / p for f, p in zip(fast_t, plain_t, strict=True)),
        "ratio_opacus": med(o / p for o, p in zip(opacus_t, pair_t, strict=True)),
    }


def bench_train_local(steps: int, n: int = 512) -> dict[str, float]:
    """Seconds of one local epoch (``train_local``) per engine on variable-length data.

    ``n`` customers with lengths uniform in 1..``steps`` (the realistic case:
    the fast engine skips padded steps, the plain and Opacus LSTMs do not).
    """
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, steps + 1, size=n)
    pad = np.arange(steps)[None, :] >= lengths[:, None]
    seq_cat = rng.integers(1, VOCAB, size=(n, steps, 1))
    seq_num = rng.normal(size=(n, steps, NUMERIC)).astype(np.float32)
    seq_cat[pad] = 0
    seq_num[pad] = 0.0
    data = FeatureSet(
        customer_ids=np.arange(n).astype(str),
        branch_ids=np.array(["b"] * n),
        seq_cat=seq_cat,
        seq_num=seq_num,
        lengths=lengths,
        tabular=np.zeros((n, 0), dtype=np.float32),
        labels=rng.integers(0, 2, size=n),
    )
    out = {}
    for engine in (None, "fast", "opacus"):
        dp = None if engine is None else DPSettings(1.0, 1.0, engine)  # type: ignore[arg-type]
        model = make_model(engine)
        res = train_local(
            model, data, epochs=1, batch_size=BATCH, learning_rate=1e-3, seed=0, dp=dp
        )
        out[engine or "plain"] = res.seconds
    out["ratio_fast"] = out["fast"] / out["plain"]
    out["ratio_opacus"] = out["opacus"] / out["plain"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100], help="sequence lengths")
    parser.add_argument("--reps", type=int, default=10, help="timed plain / fast steps")
    parser.add_argument("--opacus-reps", type=int, default=3, help="timed Opacus steps")
    parser.add_argument("--no-train-local", action="store_true", help="skip the local-epoch timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    add_save_flag(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_params = sum(p.numel() for p in make_model(None).parameters())
    result: dict[str, object] = {
        "threads": torch.get_num_threads(),
        "params": n_params,
        "batch": BATCH,
    }
    for steps in args.steps:
        result[f"T{steps}"] = bench_t(steps, args.reps, args.opacus_reps)
    if not args.no_train_local:
        result["train_local_epoch_s"] = bench_train_local(args.steps[0])
    first = result[f"T{args.steps[0]}"]
    assert isinstance(first, dict)
    result.update(first)
    emit("dp_lstm", result, save=args.save, indent=None)


if __name__ == "__main__":
    main()
