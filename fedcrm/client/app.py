"""The fedcrm ClientApp: one handler per message type, no training maths inside.

Deployment uses the module-level ``app`` (``[tool.flwr.app.components]``),
which reads the branch's settings from the SuperNode's node config. The
simulation builds its own app with :func:`make_client_app`, mapping each
virtual SuperNode's ``partition-id`` to a simulated branch's node config.

Every handler answers with a typed reply, never an exception: errors are
reduced to their fedcrm message (which never carries customer data) or, for
unexpected failures, to the exception type only, and logged at the branch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcrm import protocol as P
from fedcrm.client.branch import BranchData, BranchSettings, load_branch_data
from fedcrm.client.standby import register_standby
from fedcrm.config import JobSpec
from fedcrm.errors import FedCRMError

log = logging.getLogger(__name__)

NodeConfigs = Mapping[int, Mapping[str, Any]]


def _settings(context: Context, node_configs: NodeConfigs | None) -> BranchSettings:
    if node_configs is not None:
        pid = int(context.node_config["partition-id"])
        return BranchSettings.from_node_config(node_configs[pid])
    return BranchSettings.from_node_config(dict(context.node_config))


def _reply(message: Message, branch: dict[str, Any], **records: Any) -> Message:
    content = RecordDict({P.BRANCH: ConfigRecord(branch), **records})
    return Message(content, reply_to=message)


def _failure(message: Message, branch_id: str, exc: BaseException) -> Message:
    if isinstance(exc, FedCRMError):
        text = str(exc)
        reason = P.REASON_INVALID_DATA if "problem" in text else P.REASON_ERROR
    else:
        # Unexpected errors may quote data in their text: send only the type.
        text = f"unexpected {type(exc).__name__} at the branch (see the branch's log)"
        reason = P.REASON_ERROR
    log.error("branch %s failed: %s", branch_id, exc, exc_info=not isinstance(exc, FedCRMError))
    return _reply(
        message,
        {
            "branch_id": branch_id,
            "status": P.STATUS_REFUSED,
            "reason": reason,
            "message": text[:2000],
        },
    )


def _privacy_refusal(message: Message, settings: BranchSettings) -> Message | None:
    """Refuse every message of a job without DP when the branch holds an epsilon ceiling.

    A ceiling bounds the branch's epsilon; an update trained without DP has no
    finite epsilon, so such a job would break it. The branch answers before it
    reads any data, and the server leaves it out with the reason.
    """
    if settings.epsilon_ceiling is None or P.JOB not in message.content:
        return None
    spec, _ = _job(message)
    if spec.privacy.dp:
        return None
    text = (
        f"branch {settings.branch_id} holds an epsilon ceiling ({settings.epsilon_ceiling:g}) "
        f"and takes part only in jobs with differential privacy; this job has "
        f"privacy={spec.privacy.mode} (use privacy=dp or dp_he)"
    )
    log.warning("%s: refused", text)
    branch = {
        "branch_id": settings.branch_id,
        "status": P.STATUS_REFUSED,
        "reason": P.REASON_DP_REQUIRED,
        "message": text,
    }
    return _reply(message, branch)


def _job(message: Message) -> tuple[JobSpec, int]:
    job = message.content[P.JOB]
    return JobSpec.model_validate_json(str(job["spec"])), int(job["round"])


def _state(context: Context) -> dict[str, Any]:
    """Per-run memory of this branch (kept by Flower between messages)."""
    if "fedcrm" not in context.state:
        context.state["fedcrm"] = ConfigRecord({})
    return context.state["fedcrm"]  # type: ignore[return-value]


def _flatten(weights: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([w.ravel().astype(np.float64) for w in weights])


def _unflatten(flat: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, pos = [], 0
    for w in like:
        out.append(flat[pos : pos + w.size].reshape(w.shape).astype(np.float32))
        pos += w.size
    if pos != flat.size:
        raise FedCRMError(f"aggregate has {flat.size} values, the model needs {pos}")
    return out


def _global_weights(
    message: Message, spec: JobSpec, settings: BranchSettings, data: BranchData
) -> list[np.ndarray]:
    """The incoming global model: plaintext, or decrypted from the encrypted sum."""
    from fedcrm.client.lstm_round import initial_weights

    if P.WEIGHTS in message.content:
        return message.content[P.WEIGHTS].to_numpy_ndarrays()  # type: ignore[union-attr]
    from fedcrm.crypto.packing import EncryptedUpdate, decrypt_average

    ctx = _secret_context(settings)
    agg = EncryptedUpdate.from_records(dict(message.content[P.ENCRYPTED]))
    like = initial_weights(spec, data.n_tabular)
    return _unflatten(decrypt_average(ctx, agg), like)


def _secret_context(settings: BranchSettings) -> Any:
    from fedcrm.crypto.ckks import load_secret_context

    if settings.he_secret_context is None:
        raise FedCRMError(
            "encrypted runs need `he-secret-context` in the node config "
            "(the he_secret.ctx file from `fedcrm keys init`)"
        )
    return load_secret_context(settings.he_secret_context)


def _pack_summary(summary: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, np.ndarray):
            out[f"{prefix}{k}"] = [float(x) for x in v.ravel()]
        else:
            out[f"{prefix}{k}"] = float(v)
    return out


def make_client_app(
    node_configs: NodeConfigs | None = None, *, mods: list[Any] | None = None
) -> ClientApp:
    """Build the ClientApp.

    Parameters
    ----------
    node_configs
        Simulation only: the node config of each simulated branch by
        ``partition-id``. ``None`` (deployment) reads the SuperNode's node config.
    mods
        Flower client mods wrapped around every handler.
    """
    app = ClientApp(mods=mods)

    def guarded(handler: Callable[[Message, Context, BranchSettings], Message]) -> Callable:
        def wrapper(message: Message, context: Context) -> Message:
            threads = os.environ.get("FEDCRM_TORCH_THREADS")
            if threads:
                import torch

                torch.set_num_threads(int(threads))
            branch_id = "?"
            try:
                settings = _settings(context, node_configs)
                branch_id = settings.branch_id
                refusal = _privacy_refusal(message, settings)
                if refusal is not None:
                    return refusal
                return handler(message, context, settings)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a typed reply
                return _failure(message, branch_id, exc)

        return wrapper

    from fedcrm.client.gbdt_app import register_gbdt_handlers

    register_gbdt_handlers(app, guarded)

    register_standby(app)

    @app.query("info")
    @guarded
    def info(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = _job(message)
        data = load_branch_data(settings, spec.task, spec.seed)
        branch: dict[str, Any] = {
            "branch_id": settings.branch_id,
            "status": P.STATUS_OK,
            "ledger_history": [],
            # The branch's own ceiling, reported for the summary; the server cannot change it.
            "epsilon_ceiling": float(settings.epsilon_ceiling or -1.0),
        }
        if settings.ledger_path is not None and settings.ledger_path.exists():
            from fedcrm.privacy.ledger import Ledger

            branch["ledger_history"] = [
                json.dumps(e, sort_keys=True)
                for e in Ledger(settings.ledger_path, branch_id=settings.branch_id).entries()
            ]
        if spec.privacy.he:
            branch["he_context_id"] = _secret_context(settings).context_id
        metrics = MetricRecord(
            {
                "train_customers": len(data.train),
                "test_customers": len(data.test),
                "excluded_customers": data.excluded_customers,
                "n_tabular": data.n_tabular,
            }
        )
        return _reply(message, branch, **{P.METRICS: metrics})

    @app.train()
    @guarded
    def train(message: Message, context: Context, settings: BranchSettings) -> Message:
        from fedcrm.client.lstm_round import train_round

        spec, round_num = _job(message)
        data = load_branch_data(settings, spec.task, spec.seed)
        weights = _global_weights(message, spec, settings, data)
        outcome = train_round(spec, round_num, settings, data, weights, _state(context))
        metrics = {**outcome.metrics, **_pack_summary(outcome.evaluation, "eval.")}
        metrics["num-examples"] = outcome.num_examples
        branch: dict[str, Any] = {
            "branch_id": settings.branch_id,
            "status": P.STATUS_OK if outcome.refusal is None else P.STATUS_REFUSED,
            "ledger_entries": [json.dumps(e, sort_keys=True) for e in outcome.ledger_entries],
        }
        records: dict[str, Any] = {P.METRICS: MetricRecord(metrics)}
        if outcome.refusal is not None:
            branch.update(
                {k: (v if isinstance(v, str) else float(v)) for k, v in outcome.refusal.items()}
            )
        elif outcome.weights is not None:
            if spec.privacy.he:
                from fedcrm.crypto.packing import encrypt_update

                ctx = _secret_context(settings)
                n = float(outcome.num_examples)
                enc = encrypt_update(ctx, _flatten(outcome.weights) * n, weight=n)
                records[P.ENCRYPTED] = ConfigRecord(enc.to_records())
            else:
                records[P.WEIGHTS] = ArrayRecord(numpy_ndarrays=outcome.weights)
        return _reply(message, branch, **records)

    @app.evaluate()
    @guarded
    def evaluate(message: Message, context: Context, settings: BranchSettings) -> Message:
        from fedcrm.client.lstm_round import evaluate_weights

        spec, _ = _job(message)
        data = load_branch_data(settings, spec.task, spec.seed)
        weights = _global_weights(message, spec, settings, data)
        summary, _ = evaluate_weights(spec, data, weights)
        records: dict[str, Any] = {P.METRICS: MetricRecord(_pack_summary(summary, "eval."))}
        if settings.model_dir is not None:
            _export_local_model(settings, spec, weights, data)
        if spec.privacy.he and spec.release:
            # The DP-protected aggregate is released to the server only when asked.
            records[P.WEIGHTS] = ArrayRecord(numpy_ndarrays=weights)
        return _reply(message, {"branch_id": settings.branch_id, "status": P.STATUS_OK}, **records)

    return app


def _export_local_model(
    settings: BranchSettings, spec: JobSpec, weights: list[np.ndarray], data: BranchData
) -> None:
    from fedcrm.models.bundle_writers import write_branch_bundle

    assert settings.model_dir is not None
    path = write_branch_bundle(
        settings.model_dir, model=weights, model_config=spec.model, task=spec.task,
        run_id=spec.run_id, branch_id=settings.branch_id, train=data.train, test=data.test,
        signing_key=settings.signing_key,
    )  # fmt: skip
    log.info("branch %s keeps the model as the bundle %s", settings.branch_id, path)


app = make_client_app()
