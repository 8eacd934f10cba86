"""A branch's train/test split: drawn once at the branch, kept across runs.

Each customer's side is fixed by a keyed hash of its id,
``HMAC-SHA256(split key, branch id | customer id)``, read as a number ``u`` in
[0, 1): the customer is a test customer when ``u < test_fraction``. The key is
the branch's own (a file in its state folder, made once from the operating
system's CSPRNG), so nothing the server sends (seed, test fraction) moves a
customer between the sides, and every run of the branch uses the same split.

Because the side of a customer depends only on that customer's id and the
branch's key - never on any customer's data or label - training releases (on
train customers) and evaluation releases (on test customers) touch disjoint
customers. Privacy spent on one side then composes in parallel with the other
(McSherry 2009, "Privacy integrated queries", Theorem 4): a customer's epsilon
is that of the side it is on. The ledger records the split's id
(:func:`split_id`) so that accounting applies parallel composition only when a
branch has always used one split. The split is not stratified by label (that
would make the partition depend on data); test sets hold the branch's churn
rate up to sampling noise. Test customers with ``u`` below half the test
fraction form the *validation* half of evaluation releases
(:func:`validation_mask`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import numpy as np

from fedcrm.errors import ConfigError

KEY_BYTES = 32
KEY_FILE = "split.key"
DEFAULT_TEST_FRACTION = 0.2


def derived_split_key(rng_seed: int, branch_id: str) -> bytes:
    """The split key of a branch that set ``rng-seed`` (reproducible simulations)."""
    return hashlib.sha256(f"fedcrm-split:{int(rng_seed)}:{branch_id}".encode()).digest()


def public_split_key(branch_id: str) -> bytes:
    """The split key of a branch with no state folder: fixed, so still kept across runs."""
    return hashlib.sha256(f"fedcrm-split:{branch_id}".encode()).digest()


def load_or_create_key(state_dir: Path) -> bytes:
    """The branch's split key in ``state_dir`` (created once, mode 0600).

    Raises
    ------
    ConfigError
        When the key file exists but is not a split key.
    """
    path = Path(state_dir) / KEY_FILE
    if path.exists():
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{path} is not a split key ({len(key)} bytes, expected 32)")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_BYTES)
    # A name of this process's own: a shared one could be truncated under another's link.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replace a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return load_or_create_key(state_dir)


def split_uniform(customer_ids: np.ndarray, branch_id: str, key: bytes) -> np.ndarray:
    """Each customer's fixed number ``u`` in [0, 1)."""
    prefix = branch_id.encode() + b"|"
    out = np.empty(len(customer_ids), dtype=np.float64)
    for i, cid in enumerate(customer_ids):
        digest = hmac.new(key, prefix + str(cid).encode(), hashlib.sha256).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def holdout_mask(
    customer_ids: np.ndarray, branch_id: str, key: bytes, test_fraction: float
) -> np.ndarray:
    """Boolean mask of the test customers."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test fraction must be in (0, 1), got {test_fraction!r}")
    return split_uniform(customer_ids, branch_id, key) < test_fraction


MIN_VALIDATION_TEST = 200
"""Fewest test customers a branch needs before it sets validation customers aside."""


def validation_mask(
    customer_ids: np.ndarray, branch_id: str, key: bytes, test_fraction: float
) -> np.ndarray:
    """Of test customers, those released apart for choosing thresholds (``u < fraction / 2``).

    The same fixed number ``u`` that made them test customers halves them, so
    the halves never change between runs and depend on no data. A branch with
    fewer than :data:`MIN_VALIDATION_TEST` test customers sets none aside:
    halves that small would lose their score groups to the minimum group size
    of releases without DP (the F1 threshold then stays at 0.5).
    """
    if len(customer_ids) < MIN_VALIDATION_TEST:
        return np.zeros(len(customer_ids), dtype=bool)
    return split_uniform(customer_ids, branch_id, key) < test_fraction / 2


def split_id(branch_id: str, key: bytes, test_fraction: float) -> str:
    """A public fingerprint of a split (the key stays secret): recorded in the ledger."""
    message = f"split-id|{branch_id}|{test_fraction!r}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]


__all__ = [
    "DEFAULT_TEST_FRACTION",
    "MIN_VALIDATION_TEST",
    "derived_split_key",
    "holdout_mask",
    "load_or_create_key",
    "public_split_key",
    "split_id",
    "split_uniform",
    "validation_mask",
]
