"""A malicious server against real branches.

The branches are the real ClientApp (:func:`fedcrm.client.make_client_app`)
with real node configs over a synthetic export; the server is a ServerApp
written by the attacker, driven through the real Flower simulation, or - where
a whole run would be too slow - the same messages delivered to the ClientApp
directly. The attacker controls every message value (seeds, bounds, flags,
round and level numbers, model weights) and, as DP assumes, may know every
customer but the one it targets. Other attacks play through a command, a node
config or a file, and check the damage did not happen.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedcrm import protocol as P
from fedcrm.config import JobSpec, compose

CUTOFF = dt.date(2024, 10, 2)
LSTM_JOB = [
    "privacy=dp",
    "privacy.target_epsilon=4",
    "model.hidden_size=8",
    "model.embedding_dim=4",
    "task.max_events=10",
    "federation.rounds=3",
    f"task.cutoff={CUTOFF}",
]
TREE_JOB = [
    "model=gbdt",
    "model.n_estimators=3",
    "model.max_depth=2",
    "privacy=dp",
    "privacy.target_epsilon=4",
    f"task.cutoff={CUTOFF}",
]
BRANCHES = ("branch_00", "branch_01", "branch_02")
#: An id that, used as a file name, would climb out of its folder.
ESCAPE = "../../escaped"


def job(overrides: list[str], run_id: str) -> JobSpec:
    """The job spec a server sends (the attacker composes it as it likes)."""
    return JobSpec.from_run(compose(overrides), run_id=run_id)


def message(spec: JobSpec, mtype: str, round_num: int, node: int = 1, **records: Any) -> Message:
    """A message as the server would push it."""
    content = RecordDict(
        {P.JOB: ConfigRecord({"spec": spec.model_dump_json(), "round": round_num}), **records}
    )
    return Message(content, dst_node_id=node, message_type=mtype)


def weights_record(weights: list[np.ndarray]) -> ArrayRecord:
    """Plaintext weights."""
    return ArrayRecord(numpy_ndarrays=weights)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three branches' CRM export (one directory, split by branch_id at each branch)."""
    from fedcrm.data.synthetic import write_synthetic

    return write_synthetic(
        tmp_path_factory.mktemp("crm") / "export", branches=3, customers=400, seed=11
    )


def node_configs(root: Path, export: Path, **extra: str) -> dict[int, dict[str, str]]:
    """Deployed-style node configs (keys the branches made, their own ledgers)."""
    from fedcrm.privacy.signing import generate_signing_key

    out = {}
    for pid, b in enumerate(BRANCHES):
        home = root / b
        key = home / f"{b}.key"
        if not key.exists():
            generate_signing_key(home, b)
        out[pid] = {
            "branch-id": b,
            "data-path": str(export),
            "ledger-path": str(home / "ledger.jsonl"),
            "signing-key": str(key),
            **extra,
        }
    return out


def branch_data(node_config: dict[str, str], spec: JobSpec) -> Any:
    """The branch's train and test customers as the branch itself loads them.

    The attacker is granted this knowledge (DP's worst case: it knows everyone
    but its target).
    """
    from fedcrm.client import branch as B

    settings = B.BranchSettings.from_node_config(node_config)
    try:
        return B.load_branch_data(settings, spec.task)
    except TypeError:  # an older signature took the job's seed
        return B.load_branch_data(settings, spec.task, spec.seed)  # type: ignore[call-arg]


@pytest.fixture
def ask(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Message]:
    """Deliver one message to one branch's ClientApp, in this process (no Flower transport)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)

    def deliver(
        node_config: dict[str, str], msg: Message, state: RecordDict | None = None
    ) -> Message:
        from fedcrm.client.app import make_client_app

        msg.metadata.__dict__["_message_id"] = msg.object_id
        ctx = Context(
            run_id=1,
            node_id=1,
            node_config={"partition-id": 0},
            state=state if state is not None else RecordDict(),
            run_config={},
        )
        reply = make_client_app({0: node_config})(message=msg, context=ctx)
        assert not reply.has_error()
        return reply

    return deliver


def run_attack(
    attack: Callable[[Any, dict[str, int]], dict[str, Any]],
    configs: dict[int, dict[str, str]],
) -> dict[str, Any]:
    """Run ``attack(grid, node_of_branch)`` as the ServerApp of a real Flower simulation."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedcrm.client.app import make_client_app

    results: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        import time

        deadline = time.time() + 120
        while len(grid.get_node_ids()) < len(configs) and time.time() < deadline:
            time.sleep(0.2)
        nodes = sorted(grid.get_node_ids())
        spec = job(LSTM_JOB, "who-is-who")
        replies = grid.send_and_receive([message(spec, P.INFO, 0, n) for n in nodes], timeout=120)
        node_of = {
            str(r.content[P.BRANCH]["branch_id"]): r.metadata.src_node_id
            for r in replies
            if not r.has_error()
        }
        results.update(attack(grid, node_of))

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logging.getLogger("flwr").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=app,
            client_app=make_client_app(configs),
            num_supernodes=len(configs),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"include_dashboard": False, "log_to_driver": False},
            },
        )
    return results


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Callable[[], list[Path]]]:
    """A working folder two levels down, and a function listing what ``ESCAPE`` created.

    ``ESCAPE`` used as a file name in the folder (or in a folder below it) would
    land beside it or above it, still inside ``tmp_path``; nothing legitimate
    has "escaped" in its name, so any such path is damage.
    """
    work = tmp_path / "outer" / "inner"
    work.mkdir(parents=True)

    def escaped() -> list[Path]:
        return sorted(tmp_path.rglob("*escaped*"))

    return work, escaped
