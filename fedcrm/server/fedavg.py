"""Federated averaging of the LSTM on Flower's Grid, plaintext or CKKS-encrypted.

One exchange per round: the train message carries the global model of the
previous round (plaintext weights, or the encrypted sum that only branches can
decrypt); each branch first evaluates it on its test customers, then trains
and replies with its update. A final ``evaluate`` exchange scores the last
global model. The server never sees per-customer predictions: branches send
score histograms and confusion counts, pooled here.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcrm import protocol as P
from fedcrm.config import JobSpec, RunConfig
from fedcrm.errors import FedCRMError, UpdateRejectedError
from fedcrm.models.lstm import build_model, get_weights
from fedcrm.models.metrics import metrics_from_summaries
from fedcrm.server.aggregate import check_update, weighted_average
from fedcrm.server.exchange import Reply, exchange, wait_for_nodes
from fedcrm.server.run_dir import RunDir

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any]], None]


@dataclass
class BranchState:
    """What the server knows about one branch (sizes and privacy status, no data)."""

    node_id: int
    branch_id: str
    train_customers: int
    test_customers: int
    excluded_customers: int
    n_tabular: int
    rounds_trained: int = 0
    refused_rounds: int = 0
    failed_rounds: int = 0
    exhausted: bool = False
    epsilon: float | None = None
    delta: float | None = None
    last_problem: str | None = None
    eval_summary: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def unpack_summary(metrics: Any) -> dict[str, Any]:
    """The evaluation summary inside a reply's MetricRecord (``eval.*`` keys)."""
    out: dict[str, Any] = {}
    for key, value in dict(metrics).items():
        if key.startswith("eval."):
            out[key[5:]] = np.asarray(value, dtype=np.float64) if isinstance(value, list) else value
    return out


def _branch(reply: Reply) -> dict[str, Any]:
    assert reply.message is not None
    return dict(reply.message.content[P.BRANCH])


