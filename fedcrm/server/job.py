"""What every federated job shares: branches, messages, reports, checkpoints.

:class:`FederatedJob` holds the connected branches (sizes and privacy status,
never data), builds messages carrying the job spec, writes round records and
checkpoints, and builds the result every job returns. The LSTM and tree jobs
(:mod:`fedcrm.server.lstm_job`, :mod:`fedcrm.server.gbdt_job`) subclass it,
named like the branch's model modules.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcrm import protocol as P
from fedcrm.config import JobSpec, RunConfig
from fedcrm.errors import FedCRMError
from fedcrm.identity import RosterFile, identity_refusal
from fedcrm.models.evaluation import EvaluationRelease
from fedcrm.models.pooled import pooled_metrics
from fedcrm.server.branch_state import BranchState, Reporter, reply_branch
from fedcrm.server.exchange import Courier, KeepWarm, Reply, wait_for_nodes
from fedcrm.server.job_result import METRIC_KEYS, job_result
from fedcrm.server.ledger_store import LedgerStore
from fedcrm.server.run_dir import RunDir, TreeState

log = logging.getLogger(__name__)


class FederatedJob:
    """A federated job on a Grid: connected branches, messages, records, checkpoints."""

    def __init__(
        self,
        grid: Grid,
        cfg: RunConfig,
        run_dir: RunDir,
        *,
        run_id: str,
        reporter: Reporter | None = None,
        roster: Any | None = None,
        node_wait_s: float = 120.0,
        keep_warm: KeepWarm | None = None,
        expected_nodes: int | None = None,
        ledgers: LedgerStore | None = None,
        identities: RosterFile | None = None,
    ) -> None:
        if cfg.privacy.he and roster is None:
            raise FedCRMError(
                "encrypted jobs need the federation's roster (the admitted branches' public keys)"
            )
        self.grid = grid
        self.courier = Courier(grid, keep_warm)
        self.cfg = cfg
        self.run_dir = run_dir
        # The server's copy of each branch's ledger (kept across runs in deployment).
        self.ledgers = ledgers or LedgerStore(run_dir.path, ledger_dir="ledger")
        self.spec = JobSpec.from_run(cfg, run_id)
        self.reporter = reporter or (lambda rec: log.info("round %s", rec))
        # Encrypted jobs: masked sums over the roster's branches (the server holds no key).
        self.secure: Any = None
        if cfg.privacy.he:
            from fedcrm.server.secure_agg import SecureAggregation

            self.secure = SecureAggregation(self, roster)
        self.secure_state: Any = None
        self.node_wait_s = node_wait_s
        # A simulation registers a known number of virtual SuperNodes, one by one
        # and concurrently with the ServerApp: wait for all of them, or the first
        # round would miss a branch. A deployment waits for min_branches and
        # lets later SuperNodes join between rounds.
        self.expected_nodes = expected_nodes
        self.branches: dict[int, BranchState] = {}
        # Nodes asked once that could not take part (not asked again this run).
        self.left_out: set[int] = set()
        self.stopped_reason: str | None = None
        self.bytes_up = 0
        self.timings: dict[str, float] = {}
        self.resumed_state: dict[str, Any] | None = None
        self.last_reliability: list[dict[str, Any]] = []
        # The branches' evaluation releases of the latest evaluation (for calibration).
        self.last_releases: list[EvaluationRelease] = []
        # The deployment's admitted list: a node may act only as the branch it is
        # registered for (None in simulation: only the id's form is checked).
        self.identities = identities

    # ------------------------------------------------------------ messages
    def _message(self, node: int, mtype: str, round_num: int, payload: dict[str, Any]) -> Message:
        job = ConfigRecord({"spec": self.spec.model_dump_json(), "round": round_num})
        return Message(RecordDict({P.JOB: job, **payload}), dst_node_id=node, message_type=mtype)

    def _payload(self, global_state: Any) -> dict[str, Any]:
        """The model records of a message: plaintext weights, or the last step's masked sum.

        Encrypted jobs add the roster and the advertisements of the step the
        message asks for (:meth:`SecureState.records`).
        """
        out: dict[str, Any] = {}
        if isinstance(global_state, list):
            out[P.WEIGHTS] = ArrayRecord(numpy_ndarrays=global_state)
        if self.secure is not None:
            from fedcrm.server.secure_agg import SecureState

            state = global_state if isinstance(global_state, SecureState) else self.secure_state
            out.update(state.records(self.secure.roster_json))
        return out

    # --------------------------------------------------------------- steps
    def connect(self) -> None:
        """Wait for branches and learn their sizes (the ``query.info`` exchange)."""
        fed = self.cfg.federation
        wanted = max(fed.min_branches, self.expected_nodes or 0)
        nodes = wait_for_nodes(self.grid, wanted, timeout=self.node_wait_s)
        if len(nodes) < fed.min_branches:
            raise FedCRMError(
                f"only {len(nodes)} branch(es) connected within {self.node_wait_s:.0f} s; "
                f"federation.min_branches={fed.min_branches}"
            )
        self._join(self._info(nodes))
        if len(self.branches) < fed.min_branches:
            raise FedCRMError(
                f"only {len(self.branches)} branch(es) could take part; "
                f"federation.min_branches={fed.min_branches}"
            )
        tabular = {b.n_tabular for b in self.branches.values()}
        if len(tabular) != 1:
            raise FedCRMError(f"branches disagree on the number of tabular features: {tabular}")

    def join_new_nodes(self) -> list[str]:
        """Admit SuperNodes that connected since the last look; returns their branch ids.

        A branch that starts late, or whose SuperNode restarted under a new node
        id, takes part from the next round on (a restart under its old node id
        needs nothing: it is still a member). A node that was asked once and
        could not take part is not asked again in this run.
        """
        try:
            nodes = sorted(set(self.grid.get_node_ids()) - set(self.branches) - self.left_out)
        except Exception as exc:  # noqa: BLE001 - a SuperLink hiccup must not end the run
            log.warning("could not list SuperNodes: %s", type(exc).__name__)
            return []
        if not nodes:
            return []
        return self._join(self._info(nodes))

    def _info(self, nodes: list[int]) -> list[Reply]:
        return self.courier.exchange(
            [self._message(n, P.INFO, 0, {}) for n in nodes],
            timeout=self.cfg.federation.round_timeout,
        )

    def _join(self, replies: list[Reply]) -> list[str]:
        """Add the branches of ``query.info`` replies that can take part."""
        joined = []
        tabular = {b.n_tabular for b in self.branches.values()}
        for reply in replies:
            self.left_out.add(reply.node_id)
            if not reply.ok:
                log.warning("node %s left out: %s", reply.node_id, reply.error)
                continue
            branch = reply_branch(reply)
            refusal = identity_refusal(self.identities, branch.get("branch_id"), reply.node_id)
            if refusal is not None:
                log.warning("node %s left out: %s", reply.node_id, refusal)
                continue
            if branch.get("status") != P.STATUS_OK:
                log.warning(
                    "branch %s left out: %s", branch.get("branch_id"), branch.get("message")
                )
                continue
            m = dict(reply.message.content[P.METRICS])  # type: ignore[union-attr]
            if tabular and int(m["n_tabular"]) not in tabular:
                log.warning(
                    "branch %s left out: %s tabular features, the federation has %s",
                    branch["branch_id"],
                    m["n_tabular"],
                    sorted(tabular),
                )
                continue
            self.left_out.discard(reply.node_id)
            branch_id = str(branch["branch_id"])
            known = next((b for b in self.branches.values() if b.branch_id == branch_id), None)
            if known is not None:
                # Same branch, new SuperNode: keep its counters and extend the ledger
                # copy. The branch may have paid for a round whose reply never arrived
                # (it died after training): without that entry the copy's chain breaks.
                if not self._copy_history(known, branch):
                    continue
                log.info("branch %s is back as node %s", branch_id, reply.node_id)
                del self.branches[known.node_id]
                known.node_id = reply.node_id
                self.branches[reply.node_id] = known
                joined.append(branch_id)
                continue
            state = BranchState(
                node_id=reply.node_id,
                branch_id=branch_id,
                train_customers=int(m["train_customers"]),
                test_customers=int(m["test_customers"]),
                excluded_customers=int(m["excluded_customers"]),
                n_tabular=int(m["n_tabular"]),
            )
            ceiling = float(branch.get("epsilon_ceiling", -1.0))
            state.extra["ceiling"] = ceiling if ceiling > 0 else None
            if not self._copy_history(state, branch):
                continue
            self.branches[reply.node_id] = state
            joined.append(branch_id)
        return joined

    def _copy_history(self, state: BranchState, branch: dict[str, Any]) -> bool:
        """Extend the server's copy with the branch's ledger; False leaves it out.

        Entries the copy holds are skipped, so a branch that comes back sends
        its whole ledger again and the copy gains only what it missed.
        """
        try:
            history = self.ledgers.join(state.branch_id, branch.get("ledger_history", []))
        except FedCRMError as exc:
            state.last_problem = str(exc)
            log.warning("branch %s left out: its ledger does not verify: %s", state.branch_id, exc)
            return False
        if history:
            state.epsilon = float(history[-1]["epsilon"])
        return True

    def _sample(self, round_num: int) -> list[BranchState]:
        able = [b for b in self.branches.values() if not b.exhausted]
        if self.secure is not None:  # only who advertised for the step can upload in it
            able = [b for b in able if b.branch_id in self.secure_state.advertisements]
        k = max(
            self.cfg.federation.min_branches, round(self.cfg.federation.fraction_train * len(able))
        )
        if self.secure is not None:  # fewer live uploads than the threshold cannot be unmasked
            k = max(k, self.secure.threshold)
        rng = random.Random(self.cfg.seed * 7919 + round_num)
        chosen = sorted(rng.sample(able, min(k, len(able))), key=lambda b: b.branch_id)
        return chosen

    def _evaluation_record(
        self, round_num: int, replies: list[tuple[BranchState, EvaluationRelease]]
    ) -> dict:
        releases = [s for _, s in replies if s is not None]
        pooled = pooled_metrics(releases) if releases else {}
        for b, s in replies:
            b.eval_summary = s
        record = {"round": round_num, **{k: pooled.get(k) for k in METRIC_KEYS}}
        if pooled:
            self.last_releases = list(releases)
            record["evaluated_customers"] = pooled["n"]
            record["evaluation"] = "dp" if releases[0].mechanism == "dp" else "thresholded"
            self.last_reliability = pooled["reliability"]
        return record

    def _checkpoint(
        self, round_num: int, global_state: Any, extra: dict[str, Any] | None = None
    ) -> None:
        state = {
            **(extra or {}),
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
                    "excluded": bool(b.extra.get("excluded", False)),
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
        is_trees = isinstance(global_state, TreeState)
        if is_trees != (self.cfg.model.name != "lstm"):
            kind = "a tree job" if is_trees else "an LSTM job"
            raise FedCRMError(
                f"resume=true: the checkpoint in {self.run_dir.path} is from {kind}, "
                f"this job is model={self.cfg.model.name}; use the run's own output_dir"
            )
        self.spec = self.spec.model_copy(update={"run_id": state["run_id"]})
        self.bytes_up = int(state.get("bytes_up", 0))
        by_id = {b.branch_id: b for b in self.branches.values()}
        for branch_id, saved in state["branches"].items():
            b = by_id.get(branch_id)
            if b is None:
                continue
            for key, value in saved.items():
                if key == "excluded":
                    b.extra["excluded"] = value
                else:
                    setattr(b, key, value)
        self.resumed_state = state
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
        self, final: dict[str, Any], model: list[Any] | None, rounds_done: int
    ) -> dict[str, Any]:
        """The job's result (see :func:`fedcrm.server.job_result.job_result`)."""
        return job_result(self, final, model, rounds_done)

    def _handle_status(
        self, b: BranchState, info: dict[str, Any], problems: dict[str, str]
    ) -> bool:
        """Copy the reply's ledger entries and apply its status; True when it is ok.

        A refusal is counted and recorded; a budget or delta refusal retires the
        branch from training for the rest of the run. A reply whose ledger
        entries do not extend the server's copy is a failed round: an update
        whose privacy spend the copy cannot show is not aggregated.
        """
        try:
            entries = self.ledgers.extend(b.branch_id, info.get("ledger_entries", []))
        except FedCRMError as exc:
            b.failed_rounds += 1
            b.last_problem = problems[b.branch_id] = f"ledger entries rejected: {exc}"
            log.warning("branch %s: %s", b.branch_id, b.last_problem)
            return False
        if entries:
            b.epsilon, b.delta = float(entries[-1]["epsilon"]), float(entries[-1]["delta"])
        if info.get("status") == P.STATUS_OK:
            return True
        reason = str(info.get("reason", P.REASON_ERROR))
        b.refused_rounds += 1
        b.last_problem = problems[b.branch_id] = f"{reason}: {info.get('message', '')}"
        if reason in P.RETIRING_REASONS:
            b.exhausted = True
            if "spent" in info:
                b.epsilon = float(info["spent"])
        return False
