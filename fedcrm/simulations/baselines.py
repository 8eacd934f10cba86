"""Centralized and local-only baselines, trained in the researcher's process.

Both use the same model and the same budget of epochs as the federation
(``rounds x local_epochs``) and are non-private: they show what federation
costs or gains, not what privacy costs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedcrm.config import GBDTModelConfig, LSTMModelConfig, RunConfig
from fedcrm.data.dataset import FeatureSet
from fedcrm.models.metrics import binary_metrics

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def fit_predict(cfg: RunConfig, train: FeatureSet, test: FeatureSet, *, seed: int) -> np.ndarray:
    """Train the configured model on ``train`` alone; churn probabilities for ``test``."""
    if isinstance(cfg.model, LSTMModelConfig):
        from fedcrm.models.lstm import build_model
        from fedcrm.models.train import predict_proba, train_local

        model = build_model(cfg.model, int(train.tabular.shape[1]), seed=cfg.seed)
        train_local(
            model,
            train,
            epochs=cfg.federation.rounds * cfg.federation.local_epochs,
            batch_size=min(cfg.model.batch_size, len(train)),
            learning_rate=cfg.model.learning_rate,
            seed=seed,
        )
        return predict_proba(model, test)
    assert isinstance(cfg.model, GBDTModelConfig)
    from fedcrm.models.gbdt import HistGBDT

    gbdt = HistGBDT.from_config(cfg.model)
    gbdt.fit(train.tabular, train.labels)
    return gbdt.predict_proba(test.tabular)[:, 1]


def _metrics(y: np.ndarray, p: np.ndarray, validation: np.ndarray | None) -> dict[str, Any]:
    """Exact metrics; F1 at the threshold chosen on the validation half, as for federated runs."""
    out: dict[str, Any] = {k: float(v) for k, v in binary_metrics(y, p).items()}
    if validation is not None:
        from fedcrm.models.evaluation import thresholded_release
        from fedcrm.models.pooled import pooled_metrics

        exact = pooled_metrics([thresholded_release(y, p, min_count=1, validation=validation)])
        out.update({k: exact[k] for k in ("f1", "f1_threshold", "f1_threshold_from")})
        out["f1_at_default"] = float(binary_metrics(y, p)["f1"])
    return out


def _fit_predict_job(args: tuple[RunConfig, FeatureSet, FeatureSet, int]) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    cfg, train, test, seed = args
    return fit_predict(cfg, train, test, seed=seed)


def run_baselines(
    cfg: RunConfig,
    branches: Mapping[str, tuple[FeatureSet, FeatureSet]],
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    validation: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Centralized (pooled) and local-only (each branch alone) baselines.

    ``local_only`` metrics pool every branch's own model's predictions on its
    own test customers. With each branch's ``validation`` half of its test
    customers, F1 is scored as in federated runs (threshold chosen on the
    validation halves, F1 on the others). The models train in ``workers`` processes (default:
    one per core) with one thread each, which beats threads on small batches.
    """
    import concurrent.futures as cf
    import multiprocessing as mp

    from fedcrm.config import cpu_count

    say = progress or (lambda s: log.info(s))
    ids = sorted(branches)
    t0 = time.perf_counter()
    pooled_train = FeatureSet.concat([branches[b][0] for b in ids])
    pooled_test = FeatureSet.concat([branches[b][1] for b in ids])
    jobs = [(cfg, pooled_train, pooled_test, cfg.seed)]
    jobs += [(cfg, branches[b][0], branches[b][1], cfg.seed + i + 1) for i, b in enumerate(ids)]
    workers = workers or cpu_count()
    say(f"baselines: centralized + {len(ids)} local-only models in {workers} processes")
    if workers > 1:
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            preds = list(pool.map(_fit_predict_job, jobs))
    else:
        preds = [_fit_predict_job(job) for job in jobs]
    seconds = time.perf_counter() - t0
    held = (
        np.concatenate([validation[b] for b in ids])
        if validation is not None and all(b in validation for b in ids)
        else None
    )
    centralized = _metrics(pooled_test.labels, preds[0], held)
    centralized["seconds"] = seconds
    per_branch = {
        b: _metrics(branches[b][1].labels, p, validation.get(b) if validation else None)
        for b, p in zip(ids, preds[1:], strict=True)
    }
    local = _metrics(
        np.concatenate([branches[b][1].labels for b in ids]), np.concatenate(preds[1:]), held
    )
    local["seconds"] = seconds
    local["per_branch"] = per_branch  # type: ignore[assignment]
    return {"centralized": centralized, "local_only": local}
