"""The fedcrm ClientApp: assembles the handlers of every message type.

Deployment uses the module-level ``app`` (``[tool.flwr.app.components]``),
which reads the branch's settings from the SuperNode's node config. The
simulation builds its own app with :func:`make_client_app`, mapping each
virtual SuperNode's ``partition-id`` to a simulated branch's node config.

Every handler answers with a typed reply, never an exception: errors are
reduced to their fedcrm message (which never carries customer data) or, for
unexpected failures, to the exception type only, and logged at the branch.
Before any handler reads data, a branch refuses a job it cannot take part in
(:func:`job_refusal`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from fedcrm import protocol as P
from fedcrm.client.branch import BranchSettings, load_branch_data
from fedcrm.client.gbdt_app import register_gbdt_handlers
from fedcrm.client.lstm_app import register_lstm_handlers
from fedcrm.client.messages import (
    NodeConfigs,
    failure,
    job_of,
    refused,
    reply,
    settings_of,
)
from fedcrm.client.privacy_gate import ANCHOR_FILE, check_job
from fedcrm.client.secagg_app import register_secagg_handlers
from fedcrm.client.standby import register_standby
from fedcrm.errors import LedgerBehindAnchorError, RefusedError

log = logging.getLogger(__name__)

Handler = Callable[[Message, Context, BranchSettings], Message]


def job_refusal(message: Message, settings: BranchSettings) -> RefusedError | None:
    """Why this branch refuses the message's job before reading any data, if it does.

    A branch that holds an epsilon ceiling takes part only in jobs with
    differential privacy (an update trained without DP has no finite
    epsilon); a DP job needs a fixed cutoff.
    """
    if P.JOB not in message.content:
        return None
    spec, _ = job_of(message)
    if settings.epsilon_ceiling is not None and not spec.privacy.dp:
        return RefusedError(
            P.REASON_DP_REQUIRED,
            f"branch {settings.branch_id} holds an epsilon ceiling "
            f"({settings.epsilon_ceiling:g}) and takes part only in jobs with differential "
            f"privacy; this job has privacy={spec.privacy.mode} (use privacy=dp or dp_he)",
        )
    try:
        check_job(spec, settings)
    except RefusedError as exc:
        return exc
    return None


def _ledger_history(settings: BranchSettings) -> dict[str, Any]:
    """The branch's whole ledger and its head, sent when it joins a job."""
    if settings.ledger_path is None or not settings.ledger_path.exists():
        return {"ledger_history": []}
    from fedcrm.privacy.ledger import Ledger

    state = settings.private_state
    ledger = Ledger(
        settings.ledger_path,
        branch_id=settings.branch_id,
        anchor_path=state / ANCHOR_FILE if state is not None else None,
    )
    entries = ledger.entries()
    try:
        ledger.check_anchor(entries)
    except LedgerBehindAnchorError as exc:
        raise RefusedError(P.REASON_LEDGER_BEHIND, str(exc)) from None
    return {"ledger_history": [json.dumps(e, sort_keys=True) for e in entries]}


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

    def guarded(handler: Handler) -> Callable[[Message, Context], Message]:
        def wrapper(message: Message, context: Context) -> Message:
            threads = os.environ.get("FEDCRM_TORCH_THREADS")
            if threads:
                import torch

                torch.set_num_threads(int(threads))
            branch_id = "?"
            try:
                settings = settings_of(context, node_configs)
                branch_id = settings.branch_id
                refusal = job_refusal(message, settings)
                if refusal is not None:
                    return refused(message, settings, refusal)
                return handler(message, context, settings)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a typed reply
                return failure(message, branch_id, exc)

        return wrapper

    register_lstm_handlers(app, guarded)
    register_gbdt_handlers(app, guarded)
    register_secagg_handlers(app, guarded)
    register_standby(app)

    @app.query("info")
    @guarded
    def info(message: Message, context: Context, settings: BranchSettings) -> Message:
        spec, _ = job_of(message)
        data = load_branch_data(settings, spec.task)
        branch: dict[str, Any] = {
            "branch_id": settings.branch_id,
            "status": P.STATUS_OK,
            # The branch's own ceiling, reported for the summary; the server cannot change it.
            "epsilon_ceiling": float(settings.epsilon_ceiling or -1.0),
            **_ledger_history(settings),
        }
        metrics = MetricRecord(
            {
                "train_customers": len(data.train),
                "test_customers": len(data.test),
                "excluded_customers": data.excluded_customers,
                "n_tabular": data.n_tabular,
            }
        )
        return reply(message, branch, **{P.METRICS: metrics})

    return app


app = make_client_app()
