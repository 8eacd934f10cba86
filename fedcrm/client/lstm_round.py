"""One branch's part of a federated LSTM round, as plain functions (no Flower types).

The ClientApp handlers unpack a message, call these and pack the reply. Under
DP every release goes through the branch's :class:`~fedcrm.client.privacy_gate.PrivacyGate`:

1. the round must be in the job's plan (``1 <= round <= rounds``);
2. the round's DP-SGD spend is reserved in the ledger, within the branch's
   ceiling, before any training (a refused round sends nothing else, not even
   an evaluation);
3. local DP-SGD runs with Poisson sampling and noise drawn from randomness
   born at the branch; the update (encrypted when the job asks) is kept and
   its digest recorded before it leaves; a repeated request gets the same bytes;
4. evaluation statistics of the incoming model are their own release
   (:func:`evaluation_release`): DP noise and a ledger entry under DP,
   groups of at least ``min-cell-count`` customers without DP.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedcrm import protocol as P
from fedcrm.client.branch import BranchData, BranchSettings
from fedcrm.client.privacy_gate import PrivacyGate, Step, refusal_of
from fedcrm.config import JobSpec, LSTMModelConfig
from fedcrm.errors import BudgetExhaustedError, ConfigError, PrivacyError, RefusedError
from fedcrm.models.evaluation import dp_release, thresholded_release
from fedcrm.models.lstm import build_model, get_weights, set_weights
from fedcrm.models.train import DPSettings, predict_proba, train_local
from fedcrm.privacy.accounting import Mechanism
from fedcrm.privacy.planning import SpendPlan
from fedcrm.privacy.randomness import release_rng, release_seed

log = logging.getLogger(__name__)

Encrypt = Callable[[list[np.ndarray], int], dict[str, Any]]
"""Turns trained weights and the example count into the encrypted payload (HE jobs)."""


@dataclass
class RoundOutcome:
    """What a branch answers to a round: a payload to send, or a refusal."""

    payload: dict[str, Any] | None
    num_examples: int
    metrics: dict[str, Any]
    evaluation: dict[str, Any] | None = None
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
    """The seeded initial model every branch and the server agree on (public: no data)."""
    model = build_model(lstm_config(spec), n_tabular, dp_engine=dp_engine(spec), seed=spec.seed)
    return get_weights(model)


def predict(spec: JobSpec, data: BranchData, weights: list[np.ndarray]) -> np.ndarray:
    """Churn probabilities of ``weights`` for the branch's test customers (stay at the branch)."""
    model = build_model(lstm_config(spec), data.n_tabular, dp_engine=dp_engine(spec))
    set_weights(model, weights)
    return predict_proba(model, data.test)


def dp_round_plan(spec: JobSpec, n_train: int) -> tuple[float, int]:
    """Sample rate and DP-SGD steps of one local round (Poisson sampling of customers)."""
    cfg = lstm_config(spec)
    batch = min(cfg.batch_size, n_train)
    sample_rate = batch / n_train
    steps = spec.local_epochs * math.ceil(n_train / batch)
    return sample_rate, steps


@functools.lru_cache(maxsize=64)
def _noise(
    target: float,
    delta: float,
    sample_rate: float,
    steps: int,
    acc: str,
    name: str,
    prior: tuple[Mechanism, ...] = (),
) -> float:
    from fedcrm.privacy.accounting import noise_multiplier_for

    return noise_multiplier_for(
        target_epsilon=target,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=acc,  # type: ignore[arg-type]
        name=name,
        prior=prior,
    )


def noise_for_run(
    spec: JobSpec, n_train: int, delta: float, plan: SpendPlan | None = None
) -> float:
    """The noise multiplier: given, or derived so the run's rounds spend what ``plan`` allows.

    Without ``plan`` the rounds spend ``privacy.target_epsilon`` on their own;
    a plan with a cap (``privacy.target=remaining``) adds noise until the
    branch's ledger and the run together stay within it, never less.
    """
    if spec.privacy.noise_multiplier is not None:
        return spec.privacy.noise_multiplier
    assert spec.privacy.target_epsilon is not None
    if plan is None:
        plan = SpendPlan(spec.privacy.target_epsilon)
    sample_rate, steps = dp_round_plan(spec, n_train)
    acc = spec.privacy.accountant
    steps *= spec.rounds
    sigma = _noise(plan.target, delta, sample_rate, steps, acc, "dp-sgd")
    if plan.cap is not None:
        sigma = max(sigma, _noise(plan.cap, delta, sample_rate, steps, acc, "dp-sgd", plan.prior))
    return sigma


