"""ClientApp handlers of federated LSTM rounds (``train``, ``evaluate``).

Each handler unpacks a message, calls :mod:`fedcrm.client.lstm_round` and packs
the reply (:mod:`fedcrm.client.messages`). See :mod:`fedcrm.protocol` for the
message types and record keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedcrm import protocol as P
from fedcrm.client.branch import BranchData, BranchSettings, load_branch_data
from fedcrm.client.lstm_round import (
    evaluation_release,
    initial_weights,
    payload_weights,
    train_round,
)
from fedcrm.client.messages import (
    branch_record,
    job_of,
    metrics_record,
    reply,
    request_digest,
    secret_context,
)
from fedcrm.client.privacy_gate import PrivacyGate, Step
from fedcrm.config import JobSpec
from fedcrm.errors import FedCRMError

log = logging.getLogger(__name__)


def flatten(weights: list[np.ndarray]) -> np.ndarray:
    """One float64 vector of all weights."""
    return np.concatenate([w.ravel().astype(np.float64) for w in weights])


def unflatten(flat: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """Weights shaped like ``like`` from a flat vector."""
    out, pos = [], 0
    for w in like:
        out.append(flat[pos : pos + w.size].reshape(w.shape).astype(np.float32))
        pos += w.size
    if pos != flat.size:
        raise FedCRMError(f"aggregate has {flat.size} values, the model needs {pos}")
    return out


def global_weights(
    message: Message, spec: JobSpec, settings: BranchSettings, data: BranchData
) -> list[np.ndarray]:
    """The incoming global model: plaintext, or decrypted from the encrypted sum."""
    if P.WEIGHTS in message.content:
        return message.content[P.WEIGHTS].to_numpy_ndarrays()  # type: ignore[union-attr]
    from fedcrm.crypto.packing import EncryptedUpdate, decrypt_average

    agg = EncryptedUpdate.from_records(dict(message.content[P.ENCRYPTED]))
    like = initial_weights(spec, data.n_tabular)
    return unflatten(decrypt_average(secret_context(settings), agg), like)


def _encrypter(settings: BranchSettings) -> Callable[[list[np.ndarray], int], dict[str, Any]]:
    def encrypt(weights: list[np.ndarray], n: int) -> dict[str, Any]:
        from fedcrm.crypto.packing import encrypt_update

        enc = encrypt_update(secret_context(settings), flatten(weights) * n, weight=float(n))
        return {f"enc.{k}": v for k, v in enc.to_records().items()}

    return encrypt


def _payload_records(payload: dict[str, Any], he: bool) -> dict[str, Any]:
    if he:
        return {P.ENCRYPTED: ConfigRecord({k[4:]: v for k, v in payload.items()})}
    return {P.WEIGHTS: ArrayRecord(numpy_ndarrays=payload_weights(payload))}


def register_lstm_handlers(app: ClientApp, guarded: Callable[..., Any]) -> None:
    """Add the ``train`` and ``evaluate`` handlers of LSTM jobs to ``app``."""

    @app.train()
    @guarded
    def train(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, round_num = job_of(message)
        data = load_branch_data(settings, spec.task)
        weights = global_weights(message, spec, settings, data)
        outcome = train_round(
            spec,
            round_num,
            settings,
            data,
            weights,
            request=request_digest(message),
            encrypt=_encrypter(settings) if spec.privacy.he else None,
        )
        metrics = dict(outcome.metrics)
        if outcome.evaluation:
            metrics.update(outcome.evaluation)
        metrics["num-examples"] = outcome.num_examples
        records: dict[str, Any] = {P.METRICS: metrics_record(metrics)}
        if outcome.payload is not None:
            records.update(_payload_records(outcome.payload, spec.privacy.he))
        branch = branch_record(
            settings, refusal=outcome.refusal, ledger_entries=outcome.ledger_entries
        )
        return reply(message, branch, **records)

    @app.evaluate()
    @guarded
    def evaluate(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        data = load_branch_data(settings, spec.task)
        weights = global_weights(message, spec, settings, data)
        gate = None
        if spec.privacy.dp:
            gate = PrivacyGate(
                settings, spec, n_customers=data.n_customers, split_id=data.split_id, model="lstm"
            )
        evaluation, entries = evaluation_release(
            spec,
            settings,
            data,
            weights,
            gate=gate,
            step=Step("eval-final", spec.rounds + 1, "evaluation"),
            request=request_digest(message),
        )
        records: dict[str, Any] = {}
        if evaluation is not None:
            records[P.METRICS] = metrics_record(evaluation)
        if settings.model_dir is not None:
            export_local_model(settings, spec, weights, data)
        if spec.privacy.he and spec.release:
            # The final, DP-protected aggregate goes back to the server only when asked.
            records[P.WEIGHTS] = ArrayRecord(numpy_ndarrays=weights)
        branch = branch_record(settings, ledger_entries=entries)
        return reply(message, branch, **records)


def export_local_model(
    settings: BranchSettings, spec: JobSpec, weights: list[np.ndarray], data: BranchData
) -> Path:
    """Keep the final model at the branch (``model-dir``) as a signed bundle of its own.

    The bundle holds the branch's training distribution for drift checks; it
    never leaves the branch.
    """
    from fedcrm.models.bundle_writers import write_branch_bundle

    assert settings.model_dir is not None
    path = write_branch_bundle(
        settings.model_dir, model=weights, model_config=spec.model, task=spec.task,
        run_id=spec.run_id, branch_id=settings.branch_id, train=data.train, test=data.test,
        signing_key=settings.signing_key,
    )  # fmt: skip
    log.info("branch %s keeps the model as the bundle %s", settings.branch_id, path)
    return path
