"""Federated trees through the real Flower simulation (model=gbdt)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from fedcrm import protocol as P
from fedcrm.config import compose
from fedcrm.data.dataset import FeatureSet
from fedcrm.models.gbdt_export import to_xgboost_json
from fedcrm.models.gbdt_reference import fit_from_partitions
from fedcrm.simulations.simulate import simulate

pytestmark = pytest.mark.slow

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SMALL = [
    "model=gbdt",
    "model.n_estimators=5",
    "model.max_depth=3",
    "data.branches=3",
    "data.customers=300",
    "baseline=false",
]


def _train_set(cfg: object, out: Path, branch_id: str) -> FeatureSet:
    """A simulated branch's training customers, split as the branch splits them."""
    from fedcrm.client.branch import BranchSettings, load_branch_data
    from fedcrm.simulations.simulate import branch_settings

    settings = BranchSettings.from_node_config(branch_settings(cfg, out, branch_id))
    return load_branch_data(settings, cfg.task).train  # type: ignore[attr-defined]


def test_federated_trees_equal_the_reference_on_the_same_branches(tmp_path: Path) -> None:
    out = tmp_path / "exact"
    cfg = compose([*SMALL, f"output_dir={out}"])
    summary = simulate(cfg, out)

    ids = sorted(p.name for p in (out / "branches").iterdir())
    trains = [_train_set(cfg, out, b) for b in ids]
    ref = fit_from_partitions(
        [(t.tabular, t.labels) for t in trains],
        cfg.model,
        seed=cfg.seed,  # type: ignore[arg-type]
        feature_names=trains[0].tabular_names,
    )
    ours = json.loads((out / "model.xgb.json").read_text())
    theirs = to_xgboost_json(ref.model)
    assert ours["learner"]["gradient_booster"] == theirs["learner"]["gradient_booster"]
    assert summary["trees"] == 5 and summary["stopped_reason"] is None
    # info + ranges + evaluate around the reference's exchanges (bins + levels).
    assert summary["exchanges"] == ref.exchanges + 2
    assert summary["bytes_per_tree"] > 0
    assert {"auc", "f1", "logloss", "accuracy", "brier", "ece"} <= set(summary["final"])
    assert summary["final"]["auc"] > 0.6
    assert all(v["auc"] is not None for v in summary["per_branch"].values())
    card = json.loads((out / "model_card.json").read_text())
    assert card["feature_importance"]["total_gain"] == summary["feature_importance"]
    assert set(card["feature_importance"]["total_gain"]) <= set(trains[0].tabular_names)


def corrupt(message: Message, context: Context, call_next: object) -> Message:
    """Branch 1 sends a histogram of the wrong length, branch 2 NaN (garbage under HE)."""
    reply = call_next(message, context)  # type: ignore[operator]
    pid = int(context.node_config["partition-id"])
    mtype = message.metadata.message_type
    if mtype not in (P.GBDT_LEVEL, P.GBDT_BATCH) or reply.has_error() or pid not in (1, 2):
        return reply
    content = reply.content
    if P.RELEASE in content:
        values = content[P.RELEASE]["values"].numpy()
        values = values[:-1] if pid == 1 else np.full_like(values, np.nan)
        content[P.RELEASE] = ArrayRecord(array_dict={"values": Array(values)})
    elif P.ENCRYPTED in content and pid == 1:
        rec = dict(content[P.ENCRYPTED])
        rec["chunks"] = list(rec["chunks"])[:-1]
        content[P.ENCRYPTED] = ConfigRecord(rec)
    return reply


@pytest.mark.parametrize(("privacy", "branches", "bad"), [("none", 4, 2), ("he", 5, 1)])
def test_bad_histograms_are_rejected_by_branch_and_the_run_finishes(
    tmp_path: Path, privacy: str, branches: int, bad: int
) -> None:
    """Encrypted: the mis-shaped upload is left out and its masks removed (dropout recovery)."""
    out = tmp_path / privacy
    cfg = compose(
        [
            *SMALL,
            f"data.branches={branches}",
            "model.mode=batched",
            "model.trees_per_exchange=2",
            "federation.min_branches=1",
            f"privacy={privacy}",
            f"output_dir={out}",
        ]
    )
    summary = simulate(cfg, out, client_mods=[corrupt])

    assert summary["trees"] == 5 and summary["stopped_reason"] is None
    per = summary["per_branch"]
    ids = sorted(per)
    for failed in ids[1 : 1 + bad]:
        assert per[failed]["failed_rounds"] >= 1
        assert "histogram rejected" in per[failed]["last_problem"]
    for good in [ids[0], *ids[1 + bad :]]:
        assert per[good]["failed_rounds"] == 0
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert any(ids[1] in (r.get("problems") or {}) for r in rounds)
    assert (out / "model.xgb.json").exists()


