"""One branch's part of a federated LSTM round, as plain functions.

The ClientApp handlers unpack a Flower message, call these, and pack the
reply; no Flower types appear here. The order inside a round is what makes the
privacy guarantees hold:

1. evaluate the incoming global model on the branch's test customers;
2. with DP, derive the noise for this round and ask the branch's budget
   whether the round fits under its ceiling (refuse otherwise, before any
   training);
3. train locally (DP-SGD when asked);
4. append the mechanism to the branch's signed ledger, then release the update.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.privacy_gate import branch_delta, budget_refusal, delta_refusal, open_ledger
from fedcrm.config import JobSpec, LSTMModelConfig
from fedcrm.errors import BudgetExhaustedError, ConfigError, PrivacyError
from fedcrm.models.lstm import build_model, get_weights, set_weights
from fedcrm.models.metrics import score_summary
from fedcrm.models.train import DPSettings, predict_proba, train_local

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    """What a branch releases after a round."""

    weights: list[np.ndarray] | None
    num_examples: int
    metrics: dict[str, Any]
    evaluation: dict[str, Any]
    ledger_entries: list[dict[str, Any]] = field(default_factory=list)
    refusal: dict[str, Any] | None = None


def lstm_config(spec: JobSpec) -> LSTMModelConfig:
    """The LSTM settings of a job (refuses a job for another model family)."""
    if not isinstance(spec.model, LSTMModelConfig):
        raise ConfigError(f"this round trains an LSTM but the job's model is {spec.model.name}")
    return spec.model


def dp_engine(spec: JobSpec) -> str | None:
    """The DP engine the job asks for, or None without DP."""
    return spec.privacy.engine if spec.privacy.dp else None


def initial_weights(spec: JobSpec, n_tabular: int) -> list[np.ndarray]:
    """The seeded initial model every branch and the server agree on."""
    model = build_model(lstm_config(spec), n_tabular, dp_engine=dp_engine(spec), seed=spec.seed)
    return get_weights(model)


def evaluate_weights(
    spec: JobSpec, data: BranchData, weights: list[np.ndarray]
) -> tuple[dict[str, Any], np.ndarray]:
    """Score summary of ``weights`` on the branch's test customers (no per-customer data)."""
    model = build_model(lstm_config(spec), data.n_tabular, dp_engine=dp_engine(spec))
    set_weights(model, weights)
    proba = predict_proba(model, data.test)
    return score_summary(data.test.labels, proba), proba


def dp_round_plan(spec: JobSpec, n_train: int) -> tuple[float, int]:
    """Sample rate and DP-SGD steps of one local round (Poisson sampling of customers)."""
    cfg = lstm_config(spec)
    batch = min(cfg.batch_size, n_train)
    sample_rate = batch / n_train
    steps = spec.local_epochs * math.ceil(n_train / batch)
    return sample_rate, steps


def noise_for_run(spec: JobSpec, n_train: int, delta: float) -> float:
    """The noise multiplier: given, or derived so the whole run spends ``target_epsilon``."""
    from fedcrm.privacy.accounting import noise_multiplier_for

    if spec.privacy.noise_multiplier is not None:
        return spec.privacy.noise_multiplier
    assert spec.privacy.target_epsilon is not None
    sample_rate, steps = dp_round_plan(spec, n_train)
    return noise_multiplier_for(
        target_epsilon=spec.privacy.target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps * spec.rounds,
        accountant=spec.privacy.accountant,
    )


