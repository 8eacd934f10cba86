"""Federated averaging of the LSTM on Flower's Grid, plaintext or encrypted and masked.

One exchange per round: the train message carries the global model of the
previous round (plaintext weights, or the masked, encrypted sum that only the
branches in it can open); each branch first evaluates it on its test
customers, then trains and replies with its update. Encrypted jobs add the
unmasking exchange of :mod:`fedcrm.server.secure_agg` to each round. A final
``evaluate`` exchange scores the last global model. The server never sees
per-customer predictions: branches send evaluation releases
(:mod:`fedcrm.models.evaluation`), pooled here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcrm import protocol as P
from fedcrm.errors import FedCRMError, UpdateRejectedError
from fedcrm.models.lstm import build_model, get_weights
from fedcrm.server.aggregate import check_update, weighted_average
from fedcrm.server.branch_state import BranchState, reply_branch, unpack_summary
from fedcrm.server.exchange import Reply
from fedcrm.server.job import FederatedJob

log = logging.getLogger(__name__)

__all__ = ["LSTMJob", "RoundResult"]


@dataclass
class RoundResult:
    """What one LSTM round produced.

    ``state`` is the next global state (weights, or the encrypted sum), ``None``
    when the round could not aggregate enough updates; ``evaluation`` the
    pooled evaluation of the incoming model; ``info`` the round's record.
    """

    state: Any
    evaluation: dict[str, Any]
    info: dict[str, Any]


@dataclass
class _Replies:
    """What one round's replies carried, gathered branch by branch."""

    updates: list[list[np.ndarray]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    encrypted: dict[str, dict[str, Any]] = field(default_factory=dict)
    evals: list[tuple[BranchState, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    rejoining: set[str] = field(default_factory=set)


class LSTMJob(FederatedJob):
    """Drives one federated LSTM training job and writes its run directory."""

    def initial_weights(self) -> list[np.ndarray]:
        """The seeded initial model (public: it depends on no branch's data)."""
        n_tabular = next(iter(self.branches.values())).n_tabular
        engine = self.cfg.privacy.engine if self.cfg.privacy.dp else None
        model = build_model(self.cfg.model, n_tabular, dp_engine=engine, seed=self.cfg.seed)
        return get_weights(model)

    def train_round(self, round_num: int, global_state: Any, like: list[np.ndarray]) -> RoundResult:
        """Train round ``round_num`` from ``global_state`` at the sampled branches."""
        chosen = self._sample(round_num)
        t0 = time.perf_counter()
        payload = self._payload(global_state)
        replies = self.courier.exchange(
            [self._message(b.node_id, P.TRAIN, round_num, payload) for b in chosen],
            timeout=self.cfg.federation.round_timeout,
        )
        got = _Replies()
        for reply, b in zip(replies, chosen, strict=True):
            self._take_reply(round_num, reply, b, like, got)
        new_state, accepted = self._aggregate(round_num, chosen, got)
        for branch_id, why in got.problems.items():
            log.warning("round %d: branch %s: %s", round_num, branch_id, why)
        record = self._evaluation_record(round_num - 1, got.evals)
        info = {
            "round": round_num,
            "branches_sampled": len(chosen),
            "branches_aggregated": accepted,
            "train_loss": float(np.nanmean(got.losses)) if got.losses else None,
            "seconds": time.perf_counter() - t0,
            "problems": got.problems,
            "rejoining": sorted(got.rejoining),
            "epsilon": {
                b.branch_id: b.epsilon for b in self.branches.values() if b.epsilon is not None
            },
        }
        if accepted < self.cfg.federation.min_branches:
            self._stop_for_too_few(round_num, chosen, accepted)
            return RoundResult(None, record, info)
        return RoundResult(new_state, record, info)

    def _take_reply(
        self, round_num: int, reply: Reply, b: BranchState, like: list[np.ndarray], got: _Replies
    ) -> None:
        """Read one branch's reply to a train message into ``got``."""
        if not reply.ok:
            b.failed_rounds += 1
            b.last_problem = got.problems[b.branch_id] = f"round {round_num}: {reply.error}"
            return
        info = reply_branch(reply)
        content = reply.message.content  # type: ignore[union-attr]
        metrics = dict(content[P.METRICS]) if P.METRICS in content else {}
        summary = unpack_summary(metrics)
        if summary is not None:
            got.evals.append((b, summary))
        if metrics.get("plan_passes_ceiling"):
            log.warning(
                "branch %s: this job's plan passes the branch's epsilon ceiling; it will "
                "refuse the rounds beyond it (privacy.target=remaining plans each branch's "
                "noise within its ceiling)",
                b.branch_id,
            )
        if not self._handle_status(b, info, got.problems):
            return
        try:
            if self.secure is not None:
                upload = dict(content[P.ENCRYPTED])
                got.encrypted[b.branch_id] = upload
                self.bytes_up += sum(len(c) for c in upload.get("chunks", []))
                if metrics.get("catching_up"):
                    # It could not open the last sum (its upload was not in it):
                    # a zero-weight upload now, training again next round.
                    got.rejoining.add(b.branch_id)
                    b.skipped_rounds += 1
                    return
            else:
                update = content[P.WEIGHTS].to_numpy_ndarrays()
                check_update(b.branch_id, update, like)
                got.updates.append(update)
                got.weights.append(float(metrics["num-examples"]))
                self.bytes_up += sum(u.nbytes for u in update)
        except (UpdateRejectedError, FedCRMError, KeyError, ValueError) as exc:
            b.failed_rounds += 1
            b.last_problem = got.problems[b.branch_id] = (
                f"round {round_num}: update rejected: {exc}"
            )
            return
        b.rounds_trained += 1
        if "train_loss" in metrics:  # DP branches do not release it
            got.losses.append(float(metrics["train_loss"]))

    def _aggregate(
        self, round_num: int, chosen: list[BranchState], got: _Replies
    ) -> tuple[Any, int]:
        """The new global state and how many branches' updates it holds."""
        if self.secure is not None and got.encrypted:
            last = round_num == self.cfg.federation.rounds
            new_state, rejected = self.secure.finish(
                round_num,
                self.secure_state,
                got.encrypted,
                next_step=None if last else round_num + 1,
            )
            if new_state is not None:
                self.secure_state = new_state
            for branch_id, reason in rejected.items():
                got.problems[branch_id] = f"round {round_num}: update rejected: {reason}"
                for b in chosen:
                    if b.branch_id == branch_id:
                        b.failed_rounds += 1
                        if branch_id in got.rejoining:
                            b.skipped_rounds -= 1
                        else:
                            b.rounds_trained -= 1
                        b.last_problem = got.problems[branch_id]
            contributors = new_state.contributors if new_state is not None else []
            return new_state, len([c for c in contributors if c not in got.rejoining])
        if got.updates:
            return weighted_average(got.updates, got.weights), len(got.updates)
        return None, 0

    def _stop_for_too_few(self, round_num: int, chosen: list[BranchState], accepted: int) -> None:
        reasons = sorted(
            {(b.last_problem or "").split(":")[0] for b in chosen if b.exhausted} - {""}
        )
        refused = sum(1 for b in chosen if b.exhausted)
        why = f" ({refused} refused: {', '.join(reasons)})" if refused else ""
        self.stopped_reason = (
            f"round {round_num}: only {accepted} branch update(s) could be aggregated{why}, "
            f"federation.min_branches={self.cfg.federation.min_branches}"
        )

    def final_evaluation(self, global_state: Any) -> tuple[dict[str, Any], list[np.ndarray] | None]:
        """Score the final global model at every branch; collect a released model."""
        nodes = sorted(self.branches.values(), key=lambda b: b.branch_id)
        if self.secure is not None and self.secure_state.aggregate is not None:
            # Only the last sum's contributors can open it.
            nodes = [b for b in nodes if b.branch_id in self.secure_state.contributors]
        payload = self._payload(global_state)
        replies = self.courier.exchange(
            [
                self._message(b.node_id, P.EVALUATE, self.cfg.federation.rounds, payload)
                for b in nodes
            ],
            timeout=self.cfg.federation.round_timeout,
        )
        evals, released = [], None
        problems: dict[str, str] = {}
        for reply, b in zip(replies, nodes, strict=True):
            if not reply.ok:
                log.warning("final evaluation: branch %s did not answer", b.branch_id)
                continue
            # The evaluation is a release the branch accounted: its entries join the copy.
            if not self._handle_status(b, reply_branch(reply), problems):
                log.warning("final evaluation: branch %s: %s", b.branch_id, b.last_problem)
                continue
            content = reply.message.content  # type: ignore[union-attr]
            summary = unpack_summary(content[P.METRICS]) if P.METRICS in content else None
            if summary is not None:
                evals.append((b, summary))
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
        first_round = rounds_done + 1
        if self.secure is not None:
            from fedcrm.server.secure_agg import SecureState

            t_keys = time.perf_counter()
            fresh = self.secure.setup(first_step=first_round)
            if isinstance(global_state, SecureState):  # resumed: the checkpoint's sum, new ads
                global_state.advertisements = fresh.advertisements
                global_state.next_step = first_round
                fresh = global_state
            self.secure_state = fresh
            self.timings["key_ceremony_s"] = time.perf_counter() - t_keys
        for r in range(first_round, self.cfg.federation.rounds + 1):
            joined = self.join_new_nodes() if r > first_round else []
            if joined:
                log.info("round %d: branch(es) %s joined", r, ", ".join(joined))
            if (
                len([b for b in self.branches.values() if not b.exhausted])
                < self.cfg.federation.min_branches
            ):
                self.stopped_reason = (
                    f"before round {r}: fewer than federation.min_branches="
                    f"{self.cfg.federation.min_branches} branches have privacy budget left"
                )
                break
            result = self.train_round(r, global_state, like)
            if joined:
                result.info["joined"] = joined
            self._report(result.evaluation, result.info)
            new_state = result.state
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
        if self.secure is not None and not self.cfg.release:
            model = None
        return self._result(final, model, rounds_done)
