"""``../../escaped`` as a branch id or run id never writes outside its folder, wherever it enters.

Entry points: the ``fedcrm`` commands (``node init``, ``node start``, ``server
register``), a branch's node config, a server's message (run id), a branch's
reply (branch id), a branch export's ``branch_id`` column, the admitted list.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fedcrm.cli import main
from fedcrm.errors import ConfigError

from .conftest import ESCAPE

Sandbox = tuple[Path, Callable[[], list[Path]]]


# ---------------------------------------------------------------- commands
def test_node_init_refuses_it_and_writes_nothing(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    work, escaped = sandbox
    assert main(["node", "init", "--branch-id", ESCAPE, "--out", str(work / "b")]) == 2
    assert "--branch-id '../../escaped' is not a valid id" in capsys.readouterr().err
    assert escaped() == [] and not (work / "b").exists()


def test_a_branch_folder_claiming_it_is_refused_by_node_start(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcrm.deploy.branch_dir import init_branch_dir
    from fedcrm.deploy.provision import init_federation

    work, escaped = sandbox
    init_federation(work / "fed", "127.0.0.1:9")
    bd, _ = init_branch_dir(work / "b1", "b1")
    data = json.loads((bd.root / "branch.json").read_text())
    (bd.root / "branch.json").write_text(json.dumps({**data, "branch_id": ESCAPE}))
    kit = str(work / "fed" / "kit")
    argv = ["node", "start", "--federation", kit, "--branch-dir", str(bd.root),
            "--data-path", str(work), "--check-only", "--approve-app", "ab" * 32]  # fmt: skip
    assert main(argv) == 2
    assert "branch_id '../../escaped' is not a valid id" in capsys.readouterr().err
    assert escaped() == []


def test_server_register_refuses_a_signed_request_for_it(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """The attacker signs the request properly: the id itself is what is refused."""
    from fedcrm.deploy.branch_dir import init_branch_dir
    from fedcrm.deploy.provision import init_federation
    from fedcrm.deploy.request import signed_bytes
    from fedcrm.privacy import signing

    work, escaped = sandbox
    init_federation(work / "fed", "127.0.0.1:9")
    bd, body = init_branch_dir(work / "b1", "b1")
    body["branch_id"] = ESCAPE
    key = signing.load_private_key(bd.signing_key)
    body["signature"] = signing.sign(key, signed_bytes(body))
    bd.request.write_text(json.dumps(body))
    argv = ["server", "register", "--federation", str(work / "fed"), "--request", str(bd.request)]
    assert main(argv) == 2
    assert "branch_id '../../escaped' is not a valid id" in capsys.readouterr().err
    assert escaped() == [] and not (work / "fed" / "server" / "admitted.json").exists()


def test_an_admitted_list_naming_it_is_refused(sandbox: Sandbox) -> None:
    from fedcrm.identity import BranchIdentity, Roster, SigningKey, load_roster, save_roster

    work, escaped = sandbox
    good = BranchIdentity("b1", "ecdsa-sha2-nistp384 K", (SigningKey("a" * 16, "PEM"),), "x")
    path = save_roster(Roster({"b1": good}), work / "admitted.json")
    data = json.loads(path.read_text())
    data["branches"][ESCAPE] = data["branches"]["b1"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="not a fedcrm admitted list"):
        load_roster(path)
    with pytest.raises(ConfigError, match="not a valid id"):
        Roster({ESCAPE: good}).write_signing_keys(work / "keys")
    assert escaped() == []


# -------------------------------------------------------------- node config
def test_node_config_refuses_it_naming_the_key(sandbox: Sandbox) -> None:
    from fedcrm.client.branch import BranchSettings

    work, escaped = sandbox
    with pytest.raises(ConfigError, match=r"node config `branch-id` '\.\./\.\./escaped'"):
        BranchSettings.from_node_config({"branch-id": ESCAPE, "data-path": str(work)})
    assert escaped() == []


# ----------------------------------------------------------------- messages
def _tiny_data() -> object:
    from fedcrm.client.branch import BranchData
    from fedcrm.data.dataset import FeatureSet

    fs = FeatureSet(
        customer_ids=np.array(["c0"]),
        branch_ids=np.array(["b1"]),
        seq_cat=np.zeros((1, 1, 3), np.int64),
        seq_num=np.zeros((1, 1, 3), np.float32),
        lengths=np.ones(1, np.int64),
        tabular=np.zeros((1, 1), np.float32),
        labels=np.zeros(1, np.int64),
        tabular_names=["log_x"],
    )
    return BranchData(fs, fs, 0)


def test_a_run_id_from_the_server_never_names_a_branch_file(sandbox: Sandbox) -> None:
    from fedcrm.client.branch import BranchSettings
    from fedcrm.client.lstm_app import export_local_model
    from fedcrm.config import JobSpec, compose

    work, escaped = sandbox
    spec = JobSpec.from_run(compose([]), "r1")
    # What a branch parses from every message: the spec is refused outright.
    with pytest.raises(ValidationError, match="run_id must be a path-safe id"):
        JobSpec.model_validate_json(spec.model_copy(update={"run_id": ESCAPE}).model_dump_json())
    # And were one to get through, the model export still would not follow it.
    settings = BranchSettings("b1", work, model_dir=work / "models")
    with pytest.raises(ConfigError, match="run id"):
        export_local_model(
            settings, spec.model_copy(update={"run_id": ESCAPE}), [np.ones(2)], _tiny_data()
        )
    assert escaped() == []


def test_a_branch_id_in_a_reply_never_names_a_server_file(sandbox: Sandbox) -> None:
    from fedcrm.identity import identity_refusal
    from fedcrm.server.ledger_store import LedgerStore

    work, escaped = sandbox
    assert identity_refusal(None, ESCAPE, 7) is not None  # the ServerApp leaves the node out
    store = LedgerStore(work)
    with pytest.raises(ConfigError, match="branch id"):
        store.extend(ESCAPE, [{"seq": 0}])
    with pytest.raises(ConfigError, match="branch id"):
        store.path(ESCAPE)
    assert escaped() == []


# --------------------------------------------------------------------- data
def test_an_export_with_it_as_branch_id_breaks_the_data_contract(sandbox: Sandbox) -> None:
    import pandas as pd

    from fedcrm.data.synthetic import write_synthetic
    from fedcrm.data.validate import validate_dir

    work, escaped = sandbox
    export = write_synthetic(work / "export", branches=1, customers=20, seed=1)
    customers = pd.read_csv(export / "customers.csv", dtype=str, keep_default_na=False)
    customers["branch_id"] = ESCAPE
    customers.to_csv(export / "customers.csv", index=False)
    problems = [str(p) for p in validate_dir(export)]
    assert any("branch_id: not a valid branch id" in p for p in problems), problems
    assert not any(ESCAPE in p for p in problems)  # named, never quoted
    assert escaped() == []


def test_a_simulation_never_makes_a_branch_folder_of_it(sandbox: Sandbox) -> None:
    from fedcrm.config import compose
    from fedcrm.data.dataset import FeatureSet
    from fedcrm.simulations.simulate import branch_node_configs

    work, escaped = sandbox
    empty = FeatureSet.__new__(FeatureSet)
    with pytest.raises(ConfigError, match="branch_id in the data"):
        branch_node_configs(compose([]), work, {ESCAPE: (empty, empty)})
    assert escaped() == []