def planned_evaluation(spec: JobSpec, delta: float) -> list[Mechanism]:
    """The job's evaluation releases as planned (each at its share of the evaluation budget)."""
    releases = evaluation_releases(spec)
    share = spec.privacy.evaluation_budget / releases
    sigma = _noise(share, delta, 1.0, 1, spec.privacy.accountant, "dp-eval")
    return [Mechanism("dp-eval", sigma, 1.0, releases, sensitivity=1.0)]


def training_plan(spec: JobSpec, gate: PrivacyGate) -> SpendPlan | None:
    """The branch's plan for this job's training releases (``None``: a fixed noise)."""
    if spec.privacy.noise_multiplier is not None:
        return None
    if spec.privacy.target == "job":
        return SpendPlan(spec.privacy.target_epsilon or 0.0)
    return gate.spend_plan(planned_evaluation(spec, gate.delta))


def evaluation_releases(spec: JobSpec) -> int:
    """How many evaluation releases a DP job plans (final, plus one per round if asked)."""
    return spec.rounds + 1 if spec.privacy.evaluate_each_round else 1


MIN_EVALUATION_EPSILON = 0.05
"""Below this much room on the evaluation side a branch sends no evaluation."""


def evaluation_noise(spec: JobSpec, gate: PrivacyGate) -> float | None:
    """Noise multiplier of the next DP evaluation release (L2 sensitivity 1).

    The job's evaluation budget is spread over its planned evaluation
    releases; a branch whose ceiling leaves less room on the evaluation side
    (its test customers) uses only that room - more noise, never less.
    ``None`` when there is no room left.
    """
    from fedcrm.privacy.accounting import composed_epsilon

    history = gate.evaluation_charges()
    charges = [c for _, c in history]
    mine = [c for run, c in history if run == spec.run_id]
    acc = spec.privacy.accountant
    spent_run = composed_epsilon(mine, delta=gate.delta, accountant=acc) if mine else 0.0
    left = spec.privacy.evaluation_budget - spent_run
    releases_left = max(1, evaluation_releases(spec) - len(mine))
    if gate.settings.epsilon_ceiling is not None:
        spent_side = composed_epsilon(charges, delta=gate.delta, accountant=acc) if charges else 0.0
        left = min(left, gate.settings.epsilon_ceiling - spent_side)
    if left < MIN_EVALUATION_EPSILON:
        return None
    # Each release gets an equal share; composition is sub-additive, so the
    # releases together stay within the share they were given.
    return _noise(left / releases_left, gate.delta, 1.0, 1, acc, "dp-eval")


