"""A branch with an epsilon ceiling takes part only in jobs with differential privacy.

An update trained without DP has no finite epsilon, so a job with
``privacy=none`` or ``he`` would break the branch's ceiling. The branch
refuses every message of such a job before reading any data; the server
leaves it out with the reason. A simulation, where the researcher sets both
sides, runs such a job without the ceilings and says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedcrm import protocol as P
from fedcrm.client.app import make_client_app
from fedcrm.config import JobSpec, compose


def _message(mtype: str, overrides: list[str]) -> Message:
    spec = JobSpec.from_run(compose(overrides), run_id="r1")
    job = ConfigRecord({"spec": spec.model_dump_json(), "round": 1})
    msg = Message(RecordDict({P.JOB: job}), dst_node_id=1, message_type=mtype)
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ClientApp process is given by Flower before it builds replies."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _ask(node_config: dict[str, str], mtype: str, overrides: list[str]) -> dict:
    app = make_client_app({0: node_config})
    ctx = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    reply = app(message=_message(mtype, overrides), context=ctx)
    assert not reply.has_error()
    return dict(reply.content[P.BRANCH])


@pytest.mark.parametrize("mtype", [P.INFO, P.TRAIN, P.GBDT_RANGES])
@pytest.mark.parametrize("mode", ["none", "he"])
def test_a_branch_with_a_ceiling_refuses_a_job_without_dp(
    tmp_path: Path, mtype: str, mode: str
) -> None:
    # An empty data directory: a branch that went on to read its export would fail
    # with another reason.
    cfg = {"branch-id": "b1", "data-path": str(tmp_path), "epsilon-ceiling": "4"}
    branch = _ask(cfg, mtype, [f"privacy={mode}"])
    assert branch["status"] == P.STATUS_REFUSED
    assert branch["reason"] == P.REASON_DP_REQUIRED
    assert "epsilon ceiling (4)" in branch["message"] and f"privacy={mode}" in branch["message"]


def test_without_a_ceiling_or_with_dp_the_branch_goes_on_to_its_data(tmp_path: Path) -> None:
    """No refusal: the handler runs (and here fails on the empty export instead)."""
    no_ceiling = {"branch-id": "b1", "data-path": str(tmp_path)}
    with_ceiling = {**no_ceiling, "epsilon-ceiling": "4"}
    for cfg, overrides in ((no_ceiling, ["privacy=none"]), (with_ceiling, ["privacy=dp"])):
        branch = _ask(cfg, P.INFO, overrides)
        assert branch["status"] == P.STATUS_REFUSED
        assert branch["reason"] != P.REASON_DP_REQUIRED, branch


def test_the_server_counts_the_refusal_and_stops_asking(tmp_path: Path) -> None:
    from fedcrm.server.branch_state import BranchState
    from fedcrm.server.job import FederatedJob
    from fedcrm.server.run_dir import RunDir

    job = FederatedJob.__new__(FederatedJob)  # only _handle_status is exercised
    job.run_dir = RunDir(tmp_path / "run")
    from fedcrm.server.ledger_store import LedgerStore

    job.ledgers = LedgerStore(tmp_path / "run", ledger_dir="ledger")
    b = BranchState(node_id=1, branch_id="b1", train_customers=1, test_customers=1,
                    excluded_customers=0, n_tabular=1)  # fmt: skip
    problems: dict[str, str] = {}
    info = {"status": P.STATUS_REFUSED, "reason": P.REASON_DP_REQUIRED, "message": "no DP"}
    assert not job._handle_status(b, info, problems)
    assert b.exhausted and b.refused_rounds == 1
    assert problems["b1"] == "dp-required: no DP"


def test_simulation_says_it_does_not_apply_ceilings_without_dp(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A researcher's privacy=none leg of a sweep runs; the log says what a branch would do."""
    from fedcrm.simulations.simulate import branch_node_configs

    with caplog.at_level("WARNING"):
        branch_node_configs(compose(["branch.epsilon_ceiling=3"]), tmp_path, {})
    assert "ceilings not applied: privacy=none" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        branch_node_configs(compose(["privacy=dp", "branch.epsilon_ceiling=3"]), tmp_path, {})
    assert "not applied" not in caplog.text
