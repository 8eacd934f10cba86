"""TLS + SuperNode authentication with real Flower processes (issue 7, faults 1, 2 and 6).

One deployment: ``fedcrm federation init``; ``fedcrm server start`` (TLS,
``--enable-supernode-auth``); ``fedcrm server register`` for 3 branches; a
4th SuperNode with a key nobody registered; ``fedcrm node start`` for all;
``flwr run . fedcrm`` a 2-round DP LSTM job. The unregistered node is refused
(and keeps asking, as ``fedcrm node start`` restarts it) and the run completes
with the 3 others; no customer id of any branch appears in the SuperLink's
output, ``flwr log`` or the run directory. Afterwards ``fedcrm server
unregister`` shuts a branch out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def customer_ids(crm: dict[str, Path]) -> set[str]:
    ids: set[str] = set()
    for d in crm.values():
        ids |= set(pd.read_csv(d / "customers.csv", dtype=str)["customer_id"])
    return ids


def scan_for_ids(texts: dict[str, str], ids: set[str]) -> list[str]:
    """Every (source, id) where a customer id appears as a token."""
    token = re.compile(r"[A-Za-z0-9_]+")
    hits = []
    for source, text in texts.items():
        found = set(token.findall(text)) & ids
        hits += [f"{source}: {i}" for i in sorted(found)[:5]]
    return hits


def server_side_files(run_dir: Path) -> dict[str, str]:
    out = {}
    for p in run_dir.rglob("*"):
        if p.is_file() and "branches" not in p.relative_to(run_dir).parts:
            out[str(p)] = p.read_bytes().decode("latin-1")
    return out


def test_tls_node_auth_lstm_run_refuses_unregistered_node_and_leaks_no_ids(
    deployment: Any, crm: dict[str, Path], tmp_path: Path
) -> None:
    dep = deployment
    dep.init()
    server = dep.start_server()
    for b in dep.branches:
        reg = dep.register(b)
        assert reg.get("success"), reg
    for b in dep.branches:
        dep.cli("data", "validate", str(crm[b]))
    nodes = {b: dep.start_node(b, crm[b], "--epsilon-ceiling", "50") for b in dep.branches}

    # A SuperNode whose key was never registered: onboarded, but not registered.
    dep.cli(
        "node",
        "init",
        "--federation",
        str(dep.fed),
        "--branch-id",
        "rogue",
        "--out",
        str(tmp_path / "rogue"),
    )
    rogue = dep.start_node("rogue", crm[dep.branches[0]], "--epsilon-ceiling", "50")
    dep.wait_for(
        lambda: "starting it again" in rogue.text(), 90, "the unregistered SuperNode's refusal"
    )
    assert "2004" in rogue.text() or "Failed to activate" in rogue.text(), rogue.text()[-2000:]
    # What the central team checks before a run (README step 5): three online.
    dep.wait_online(list(nodes.values()))
    listed = json.loads(dep.flwr("supernode", "list", "fedcrm", "--format", "json").stdout)
    assert [n["status"] for n in listed["nodes"]].count("online") == 3, listed

    out = tmp_path / "runs"
    run_id = dep.run(
        f"federation.rounds=2 privacy=dp_he privacy.keys_dir={dep.fed / 'server'} "
        f"federation.min_branches=3 federation.round_timeout=120 {dep.TINY}",
        out,
    )
    assert dep.wait_run(run_id) == "finished:completed", dep.log(run_id)[-4000:]

    run_dir = dep.run_dir(out, run_id)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["stopped_reason"] is None
    assert sorted(summary["per_branch"]) == sorted(dep.branches)
    for b, info in summary["per_branch"].items():
        assert info["rounds_trained"] == 2 and info["failed_rounds"] == 0, (b, info)
        assert summary["privacy"]["per_branch"][b]["epsilon"] > 0
    assert summary["encrypted"] is True
    # Standby messages are on by default in deployment (federation.keep_warm_s=10).
    assert summary["standby_messages"] > 0, summary
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["trained_round"] for r in rounds if "trained_round" in r] == [1, 2]
    assert all(r["branches_aggregated"] == 3 for r in rounds if "trained_round" in r)

    # Ledgers: the branch's own and the server's copy agree and verify with the public keys.
    for b in dep.branches:
        own = (dep.fed / "branches" / b / "ledger.jsonl").read_text().splitlines()
        copy = (run_dir / "ledger" / f"{b}.jsonl").read_text().splitlines()
        assert own == copy and len(own) >= 2
    verify = dep.cli(
        "privacy",
        "verify",
        str(run_dir / "ledger"),
        "--keys",
        str(dep.fed / "public" / "signing"),
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Fault 6: no customer id in anything the server side wrote or printed.
    texts = {"superlink": server.text(), "flwr log": dep.log(run_id)}
    texts.update(server_side_files(run_dir))
    assert texts["flwr log"].strip(), "flwr log returned nothing to scan"
    assert not scan_for_ids(texts, customer_ids(crm))
    for proc in nodes.values():
        assert proc.alive()

    # Unregistered: the SuperLink drops the branch's SuperNode and refuses it from then on.
    gone = dep.branches[-1]
    dep.cli("server", "unregister", "--federation", str(dep.fed), "--branch-id", gone)
    node = nodes[gone]
    dep.wait_for(lambda: "Failed to activate" in node.text(), 120, f"{gone} to be shut out")
    admitted = json.loads((dep.fed / "server" / "admitted.json").read_text())["branches"]
    assert sorted(admitted) == sorted(dep.branches[:-1])
    # Registering a branch the running SuperLink knows already is harmless.
    again = dep.register(dep.branches[0])
    assert again["success"] and again["branches"][dep.branches[0]]["registered"], again


def test_tls_node_auth_gbdt_run(deployment: Any, crm: dict[str, Path], tmp_path: Path) -> None:
    """The tree job over the same deployment path: a few trees, DP histograms, ledgers."""
    dep = deployment
    dep.init("--no-he")
    dep.start_server()
    for b in dep.branches:
        dep.register(b)
        dep.start_node(b, crm[b], "--epsilon-ceiling", "50")
    out = tmp_path / "runs"
    run_id = dep.run(
        "model=gbdt model.mode=batched model.trees_per_exchange=3 model.n_estimators=3 "
        "model.max_depth=2 privacy=dp federation.min_branches=3 "
        "federation.round_timeout=120 baseline=false",
        out,
    )
    assert dep.wait_run(run_id, timeout=400) == "finished:completed", dep.log(run_id)[-4000:]
    run_dir = dep.run_dir(out, run_id)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "gbdt" and summary["stopped_reason"] is None, summary
    assert summary["trees"] == 3
    for b in dep.branches:
        assert summary["per_branch"][b]["failed_rounds"] == 0
        own = (dep.fed / "branches" / b / "ledger.jsonl").read_text().splitlines()
        assert own and own == (run_dir / "ledger" / f"{b}.jsonl").read_text().splitlines()


def test_a_branch_runs_only_the_apps_it_approved_and_under_a_ceiling_only_dp_jobs(
    deployment: Any, crm: dict[str, Path], tmp_path: Path
) -> None:
    """``--approve-app`` and the epsilon ceiling, each refusing a job before any data is read.

    Branch 0 approves this repository's app (by directory); branch 1 only some
    other app's hash; branch 2 approves this app but holds an epsilon ceiling.
    ``flwr run .`` without DP trains with branch 0 alone: branch 1 answers with
    an error naming the FAB hash, branch 2 with a ``dp-required`` refusal, and
    the server leaves both out with the reason.
    """
    dep = deployment
    dep.init("--no-he")
    dep.start_server()
    ok, pinned_elsewhere, capped = dep.branches
    for b in dep.branches:
        dep.register(b)
    fab_hash = dep.cli("node", "app-hash", ".").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", fab_hash), fab_hash
    first = dep.start_node(ok, crm[ok], "--approve-app", ".")
    refusing = dep.start_node(pinned_elsewhere, crm[pinned_elsewhere], "--approve-app", "ab" * 32)
    last = dep.start_node(capped, crm[capped], "--approve-app", fab_hash, "--epsilon-ceiling", "5")
    dep.wait_online([first, refusing, last])  # all three must be asked in this one-round run
    out = tmp_path / "runs"
    run_id = dep.run(f"federation.rounds=1 federation.min_branches=1 {dep.TINY}", out)
    assert dep.wait_run(run_id, timeout=300) == "finished:completed", dep.log(run_id)[-4000:]
    summary = json.loads((dep.run_dir(out, run_id) / "summary.json").read_text())
    assert sorted(summary["per_branch"]) == [ok], summary["per_branch"]
    assert summary["per_branch"][ok]["rounds_trained"] == 1
    assert summary["fab_hash"] == fab_hash  # what the branches pin, on the record
    refusal = f"FAB {fab_hash} is not one of them"
    assert refusal in refusing.text(), refusing.text()[-3000:]
    log = dep.log(run_id)
    assert "left out" in log and refusal in log, log[-3000:]
    assert f"branch {capped} left out" in log and "only in jobs with differential privacy" in log
