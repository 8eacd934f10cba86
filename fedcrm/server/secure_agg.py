"""The server's part of encrypted, masked aggregation: it relays and adds, never opens.

For a job with ``privacy=he|dp_he`` (see :mod:`fedcrm.client.secure_agg` for the
branch's part):

=============================  ===========================================  =====================
message                        carries to branches                          branches reply
=============================  ===========================================  =====================
``query.he_keys``              roster, key holder, first step               key held, first
                                                                            advertisement; the
                                                                            holder: parameters
                                                                            and sealed secrets
``query.he_accept``            roster, holder, this branch's sealed secret  key held
(a job's update message)       roster, the step's advertisements, the last  masked, BFV-encrypted
                               step's encrypted sum and mask correction     upload
``train.secagg_endorse``       the step's (live, dropped) claim             signed endorsement
(only when a branch dropped)
``train.secagg_reveal``        reveal request (claim, endorsements)         shares, next step's
                                                                            advertisement
=============================  ===========================================  =====================

The server holds the BFV *parameters* only (no key of any kind): it adds the
ciphertexts of the live uploads, rebuilds the live branches' self-mask seeds
and the dropped ones' pairwise keys from the revealed shares, and sends the
sum with the correction that removes the masks. Only branches that
contributed can decrypt it. One step costs the update exchange plus a reveal
exchange; a step in which a branch dropped costs one more (endorse).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord

from fedcrm import protocol as P
from fedcrm.crypto.bfv_aggregate import aggregate
from fedcrm.crypto.bfv_wire import BFVParameters, EncryptedVector
from fedcrm.crypto.roster import Roster, default_threshold
from fedcrm.crypto.unmasking import correction, reveal_request, verified_advertisements
from fedcrm.errors import EncryptionError, FedCRMError, SecureAggregationError

log = logging.getLogger(__name__)


@dataclass
class SecureState:
    """What the next message of an encrypted job carries.

    ``aggregate`` and ``correction`` are the sum of step ``agg_step`` (``None``
    before the first step); ``advertisements`` are the verified advertisements
    of step ``next_step``.
    """

    aggregate: EncryptedVector | None
    correction: bytes
    agg_step: int
    advertisements: dict[str, bytes]
    next_step: int
    contributors: list[str] = field(default_factory=list)

    def records(self, roster_json: bytes, *, with_sum: bool = True) -> dict[str, ConfigRecord]:
        """The message records (``secagg``, and ``encrypted`` when there is a sum to send)."""
        values: dict[str, Any] = {"roster": roster_json, "step": int(self.next_step)}
        if self.advertisements:
            values["advertisements"] = [self.advertisements[b] for b in sorted(self.advertisements)]
        out = {P.SECAGG: ConfigRecord(values)}
        if self.aggregate is not None and with_sum:
            out[P.ENCRYPTED] = ConfigRecord(
                {
                    **self.aggregate.to_records(),
                    "correction": self.correction,
                    "step": int(self.agg_step),
                }
            )
        return out

    def to_records(self) -> dict[str, Any]:
        """A flat record for checkpoints (:func:`fedcrm.server.run_dir.save_records`)."""
        out: dict[str, Any] = {
            "agg_step": int(self.agg_step),
            "next_step": int(self.next_step),
            "correction": self.correction,
            "ad_branches": ",".join(sorted(self.advertisements)),
            "contributors": ",".join(self.contributors),
        }
        if self.advertisements:
            out["ads"] = [self.advertisements[b] for b in sorted(self.advertisements)]
        if self.aggregate is not None:
            out.update({f"agg.{k}": v for k, v in self.aggregate.to_records().items()})
        return out

    @classmethod
    def from_records(cls, record: Mapping[str, Any]) -> SecureState:
        """Inverse of :meth:`to_records`."""
        names = [b for b in str(record.get("ad_branches", "")).split(",") if b]
        agg = (
            EncryptedVector.from_records(record, prefix="agg.") if "agg.length" in record else None
        )
        return cls(
            aggregate=agg,
            correction=bytes(record.get("correction", b"")),
            agg_step=int(record["agg_step"]),
            advertisements=dict(zip(names, list(record.get("ads", [])), strict=True)),
            next_step=int(record["next_step"]),
            contributors=[b for b in str(record.get("contributors", "")).split(",") if b],
        )


class SecureAggregation:
    """Key ceremony and masked sums of one job (see the module docstring).

    Parameters
    ----------
    job
        The :class:`~fedcrm.server.job.FederatedJob` whose branches take part
        (its ``courier``, ``branches`` and ``_message`` are used).
    roster
        The federation's roster (branch ids and long-term public keys).
    """

    def __init__(self, job: Any, roster: Roster) -> None:
        self.job = job
        self.roster = roster
        self.roster_json = roster.to_json()
        self.threshold = default_threshold(roster.n)
        self.params: BFVParameters | None = None
        self.holder: str | None = None
        self.exchanges = 0

    @property
    def run_id(self) -> str:
        return str(self.job.spec.run_id)

    def _node(self, branch_id: str) -> Any:
        return next((b for b in self.job.branches.values() if b.branch_id == branch_id), None)

    def _exchange(
        self,
        members: list[Any],
        mtype: str | Mapping[str, str],
        payloads: Mapping[str, dict],
        *,
        strict: Mapping[str, bool] | bool = True,
    ) -> dict:
        """Send ``payloads[branch]`` (a SECAGG record's values) to ``members``; their records.

        ``mtype`` and ``strict`` may differ per branch; a strict branch that
        fails is left out of the job, a lenient one only gives no record.
        """
        kinds = {
            b.branch_id: mtype if isinstance(mtype, str) else mtype[b.branch_id] for b in members
        }
        messages = [
            self.job._message(
                b.node_id,
                kinds[b.branch_id],
                0,
                {P.SECAGG: ConfigRecord({"roster": self.roster_json, **payloads[b.branch_id]})},
            )
            for b in members
        ]
        self.exchanges += 1
        replies = self.job.courier.exchange(messages, timeout=self.job.cfg.federation.round_timeout)
        out: dict[str, dict[str, Any]] = {}
        for reply, b in zip(replies, members, strict=True):
            hard = strict if isinstance(strict, bool) else strict[b.branch_id]
            why = ""
            if not reply.ok:
                why = f"{kinds[b.branch_id]}: {reply.error}"
            else:
                content = reply.message.content
                info = dict(content[P.BRANCH])
                if info.get("status") != P.STATUS_OK or P.SECAGG not in content:
                    why = f"{kinds[b.branch_id]}: {info.get('reason')}: {info.get('message', '')}"
                else:
                    out[b.branch_id] = dict(content[P.SECAGG])
            if why and hard:
                self._leave_out(b, why)
            elif why:
                log.warning("branch %s: %s", b.branch_id, why)
        return out

    def _leave_out(self, b: Any, why: str) -> None:
        b.exhausted = True
        b.last_problem = why
        log.warning("branch %s left out of the encrypted job: %s", b.branch_id, why)

    def members(self) -> list[Any]:
        """The job's branches that are in the roster and still take part."""
        return sorted(
            (
                b
                for b in self.job.branches.values()
                if b.branch_id in self.roster.entries
                and not b.exhausted
                and not b.extra.get("excluded")
            ),
            key=lambda b: b.branch_id,
        )

    # ------------------------------------------------------------ ceremony
    def setup(self, first_step: int) -> SecureState:
        """Run the key ceremony and collect the first step's advertisements.

        Raises
        ------
        FedCRMError
            When no branch of the roster takes part or the holder fails.
        """
        members = self.members()
        for b in self.job.branches.values():
            if b.branch_id not in self.roster.entries:
                self._leave_out(b, "not in the federation's roster")
        if not members:
            raise FedCRMError("no connected branch is in the federation's roster")
        self.holder = members[0].branch_id
        ask = {"holder": self.holder, "step": first_step, "ask": "keys"}
        replies = self._exchange(members, P.HE_KEYS, {b.branch_id: ask for b in members})
        if self.holder not in replies or "parameters" not in replies[self.holder]:
            raise FedCRMError(f"the key holder {self.holder} did not make the encryption key")
        self.params = BFVParameters.from_json(replies[self.holder]["parameters"])
        wanted = self.params.context_id
        need = [
            b
            for b in members
            if b.branch_id in replies and replies[b.branch_id]["context_id"] != wanted
        ]
        if need:
            sealed = {
                b.branch_id: {
                    "holder": self.holder,
                    "sealed": replies[self.holder][f"sealed.{b.branch_id}"],
                }
                for b in need
            }
            accepted = self._exchange(need, P.HE_ACCEPT, sealed)
            for b in need:
                got = accepted.get(b.branch_id, {}).get("context_id")
                if got != wanted and not b.exhausted:
                    self._leave_out(b, "could not take the federation's encryption key")
        ads = {b: r["advertisement"] for b, r in replies.items() if "advertisement" in r}
        return SecureState(None, b"", 0, self._verified(ads, first_step), first_step)

    def _verified(self, ads: Mapping[str, bytes], step: int) -> dict[str, bytes]:
        kept, rejected = verified_advertisements(
            self.roster, ads, run_id=self.run_id, step=step, threshold=self.threshold
        )
        for branch_id, why in rejected.items():
            b = self._node(branch_id)
            if b is not None:
                self._leave_out(b, f"advertisement rejected: {why}")
        return kept

    # ---------------------------------------------------------------- a step
    def finish(
        self,
        step: int,
        state: SecureState,
        uploads: Mapping[str, Any],
        *,
        next_step: int | None,
    ) -> tuple[SecureState | None, dict[str, str]]:
        """Add the step's uploads, have them unmasked, ask for the next advertisements.

        Returns the state the next message carries (``None`` when the step
        failed: too few live uploads or shares) and branch_id -> reason for
        every upload that was rejected.
        """
        assert self.params is not None
        advertisers = set(state.advertisements)
        candidates = {b: u for b, u in uploads.items() if b in advertisers}
        rejected = {b: "did not advertise for this step" for b in uploads if b not in advertisers}
        if not candidates:
            return None, rejected
        try:
            parsed = {b: EncryptedVector.from_records(u) for b, u in candidates.items()}
            agg, bad = aggregate(self.params, parsed)
        except EncryptionError as exc:
            rejected.update(dict.fromkeys(candidates, str(exc)))
            return None, rejected
        rejected.update(bad)
        live = sorted(b for b in candidates if b not in bad)
        dropped = sorted(advertisers - set(live))
        members = [self._node(b) for b in live]
        if len(live) < self.threshold:
            log.warning(
                "step %d: %d live uploads, %d needed to unmask", step, len(live), self.threshold
            )
            return None, rejected
        endorsements = self._endorsements(step, members, live, dropped)
        got = self._reveal(step, members, live, dropped, endorsements, next_step)
        corr = self._correction(step, state, got, live, dropped, agg.length)
        if corr is None:
            return None, rejected
        ads: dict[str, bytes] = {}
        if next_step is not None:
            ads = self._verified(
                {b: r["advertisement"] for b, r in got.items() if "advertisement" in r}, next_step
            )
        out = SecureState(
            agg,
            np.asarray(corr, dtype="<i8").tobytes(),
            step,
            ads,
            next_step if next_step is not None else step,
            live,
        )
        return out, rejected

    def _endorsements(
        self, step: int, members: list[Any], live: list[str], dropped: list[str]
    ) -> list[bytes]:
        """The live branches' signed endorsements of the step's (live, dropped) claim."""
        endorsements: list[bytes] = []
        if dropped:
            claim = {"step": step, "live": live, "dropped": dropped}
            got = self._exchange(members, P.SECAGG_ENDORSE, dict.fromkeys(live, claim))
            endorsements = [r["endorsement"] for r in got.values() if "endorsement" in r]
        return endorsements

    def _reveal(
        self,
        step: int,
        members: list[Any],
        live: list[str],
        dropped: list[str],
        endorsements: list[bytes],
        next_step: int | None,
    ) -> dict:
        """Ask the live branches for their shares; the others to advertise for the next step."""
        request = reveal_request(
            self.roster,
            run_id=self.run_id,
            step=step,
            threshold=self.threshold,
            live=live,
            dropped=dropped,
            endorsements=endorsements,
        )
        ask: dict[str, Any] = {"step": step, "request": request}
        if next_step is not None:
            ask["next_step"] = next_step
        # Branches out of this step (dropped, not sampled) advertise for the next
        # one in the same exchange, so they can take part again.
        others = [] if next_step is None else [b for b in self.members() if b.branch_id not in live]
        kinds = {b: P.SECAGG_REVEAL for b in live} | {b.branch_id: P.HE_KEYS for b in others}
        asks = dict.fromkeys(live, ask) | {
            b.branch_id: {"ask": "advertise", "step": next_step} for b in others
        }
        return self._exchange(members + others, kinds, asks, strict={b: b in live for b in kinds})

    def _correction(
        self,
        step: int,
        state: SecureState,
        got: Mapping[str, dict],
        live: list[str],
        dropped: list[str],
        length: int,
    ) -> np.ndarray | None:
        """The correction that removes the step's masks from the sum; ``None`` if it cannot."""
        assert self.params is not None
        try:
            return correction(
                self.roster,
                state.advertisements,
                {b: r["reveal"] for b, r in got.items() if "reveal" in r and b in live},
                run_id=self.run_id,
                step=step,
                threshold=self.threshold,
                live=live,
                dropped=dropped,
                length=length,
                plain_modulus=self.params.plain_modulus,
            )
        except SecureAggregationError as exc:
            log.warning("step %d could not be unmasked: %s", step, exc)
            return None
