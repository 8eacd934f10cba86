"""Deployment with real Flower processes: branch-born keys, TLS, node authentication.

The walk-through of the README end to end: ``fedcrm federation init``; ``fedcrm
node init`` at each branch; ``fedcrm server register --request``; ``fedcrm
server start`` (TLS, ``--enable-supernode-auth``); ``fedcrm node start`` with the
kit, the branch's folder and ``--approve-app``; ``flwr run . fedcrm`` a 2-round
DP+HE LSTM job. Two intruders: a SuperNode whose key nobody registered (refused
by the SuperLink, and restarted by ``fedcrm node start``), and an admitted
branch whose SuperNode announces another branch's id (left out by the
ServerApp). The run completes with the three branches; no customer id of any
branch appears in the SuperLink's output, ``flwr log`` or the run directory; no
branch private key is ever in the federation directory. Afterwards ``fedcrm
server unregister`` shuts a branch out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from .conftest import free_port

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


def private_key_files(root: Path) -> list[str]:
    """Every file under ``root`` holding a private key (PEM or OpenSSH)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and b"PRIVATE KEY-----" in p.read_bytes()
    )


def test_federation_init_writes_no_branch_private_key(deployment: Any) -> None:
    """What the central team holds after provisioning and admitting: its own keys only."""
    dep = deployment
    dep.init()
    assert private_key_files(dep.fed) == ["ca/ca.key", "server/server.key"]
    for b in dep.branches:
        dep.register(b)
    assert private_key_files(dep.fed) == ["ca/ca.key", "server/server.key"]
    assert not [p for p in dep.fed.rglob("*") if p.suffix == ".ctx"]  # no HE key either
    # The branches' private keys exist, at the branches.
    for b in dep.branches:
        held = private_key_files(dep.branch_dir(b))
        assert held == sorted([f"keys/{b}.key", f"keys/{b}.x25519.key", "keys/node_auth_key"])


def start_impostor(dep: Any, name: str, claims: str, data: Path) -> Any:
    """An admitted branch's SuperNode announcing branch ``claims`` (Flower run directly)."""
    keys = dep.branch_dir(name) / "keys"
    node_config = f'branch-id="{claims}" data-path="{data}"'
    return dep.spawn(
        name,
        ["flower-supernode", "--root-certificates", str(dep.kit / "ca.crt"),
         "--superlink", dep.address, "--auth-supernode-private-key", str(keys / "node_auth_key"),
         "--node-config", node_config, "--port", str(free_port())],
    )  # fmt: skip


