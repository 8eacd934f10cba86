"""A faulty branch must not crash the federation (real Flower simulation).

A Flower client mod corrupts the replies of some simulated branches: one sends
an update of the wrong shape, one sends NaN, one (HE) sends garbage
ciphertext. The server excludes each with a logged reason and the run finishes
with the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from fedcrm import protocol as P
from fedcrm.config import compose
from fedcrm.simulations.simulate import simulate

pytestmark = pytest.mark.slow

# The mod travels to Ray actors by value (this module is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY = [
    "data.branches=4",
    "data.customers=120",
    "federation.rounds=2",
    "federation.min_branches=1",
    "model.hidden_size=8",
    "model.embedding_dim=4",
    "task.max_events=10",
    "baseline=false",
]


def corrupt(message: Message, context: Context, call_next: object) -> Message:
    """Branch 1: wrong shapes; branch 2: NaN; branch 3 (HE): garbage ciphertext."""
    reply = call_next(message, context)  # type: ignore[operator]
    pid = int(context.node_config["partition-id"])
    if message.metadata.message_type != "train" or reply.has_error():
        return reply
    content = reply.content
    if P.WEIGHTS in content and pid == 1:
        arrays = content[P.WEIGHTS].to_numpy_ndarrays()
        content[P.WEIGHTS] = ArrayRecord(numpy_ndarrays=[a[..., :1] for a in arrays])
    elif P.WEIGHTS in content and pid == 2:
        arrays = content[P.WEIGHTS].to_numpy_ndarrays()
        arrays[0] = np.full_like(arrays[0], np.nan)
        content[P.WEIGHTS] = ArrayRecord(numpy_ndarrays=arrays)
    elif P.ENCRYPTED in content and pid == 1:
        rec = dict(content[P.ENCRYPTED])
        rec["chunks"] = [b"\x00garbage" * 50, *list(rec["chunks"])[1:]]
        content[P.ENCRYPTED] = ConfigRecord(rec)
    return reply


@pytest.mark.parametrize(("privacy", "branches", "bad"), [("none", 4, 2), ("he", 5, 1)])
def test_faulty_branches_are_excluded_and_the_run_finishes(
    tmp_path: Path, privacy: str, branches: int, bad: int
) -> None:
    """Encrypted: the garbage upload is left out and its masks are removed (dropout recovery)."""
    out = tmp_path / privacy
    cfg = compose([*TINY, f"data.branches={branches}", f"privacy={privacy}", f"output_dir={out}"])
    summary = simulate(cfg, out, client_mods=[corrupt])

    assert summary["rounds"] == 2 and summary["stopped_reason"] is None
    per = summary["per_branch"]
    good = [b for b in per if per[b]["failed_rounds"] == 0]
    failed = [b for b in per if per[b]["failed_rounds"] == 2]
    assert len(good) == branches - bad and len(failed) == bad, per
    for b in failed:
        assert per[b]["rounds_trained"] == 0
        assert "rejected" in per[b]["last_problem"]
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    trained = [r for r in rounds if "trained_round" in r]
    assert all(r["branches_aggregated"] == branches - bad for r in trained)
    assert all(len(r["problems"]) == bad for r in trained)
    assert 0.0 <= summary["final"]["auc"] <= 1.0
