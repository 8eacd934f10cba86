"""Randomness that shapes a release: born at the branch, never taken from a message.

Every random draw a differentially private release depends on (Poisson
sampling of customers, DP-SGD noise, histogram noise, evaluation noise, the
customer sample of a tree) is seeded here, at the branch, from the operating
system's CSPRNG (:func:`secrets.randbits`, 128 bits). Nothing a message carries
(the job's seed, a run id, a round number) can seed or repeat it; a server
that replays training on the data it guesses cannot reproduce the noise.

A branch may make its runs reproducible with its own setting ``rng-seed`` (node
config; ``branch.rng_seed`` in simulation). The seed of a draw is then derived
from that branch secret and the draw's purpose (SHA-256), so different draws
still differ. ``fedcrm node start`` refuses ``rng-seed``: it is for simulations
and tests, where the researcher owns both sides.

The seeds feed numpy's PCG64 (128-bit state) and torch's CPU generator (64-bit
seed); the generators are fast, and an attacker without the seed cannot
reproduce their output.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Hashable

import numpy as np

SEED_BITS = 128


def release_seed(rng_seed: int | None, *purpose: Hashable) -> int:
    """A fresh 128-bit seed for one release.

    Parameters
    ----------
    rng_seed
        The branch's own reproducibility seed, or ``None`` (the default): the
        operating system's CSPRNG.
    purpose
        What the draw is for (run id, step, ...); only used with ``rng_seed``
        so that two draws of one reproducible branch differ.
    """
    if rng_seed is None:
        return secrets.randbits(SEED_BITS)
    digest = hashlib.sha256(f"fedcrm-release:{int(rng_seed)}:{purpose!r}".encode()).digest()
    return int.from_bytes(digest[: SEED_BITS // 8], "little")


def release_rng(rng_seed: int | None, *purpose: Hashable) -> np.random.Generator:
    """A numpy generator seeded by :func:`release_seed`."""
    return np.random.Generator(np.random.PCG64(release_seed(rng_seed, *purpose)))


def torch_seed(seed: int) -> int:
    """The 64 bits of ``seed`` that torch's CPU generator takes."""
    return int(seed) & (2**64 - 1)


__all__ = ["release_rng", "release_seed", "torch_seed"]
