"""One exchange of the federated tree job (:class:`fedcrm.server.gbdt_job.GBDTJob`).

The replies are grouped by the model each branch returns; the majority's
model is kept and every branch of another group excluded. The releases of
the agreeing branches are then added: plaintext arrays (shape and finiteness
checked per branch) or masked BFV ciphertexts the server cannot read
(:mod:`fedcrm.server.secure_agg`). A rejected release is recorded against its
branch; in an encrypted job that branch sits out the rest of the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcrm import protocol as P
from fedcrm.server.branch_state import BranchState, unpack_summary
from fedcrm.server.tree_records import arrays_of, check_release, model_digest

if TYPE_CHECKING:
    from fedcrm.server.gbdt_job import GBDTJob

Groups = dict[str, list[tuple[BranchState, Any]]]
"""Model digest -> the branches that returned that model, each with (model, step, content)."""


def group_replies(
    job: GBDTJob,
    replies: Sequence[Any],
    active: list[BranchState],
    round_num: int,
    problems: dict[str, str],
) -> tuple[Groups, list[tuple[BranchState, Any]]]:
    """The answering branches grouped by the model they returned, and their evaluations."""
    groups: Groups = {}
    evals = []
    for reply, b in zip(replies, active, strict=True):
        if not reply.ok:
            b.failed_rounds += 1
            b.last_problem = problems[b.branch_id] = f"round {round_num}: {reply.error}"
            continue
        content = reply.message.content
        if not job._handle_status(b, dict(content[P.BRANCH]), problems):
            continue
        try:
            model = arrays_of(content[P.GBDT_MODEL])
            step = dict(content[P.GBDT_STEP])
        except KeyError as exc:
            b.failed_rounds += 1
            b.last_problem = problems[b.branch_id] = f"reply lacks {exc}"
            continue
        summary = unpack_summary(content[P.METRICS]) if P.METRICS in content else None
        if summary is not None:
            evals.append((b, summary))
        groups.setdefault(model_digest(model, step), []).append((b, (model, step, content)))
    return groups, evals


def majority(job: GBDTJob, groups: Groups, problems: dict[str, str]) -> str:
    """The digest of the majority's model; the branches of every other model are excluded."""
    # The majority's model; ties go to the group of the first branch id.
    agreed = min(groups, key=lambda d: (-len(groups[d]), min(b.branch_id for b, _ in groups[d])))
    for digest, members in groups.items():
        if digest != agreed:
            for b, _ in members:
                job._exclude(
                    b,
                    f"{P.REASON_DISAGREE}: its model differs from "
                    f"{len(groups[agreed])} other branch(es)",
                    problems,
                )
    return agreed


def secure_sum(
    job: GBDTJob, step: dict[str, Any], members: list[tuple[BranchState, Any]]
) -> tuple[Any, dict[str, str]]:
    """The unmasked encrypted sum of the members' uploads (or ``None``) and the rejected ones."""
    uploads: dict[str, dict[str, Any]] = {}
    for b, (_, _, content) in members:
        if P.ENCRYPTED not in content:
            continue
        uploads[b.branch_id] = dict(content[P.ENCRYPTED])
        job.bytes_up += sum(len(c) for c in uploads[b.branch_id].get("chunks", []))
    rejected = {
        b.branch_id: "no encrypted release" for b, _ in members if b.branch_id not in uploads
    }
    step_no = job.secure_state.next_step
    total, more = job.secure.finish(
        step_no,
        job.secure_state,
        uploads,
        next_step=None if job._is_last(step) else step_no + 1,
    )
    rejected.update(more)
    if total is not None:
        job.secure_state = total
        rejected.update(
            {b: "not in the step's sum" for b in uploads if b not in total.contributors}
        )
    return total, rejected


def clear_sum(
    job: GBDTJob, members: list[tuple[BranchState, Any]], shape: tuple[int, ...]
) -> tuple[np.ndarray | None, dict[str, str]]:
    """The sum of the members' plaintext releases (checked per branch) and the rejected ones."""
    total: np.ndarray | None = None
    rejected: dict[str, str] = {}
    for b, (_, _, content) in members:
        try:
            values = check_release(b.branch_id, arrays_of(content[P.RELEASE])["values"], shape)
        except (KeyError, ValueError) as exc:
            rejected[b.branch_id] = str(exc)
            continue
        job.bytes_up += values.nbytes
        total = values.copy() if total is None else total + values
    return total, rejected


def record_rejections(
    job: GBDTJob,
    members: list[tuple[BranchState, Any]],
    rejected: dict[str, str],
    problems: dict[str, str],
    round_num: int,
) -> int:
    """Count and record each rejected release, count the rest as trained; how many were kept."""
    by_id = {b.branch_id: b for b, _ in members}
    for branch_id, why in rejected.items():
        b = by_id[branch_id]
        b.failed_rounds += 1
        b.last_problem = problems[branch_id] = f"round {round_num}: histogram rejected: {why}"
        if job.secure is not None:
            # A branch opens only sums holding its own upload, and each step of a
            # tree needs the last one: it sits out the rest of the job.
            b.extra["excluded"] = True
            b.last_problem += " (out of the encrypted sums: sits out the rest of the job)"
    accepted = len(members) - len(rejected)
    for b, _ in members:
        if b.branch_id not in rejected:
            b.rounds_trained += 1
    return accepted


__all__ = ["clear_sum", "group_replies", "majority", "record_rejections", "secure_sum"]
