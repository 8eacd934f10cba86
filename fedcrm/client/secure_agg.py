"""A branch's part of encrypted, masked aggregation (plain functions, no Flower).

Jobs with ``privacy=he`` or ``dp_he`` send each branch's update (LSTM) or
release (trees) only as a BFV ciphertext of the *masked* vector
(:mod:`fedcrm.crypto.masking`): the server adds ciphertexts it cannot read,
and neither the server nor the server together with one branch can open
another branch's contribution. What happens at a branch:

* **the key** (:func:`key_ceremony`, :func:`accept_key`): the BFV secret is
  born at a key-holder branch (the first connected branch of the roster) and
  sealed to each other branch's agreement key; the server relays sealed bytes
  it can neither read nor forge. A branch keeps one secret per roster (a
  branch joining or leaving makes a new roster, hence a new key), in its
  state folder, mode 0600;
* **each step** ``s``: an advertisement (:func:`advertise`, fresh keys for the
  step), then the masked upload (:func:`masked_upload`), then the branch's
  endorsement of the server's live/dropped claim when someone dropped
  (:func:`endorse`) and its shares (:func:`reveal`);
* **opening** the sum of a step (:func:`open_sum`): only an aggregate of at
  least ``min-contributors`` contributions of that step, its own among them,
  decrypts; the masks are removed with the server's correction.

The roster (branch ids and long-term public keys) comes with the job; a
branch may pin the one it trusts (node config ``roster``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcrm.client.branch import BranchSettings
from fedcrm.crypto import bfv, masking
from fedcrm.crypto.bfv_wire import EncryptedVector
from fedcrm.crypto.limbs import LimbCodec
from fedcrm.crypto.roster import BranchIdentity, Roster, default_threshold
from fedcrm.crypto.round_state import delete_state, load_state, save_state
from fedcrm.crypto.sealing import open_sealed, seal
from fedcrm.errors import ConfigError, ContributorsError, SecureAggregationError
from fedcrm.ids import id_path

log = logging.getLogger(__name__)

DEFAULT_MIN_CONTRIBUTORS = 3
"""With two contributions a branch's own and the sum would reveal the other's."""
WEIGHT_CAP = 2**16
"""A branch's averaging weight is ``min(n, WEIGHT_CAP) / WEIGHT_CAP`` (computed by itself)."""
CODECS = {
    # Weighted model parameters (|weight * value| <= 64) to 2**-24.
    "update": {"bound": 64.0, "precision_bits": 24},
    # Tree histograms and leaf sums (counts and gradient sums, noisy under DP) to 2**-6.
    "histogram": {"bound": 2.0**23, "precision_bits": 6},
}


def _context(roster: Roster) -> str:
    return f"fedcrm bfv-secret roster={roster.digest}"


@dataclass(frozen=True)
class BranchCrypto:
    """A branch's keys, roster and private folder for one encrypted job."""

    identity: BranchIdentity
    roster: Roster
    state: Path
    min_contributors: int

    @property
    def threshold(self) -> int:
        """Shares needed to rebuild a secret (fixed by the roster's size)."""
        return default_threshold(self.roster.n)

    @property
    def min_live(self) -> int:
        """Fewest live contributions this branch answers for or decrypts."""
        return min(self.roster.n, max(self.threshold, self.min_contributors))

    def secret_path(self) -> Path:
        """Where the BFV secret of this roster is kept (the folder is made, mode 0700)."""
        folder = self.state / "he"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / f"{self.roster.digest[:32]}.bfv"

    def step_path(self, run_id: str, step: int) -> Path:
        """Where the masking state of one step is kept (the folder is made, mode 0700)."""
        folder = id_path(self.state / "secagg", run_id, "run id")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / f"step-{int(step)}.state"

    def secret(self) -> bfv.SecretContext:
        """The BFV secret of this roster (from :func:`key_ceremony` / :func:`accept_key`)."""
        path = self.secret_path()
        if not path.exists():
            raise SecureAggregationError(
                "this branch holds no encryption key for the job's roster yet "
                "(the key ceremony did not reach it)"
            )
        return bfv.SecretContext.load(path)