def test_branch_born_keys_to_a_finished_run_refusing_two_intruders(
    deployment: Any, crm: dict[str, Path], tmp_path: Path
) -> None:
    dep = deployment
    dep.init()
    server = dep.start_server()
    for b in dep.branches:
        reg = dep.register(b)
        assert reg["success"] and reg["branches"][b]["registered"], reg
    for b in dep.branches:
        dep.cli("data", "validate", str(crm[b]))
    nodes = {b: dep.start_node(b, crm[b], "--epsilon-ceiling", "50") for b in dep.branches}

    # Intruder 1: keys made, never registered.
    dep.node_init("rogue")
    rogue = dep.start_node("rogue", crm[dep.branches[0]], "--epsilon-ceiling", "50")
    # Intruder 2: mallory is admitted, but its SuperNode announces the first branch's id.
    victim = dep.branches[0]
    dep.node_init("mallory")
    assert dep.register("mallory")["success"]
    mallory = start_impostor(dep, "mallory", victim, crm[victim])
    dep.wait_for(
        lambda: "starting it again" in rogue.text(), 90, "the unregistered SuperNode's refusal"
    )
    assert "2004" in rogue.text() or "Failed to activate" in rogue.text(), rogue.text()[-2000:]
    dep.wait_online([*nodes.values(), mallory])

    # What the central team checks before a run: which branch each online node is.
    table = json.loads(
        dep.cli("server", "nodes", "--federation", str(dep.fed), "--format", "json").stdout
    )
    online = {r["branch"]: r["node_id"] for r in table["nodes"] if r["status"] == "online"}
    assert sorted(online) == sorted([*dep.branches, "mallory"]), table
    admitted = json.loads((dep.fed / "server" / "admitted.json").read_text())["branches"]
    assert all(admitted[b]["node_id"] == online[b] for b in online), (admitted, online)

    out = tmp_path / "runs"
    run_id = dep.run(
        "federation.rounds=2 privacy=dp_he "
        f"federation.min_branches=3 federation.round_timeout=120 {dep.TINY}",
        out,
    )
    assert dep.wait_run(run_id) == "finished:completed", dep.log(run_id)[-4000:]

    run_dir = dep.run_dir(out, run_id)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["stopped_reason"] is None
    assert summary["status"] == "completed" and summary["cutoff"] == "2024-10-02"
    assert summary["timings"]["total_s"] > 0
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
    log = dep.log(run_id)
    # The job's progress as `fedcrm simulate` prints it, one line per round.
    for line in ("round 1/2 ", "round 2/2 ", "final (after round 2): AUC", "completed: 2/2 rounds"):
        assert line in log, log[-3000:]
    assert re.search(r"round 2/2 .* AUC\(after round 1\) \S+  branches 3/3  ε max", log), log
    assert (
        f"node {online['mallory']} left out: other-node: node {online['mallory']} announced "
        f"branch {victim}, which is registered with another node key (it is registered for "
        "branch mallory)"
    ) in log, log[-3000:]

    # Ledgers: the branch's own and the server's copy agree and verify with the public keys
    # the ServerApp put in the run directory, and with the admitted list.
    for b in dep.branches:
        own = dep.ledger(b).read_text().splitlines()
        copy = (run_dir / "ledger" / f"{b}.jsonl").read_text().splitlines()
        assert own == copy and len(own) >= 2
    for extra in ((), ("--keys", str(dep.fed / "server" / "admitted.json"))):
        verify = dep.cli("privacy", "verify", str(run_dir), *extra, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr

    # Fault 6: no customer id in anything the server side wrote or printed.
    texts = {"superlink": server.text(), "flwr log": log}
    texts.update(server_side_files(run_dir))
    assert texts["flwr log"].strip(), "flwr log returned nothing to scan"
    assert not scan_for_ids(texts, customer_ids(crm))
    for proc in nodes.values():
        assert proc.alive()
    # The central team's own keys only: CA, TLS and the key signing released model bundles.
    assert private_key_files(dep.fed) == ["ca/ca.key", "server/release.key", "server/server.key"]

    # Unregistered: the SuperLink drops the branch's SuperNode and refuses it from then on.
    gone = dep.branches[-1]
    dep.cli("server", "unregister", "--federation", str(dep.fed), "--branch-id", gone)
    node = nodes[gone]
    dep.wait_for(lambda: "Failed to activate" in node.text(), 120, f"{gone} to be shut out")
    admitted = json.loads((dep.fed / "server" / "admitted.json").read_text())["branches"]
    assert admitted[gone]["status"] == "removed"
    # Registering a branch the running SuperLink knows already is harmless.
    again = dep.register(dep.branches[0])
    assert again["success"] and again["branches"][dep.branches[0]]["registered"], again
    assert again["branches"][dep.branches[0]]["change"] == "unchanged"

    # Back with --replace: the running SuperLink never takes its unregistered key back,
    # so the branch rotates its node key, and its running `node start` picks the new one up.
    request = str(dep.branch_dir(gone) / f"{gone}.request.json")
    argv = ("server", "register", "--federation", str(dep.fed), "--request", request)
    back = dep.cli(*argv, "--replace", "--format", "json", check=False)
    assert back.returncode == 1, back.stdout + back.stderr
    assert (
        "rotate-keys --node" in json.loads(back.stdout.splitlines()[-1])["branches"][gone]["error"]
    )
    dep.cli("node", "rotate-keys", "--branch-dir", str(dep.branch_dir(gone)), "--node")
    rotated = json.loads(dep.cli(*argv, "--format", "json").stdout.splitlines()[-1])
    assert rotated["branches"][gone]["change"] == "rotated", rotated
    new_id = rotated["branches"][gone]["node-id"]
    dep.wait_for(lambda: f"SuperNode ID: {new_id}" in node.text(), 150, f"{gone}'s new node key")


def test_tls_node_auth_gbdt_run(deployment: Any, crm: dict[str, Path], tmp_path: Path) -> None:
    """The tree job over the same deployment path: a few trees, DP histograms, ledgers."""
    dep = deployment
    dep.init()
    dep.start_server()
    for b in dep.branches:
        dep.register(b)
        dep.start_node(b, crm[b], "--epsilon-ceiling", "50")
    out = tmp_path / "runs"
    run_id = dep.run(
        "model=gbdt model.mode=batched model.trees_per_exchange=3 model.n_estimators=3 "
        "model.max_depth=2 privacy=dp federation.min_branches=3 task.cutoff=2024-10-02 "
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
        own = dep.ledger(b).read_text().splitlines()
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
    dep.init()
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