def train_round(
    spec: JobSpec,
    round_num: int,
    settings: BranchSettings,
    data: BranchData,
    weights: list[np.ndarray],
    state: dict[str, Any],
) -> RoundOutcome:
    """Evaluate the global ``weights``, then train one local round from them.

    ``state`` is the branch's per-run memory (the derived noise multiplier).
    """
    cfg = lstm_config(spec)
    evaluation, _ = evaluate_weights(spec, data, weights)
    n_train = len(data.train)
    dp: DPSettings | None = None
    ledger = budget = mechanism = None
    if spec.privacy.dp:
        from fedcrm.privacy.accounting import Mechanism
        from fedcrm.privacy.budget import BranchBudget

        try:
            delta = branch_delta(spec, settings, n_train)
        except PrivacyError as exc:
            return _refused(delta_refusal(exc), evaluation)
        key = f"sigma:{spec.run_id}"
        if key not in state:
            state[key] = noise_for_run(spec, n_train, delta)
        sigma = float(state[key])
        sample_rate, steps = dp_round_plan(spec, n_train)
        mechanism = Mechanism(
            name="dp-sgd",
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps=steps,
            max_grad_norm=spec.privacy.max_grad_norm,
        )
        ledger = open_ledger(settings)
        done = [
            e
            for e in ledger.entries()
            if e.get("run_id") == spec.run_id and int(e.get("round", -1)) == round_num
        ]
        if done:
            # The server lost this round (restart): re-send the update already paid
            # for instead of spending privacy on it twice.
            cached = load_released_update(settings, spec.run_id, round_num)
            if cached is None:
                return _refused(
                    {
                        "reason": "round-already-spent",
                        "message": f"round {round_num} of run {spec.run_id} is in the ledger "
                        "but its update is no longer cached",
                    },
                    evaluation,
                )
            return RoundOutcome(
                weights=cached,
                num_examples=n_train,
                metrics={
                    "epsilon": float(done[-1]["epsilon"]),
                    "delta": float(done[-1]["delta"]),
                    "resent": 1.0,
                },
                evaluation=evaluation,
                ledger_entries=done,
            )
        budget = BranchBudget(
            ledger,
            ceiling=settings.epsilon_ceiling,
            delta=delta,
            accountant=spec.privacy.accountant,
        )
        try:
            budget.check(mechanism)
        except BudgetExhaustedError as exc:
            return _refused(budget_refusal(exc), evaluation)
        dp = DPSettings(
            noise_multiplier=sigma,
            max_grad_norm=spec.privacy.max_grad_norm,
            engine=spec.privacy.engine,
        )
    model = build_model(cfg, data.n_tabular, dp_engine=dp_engine(spec))
    set_weights(model, weights)
    result = train_local(
        model,
        data.train,
        epochs=spec.local_epochs,
        batch_size=min(cfg.batch_size, n_train),
        learning_rate=cfg.learning_rate,
        seed=spec.seed * 100_003 + round_num,
        dp=dp,
    )
    new_weights = get_weights(model)
    if not all(np.isfinite(w).all() for w in new_weights):
        raise PrivacyError("local training diverged (non-finite weights); lower the learning rate")
    entries: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {"train_seconds": float(result.seconds)}
    if dp is None:
        # Under DP the noiseless training loss would be an unaccounted release.
        metrics["train_loss"] = float(result.loss)
    if ledger is not None and mechanism is not None and budget is not None:
        save_released_update(settings, spec.run_id, round_num, new_weights)
        entry = ledger.append(
            run_id=spec.run_id,
            round=round_num,
            model="lstm",
            mechanism=mechanism,
            delta=budget.delta,
            accountant=spec.privacy.accountant,
        )
        entries.append(entry)
        metrics.update(
            epsilon=float(entry["epsilon"]),
            delta=float(budget.delta),
            noise_multiplier=float(mechanism.noise_multiplier),
        )
    return RoundOutcome(
        weights=new_weights,
        num_examples=n_train,
        metrics=metrics,
        evaluation=evaluation,
        ledger_entries=entries,
    )


def _update_cache(settings: BranchSettings) -> Any:
    assert settings.ledger_path is not None
    return settings.ledger_path.with_name(settings.ledger_path.name + ".last_update.npz")


def save_released_update(
    settings: BranchSettings, run_id: str, round_num: int, weights: list[np.ndarray]
) -> None:
    """Keep the last DP update at the branch so a lost round can be re-sent for free."""
    path = _update_cache(settings)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, *weights, run_id=np.asarray(run_id), round=np.asarray(round_num))
    tmp.replace(path)


def load_released_update(
    settings: BranchSettings, run_id: str, round_num: int
) -> list[np.ndarray] | None:
    """The cached update of ``(run_id, round_num)``, if it is the one cached."""
    path = _update_cache(settings)
    if not path.exists():
        return None
    with np.load(path) as z:
        if str(z["run_id"]) != run_id or int(z["round"]) != round_num:
            return None
        n = len([k for k in z.files if k.startswith("arr_")])
        return [z[f"arr_{i}"] for i in range(n)]


def _refused(refusal: dict[str, Any], evaluation: dict[str, Any]) -> RoundOutcome:
    log.warning("round refused: %s", refusal["message"])
    return RoundOutcome(
        weights=None, num_examples=0, metrics={}, evaluation=evaluation, refusal=refusal
    )