class FedAvgJob:
    """Drives one federated LSTM training job and writes its run directory."""

    def __init__(
        self,
        grid: Grid,
        cfg: RunConfig,
        run_dir: RunDir,
        *,
        run_id: str,
        reporter: Reporter | None = None,
        he_context: Any | None = None,
        node_wait_s: float = 120.0,
    ) -> None:
        if cfg.privacy.he and he_context is None:
            raise FedCRMError("privacy mode needs the CKKS public context on the server")
        self.grid = grid
        self.cfg = cfg
        self.run_dir = run_dir
        self.spec = JobSpec.from_run(cfg, run_id)
        self.reporter = reporter or (lambda rec: log.info("round %s", rec))
        self.he_context = he_context
        self.node_wait_s = node_wait_s
        self.branches: dict[int, BranchState] = {}
        self.stopped_reason: str | None = None
        self.bytes_up = 0
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------ messages
    def _message(self, node: int, mtype: str, round_num: int, payload: dict[str, Any]) -> Message:
        job = ConfigRecord({"spec": self.spec.model_dump_json(), "round": round_num})
        return Message(RecordDict({P.JOB: job, **payload}), dst_node_id=node, message_type=mtype)

    def _payload(self, global_state: Any) -> dict[str, Any]:
        if isinstance(global_state, list):
            return {P.WEIGHTS: ArrayRecord(numpy_ndarrays=global_state)}
        return {P.ENCRYPTED: ConfigRecord(global_state.to_records())}

    # --------------------------------------------------------------- steps
    def connect(self) -> None:
        """Wait for branches and learn their sizes (the ``query.info`` exchange)."""
        fed = self.cfg.federation
        nodes = wait_for_nodes(self.grid, fed.min_branches, timeout=self.node_wait_s)
        if len(nodes) < fed.min_branches:
            raise FedCRMError(
                f"only {len(nodes)} branch(es) connected within {self.node_wait_s:.0f} s; "
                f"federation.min_branches={fed.min_branches}"
            )
        replies = exchange(
            self.grid,
            [self._message(n, P.INFO, 0, {}) for n in nodes],
            timeout=fed.round_timeout,
        )
        for reply in replies:
            if not reply.ok:
                log.warning("node %s left out: %s", reply.node_id, reply.error)
                continue
            branch = _branch(reply)
            if branch.get("status") != P.STATUS_OK:
                log.warning(
                    "branch %s left out: %s", branch.get("branch_id"), branch.get("message")
                )
                continue
            if self.cfg.privacy.he and branch.get("he_context_id") != self.he_context.context_id:
                log.warning(
                    "branch %s left out: its CKKS keys are from another key ceremony",
                    branch["branch_id"],
                )
                continue
            m = dict(reply.message.content[P.METRICS])  # type: ignore[union-attr]
            state = BranchState(
                node_id=reply.node_id,
                branch_id=str(branch["branch_id"]),
                train_customers=int(m["train_customers"]),
                test_customers=int(m["test_customers"]),
                excluded_customers=int(m["excluded_customers"]),
                n_tabular=int(m["n_tabular"]),
            )
            ceiling = float(branch.get("epsilon_ceiling", -1.0))
            state.extra["ceiling"] = ceiling if ceiling > 0 else None
            self.branches[reply.node_id] = state
            history = [json.loads(s) for s in branch.get("ledger_history", [])]
            if history:
                self.run_dir.copy_ledger_entries(state.branch_id, history)
                state.epsilon = float(history[-1]["epsilon"])
        if len(self.branches) < fed.min_branches:
            raise FedCRMError(
                f"only {len(self.branches)} branch(es) could take part; "
                f"federation.min_branches={fed.min_branches}"
            )
        tabular = {b.n_tabular for b in self.branches.values()}
        if len(tabular) != 1:
            raise FedCRMError(f"branches disagree on the number of tabular features: {tabular}")

    def initial_weights(self) -> list[np.ndarray]:
        """The seeded initial model (public: it depends on no branch's data)."""
        n_tabular = next(iter(self.branches.values())).n_tabular
        engine = self.cfg.privacy.engine if self.cfg.privacy.dp else None
        model = build_model(self.cfg.model, n_tabular, dp_engine=engine, seed=self.cfg.seed)
        return get_weights(model)

    def _sample(self, round_num: int) -> list[BranchState]:
        able = [b for b in self.branches.values() if not b.exhausted]
        k = max(
            self.cfg.federation.min_branches, round(self.cfg.federation.fraction_train * len(able))
        )
        rng = random.Random(self.cfg.seed * 7919 + round_num)
        chosen = sorted(rng.sample(able, min(k, len(able))), key=lambda b: b.branch_id)
        return chosen

    def _evaluation_record(self, round_num: int, replies: list[tuple[BranchState, dict]]) -> dict:
        summaries = [s for _, s in replies if s]
        pooled = metrics_from_summaries(summaries) if summaries else {}
        for b, s in replies:
            b.eval_summary = s
        return {
            "round": round_num,
            **{k: pooled.get(k) for k in ("auc", "f1", "logloss", "accuracy")},
        }

    def train_round(self, round_num: int, global_state: Any, like: list[np.ndarray]) -> Any:
        """One round; returns the new global state (weights or encrypted sum)."""
        chosen = self._sample(round_num)
        t0 = time.perf_counter()
        payload = self._payload(global_state)
        replies = exchange(
            self.grid,
            [self._message(b.node_id, P.TRAIN, round_num, payload) for b in chosen],
            timeout=self.cfg.federation.round_timeout,
        )
        updates, weights, enc_updates, evals, losses = [], [], {}, [], []
        problems: dict[str, str] = {}
        for reply, b in zip(replies, chosen, strict=True):
            if not reply.ok:
                b.failed_rounds += 1
                b.last_problem = problems[b.branch_id] = f"round {round_num}: {reply.error}"
                continue
            info = _branch(reply)
            content = reply.message.content  # type: ignore[union-attr]
            metrics = dict(content[P.METRICS]) if P.METRICS in content else {}
            summary = unpack_summary(metrics)
            if summary:
                evals.append((b, summary))
            entries = [json.loads(s) for s in info.get("ledger_entries", [])]
            try:
                self.run_dir.copy_ledger_entries(b.branch_id, entries)
            except FedCRMError as exc:
                problems[b.branch_id] = f"ledger entries rejected: {exc}"
            if entries:
                b.epsilon = float(entries[-1]["epsilon"])
                b.delta = float(entries[-1]["delta"])
            if info.get("status") != P.STATUS_OK:
                reason = str(info.get("reason", P.REASON_ERROR))
                b.refused_rounds += 1
                b.last_problem = f"{reason}: {info.get('message', '')}"
                problems[b.branch_id] = b.last_problem
                if reason == P.REASON_BUDGET or reason == P.REASON_DELTA:
                    b.exhausted = True
                    if "spent" in info:
                        b.epsilon = float(info["spent"])
                continue
            try:
                if self.he_context is not None:
                    from fedcrm.crypto.packing import EncryptedUpdate

                    enc = EncryptedUpdate.from_records(
                        dict(reply.message.content[P.ENCRYPTED])  # type: ignore[union-attr]
                    )
                    enc_updates[b.branch_id] = enc
                    self.bytes_up += sum(len(c) for c in enc.chunks) + len(enc.weight)
                else:
                    update = reply.message.content[P.WEIGHTS].to_numpy_ndarrays()  # type: ignore
                    check_update(b.branch_id, update, like)
                    updates.append(update)
                    weights.append(float(metrics["num-examples"]))
                    self.bytes_up += sum(u.nbytes for u in update)
            except (UpdateRejectedError, FedCRMError, KeyError, ValueError) as exc:
                b.failed_rounds += 1
                b.last_problem = problems[b.branch_id] = (
                    f"round {round_num}: update rejected: {exc}"
                )
                continue
            b.rounds_trained += 1
            if "train_loss" in metrics:  # DP branches do not release it
                losses.append(float(metrics["train_loss"]))
        new_state: Any = None
        if self.he_context is not None and enc_updates:
            from fedcrm.crypto.packing import aggregate

            n_values = int(sum(w.size for w in like))
            try:
                new_state, rejected = aggregate(self.he_context, enc_updates, length=n_values)
            except FedCRMError as exc:  # no update could be accepted
                new_state, rejected = None, dict.fromkeys(enc_updates, str(exc))
            for branch_id, reason in rejected.items():
                problems[branch_id] = f"round {round_num}: update rejected: {reason}"
                for b in chosen:
                    if b.branch_id == branch_id:
                        b.failed_rounds += 1
                        b.rounds_trained -= 1
                        b.last_problem = problems[branch_id]
            accepted = len(enc_updates) - len(rejected)
        elif updates:
            new_state = weighted_average(updates, weights)
            accepted = len(updates)
        else:
            accepted = 0
        for branch_id, why in problems.items():
            log.warning("round %d: branch %s: %s", round_num, branch_id, why)
        record = self._evaluation_record(round_num - 1, evals)
        self.pending_eval = record
        self.round_info = {
            "round": round_num,
            "branches_sampled": len(chosen),
            "branches_aggregated": accepted,
            "train_loss": float(np.nanmean(losses)) if losses else None,
            "seconds": time.perf_counter() - t0,
            "problems": problems,
            "epsilon": {
                b.branch_id: b.epsilon for b in self.branches.values() if b.epsilon is not None
            },
        }
        if accepted < self.cfg.federation.min_branches:
            exhausted = sum(1 for b in chosen if b.exhausted)
            why = f" ({exhausted} refused: budget-exhausted)" if exhausted else ""
            self.stopped_reason = (
                f"round {round_num}: only {accepted} branch update(s) could be aggregated{why}, "
                f"federation.min_branches={self.cfg.federation.min_branches}"
            )
            return None
        return new_state

    def final_evaluation(self, global_state: Any) -> tuple[dict[str, Any], list[np.ndarray] | None]:
        """Score the final global model at every branch; collect a released model."""
        nodes = sorted(self.branches.values(), key=lambda b: b.branch_id)
        payload = self._payload(global_state)
        replies = exchange(
            self.grid,
            [
                self._message(b.node_id, P.EVALUATE, self.cfg.federation.rounds, payload)
                for b in nodes
            ],
            timeout=self.cfg.federation.round_timeout,
        )
        evals, released = [], None
        for reply, b in zip(replies, nodes, strict=True):
            if not reply.ok or _branch(reply).get("status") != P.STATUS_OK:
                log.warning("final evaluation: branch %s did not answer", b.branch_id)
                continue
            content = reply.message.content  # type: ignore[union-attr]
            if P.METRICS in content:
                evals.append((b, unpack_summary(content[P.METRICS])))
            if P.WEIGHTS in content and released is None:
                released = content[P.WEIGHTS].to_numpy_ndarrays()
        return evals, released  # type: ignore[return-value]

    # ----------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Run every round and the final evaluation; returns the federated result."""
        t_start = time.perf_counter()
        self.connect()
        self.timings["connect_s"] = time.perf_counter() - t_start
        like = self.initial_weights()
        global_state: Any = like
        last_plain: list[np.ndarray] | None = like
        rounds_done = 0
        if self.cfg.resume:
            rounds_done, global_state = self._resume(global_state)
            last_plain = global_state if isinstance(global_state, list) else None
        for r in range(rounds_done + 1, self.cfg.federation.rounds + 1):
            if (
                len([b for b in self.branches.values() if not b.exhausted])
                < self.cfg.federation.min_branches
            ):
                self.stopped_reason = (
                    f"before round {r}: fewer than federation.min_branches="
                    f"{self.cfg.federation.min_branches} branches have privacy budget left"
                )
                break
            new_state = self.train_round(r, global_state, like)
            evaluation = self.pending_eval
            self._report(evaluation, self.round_info)
            if new_state is None:
                break
            global_state = new_state
            last_plain = new_state if isinstance(new_state, list) else None
            rounds_done = r
            self._checkpoint(r, global_state)
        t_eval = time.perf_counter()
        evals, released = self.final_evaluation(global_state)
        final = self._evaluation_record(rounds_done, evals)
        self._report(final, None)
        self.timings["final_evaluation_s"] = time.perf_counter() - t_eval
        self.timings["federated_s"] = time.perf_counter() - t_start
        model = last_plain if last_plain is not None and rounds_done > 0 else released
        if self.he_context is not None and not self.cfg.release:
            model = None
        return self._result(final, model, rounds_done)

    def _checkpoint(self, round_num: int, global_state: Any) -> None:
        state = {
            "run_id": self.spec.run_id,
            "round": round_num,
            "bytes_up": self.bytes_up,
            "branches": {
                b.branch_id: {
                    "rounds_trained": b.rounds_trained,
                    "refused_rounds": b.refused_rounds,
                    "failed_rounds": b.failed_rounds,
                    "exhausted": b.exhausted,
                    "epsilon": b.epsilon,
                    "delta": b.delta,
                    "last_problem": b.last_problem,
                }
                for b in self.branches.values()
            },
        }
        self.run_dir.save_checkpoint(state, global_state)

    def _resume(self, fresh_state: Any) -> tuple[int, Any]:
        """Restore the last checkpoint: rounds done and the global model."""
        loaded = self.run_dir.load_checkpoint()
        if loaded is None:
            log.warning(
                "resume=true but %s holds no checkpoint: starting at round 1", self.run_dir.path
            )
            return 0, fresh_state
        state, global_state = loaded
        self.spec = self.spec.model_copy(update={"run_id": state["run_id"]})
        self.bytes_up = int(state.get("bytes_up", 0))
        by_id = {b.branch_id: b for b in self.branches.values()}
        for branch_id, saved in state["branches"].items():
            b = by_id.get(branch_id)
            if b is None:
                continue
            for key, value in saved.items():
                setattr(b, key, value)
        self.run_dir.truncate_rounds(int(state["round"]))
        log.info("resuming run %s after round %s", state["run_id"], state["round"])
        return int(state["round"]), global_state

    def _report(self, evaluation: dict[str, Any], info: dict[str, Any] | None) -> None:
        rec = dict(evaluation)
        if info is not None:
            rec.update({k: v for k, v in info.items() if k != "round"})
            rec["trained_round"] = info["round"]
        self.run_dir.append_round(rec)
        self.reporter(rec)

    def _result(
        self, final: dict[str, Any], model: list[np.ndarray] | None, rounds_done: int
    ) -> dict:
        from fedcrm.models.metrics import metrics_from_summaries

        per_branch = {}
        for b in sorted(self.branches.values(), key=lambda s: s.branch_id):
            m = metrics_from_summaries([b.eval_summary]) if b.eval_summary else {}
            per_branch[b.branch_id] = {
                "auc": m.get("auc"),
                "f1": m.get("f1"),
                "logloss": m.get("logloss"),
                "accuracy": m.get("accuracy"),
                "customers": b.train_customers + b.test_customers,
                "train_customers": b.train_customers,
                "test_customers": b.test_customers,
                "excluded_customers": b.excluded_customers,
                "rounds_trained": b.rounds_trained,
                "failed_rounds": b.failed_rounds,
                "last_problem": b.last_problem,
            }
        privacy: dict[str, Any] = {
            "mode": self.cfg.privacy.mode,
            "stopped_reason": self.stopped_reason,
        }
        if self.cfg.privacy.dp:
            privacy.update(
                accountant=self.cfg.privacy.accountant,
                target_epsilon=self.cfg.privacy.target_epsilon,
                noise_multiplier=self.cfg.privacy.noise_multiplier,
                max_grad_norm=self.cfg.privacy.max_grad_norm,
                engine=self.cfg.privacy.engine,
                per_branch={
                    b.branch_id: {
                        "epsilon": b.epsilon,
                        "delta": b.delta,
                        # As reported by the branch; the server cannot set or raise it.
                        "ceiling": b.extra.get("ceiling"),
                        "rounds_trained": b.rounds_trained,
                        "refused_rounds": b.refused_rounds,
                    }
                    for b in self.branches.values()
                },
            )
        return {
            "model": self.cfg.model.name,
            "rounds": rounds_done,
            "rounds_planned": self.cfg.federation.rounds,
            "final": {k: final.get(k) for k in ("auc", "f1", "logloss", "accuracy")},
            "per_branch": per_branch,
            "privacy": privacy,
            "stopped_reason": self.stopped_reason,
            "bytes_uploaded": self.bytes_up,
            "encrypted": self.cfg.privacy.he,
            "timings": self.timings,
            "weights": model,
        }
