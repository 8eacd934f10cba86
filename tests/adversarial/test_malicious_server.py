"""A malicious ServerApp, through the real Flower simulation, against DP branches.

One simulation runs every attack (the Ray start-up is paid once); each test
then judges one attack from what the attacker received. The attacker may send
any message content and any model weights, replay and reorder requests, and
knows every customer of a branch but the one it targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcrm import protocol as P
from fedcrm.models.gbdt_bins import fine_histogram
from fedcrm.models.lstm import build_model, get_weights, set_weights
from fedcrm.models.train import DPSettings, predict_proba, train_local

from .conftest import (
    BRANCHES,
    LSTM_JOB,
    TREE_JOB,
    branch_data,
    job,
    message,
    node_configs,
    run_attack,
    weights_record,
)

pytestmark = pytest.mark.slow

A_SLOPE, A_OFFSET = 1.8, -6.0  # crafted model: logit = 1.8 * log_recency_days - 6


def _initial(spec: Any, n_tabular: int) -> list[np.ndarray]:
    return get_weights(build_model(spec.model, n_tabular, dp_engine="fast", seed=spec.seed))


def crafted_weights(spec: Any, n_tabular: int, feature: int) -> list[np.ndarray]:
    """A model whose churn score reads one tabular feature of each customer out."""
    import torch

    model = build_model(spec.model, n_tabular, dp_engine="fast", seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        hidden = spec.model.hidden_size
        model.head[0].weight[0, hidden + feature] = 1.0
        model.head[0].bias[0] = 20.0  # keeps the ReLU linear over the feature's range
        model.head[2].weight[0, 0] = A_SLOPE
        model.head[2].bias[0] = A_OFFSET - 20.0 * A_SLOPE
    return get_weights(model)


def _branch(reply: Any) -> dict[str, Any]:
    return dict(reply.content[P.BRANCH])


def _entries(branch: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in branch.get("ledger_entries", [])]


@pytest.fixture(scope="module")
def attacked(export: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every attack once; returns what the attacker got and what it knew."""
    root = tmp_path_factory.mktemp("branches")
    configs = node_configs(root, export)
    a_cfg, b_cfg, c_cfg = (configs[i] for i in range(3))
    lstm = job(LSTM_JOB, "replay")
    data_a = branch_data(a_cfg, lstm)
    n_tab = int(data_a.train.tabular.shape[1])
    w0 = _initial(lstm, n_tab)

    def attack(grid: Any, node_of: dict[str, int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        a, b, c = (node_of[x] for x in BRANCHES)

        def send(node: int, spec: Any, mtype: str, round_num: int, **records: Any) -> Any:
            (reply,) = grid.send_and_receive(
                [message(spec, mtype, round_num, node, **records)], timeout=300
            )
            assert not reply.has_error()
            return reply

        # 1. Replay DP-SGD with the job's seed.
        r = send(a, lstm, P.TRAIN, 1, **{P.WEIGHTS: weights_record(w0)})
        out["replay"] = (_branch(r), r.content[P.WEIGHTS].to_numpy_ndarrays())
        # 2. Delete a branch's ledger between rounds; 3. cut one at a line boundary.
        spec_b = job(LSTM_JOB, "deleted")
        send(b, spec_b, P.TRAIN, 1, **{P.WEIGHTS: weights_record(w0)})
        Path(b_cfg["ledger-path"]).unlink()
        out["deleted"] = _branch(send(b, spec_b, P.TRAIN, 2, **{P.WEIGHTS: weights_record(w0)}))
        spec_c = job(LSTM_JOB, "truncated")
        for rnd in (1, 2):
            send(c, spec_c, P.TRAIN, rnd, **{P.WEIGHTS: weights_record(w0)})
        ledger_c = Path(c_cfg["ledger-path"])
        ledger_c.write_text(ledger_c.read_text().splitlines(keepends=True)[0])
        out["truncated"] = _branch(send(c, spec_c, P.TRAIN, 3, **{P.WEIGHTS: weights_record(w0)}))
        # 4. Loosen delta; 5. leave the cutoff to each branch's data.
        loose = job([*LSTM_JOB, "privacy.delta=1e-3"], "loose-delta")
        out["delta"] = _branch(send(a, loose, P.TRAIN, 1, **{P.WEIGHTS: weights_record(w0)}))
        floating = job([x for x in LSTM_JOB if not x.startswith("task.cutoff")], "no-cutoff")
        out["cutoff"] = _branch(send(a, floating, P.TRAIN, 1, **{P.WEIGHTS: weights_record(w0)}))
        # 6. Ask for the trees' bin edges twice with shifted bounds, and a level too deep.
        trees = job(TREE_JOB, "tree-replay")
        lo, hi = np.zeros(n_tab), np.full(n_tab, 16.0)
        answers = []
        for shift in (0.0, 0.5):
            bounds = {"lo": lo - shift, "hi": hi, "level": np.array([0])}
            from flwr.app import Array, ArrayRecord

            record = ArrayRecord(array_dict={k: Array(np.asarray(v)) for k, v in bounds.items()})
            reply = send(a, trees, P.GBDT_BINS, 0, **{P.GBDT_MODEL: record})
            values = (
                reply.content[P.RELEASE]["values"].numpy() if P.RELEASE in reply.content else None
            )
            answers.append((_branch(reply), values, lo - shift))
        out["tree_replay"] = answers
        # 7. Evaluate a crafted model that reads a feature out of the test customers.
        crafted = job(LSTM_JOB, "crafted")
        feature = list(data_a.train.tabular_names).index("log_recency_days")
        reply = send(
            a,
            crafted,
            P.EVALUATE,
            3,
            **{P.WEIGHTS: weights_record(crafted_weights(crafted, n_tab, feature))},
        )
        metrics = dict(reply.content[P.METRICS]) if P.METRICS in reply.content else {}
        out["crafted"] = (_branch(reply), metrics, feature)
        return out

    results = run_attack(attack, configs)
    results["configs"] = configs
    results["data_a"] = data_a
    results["w0"] = w0
    return results


def _refused(branch: dict[str, Any], reason: str) -> bool:
    return branch.get("status") == P.STATUS_REFUSED and branch.get("reason") == reason


def test_the_jobs_seed_does_not_replay_dp_sgd(attacked: dict[str, Any]) -> None:
    """Replaying on D and on D minus one customer matches neither (noise born at the branch)."""
    branch, released = attacked["replay"]
    assert branch["status"] == P.STATUS_OK
    entry = next(e for e in _entries(branch) if "noise_multiplier" in e)
    spec = job(LSTM_JOB, "replay")
    data = attacked["data_a"].train
    diffs = []
    for drop in (None, 0):
        keep = np.arange(len(data)) if drop is None else np.arange(1, len(data))
        model = build_model(spec.model, data.tabular.shape[1], dp_engine="fast")
        set_weights(model, attacked["w0"])
        train_local(
            model,
            data.subset(keep),
            epochs=spec.local_epochs,
            batch_size=min(spec.model.batch_size, len(data)),
            learning_rate=spec.model.learning_rate,
            seed=spec.seed * 100_003 + 1,  # what the job's seed made of it
            dp=DPSettings(
                noise_multiplier=entry["noise_multiplier"],
                max_grad_norm=spec.privacy.max_grad_norm,
            ),
        )
        replay = get_weights(model)
        diffs.append(
            max(float(np.max(np.abs(a - b))) for a, b in zip(replay, released, strict=True))
        )
    # With the server's seed, replaying D reproduces the release exactly (difference 0).
    assert min(diffs) > 1e-3, diffs


def test_a_deleted_or_truncated_ledger_stops_dp_steps(attacked: dict[str, Any]) -> None:
    for case in ("deleted", "truncated"):
        assert _refused(attacked[case], "ledger-behind-anchor"), attacked[case]


def test_a_job_cannot_loosen_the_branchs_delta(attacked: dict[str, Any]) -> None:
    branch = attacked["delta"]
    n = len(attacked["data_a"].train) + len(attacked["data_a"].test)
    if branch["status"] == P.STATUS_OK:  # honoured only if it does not loosen the branch's
        assert all(e["delta"] < 1 / (10 * n) for e in _entries(branch))
    else:
        assert _refused(branch, P.REASON_DELTA)


def test_a_dp_job_without_a_fixed_cutoff_is_refused(attacked: dict[str, Any]) -> None:
    assert _refused(attacked["cutoff"], "cutoff-not-fixed"), attacked["cutoff"]


def test_tree_releases_cannot_be_replayed_until_the_noise_cancels(
    attacked: dict[str, Any],
) -> None:
    (first, v1, lo1), (second, v2, lo2) = attacked["tree_replay"]
    assert first["status"] == P.STATUS_OK and v1 is not None
    if second["status"] == P.STATUS_REFUSED:
        assert second["reason"] == "release-changed"
        return
    # Answered twice: the difference of the answers must still carry the noise.
    X = attacked["data_a"].train.tabular
    hi = np.full(X.shape[1], 16.0)
    exact = [fine_histogram(X, lo=lo, hi=hi, n_fine=64).ravel() for lo in (lo1, lo2)]
    residual = (v2 - v1) - (exact[1] - exact[0])
    assert residual.std() > 1.0, residual.std()


def test_a_crafted_model_does_not_read_test_customers_out_of_the_evaluation(
    attacked: dict[str, Any],
) -> None:
    """Knowing every test churner but one, the attacker places the one it targets."""
    branch, metrics, feature = attacked["crafted"]
    spec = job(LSTM_JOB, "crafted")
    test = attacked["data_a"].test
    n_tab = test.tabular.shape[1]
    if not metrics:  # the release was refused
        assert branch["status"] == P.STATUS_REFUSED
        return
    model = build_model(spec.model, n_tab, dp_engine="fast")
    set_weights(model, crafted_weights(spec, n_tab, feature))
    p = predict_proba(model, test)
    churners = np.flatnonzero(test.labels == 1)
    x = test.tabular[:, feature].astype(np.float64)
    if "eval.hist_pos" in metrics:  # a fine score histogram
        released = np.asarray(metrics["eval.hist_pos"])
        edges = np.linspace(0.0, 1.0, released.size + 1)
        cell = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, released.size - 1)
        centre_p = (edges[:-1] + edges[1:]) / 2
        centre_logit = np.log(centre_p / (1 - centre_p))
    else:  # the DP grid
        from fedcrm.models.evaluation import GRID_EDGES, grid_centres

        released = np.asarray(metrics["eval.pos.count"])
        cell = np.searchsorted(GRID_EDGES, np.log(p / (1 - p)), side="right")
        centre_logit = grid_centres()
    errors = []
    for target in churners:
        others = np.bincount(cell[churners[churners != target]], minlength=released.size)
        guess = int(np.argmax(released - others))
        recovered = (centre_logit[guess] - A_OFFSET) / A_SLOPE
        errors.append(abs(recovered - x[target]))
    assert np.mean(errors) >= 0.5, np.mean(errors)
