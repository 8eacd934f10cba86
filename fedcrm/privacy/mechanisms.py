"""What a branch runs on its customers: mechanisms and the charges that record them.

A :class:`Mechanism` is one differentially private mechanism (``"dp-sgd"``,
``"gaussian"`` or ``"dp-eval"``) with its noise multiplier, sample rate and
step count. A :class:`Charge` adds what it ran on: ``purpose`` (``train``
customers or ``evaluation`` customers) and the ``split`` that separates them.
When every charge names one and the same split, the two purposes touch
disjoint customers and compose in parallel (McSherry 2009, Theorem 4);
:func:`parallel_sides` tells when, and :mod:`fedcrm.privacy.accounting`
composes the epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedcrm.errors import PrivacyError

MECHANISMS: tuple[str, ...] = ("dp-sgd", "gaussian", "dp-eval")
"""``dp-eval`` is a Gaussian mechanism on a branch's evaluation statistics (its test customers)."""


@dataclass(frozen=True)
class Mechanism:
    """One application of a differentially private mechanism to a branch's customers.

    Parameters
    ----------
    name
        ``"dp-sgd"`` (Poisson-subsampled Gaussian steps) or ``"gaussian"``.
    noise_multiplier
        Standard deviation of the Gaussian noise divided by the L2 sensitivity
        (Opacus' ``noise_multiplier``).
    sample_rate
        Poisson sampling rate of customers; ``1.0`` for a full release.
    steps
        How many times the mechanism ran (optimiser steps, tree levels).
    max_grad_norm
        DP-SGD per-customer clipping norm, kept for the record.
    sensitivity
        L2 sensitivity of a Gaussian release, kept for the record.
    """

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float | None = None
    sensitivity: float | None = None

    def __post_init__(self) -> None:
        if self.name not in MECHANISMS:
            raise PrivacyError(f"unknown mechanism {self.name!r}; use one of {MECHANISMS}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise PrivacyError(
                f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier!r}"
            )
        if not (0.0 < self.sample_rate <= 1.0):
            raise PrivacyError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise PrivacyError(f"steps must be a whole number >= 1, got {self.steps!r}")
        for field in ("max_grad_norm", "sensitivity"):
            value = getattr(self, field)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise PrivacyError(f"{field} must be a finite number > 0 or None, got {value!r}")
        # Normalise numbers so that equal mechanisms compare (and merge) equal.
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", float(self.sample_rate))
        object.__setattr__(self, "steps", int(self.steps))

    @classmethod
    def gaussian(cls, *, noise_multiplier: float, sensitivity: float, steps: int = 1) -> Mechanism:
        """A Gaussian mechanism on a full release (``sample_rate=1.0``)."""
        return cls(
            "gaussian",
            noise_multiplier=noise_multiplier,
            sample_rate=1.0,
            steps=steps,
            sensitivity=sensitivity,
        )


@dataclass(frozen=True)
class Charge:
    """A mechanism and the customers it ran on (see the module docstring)."""

    mechanism: Mechanism
    purpose: str = "train"
    split: str | None = None


def parallel_sides(charges: Sequence[Charge]) -> dict[str, list[Mechanism]] | None:
    """Mechanisms per purpose when the charges compose in parallel, else ``None``.

    Parallel composition holds when every charge names the same split and the
    purposes are ``train`` and ``evaluation`` only.
    """
    splits = {c.split for c in charges}
    if not charges or len(splits) != 1 or None in splits:
        return None
    sides: dict[str, list[Mechanism]] = {}
    for c in charges:
        if c.purpose not in ("train", "evaluation"):
            return None
        sides.setdefault(c.purpose, []).append(c.mechanism)
    return sides
