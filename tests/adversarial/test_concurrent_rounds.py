"""Eight rounds at once cannot pass a branch's ceiling together.

A server (or a warm executor running tasks side by side) may deliver many DP
rounds to one branch at the same moment. Each is a real ClientApp call in its
own process; the branch's ledger must end within its ceiling.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from fedcrm import protocol as P

from .conftest import LSTM_JOB, branch_data, job, message, node_configs, weights_record

pytestmark = pytest.mark.slow

CEILING = 5.0
ROUNDS = 8


def _one_round(config: dict[str, str], run: str, start: Any, out: Any) -> None:
    import torch
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedcrm.client.app import make_client_app
    from fedcrm.models.lstm import build_model, get_weights

    torch.set_num_threads(1)
    for attr in ("_task_id", "_run_id", "_node_id"):
        setattr(TaskIdentity, attr, 1)
    spec = job(LSTM_JOB, run)
    n_tab = int(branch_data(config, spec).train.tabular.shape[1])
    w0 = get_weights(build_model(spec.model, n_tab, dp_engine="fast", seed=spec.seed))
    msg = message(spec, P.TRAIN, 1, **{P.WEIGHTS: weights_record(w0)})
    msg.metadata.__dict__["_message_id"] = msg.object_id
    ctx = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    app = make_client_app({0: config})
    start.wait()
    reply = app(message=msg, context=ctx)
    out.put(dict(reply.content[P.BRANCH]).get("status"))


def _guarded(config: dict[str, str], run: str, start: Any, out: Any) -> None:
    try:
        _one_round(config, run, start, out)
    except Exception as exc:  # noqa: BLE001 - a failed worker must not leave the others waiting
        start.abort()
        out.put(f"worker failed: {exc!r}")


def test_concurrent_rounds_never_pass_the_ceiling(export: Path, tmp_path: Path) -> None:
    config = node_configs(tmp_path, export, **{"epsilon-ceiling": str(CEILING)})[0]
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(ROUNDS, timeout=300), ctx.Queue()
    workers = [
        ctx.Process(target=_guarded, args=(config, f"concurrent-{i}", start, out))
        for i in range(ROUNDS)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    statuses = [out.get(timeout=5) for _ in workers]
    entries = [json.loads(x) for x in Path(config["ledger-path"]).read_text().splitlines()]
    final = entries[-1]["epsilon"]
    assert 0 < statuses.count(P.STATUS_OK) < ROUNDS, statuses
    assert final <= CEILING, f"ledger epsilon {final:.3f} passed the ceiling {CEILING}"