def evaluation_release(
    spec: JobSpec,
    settings: BranchSettings,
    data: BranchData,
    weights: list[np.ndarray],
    *,
    gate: PrivacyGate | None,
    step: Step,
    request: str,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The evaluation statistics of ``weights`` on the test customers, as a record.

    Without DP: score groups of at least ``min-cell-count`` customers (declared
    as not DP). Under DP: noisy grid counts, a ``dp-eval`` release through
    ``gate``; ``None`` when the release is refused (the reason is logged).
    """
    if gate is None:
        proba = predict(spec, data, weights)
        rel = thresholded_release(
            data.test.labels, proba, min_count=settings.min_cell_count, validation=data.validation
        )
        return rel.to_record(), []
    sigma = evaluation_noise(spec, gate)
    if sigma is None:
        log.warning("evaluation %s not released: no evaluation budget left", step.release_name)
        return None, []
    mechanism = Mechanism("dp-eval", sigma, 1.0, 1, sensitivity=1.0)

    def compute() -> dict[str, Any]:
        proba = predict(spec, data, weights)
        rng = release_rng(settings.rng_seed, spec.run_id, step.release_name)
        return dp_release(
            data.test.labels, proba, noise_std=sigma, rng=rng, validation=data.validation
        ).to_record()

    try:
        released = gate.release(step, mechanism, request, compute)
    except (RefusedError, BudgetExhaustedError) as exc:
        log.warning("evaluation %s not released: %s", step.release_name, exc)
        return None, []
    return dict(released.payload), released.entries


def train_round(
    spec: JobSpec,
    round_num: int,
    settings: BranchSettings,
    data: BranchData,
    weights: list[np.ndarray],
    *,
    request: str,
    encrypt: Encrypt | None = None,
) -> RoundOutcome:
    """Train one local round from the global ``weights`` (and evaluate them).

    ``request`` is the digest of the message being answered; ``encrypt`` turns
    the trained weights into the encrypted payload of an HE job.
    """
    n_train = len(data.train)
    gate: PrivacyGate | None = None
    entries: list[dict[str, Any]] = []
    train = functools.partial(_train, spec, data, weights, encrypt)
    try:
        if spec.privacy.dp:
            gate = PrivacyGate(
                settings, spec, n_customers=data.n_customers, split_id=data.split_id, model="lstm"
            )
            payload, entries, metrics = _dp_train(
                spec, round_num, settings, gate, request, train, n_train
            )
        else:
            payload = train(None, spec.seed * 100_003 + round_num)
            metrics = {}
    except (RefusedError, BudgetExhaustedError) as exc:
        return _refused(refusal_of(exc))
    metrics["train_seconds"] = float(payload.pop("train_seconds", 0.0))
    if "train_loss" in payload:
        metrics["train_loss"] = float(payload.pop("train_loss"))
    evaluation = None
    if gate is None or spec.privacy.evaluate_each_round:
        step = Step(f"eval-round-{round_num}", round_num, "evaluation")
        evaluation, more = evaluation_release(
            spec, settings, data, weights, gate=gate, step=step, request=request
        )
        entries += more
    return RoundOutcome(payload, n_train, metrics, evaluation, entries)


def _train(
    spec: JobSpec,
    data: BranchData,
    weights: list[np.ndarray],
    encrypt: Encrypt | None,
    dp: DPSettings | None,
    seed: int,
) -> dict[str, Any]:
    """Train from ``weights`` on the branch's training customers; the reply's payload."""
    cfg = lstm_config(spec)
    n_train = len(data.train)
    model = build_model(cfg, data.n_tabular, dp_engine=dp_engine(spec))
    set_weights(model, weights)
    result = train_local(
        model,
        data.train,
        epochs=spec.local_epochs,
        batch_size=min(cfg.batch_size, n_train),
        learning_rate=cfg.learning_rate,
        seed=seed,
        dp=dp,
    )
    new = get_weights(model)
    if not all(np.isfinite(w).all() for w in new):
        raise PrivacyError("local training diverged (non-finite weights); lower the learning rate")
    payload: dict[str, Any] = encrypt(new, n_train) if encrypt else weights_payload(new)
    payload["train_seconds"] = float(result.seconds)
    if dp is None:
        # Under DP the noiseless training loss would be an unaccounted release.
        payload["train_loss"] = float(result.loss)
    return payload


def _dp_train(
    spec: JobSpec,
    round_num: int,
    settings: BranchSettings,
    gate: PrivacyGate,
    request: str,
    train: Callable[[DPSettings | None, int], dict[str, Any]],
    n_train: int,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Round ``round_num`` as a DP-SGD release through ``gate``: payload, ledger entries, metrics.

    Raises
    ------
    RefusedError, BudgetExhaustedError
        Outside the job's plan, a changed request, or past the ceiling.
    """
    if not 1 <= round_num <= spec.rounds:
        raise RefusedError(
            P.REASON_OUTSIDE_PLAN,
            f"round {round_num} is outside the job's plan of {spec.rounds} rounds",
        )
    sigma = noise_for_run(spec, n_train, gate.delta, training_plan(spec, gate))
    sample_rate, steps = dp_round_plan(spec, n_train)
    mechanism = Mechanism(
        "dp-sgd", sigma, sample_rate, steps, max_grad_norm=spec.privacy.max_grad_norm
    )
    dp = DPSettings(
        noise_multiplier=sigma, max_grad_norm=spec.privacy.max_grad_norm, engine=spec.privacy.engine
    )
    step = Step(f"round-{round_num}", round_num, "train")
    released = gate.release(
        step,
        mechanism,
        request,
        lambda: train(dp, release_seed(settings.rng_seed, spec.run_id, step.name)),
    )
    metrics: dict[str, Any] = {
        "epsilon": gate.spent(),
        "delta": gate.delta,
        "noise_multiplier": sigma,
        "resent": 1.0 if released.replayed else 0.0,
    }
    if round_num == 1 and settings.epsilon_ceiling is not None:
        # Tell the server now when the whole plan cannot fit (the branch would
        # refuse its last rounds); the ledger holds round 1 already.
        rest = spec.rounds - 1
        whole = gate.projected(replace(mechanism, steps=steps * rest)) if rest else None
        fits = whole is None or whole <= settings.epsilon_ceiling
        metrics["plan_passes_ceiling"] = 0.0 if fits else 1.0
    return dict(released.payload), list(released.entries), metrics


def weights_payload(weights: list[np.ndarray]) -> dict[str, Any]:
    """Plaintext weights as a flat payload (``weights.0``, ``weights.1``, ...)."""
    return {f"weights.{i}": np.asarray(w) for i, w in enumerate(weights)}


def payload_weights(payload: dict[str, Any]) -> list[np.ndarray]:
    """Inverse of :func:`weights_payload`."""
    keys = sorted((k for k in payload if k.startswith("weights.")), key=lambda k: int(k[8:]))
    return [np.asarray(payload[k]) for k in keys]


def _refused(refusal: dict[str, Any]) -> RoundOutcome:
    log.warning("round refused: %s", refusal["message"])
    return RoundOutcome(payload=None, num_examples=0, metrics={}, refusal=refusal)
