"""ClientApp handlers of the federated tree protocol (``train.gbdt_*``, ``evaluate.gbdt``).

Each handler unpacks a message, calls one function of
:mod:`fedcrm.client.gbdt_round` and packs the reply (:mod:`fedcrm.client.messages`);
see that module for the steps and :mod:`fedcrm.protocol` for the message types
and record keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedcrm import protocol as P
from fedcrm.client.branch import BranchSettings, load_branch_data
from fedcrm.client.gbdt_round import (
    StepOutcome,
    TreeModel,
    branch_ranges,
    fine_release,
    finish_and_evaluate,
    protocol_step,
)
from fedcrm.client.messages import (
    arrays_record,
    branch_record,
    job_of,
    metrics_record,
    record_arrays,
    reply,
    request_digest,
)
from fedcrm.client.secagg_app import open_message_sum, upload_step
from fedcrm.config import JobSpec
from fedcrm.errors import FedCRMError


def model_of(message: Message) -> TreeModel:
    """The tree model a message carries."""
    if P.GBDT_MODEL not in message.content:
        raise FedCRMError("the message carries no tree model")
    try:
        return TreeModel.from_arrays(record_arrays(message.content[P.GBDT_MODEL]))
    except (KeyError, ValueError) as exc:
        raise FedCRMError(f"malformed tree model in the message: {exc}") from None


def aggregate_of(message: Message, spec: JobSpec, settings: BranchSettings) -> np.ndarray | None:
    """The sum of the previous release: plaintext, or opened from the step's masked sum.

    Branches open only the SUM of a step's releases (at least ``min-contributors``
    of them, their own included); no branch's own is visible.
    """
    content = message.content
    if P.AGGREGATE in content:
        return record_arrays(content[P.AGGREGATE])["values"]
    if P.ENCRYPTED in content:
        return open_message_sum(message, settings, spec.run_id, "histogram")
    return None


def _encrypter(
    message: Message, spec: JobSpec, settings: BranchSettings
) -> Callable[[np.ndarray], dict] | None:
    """Masks and encrypts a release for the message's step (HE jobs)."""
    if not spec.privacy.he:
        return None
    from fedcrm.client.secure_agg import codec, masked_upload

    crypto, step, ads = upload_step(message, settings)

    def encrypt(values: np.ndarray) -> dict[str, Any]:
        digits, clipped = codec(crypto, "histogram").encode(values)
        if clipped:
            raise FedCRMError(f"{clipped} released value(s) beyond the encrypted range")
        return masked_upload(crypto, spec.run_id, step, ads, digits)

    return encrypt


def answer(message: Message, settings: BranchSettings, out: StepOutcome) -> Message:
    """The reply to one protocol step: the advanced model, the step and the release."""
    records: dict[str, Any] = {
        P.GBDT_MODEL: arrays_record(out.model.to_arrays()),
        P.GBDT_STEP: ConfigRecord(dict(out.step)),
    }
    if out.evaluation:
        records[P.METRICS] = metrics_record(out.evaluation)
    if out.release is not None and out.refusal is None:
        if "values" in out.release:
            records[P.RELEASE] = arrays_record({"values": out.release["values"]})
        else:
            records[P.ENCRYPTED] = ConfigRecord({k[4:]: v for k, v in out.release.items()})
    branch = branch_record(settings, refusal=out.refusal, ledger_entries=out.ledger_entries)
    return reply(message, branch, **records)


def register_gbdt_handlers(app: ClientApp, guarded: Callable[..., Any]) -> None:
    """Add the ``train.gbdt_*`` / ``evaluate.gbdt`` handlers to ``app``.

    ``guarded`` wraps a ``handler(message, context, settings) -> Message`` so
    every failure becomes a typed reply.
    """

    @app.train("gbdt_ranges")
    @guarded
    def ranges(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        data = load_branch_data(settings, spec.task)
        lo, hi, names = branch_ranges(spec, data)
        branch = branch_record(settings, feature_names=names)
        return reply(message, branch, **{P.GBDT_MODEL: arrays_record({"lo": lo, "hi": hi})})

    @app.train("gbdt_bins")
    @guarded
    def bins(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        data = load_branch_data(settings, spec.task)
        model = model_of(message)
        if model.lo is None or model.hi is None:
            raise FedCRMError("the bins message carries no feature ranges")
        out = fine_release(
            spec,
            settings,
            data,
            model.lo,
            model.hi,
            request=request_digest(message),
            encrypt=_encrypter(message, spec, settings),
        )
        return answer(message, settings, out)

    def step(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        data = load_branch_data(settings, spec.task)
        out = protocol_step(
            spec,
            settings,
            data,
            model_of(message),
            aggregate_of(message, spec, settings),
            request=request_digest(message),
            encrypt=_encrypter(message, spec, settings),
        )
        return answer(message, settings, out)

    app.train("gbdt_level")(guarded(step))
    app.train("gbdt_batch")(guarded(step))

    @app.evaluate("gbdt")
    @guarded
    def evaluate(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        data = load_branch_data(settings, spec.task)
        out = finish_and_evaluate(
            spec,
            settings,
            data,
            model_of(message),
            aggregate_of(message, spec, settings),
            request=request_digest(message),
        )
        return answer(message, settings, out)
