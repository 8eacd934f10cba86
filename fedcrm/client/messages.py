"""What every ClientApp handler shares: reading a message, answering it, failing safely.

Handlers (:mod:`fedcrm.client.lstm_app`, :mod:`fedcrm.client.gbdt_app`) unpack a
message with these helpers, call plain functions, and pack the reply here.
Every failure becomes a typed reply (:func:`failure`): a fedcrm error's message
(which never carries customer data) or, for unexpected failures, the
exception type only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedcrm import protocol as P
from fedcrm.client.branch import BranchSettings
from fedcrm.config import JobSpec
from fedcrm.errors import FedCRMError, RefusedError

log = logging.getLogger(__name__)

NodeConfigs = Mapping[int, Mapping[str, Any]]


def settings_of(context: Context, node_configs: NodeConfigs | None) -> BranchSettings:
    """The branch's settings: its SuperNode's node config, or a simulated branch's."""
    if node_configs is not None:
        pid = int(context.node_config["partition-id"])
        return BranchSettings.from_node_config(node_configs[pid])
    return BranchSettings.from_node_config(dict(context.node_config))


def job_of(message: Message) -> tuple[JobSpec, int]:
    """The job spec and round number a message carries."""
    job = message.content[P.JOB]
    return JobSpec.model_validate_json(str(job["spec"])), int(job["round"])


def request_digest(message: Message) -> str:
    """SHA-256 of everything a message carries (what "the same request" means to a branch).

    Records and their keys are hashed in sorted order with their types, so two
    messages with the same content have the same digest however they were built.
    """
    h = hashlib.sha256(message.metadata.message_type.encode())
    for name in sorted(message.content.keys()):
        record = message.content[name]
        h.update(f"|{name}:{type(record).__name__}".encode())
        for key in sorted(record.keys()):
            value = record[key]
            h.update(f"|{key}=".encode())
            if isinstance(value, Array):
                h.update(f"{value.dtype}:{tuple(value.shape)}:".encode() + bytes(value.data))
            elif isinstance(value, bytes):
                h.update(b"b:" + value)
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                for chunk in value:
                    h.update(len(chunk).to_bytes(8, "little") + chunk)
            else:
                h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()


def reply(message: Message, branch: dict[str, Any], **records: Any) -> Message:
    """The reply to ``message``: the ``branch`` record plus ``records``."""
    content = RecordDict({P.BRANCH: ConfigRecord(branch), **records})
    return Message(content, reply_to=message)


def branch_record(
    settings: BranchSettings,
    *,
    refusal: Mapping[str, Any] | None = None,
    ledger_entries: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``branch`` record: id, status, typed refusal, new ledger entries."""
    out: dict[str, Any] = {
        "branch_id": settings.branch_id,
        "status": P.STATUS_OK if refusal is None else P.STATUS_REFUSED,
        **extra,
    }
    if ledger_entries is not None:
        out["ledger_entries"] = [json.dumps(e, sort_keys=True) for e in ledger_entries]
    if refusal is not None:
        out.update({k: (v if isinstance(v, str) else float(v)) for k, v in refusal.items()})
    return out


def refused(message: Message, settings: BranchSettings, exc: RefusedError) -> Message:
    """A typed refusal, before any data was read."""
    log.warning("branch %s refused: %s", settings.branch_id, exc)
    return reply(
        message, branch_record(settings, refusal={"reason": exc.reason, "message": str(exc)})
    )


def failure(message: Message, branch_id: str, exc: BaseException) -> Message:
    """A failure as a typed reply that carries no customer data."""
    if isinstance(exc, RefusedError):
        text, reason = str(exc), exc.reason
    elif isinstance(exc, FedCRMError):
        text = str(exc)
        reason = P.REASON_INVALID_DATA if "problem" in text else P.REASON_ERROR
    else:
        # Unexpected errors may quote data in their text: send only the type.
        text = f"unexpected {type(exc).__name__} at the branch (see the branch's log)"
        reason = P.REASON_ERROR
    log.error("branch %s failed: %s", branch_id, exc, exc_info=not isinstance(exc, FedCRMError))
    branch = {
        "branch_id": branch_id,
        "status": P.STATUS_REFUSED,
        "reason": reason,
        "message": text[:2000],
    }
    return reply(message, branch)


def arrays_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as a Flower ArrayRecord."""
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_arrays(record: Any) -> dict[str, np.ndarray]:
    """Inverse of :func:`arrays_record`."""
    return {k: v.numpy() for k, v in record.items()}


def metrics_record(values: Mapping[str, Any]) -> MetricRecord:
    """Numbers and lists of numbers as a MetricRecord."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple, np.ndarray)):
            out[key] = [float(v) for v in np.ravel(value)]
        else:
            out[key] = float(value)
    return MetricRecord(out)
