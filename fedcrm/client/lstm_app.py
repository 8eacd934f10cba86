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
)
from fedcrm.client.privacy_gate import PrivacyGate, Step
from fedcrm.client.secagg_app import open_message_sum, upload_step
from fedcrm.config import JobSpec
from fedcrm.errors import ContributorsError, FedCRMError

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
    """The incoming global model: plaintext, or opened from the last step's masked sum.

    The sum holds each contribution's weighted parameters and its weight, so
    the weighted average is the sum of the first divided by the sum of the last.
    """
    if P.WEIGHTS in message.content:
        return message.content[P.WEIGHTS].to_numpy_ndarrays()  # type: ignore[union-attr]
    sums = open_message_sum(message, settings, spec.run_id, "update")
    if not sums[-1] > 0:
        raise FedCRMError("the opened aggregate has no weight")
    return unflatten(sums[:-1] / sums[-1], initial_weights(spec, data.n_tabular))


def _encrypter(
    message: Message, settings: BranchSettings, spec: JobSpec
) -> Callable[[list[np.ndarray], int], dict[str, Any]]:
    """Masks and encrypts a trained model for the message's step (weighted by the branch)."""
    from fedcrm.client.secure_agg import codec, masked_upload, weight_of

    crypto, step, ads = upload_step(message, settings)

    def encrypt(weights: list[np.ndarray], n: int) -> dict[str, Any]:
        w = weight_of(n)
        digits, clipped = codec(crypto, "update").encode(
            np.concatenate([flatten(weights) * w, [w]])
        )
        if clipped:
            log.warning("%d weighted parameter(s) clipped to the encrypted range", clipped)
        return masked_upload(crypto, spec.run_id, step, ads, digits)

    return encrypt


def catch_up(
    message: Message, spec: JobSpec, settings: BranchSettings, data: BranchData, why: str
) -> Message:
    """Upload a zero-weight contribution to the message's step instead of training.

    A branch whose upload is not in the last step's sum (it dropped, or its
    upload was refused) cannot open that sum; it trains nothing this round
    and adds zeros with weight zero to the next sum, which then holds its own
    contribution and opens for it. Nothing of the branch's data is used.
    """
    log.warning("branch %s sits this round out to rejoin: %s", settings.branch_id, why)
    like = initial_weights(spec, data.n_tabular)
    upload = _encrypter(message, settings, spec)([np.zeros_like(w) for w in like], 0)
    metrics = {"num-examples": 0, "catching_up": 1}
    records = {P.METRICS: metrics_record(metrics), **_payload_records(upload, True)}
    return reply(message, branch_record(settings), **records)


def _payload_records(payload: dict[str, Any], he: bool) -> dict[str, Any]:
    if he:
        return {P.ENCRYPTED: ConfigRecord({k[4:]: v for k, v in payload.items()})}
    return {P.WEIGHTS: ArrayRecord(numpy_ndarrays=payload_weights(payload))}


def register_lstm_handlers(app: ClientApp, guarded: Callable[..., Any]) -> None:
    """Add the ``train`` and ``evaluate`` handlers of LSTM jobs to ``app``."""
    app.train()(guarded(lstm_train))
    app.evaluate()(guarded(lstm_evaluate))


def lstm_train(message: Message, context: Context, settings: BranchSettings) -> Message:
    """Answer an LSTM train message: evaluate the incoming model, train, reply with the update."""
    spec, round_num = job_of(message)
    data = load_branch_data(settings, spec.task)
    try:
        weights = global_weights(message, spec, settings, data)
    except ContributorsError as exc:
        if exc.reason != "missing-own":
            raise
        return catch_up(message, spec, settings, data, str(exc))
    outcome = train_round(
        spec,
        round_num,
        settings,
        data,
        weights,
        request=request_digest(message),
        encrypt=_encrypter(message, settings, spec) if spec.privacy.he else None,
    )
    metrics = dict(outcome.metrics)
    if outcome.evaluation:
        metrics.update(outcome.evaluation)
    metrics["num-examples"] = outcome.num_examples
    records: dict[str, Any] = {P.METRICS: metrics_record(metrics)}
    if outcome.payload is not None:
        records.update(_payload_records(outcome.payload, spec.privacy.he))
    branch = branch_record(settings, refusal=outcome.refusal, ledger_entries=outcome.ledger_entries)
    return reply(message, branch, **records)


def lstm_evaluate(message: Message, context: Context, settings: BranchSettings) -> Message:
    """Answer the final evaluate message: an evaluation release of the final model."""
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
