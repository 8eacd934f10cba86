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

    m = cfg.model
    gbdt = HistGBDT(
        n_estimators=m.n_estimators,
        max_depth=m.max_depth,
        learning_rate=m.learning_rate,
        reg_lambda=m.reg_lambda,
        gamma=m.gamma,
        min_child_weight=m.min_child_weight,
        max_bin=m.max_bin,
    )
    gbdt.fit(train.tabular, train.labels)
    return gbdt.predict_proba(test.tabular)[:, 1]


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {k: float(v) for k, v in binary_metrics(y, p).items()}


def run_baselines(
    cfg: RunConfig,
    branches: Mapping[str, tuple[FeatureSet, FeatureSet]],
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Centralized (pooled) and local-only (each branch alone) baselines.

    ``local_only`` metrics pool every branch's own model's predictions on its
    own test customers.
    """
    say = progress or (lambda s: log.info(s))
    ids = sorted(branches)
    t0 = time.perf_counter()
    say("baseline: centralized (pooled data)")
    pooled_train = FeatureSet.concat([branches[b][0] for b in ids])
    pooled_test = FeatureSet.concat([branches[b][1] for b in ids])
    p_central = fit_predict(cfg, pooled_train, pooled_test, seed=cfg.seed)
    centralized = _metrics(pooled_test.labels, p_central)
    centralized["seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    ys, ps, per_branch = [], [], {}
    for i, b in enumerate(ids):
        say(f"baseline: local-only {i + 1}/{len(ids)} (branch {b})")
        train, test = branches[b]
        p = fit_predict(cfg, train, test, seed=cfg.seed + i + 1)
        ys.append(test.labels)
        ps.append(p)
        per_branch[b] = _metrics(test.labels, p)
    local = _metrics(np.concatenate(ys), np.concatenate(ps))
    local["seconds"] = time.perf_counter() - t1
    local["per_branch"] = per_branch  # type: ignore[assignment]
    return {"centralized": centralized, "local_only": local}