def branch_crypto(settings: BranchSettings, roster_json: bytes, job_min: int) -> BranchCrypto:
    """The branch's crypto for a job whose roster the server sent.

    Raises
    ------
    ConfigError
        Without ``signing-key``, ``agreement-key`` or a state folder, or when
        the branch pinned another roster (node config ``roster``), or its own
        keys are not the roster's.
    """
    from fedcrm.privacy.signing import load_agreement_private_key, load_private_key

    if settings.signing_key is None or settings.agreement_key is None:
        raise ConfigError(
            "encrypted jobs need `signing-key` and `agreement-key` in the node config "
            "(both made by `fedcrm node init`)"
        )
    state = settings.private_state
    if state is None:
        raise ConfigError("encrypted jobs need `state-dir` (or `ledger-path`) in the node config")
    roster = Roster.from_json(roster_json)
    if settings.roster is not None:
        pinned = Roster.from_json(settings.roster.read_bytes())
        if pinned.digest != roster.digest:
            raise SecureAggregationError(
                f"the job's roster ({roster.digest[:12]}) is not the one this branch pinned "
                f"({pinned.digest[:12]}, node config `roster`)"
            )
    identity = BranchIdentity(
        settings.branch_id,
        load_private_key(settings.signing_key),
        load_agreement_private_key(settings.agreement_key),
    )
    if roster.entries.get(settings.branch_id) != identity.entry:
        raise SecureAggregationError(
            f"the job's roster does not hold this branch ({settings.branch_id}) with its keys"
        )
    k = max(DEFAULT_MIN_CONTRIBUTORS, settings.min_contributors or 0, job_min)
    return BranchCrypto(identity, roster, state, k)


def codec(crypto: BranchCrypto, kind: str) -> LimbCodec:
    """The fixed-point codec every branch of the roster derives alike."""
    return LimbCodec.plan(
        plain_modulus=bfv.PLAIN_MODULUS, max_contributors=crypto.roster.n, **CODECS[kind]
    )


# ------------------------------------------------------------------ the key
def key_ceremony(crypto: BranchCrypto, holder: str) -> dict[str, Any]:
    """This branch's answer to the key ceremony.

    The holder makes the secret if it has none for the roster and seals it to
    every other branch; everyone says which key (``context_id``) it holds.
    """
    out: dict[str, Any] = {"context_id": ""}
    path = crypto.secret_path()
    if crypto.identity.branch_id == holder:
        if not path.exists():
            bfv.generate().save(path)
            log.info("branch %s made the federation's encryption key", holder)
        ctx = bfv.SecretContext.load(path)
        out["parameters"] = ctx.parameters.to_json()
        payload = ctx.to_bytes()
        for peer in crypto.roster.ids:
            if peer == holder:
                continue
            out[f"sealed.{peer}"] = seal(
                payload,
                signing_key=crypto.identity.signing_key,
                agreement_key=crypto.identity.agreement_key,
                recipient_public=crypto.roster.entry(peer).agreement_public,
                context=_context(crypto.roster),
            )
    if path.exists():
        out["context_id"] = bfv.SecretContext.load(path).parameters.context_id
    return out


def accept_key(crypto: BranchCrypto, holder: str, sealed: bytes) -> str:
    """Open the holder's sealed secret and keep it; returns its ``context_id``."""
    entry = crypto.roster.entry(holder)
    payload = open_sealed(
        sealed,
        agreement_key=crypto.identity.agreement_key,
        sender_signing_public=entry.signing_public,
        sender_agreement_public=entry.agreement_public,
        context=_context(crypto.roster),
    )
    ctx = bfv.SecretContext.from_bytes(payload)
    ctx.save(crypto.secret_path(), overwrite=True)
    return ctx.parameters.context_id


