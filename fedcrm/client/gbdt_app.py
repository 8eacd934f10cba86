"""ClientApp handlers of the federated tree protocol (registered by ``make_client_app``).

Each handler unpacks a message, calls one function of
:mod:`fedcrm.client.gbdt_round` and packs the reply; see that module for the
steps and :mod:`fedcrm.protocol` for the message types and record keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
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
from fedcrm.errors import FedCRMError


def arrays_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as a Flower ArrayRecord."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`arrays_record`."""
    return {k: v.numpy() for k, v in record.items()}


def register_gbdt_handlers(app: ClientApp, guarded: Callable[..., Any]) -> None:
    """Add the ``train.gbdt_*`` / ``evaluate.gbdt`` handlers to ``app``.

    ``guarded`` wraps a ``handler(message, context, settings) -> Message`` so
    every failure becomes a typed reply.
    """
    # Imported here: fedcrm.client.app imports this module while it is being built.
    from fedcrm.client.app import _job, _pack_summary, _reply, _secret_context, _state

    def model_of(message: Message) -> TreeModel:
        if P.GBDT_MODEL not in message.content:
            raise FedCRMError("the message carries no tree model")
        try:
            return TreeModel.from_arrays(record_arrays(message.content[P.GBDT_MODEL]))  # type: ignore[arg-type]
        except (KeyError, ValueError) as exc:
            raise FedCRMError(f"malformed tree model in the message: {exc}") from None

    def aggregate_of(message: Message, spec: Any, settings: BranchSettings) -> np.ndarray | None:
        content = message.content
        if P.AGGREGATE in content:
            return record_arrays(content[P.AGGREGATE])["values"]  # type: ignore[arg-type]
        if P.ENCRYPTED in content:
            from fedcrm.crypto.packing import EncryptedUpdate, decrypt_sum

            # Branches decrypt the SUM of the histograms; no branch's own is visible.
            agg = EncryptedUpdate.from_records(dict(content[P.ENCRYPTED]))
            return decrypt_sum(_secret_context(settings), agg)[0]
        return None

    def answer(message: Message, spec: Any, settings: BranchSettings, out: StepOutcome) -> Message:
        branch: dict[str, Any] = {
            "branch_id": settings.branch_id,
            "status": P.STATUS_OK if out.refusal is None else P.STATUS_REFUSED,
            "ledger_entries": [json.dumps(e, sort_keys=True) for e in out.ledger_entries],
        }
        if out.refusal is not None:
            branch.update(
                {k: (v if isinstance(v, str) else float(v)) for k, v in out.refusal.items()}
            )
        records: dict[str, Any] = {
            P.GBDT_MODEL: arrays_record(out.model.to_arrays()),
            P.GBDT_STEP: ConfigRecord(dict(out.step)),
        }
        if out.evaluation:
            records[P.METRICS] = MetricRecord(_pack_summary(out.evaluation, "eval."))
        if out.release is not None and out.refusal is None:
            values = np.asarray(out.release, dtype=np.float64).ravel()
            if spec.privacy.he:
                from fedcrm.crypto.packing import encrypt_update

                enc = encrypt_update(_secret_context(settings), values, weight=1.0)
                records[P.ENCRYPTED] = ConfigRecord(enc.to_records())
            else:
                records[P.RELEASE] = arrays_record({"values": values})
        return _reply(message, branch, **records)

    @app.train("gbdt_ranges")
    @guarded
    def ranges(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = _job(message)
        data = load_branch_data(settings, spec.task, spec.seed)
        lo, hi, names = branch_ranges(spec, data)
        branch = {"branch_id": settings.branch_id, "status": P.STATUS_OK, "feature_names": names}
        return _reply(message, branch, **{P.GBDT_MODEL: arrays_record({"lo": lo, "hi": hi})})

    @app.train("gbdt_bins")
    @guarded
    def bins(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = _job(message)
        data = load_branch_data(settings, spec.task, spec.seed)
        model = model_of(message)
        if model.lo is None or model.hi is None:
            raise FedCRMError("the bins message carries no feature ranges")
        out = fine_release(spec, settings, data, model.lo, model.hi, _state(context))
        return answer(message, spec, settings, out)

    def step(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = _job(message)
        data = load_branch_data(settings, spec.task, spec.seed)
        aggregate = aggregate_of(message, spec, settings)
        out = protocol_step(spec, settings, data, model_of(message), aggregate, _state(context))
        return answer(message, spec, settings, out)

    app.train("gbdt_level")(guarded(step))
    app.train("gbdt_batch")(guarded(step))

    @app.evaluate("gbdt")
    @guarded
    def evaluate(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = _job(message)
        data = load_branch_data(settings, spec.task, spec.seed)
        aggregate = aggregate_of(message, spec, settings)
        out = finish_and_evaluate(spec, data, model_of(message), aggregate)
        return answer(message, spec, settings, out)