def test_dp_trees_record_every_release_in_the_branch_ledgers(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    cfg = compose(
        [
            *SMALL,
            "privacy=dp_he",
            "privacy.target_epsilon=4",
            "privacy.accountant=rdp",
            "model.subsample=0.8",
            f"output_dir={out}",
        ]
    )
    summary = simulate(cfg, out)

    assert summary["trees"] == 5 and summary["final"]["auc"] is not None
    for b, v in summary["privacy"]["per_branch"].items():
        assert 0 < v["epsilon"] <= 4.0 + 1e-6
        lines = (out / "branches" / b / "ledger.jsonl").read_text().splitlines()
        entries = [json.loads(x) for x in lines]
        reserved = [e for e in entries if e["kind"] == "reservation"]
        train = [e for e in reserved if e["purpose"] == "train"]
        assert [e["round"] for e in train] == list(range(6))  # bin edges + one per tree
        assert all(e["mechanism"] == "gaussian" for e in train)
        assert train[1]["sample_rate"] == 0.8
        # Every level of every tree was released once, under its tree's reservation.
        levels = [e["step"] for e in entries if e["kind"] == "release" and "level" in e["step"]]
        assert len(levels) == len(set(levels))
        per_tree = [sorted(x for x in levels if x.startswith(f"tree-{t}.")) for t in range(5)]
        assert all(
            steps == [f"tree-{t}.level-{k}" for k in range(len(steps))] and 1 <= len(steps) <= 3
            for t, steps in enumerate(per_tree)
        )
        assert [e["mechanism"] for e in reserved if e["purpose"] == "evaluation"] == ["dp-eval"]


def test_interrupted_tree_job_resumes_to_the_same_trees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree job stopped after tree 2 continues from its checkpoint with resume=true.

    The resumed job ends with exactly the trees of the uninterrupted reference:
    nothing lost, nothing built twice.
    """
    from fedcrm.server.gbdt_job import GBDTJob

    out = tmp_path / "run"
    base = [*SMALL, "model.n_estimators=4", "model.max_depth=2", f"output_dir={out}"]
    report = GBDTJob._report

    def crash_after_tree_2(self: GBDTJob, evaluation: dict, info: dict | None) -> None:
        report(self, evaluation, info)
        if info is not None and info.get("round") == 2:
            raise RuntimeError("server stopped (test)")

    monkeypatch.setattr(GBDTJob, "_report", crash_after_tree_2)
    with contextlib.suppress(Exception):  # however the simulation surfaces the crash
        simulate(compose(base), out)
    monkeypatch.setattr(GBDTJob, "_report", report)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["global"] == "trees" and state["round"] == 1  # tree 2's last step unsaved
    assert not (out / "model.xgb.json").exists()

    cfg = compose([*base, "resume=true"])
    summary = simulate(cfg, out)
    assert summary["trees"] == 4 and summary["stopped_reason"] is None
    assert summary["run_id"] == state["run_id"]
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    # Tree 2 once, not twice; the last tree completes with the final evaluation.
    assert [r["trained_round"] for r in rounds if "trained_round" in r] == [1, 2, 3]

    ids = sorted(p.name for p in (out / "branches").iterdir())
    trains = [_train_set(cfg, out, b) for b in ids]
    ref = fit_from_partitions(
        [(t.tabular, t.labels) for t in trains],
        cfg.model,
        seed=cfg.seed,  # type: ignore[arg-type]
        feature_names=trains[0].tabular_names,
    )
    ours = json.loads((out / "model.xgb.json").read_text())
    assert (
        ours["learner"]["gradient_booster"]
        == to_xgboost_json(ref.model)["learner"]["gradient_booster"]
    )
