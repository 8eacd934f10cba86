"""The federated tree protocol on Flower's Grid (``model=gbdt``), plaintext or encrypted.

The server drives a chain of exchanges; each message carries the model so far
(bin edges, finished trees, the tree being grown) and the sum of the previous
release, each reply the branch's next release and the model as the branch
advanced it:

=====================  ==================================================  =======================
message                carries to branches                                 branches reply
=====================  ==================================================  =======================
``query.info``         job                                                 sizes, feature count
``train.gbdt_ranges``  job                                                 min/max per feature
``train.gbdt_bins``    agreed ranges                                       fine histogram
``train.gbdt_level``   model + sum of the last release (fine histogram     model advanced by that
                       or a level's histograms)                            sum + next histograms
``train.gbdt_batch``   model + sum of the last batch's leaf sums           model + next leaf sums
``evaluate.gbdt``      model + the last sum                                final model + scores
=====================  ==================================================  =======================

Every branch turns the same sum into the same edges, splits and leaf values;
the server compares the models the branches return (a branch that disagrees
with the majority is excluded, with the reason), keeps the agreed one and adds
the releases: plaintext arrays (shape and finiteness checked per branch) or
masked BFV ciphertexts it cannot read (:mod:`fedcrm.server.secure_agg`).
Exact mode costs ``max_depth`` exchanges per tree (the message with one
level's sum asks for the next level; leaf values come from the last level's
split sums), batched mode one per ``trees_per_exchange`` trees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcrm import protocol as P
from fedcrm.config import GBDTModelConfig
from fedcrm.errors import FedCRMError
from fedcrm.models.gbdt import HistGBDT
from fedcrm.models.gbdt_protocol import BASE_SCORE
from fedcrm.server.branch_state import BranchState
from fedcrm.server.gbdt_exchange import (
    clear_sum,
    group_replies,
    majority,
    record_rejections,
    secure_sum,
)
from fedcrm.server.job import FederatedJob
from fedcrm.server.run_dir import TreeState
from fedcrm.server.tree_records import TreeArtifact, arrays_of, record_of, trees_of

log = logging.getLogger(__name__)


class GBDTJob(FederatedJob):
    """Drives one federated tree-building job and returns its result."""

    @property
    def gbdt(self) -> GBDTModelConfig:
        """The tree settings."""
        assert isinstance(self.cfg.model, GBDTModelConfig)
        return self.cfg.model

    # ------------------------------------------------------------- helpers
    def _active(self) -> list[BranchState]:
        return sorted(
            (b for b in self.branches.values() if not b.exhausted and not b.extra.get("excluded")),
            key=lambda b: b.branch_id,
        )

    def _tree_payload(self, arrays: Mapping[str, np.ndarray], pending: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {P.GBDT_MODEL: record_of(arrays)}
        if isinstance(pending, np.ndarray):
            payload[P.AGGREGATE] = record_of({"values": pending})
        elif self.secure is not None:
            # The step's sum when there is one to apply; always the roster and the
            # advertisements of the step this message asks for.
            state = pending if pending is not None else self.secure_state
            payload.update(state.records(self.secure.roster_json, with_sum=pending is not None))
        return payload

    def _exclude(self, b: BranchState, why: str, problems: dict[str, str]) -> None:
        b.extra["excluded"] = True
        b.last_problem = problems[b.branch_id] = why
        log.warning("branch %s excluded: %s", b.branch_id, why)

    # ---------------------------------------------------------------- steps
    def _ranges(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        active = self._active()
        replies = self.courier.exchange(
            [self._message(b.node_id, P.GBDT_RANGES, 0, {}) for b in active],
            timeout=self.cfg.federation.round_timeout,
        )
        self.exchanges += 1
        los, his, names, problems = [], [], None, {}
        for reply, b in zip(replies, active, strict=True):
            if not reply.ok:
                b.failed_rounds += 1
                b.last_problem = problems[b.branch_id] = f"ranges: {reply.error}"
                continue
            info = dict(reply.message.content[P.BRANCH])  # type: ignore[union-attr]
            if not self._handle_status(b, info, problems):
                continue
            arrays = arrays_of(reply.message.content[P.GBDT_MODEL])  # type: ignore[union-attr]
            lo, hi = np.asarray(arrays["lo"], np.float64), np.asarray(arrays["hi"], np.float64)
            if (
                lo.shape != (b.n_tabular,)
                or hi.shape != (b.n_tabular,)
                or np.isnan(lo).any()
                or np.isnan(hi).any()
            ):
                self._exclude(b, "ranges: wrong shape or NaN", problems)
                continue
            their = [str(n) for n in info.get("feature_names", [])]
            if names is None:
                names = their
            elif their != names:
                self._exclude(b, "its feature names differ from the other branches'", problems)
                continue
            los.append(lo)
            his.append(hi)
        if len(los) < self.cfg.federation.min_branches:
            raise FedCRMError(
                f"only {len(los)} branch(es) sent feature ranges; "
                f"federation.min_branches={self.cfg.federation.min_branches} ({problems})"
            )
        return np.min(los, axis=0), np.max(his, axis=0), names or []

    def _step(
        self, mtype: str, arrays: Mapping[str, np.ndarray], pending: Any, round_num: int
    ) -> tuple[dict[str, np.ndarray] | None, dict[str, Any], Any, dict[str, Any]]:
        """One exchange: returns the agreed model, its step, the new sum, and round info."""
        t0 = time.perf_counter()
        active = self._active()
        payload = self._tree_payload(arrays, pending)
        replies = self.courier.exchange(
            [self._message(b.node_id, mtype, round_num, payload) for b in active],
            timeout=self.cfg.federation.round_timeout,
        )
        self.exchanges += 1
        problems: dict[str, str] = {}
        groups, evals = group_replies(self, replies, active, round_num, problems)
        if not groups:
            self.stopped_reason = f"exchange {self.exchanges}: no branch answered ({problems})"
            return None, {}, None, {"problems": problems}
        agreed = majority(self, groups, problems)
        model, step, _ = groups[agreed][0][1]
        accepted, new_pending = self._aggregate(step, groups[agreed], problems, round_num)
        for b, s in evals:
            if not b.extra.get("excluded"):
                b.eval_summary = s
        info = {
            "round": round_num,
            "branches_sampled": len(active),
            "branches_aggregated": accepted,
            "seconds": time.perf_counter() - t0,
            "problems": problems,
            "epsilon": {
                x.branch_id: x.epsilon for x in self.branches.values() if x.epsilon is not None
            },
            "evals": evals,
        }
        for branch_id, why in problems.items():
            log.warning("exchange %d: branch %s: %s", self.exchanges, branch_id, why)
        return model, step, new_pending, info

    def _aggregate(
        self,
        step: dict[str, Any],
        members: list[tuple[BranchState, Any]],
        problems: dict[str, str],
        round_num: int,
    ) -> tuple[int, Any]:
        """Sum the agreeing branches' releases (clear or encrypted); reject malformed ones."""
        if step.get("stage") in ("done", "evaluate") or "shape" not in step:
            return len(members), None
        shape = tuple(int(s) for s in step["shape"])
        if self.secure is not None:
            total, rejected = secure_sum(self, step, members)
        else:
            total, rejected = clear_sum(self, members, shape)
        accepted = record_rejections(self, members, rejected, problems, round_num)
        if accepted < self.cfg.federation.min_branches:
            self.stopped_reason = (
                f"round {round_num}: only {accepted} branch release(s) could be aggregated, "
                f"federation.min_branches={self.cfg.federation.min_branches}"
            )
            return accepted, None
        return accepted, total

    def _is_last(self, step: Mapping[str, Any]) -> bool:
        """Whether the sum of this release completes the model (it then rides on evaluate)."""
        g = self.gbdt
        if step.get("stage") == "level":
            return int(step["tree"]) == g.n_estimators - 1 and int(step["level"]) == g.max_depth - 1
        if step.get("stage") == "batch":
            return int(step["tree"]) + int(step["trees"]) >= g.n_estimators
        return False

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Build every tree, evaluate at the branches; returns the federated result."""
        t_start = time.perf_counter()
        self.exchanges = 1  # query.info
        self.connect()
        self.timings["connect_s"] = time.perf_counter() - t_start
        arrays: dict[str, np.ndarray] | None
        names: list[str] = []
        n_trees, resumed = 0, None
        if self.cfg.resume:
            n_trees, resumed = self._resume(None)
        t_trees = time.perf_counter()
        if self.secure is not None:
            self._key_ceremony(resumed)
        arrays, pending, step, names = self._begin(resumed, n_trees)
        mtype = P.GBDT_BATCH if self.gbdt.mode == "batched" else P.GBDT_LEVEL
        last_t = time.perf_counter()
        seen: dict[str, str] = {}  # problems of the exchanges since the last finished tree
        while arrays is not None and self.stopped_reason is None and not self._is_last(step):
            if step.get("stage") == "done":
                pending = None
                break
            new, step, pending, info = self._step(mtype, arrays, pending, n_trees + 1)
            seen.update(info.get("problems", {}))
            if new is None:
                break
            arrays = new
            done = len(arrays.get("tree_sizes", ()))
            if done > n_trees:
                info["seconds"] = time.perf_counter() - last_t
                last_t = time.perf_counter()
                n_trees = done
                info.pop("evals", None)
                info["problems"], seen = seen, {}
                self._report({"round": n_trees}, {**info, "round": n_trees})
            if self.stopped_reason is None:
                self._tree_checkpoint(n_trees, arrays, pending, step, names)
        self.timings["trees_s"] = time.perf_counter() - t_trees
        if self.stopped_reason is not None:
            pending = None
        t_eval = time.perf_counter()
        arrays, final = self._final_evaluation(arrays, pending, n_trees)
        self.timings["final_evaluation_s"] = time.perf_counter() - t_eval
        self.timings["federated_s"] = time.perf_counter() - t_start
        return self._tree_result(final, arrays, names)

    def _key_ceremony(self, resumed: TreeState | None) -> None:
        """Run the key ceremony; a resumed job keeps its checkpointed sum, with new ads."""
        from fedcrm.server.secure_agg import SecureState

        t_keys = time.perf_counter()
        pending_state = resumed.pending if resumed is not None else None
        first = pending_state.next_step if isinstance(pending_state, SecureState) else 1
        fresh = self.secure.setup(first_step=first)
        if isinstance(pending_state, SecureState):  # resumed: the checkpoint's sum, new ads
            pending_state.advertisements = fresh.advertisements
            fresh = pending_state
        self.secure_state = fresh
        self.timings["key_ceremony_s"] = time.perf_counter() - t_keys

    def _begin(
        self, resumed: TreeState | None, n_trees: int
    ) -> tuple[dict[str, np.ndarray] | None, Any, dict[str, Any], list[str]]:
        """The model, sum, step and feature names to go on from: the checkpoint's, else bins."""
        arrays: dict[str, np.ndarray] | None
        names: list[str]
        if resumed is not None:
            # Branches keep nothing between messages and pay each tree's release once
            # (their ledgers dedupe by run and round), so sending the checkpointed
            # model and aggregate again continues the protocol where it stopped.
            saved = self.resumed_state or {}
            arrays, pending, step = resumed.arrays, resumed.pending, resumed.step
            names = list(saved.get("feature_names", []))
            self.exchanges = int(saved.get("exchanges", self.exchanges))
        else:
            lo, hi, names = self._ranges()
            arrays = {"lo": lo, "hi": hi, "level": np.array([0])}
            arrays, step, pending, _ = self._step(P.GBDT_BINS, arrays, None, 0)
            self._tree_checkpoint(n_trees, arrays, pending, step, names)
        return arrays, pending, step, names

    def _final_evaluation(
        self, arrays: dict[str, np.ndarray] | None, pending: Any, n_trees: int
    ) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
        """Have the branches evaluate the model; the final model and the evaluation record."""
        final: dict[str, Any] = {}
        if arrays is not None and "edge_sizes" in arrays:
            new, _, _, info = self._step(P.GBDT_EVALUATE, arrays, pending, n_trees + 1)
            if new is not None:
                arrays = new
            final = self._evaluation_record(
                len(arrays.get("tree_sizes", ())), info.get("evals", [])
            )
            self._report(final, None)
        return arrays, final

    def _tree_checkpoint(
        self,
        n_trees: int,
        arrays: dict[str, np.ndarray] | None,
        pending: Any,
        step: dict[str, Any],
        names: list[str],
    ) -> None:
        """Save where the protocol stands after an exchange (``resume=true`` continues there)."""
        if arrays is None:
            return
        extra = {"exchanges": self.exchanges, "feature_names": list(names)}
        self._checkpoint(n_trees, TreeState(dict(arrays), pending, dict(step)), extra)

    def _tree_result(self, final: dict[str, Any], arrays: Any, names: list[str]) -> dict[str, Any]:
        trees, edges = trees_of(arrays) if arrays is not None else ([], [])
        model = None
        importance: dict[str, float] = {}
        if trees:
            params = HistGBDT.from_config(self.gbdt).get_params()
            named = names if len(names) == len(edges) else None
            model = HistGBDT.from_trees(trees, edges, BASE_SCORE, params, feature_names=named)
            importance = model.feature_importance("total_gain")
        artifact = None
        if model is not None and (self.secure is None or self.cfg.release):
            artifact = TreeArtifact(
                model, {"trees": len(trees), "mode": self.gbdt.mode, "exchanges": self.exchanges}
            )
        result = self._result(final, None, len(trees))
        result["weights"] = artifact
        result["rounds_planned"] = self.gbdt.n_estimators
        result["trees"] = len(trees)
        result["exchanges"] = self.exchanges
        result["bytes_per_tree"] = self.bytes_up / len(trees) if trees else None
        result["feature_importance"] = importance
        result["gbdt"] = {"mode": self.gbdt.mode, "training_exchanges": self.exchanges - 2}
        return result


__all__ = ["GBDTJob"]