# ------------------------------------------------------------------ a step
def advertise(crypto: BranchCrypto, run_id: str, step: int) -> bytes:
    """Fresh secrets for ``step`` and this branch's signed advertisement (state kept).

    Asked again before the step's upload, the branch gives the same advertisement.
    """
    path = crypto.step_path(run_id, step)
    if path.exists():
        kept = load_state(path)
        if not kept.masked:
            return kept.advertisement
    state, ad = masking.start_round(
        crypto.identity,
        crypto.roster,
        run_id=run_id,
        step=step,
        threshold=crypto.threshold,
        min_live=crypto.min_live,
    )
    save_state(state, path)
    return ad


def masked_upload(
    crypto: BranchCrypto,
    run_id: str,
    step: int,
    advertisements: Sequence[bytes],
    digits: np.ndarray,
) -> dict[str, Any]:
    """Mask and encrypt ``digits`` (ints mod t) for ``step``: the upload's record values."""
    path = crypto.step_path(run_id, step)
    if not path.exists():
        raise SecureAggregationError(
            f"this branch did not advertise for step {step}, so it cannot upload in it"
        )
    state = load_state(path)
    masking.receive_advertisements(state, crypto.identity, crypto.roster, advertisements)
    upload = masking.submit(state, crypto.secret(), digits, state_path=path)
    return {f"enc.{k}": v for k, v in upload.to_records().items()}


def endorse(
    crypto: BranchCrypto, run_id: str, step: int, live: Sequence[str], dropped: Sequence[str]
) -> bytes:
    """Sign the server's claim of who is live and who dropped in ``step`` (once per step)."""
    path = crypto.step_path(run_id, step)
    return masking.endorse(load_state(path), crypto.identity, live, dropped, state_path=path)


def reveal(crypto: BranchCrypto, run_id: str, step: int, request: bytes) -> bytes:
    """This branch's shares for ``step`` under the request's claim."""
    path = crypto.step_path(run_id, step)
    return masking.reveal(load_state(path), crypto.roster, request, state_path=path)


def open_sum(
    crypto: BranchCrypto,
    run_id: str,
    step: int,
    aggregate: EncryptedVector,
    correction: bytes,
    kind: str,
) -> tuple[np.ndarray, int]:
    """The plain sum of ``step``'s contributions and how many there were.

    The branch opens only a sum that holds its own upload of ``step`` (checked
    from the ciphertexts' contributor seeds, not from anything the server
    says), exactly the live branches it revealed shares for, and at least
    ``min-contributors`` uploads.

    Raises
    ------
    ContributorsError
        ``reason`` ``missing-own`` when the branch uploaded nothing in ``step``
        or its upload is not in the sum (a stale step, another sum, a single
        forwarded upload), or ``single`` / ``too-few`` / ``too-many``.
    """
    path = crypto.step_path(run_id, step)
    state = load_state(path) if path.exists() else None
    if state is None or state.own_seeds is None:
        raise ContributorsError(
            "missing-own", f"this branch uploaded nothing in step {step} (or forgot it)"
        )
    secret = crypto.secret()
    corr = np.frombuffer(correction, dtype="<i8").astype(np.int64)
    digits = masking.open_aggregate(state, secret, aggregate, corr)
    contributors = len(state.claim[0]) if state.claim is not None else 0
    return codec(crypto, kind).decode(digits, contributors), contributors


def forget_step(crypto: BranchCrypto, run_id: str, step: int) -> None:
    """Remove a finished step's masking state."""
    delete_state(crypto.step_path(run_id, step))


def weight_of(n_train: int) -> float:
    """A branch's averaging weight (its own, capped so the codec's range holds)."""
    return min(int(n_train), WEIGHT_CAP) / WEIGHT_CAP


def digest(data: bytes) -> str:
    """Short SHA-256 of bytes (for logs)."""
    return hashlib.sha256(data).hexdigest()[:12]
