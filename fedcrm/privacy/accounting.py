"""Privacy accounting: epsilon of everything a branch ran on its customers.

A branch runs two kinds of mechanism on its customers, both described by a
:class:`Mechanism`:

* ``"dp-sgd"``: Poisson-subsampled Gaussian steps (Opacus DP-SGD), with
  ``sample_rate`` the Poisson rate and ``steps`` the optimiser steps;
* ``"gaussian"``: a Gaussian mechanism on a full release (a histogram of every
  customer) is the same mechanism with ``sample_rate=1.0``; ``steps`` counts
  releases (tree levels);
* ``"dp-eval"``: the same Gaussian mechanism, on the evaluation statistics of a
  branch's test customers.

A :class:`Charge` adds what a mechanism ran on: ``purpose`` (``train``
customers or ``evaluation`` customers) and the ``split`` that separates them.
When every charge names one and the same split, the two purposes touch
disjoint customers and compose in parallel (McSherry 2009, Theorem 4): the
branch's epsilon is the larger of the two sides' (:func:`composed_epsilon`).
Otherwise everything composes sequentially.

Composition is done by Opacus' accountants and nothing here re-derives RDP or
PRV maths:

* ``"rdp"``: :class:`opacus.accountants.RDPAccountant` (Mironov 2017; conversion
  by Balle et al. 2020, Theorem 21).
* ``"prv"``: :class:`opacus.accountants.PRVAccountant` (Gopi et al. 2021,
  "Numerical composition of differential privacy") through
  :class:`LedgerPRVAccountant`, which only rounds the discretisation domain up
  to a ladder so that a ledger's epsilon can be recomputed at every entry fast
  (see :mod:`fedcrm.privacy._prv`).

Mechanisms with the same ``(noise_multiplier, sample_rate)`` are merged by
summing their steps before composing; composition is commutative, so this is
exact for both accountants.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from fedcrm.errors import PrivacyError
from fedcrm.privacy import composition as _prv
from fedcrm.privacy.mechanisms import Charge, Mechanism, parallel_sides

Accountant = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")

#: Upper end of the noise-multiplier search (Opacus ``MAX_SIGMA`` is 1e6 as well).
MAX_NOISE_MULTIPLIER = 1e6


def composed_epsilon(charges: Sequence[Charge], *, delta: float, accountant: Accountant) -> float:
    """Epsilon of everything a branch ran, with parallel composition where it holds."""
    sides = parallel_sides(charges)
    if sides is None:
        return compute_epsilon([c.mechanism for c in charges], delta=delta, accountant=accountant)
    return max(compute_epsilon(m, delta=delta, accountant=accountant) for m in sides.values())


def charges_trajectory(
    charges: Sequence[Charge | None],
    *,
    deltas: Sequence[float],
    accountants: Sequence[Accountant],
) -> list[float]:
    """Cumulative epsilon after each ledger entry (``None``: an entry that charges nothing).

    Element ``i`` equals :func:`composed_epsilon` of the charges up to ``i`` at
    ``deltas[i]`` with ``accountants[i]``. With one delta and accountant
    throughout (the usual ledger) it takes one :func:`epsilon_trajectory` per
    side, so long ledgers stay fast; otherwise each entry is composed afresh.
    """
    n = len(charges)
    if not n == len(deltas) == len(accountants):
        raise PrivacyError("charges, deltas and accountants must have the same length")
    if len(set(zip(deltas, accountants, strict=True))) > 1:
        out, prior = [], []
        for i, c in enumerate(charges):
            if c is not None:
                prior.append(c)
            out.append(
                composed_epsilon(prior, delta=deltas[i], accountant=accountants[i])
                if prior
                else 0.0
            )
        return out
    charged = [i for i, c in enumerate(charges) if c is not None]
    # Parallel composition holds for a prefix while every charge names one split.
    first = charges[charged[0]].split if charged else None  # type: ignore[union-attr]
    broken = next(
        (
            i
            for i in charged
            if charges[i].split is None  # type: ignore[union-attr]
            or charges[i].split != first  # type: ignore[union-attr]
            or charges[i].purpose not in ("train", "evaluation")  # type: ignore[union-attr]
        ),
        n,
    )

    def trajectory(index: list[int]) -> dict[int, float]:
        if not index:
            return {}
        values = epsilon_trajectory(
            [charges[i].mechanism for i in index],  # type: ignore[union-attr]
            deltas=[deltas[i] for i in index],
            accountants=[accountants[i] for i in index],
        )
        return dict(zip(index, values, strict=True))

    sides = {
        p: trajectory([i for i in charged if i < broken and charges[i].purpose == p])  # type: ignore[union-attr]
        for p in ("train", "evaluation")
    }
    sequential = trajectory(charged) if broken < n else {}
    out = []
    last: dict[str, float] = {}
    current = 0.0
    for i, c in enumerate(charges):
        if c is not None and i < broken:
            last[c.purpose] = sides[c.purpose][i]
            current = max(last.values())
        elif c is not None:
            current = sequential[i]
        out.append(current)
    return out


def merge_history(mechanisms: Sequence[Mechanism]) -> list[tuple[float, float, int]]:
    """Opacus accountant ``history`` of ``mechanisms``, identical mechanisms merged.

    Returns ``(noise_multiplier, sample_rate, steps)`` tuples in order of first
    appearance, the steps of equal ``(noise_multiplier, sample_rate)`` summed.
    """
    steps: dict[tuple[float, float], int] = {}
    for mechanism in mechanisms:
        key = (mechanism.noise_multiplier, mechanism.sample_rate)
        steps[key] = steps.get(key, 0) + mechanism.steps
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {accountant!r}; use one of {ACCOUNTANTS}")


def _check_delta_value(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise PrivacyError(f"delta must be a number in (0, 1), got {delta!r}")


def compute_epsilon(
    mechanisms: Sequence[Mechanism], *, delta: float, accountant: Accountant
) -> float:
    """Epsilon of the composition of ``mechanisms`` at ``delta``.

    Parameters
    ----------
    mechanisms
        Everything run on the same customers, in any order.
    delta
        Target delta.
    accountant
        ``"prv"`` (tighter, default of the project) or ``"rdp"``.

    Returns
    -------
    float
        Epsilon; ``0.0`` for no mechanism.

    Raises
    ------
    PrivacyError
        On an unknown accountant, an invalid delta, or when the accountant
        cannot bound the composition (epsilon far beyond any useful value).
    """
    _check_accountant(accountant)
    _check_delta_value(delta)
    history = merge_history(mechanisms)
    if not history:
        return 0.0
    account = _prv.LedgerPRVAccountant() if accountant == "prv" else _prv.RDPAccountant()
    account.history = history
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha", log(0)
            epsilon = float(account.get_epsilon(delta=delta))
    except (ValueError, RuntimeError) as exc:
        raise PrivacyError(
            f"the {accountant} accountant cannot bound epsilon for this composition "
            f"({exc}); add noise or run fewer steps"
        ) from None
    return epsilon


def epsilon_trajectory(
    mechanisms: Sequence[Mechanism],
    *,
    deltas: Sequence[float],
    accountants: Sequence[Accountant],
) -> list[float]:
    """Cumulative epsilon after each mechanism, as a ledger states it.

    Element ``i`` equals ``compute_epsilon(mechanisms[: i + 1], delta=deltas[i],
    accountant=accountants[i])``; RDP vectors and discretised PRVs are computed
    once per distinct mechanism and summed, so a 1,000-entry ledger takes
    seconds rather than minutes.
    """
    if not len(mechanisms) == len(deltas) == len(accountants):
        raise PrivacyError("mechanisms, deltas and accountants must have the same length")
    for accountant, delta in zip(accountants, deltas, strict=True):
        _check_accountant(accountant)
        _check_delta_value(delta)
    history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechanisms]
    prv_at = [i for i, a in enumerate(accountants) if a == "prv"]
    rdp_at = [i for i, a in enumerate(accountants) if a == "rdp"]
    out = np.zeros(len(mechanisms))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if rdp_at:
                out[rdp_at] = _prv.rdp_trajectory(history, deltas=deltas, at=rdp_at)
            if prv_at:
                out[prv_at] = _prv.prv_trajectory(history, deltas=deltas, at=prv_at)
    except (ValueError, RuntimeError) as exc:
        raise PrivacyError(f"the accountant cannot bound epsilon for this ledger ({exc})") from None
    return [float(e) for e in out]


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant,
    prior: Sequence[Mechanism] = (),
    name: str = "dp-sgd",
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier keeping ``prior`` + the new mechanism within ``target_epsilon``.

    Bisection over :func:`compute_epsilon` (the same computation the ledger and
    the budget use, so the planned run never overshoots its target by an
    accountant mismatch). The result is within ``tolerance`` (in epsilon) of
    the target and never above it.

    Parameters
    ----------
    target_epsilon
        Total epsilon allowed after the new mechanism.
    delta
        Target delta.
    sample_rate, steps
        Of the new mechanism (all its rounds x local steps).
    accountant
        ``"prv"`` or ``"rdp"``.
    prior
        Mechanisms already run on the same customers (the branch ledger).

    Raises
    ------
    PrivacyError
        When no noise multiplier reaches the target.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError(f"target epsilon must be a number > 0, got {target_epsilon!r}")

    def epsilon(sigma: float) -> float:
        new = Mechanism(name, noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        try:
            return compute_epsilon([*prior, new], delta=delta, accountant=accountant)
        except PrivacyError:  # so little noise that the accountant cannot bound it
            return math.inf

    spent = compute_epsilon(prior, delta=delta, accountant=accountant) if prior else 0.0
    if spent >= target_epsilon:
        raise PrivacyError(
            f"target epsilon {target_epsilon:g} unreachable with {steps} steps: the branch "
            f"has already spent epsilon {spent:.4g}; raise the target or use fresh data"
        )
    return _solve_decreasing(
        epsilon, target_epsilon, tolerance, spent=spent, steps=steps, sample_rate=sample_rate
    )


def _solve_decreasing(
    epsilon: Callable[[float], float],
    target: float,
    tolerance: float,
    *,
    spent: float,
    steps: int,
    sample_rate: float,
) -> float:
    """A ``sigma`` with ``target - tolerance <= epsilon(sigma) <= target`` (never above).

    ``epsilon`` decreases in ``sigma`` and is close to a power law, so after
    bracketing the root (doubling or halving from 1) the search interpolates in
    log-log space (regula falsi with the Illinois correction, falling back to
    bisection), keeping ``epsilon(high) <= target`` at every step: about half
    the accountant calls of plain bisection, each 0.1-0.5 s.
    """
    low, high = 1.0, 1.0
    eps_low = eps_high = epsilon(1.0)
    if eps_high > target:
        while eps_high > target:
            low, eps_low = high, eps_high
            high *= 2
            if high > MAX_NOISE_MULTIPLIER:
                raise PrivacyError(
                    f"target epsilon {target:g} unreachable with {steps} steps at sample "
                    f"rate {sample_rate:g}: even noise multiplier {MAX_NOISE_MULTIPLIER:g} "
                    f"spends more (already spent {spent:.4g}); raise the target or run "
                    "fewer rounds"
                )
            eps_high = epsilon(high)
    else:
        while eps_low <= target:
            if target - eps_low <= tolerance:
                return low
            high, eps_high = low, eps_low
            low /= 2
            eps_low = epsilon(low)
    weight_low = weight_high = 1.0  # Illinois: halve a side's weight when it is kept twice
    side = 0
    aim = target - min(tolerance, target) / 2  # inside the acceptance band, not at its edge
    while target - eps_high > tolerance and high - low > 1e-6 * high:
        mid = (low + high) / 2
        if math.isfinite(eps_low) and eps_low > 0 and eps_high > 0:
            f_low = weight_low * math.log(eps_low / aim)
            f_high = weight_high * math.log(eps_high / aim)
            if f_low > f_high:
                x = math.log(low) + f_low * (math.log(high) - math.log(low)) / (f_low - f_high)
                if low < math.exp(x) < high:
                    mid = math.exp(x)
        eps_mid = epsilon(mid)
        if eps_mid <= target:
            high, eps_high = mid, eps_mid
            weight_high = 1.0
            weight_low = weight_low / 2 if side == 1 else 1.0
            side = 1
        else:
            low, eps_low = mid, eps_mid
            weight_low = 1.0
            weight_high = weight_high / 2 if side == -1 else 1.0
            side = -1
    return high


def default_delta(n_customers: int) -> float:
    """The default delta of a branch with ``n_customers`` customers.

    The largest power of ten strictly below ``1 / (10 * n_customers)``: a
    mechanism failing with probability delta per customer then fails for
    fewer than a tenth of a customer in expectation (the usual rule of
    thumb is delta << 1/n). For example 2,000 customers -> ``1e-5``,
    1,000 customers -> ``1e-5`` (``1e-4`` is not strictly below).
    """
    if n_customers < 1:
        raise PrivacyError(f"a branch needs at least one customer, got {n_customers}")
    bound = 1.0 / (10 * n_customers)
    exponent = math.floor(math.log10(bound))
    if 10.0**exponent >= bound * (1 - 1e-12):
        exponent -= 1
    return 10.0**exponent


def check_delta(delta: float, n_customers: int, branch_id: str) -> None:
    """Raise :class:`PrivacyError` unless ``delta`` is below ``1 / n_customers``.

    A delta of ``1/n`` or more allows a mechanism that publishes one customer's
    data outright; Opacus and the DP literature require delta << 1/n.
    """
    _check_delta_value(delta)
    if n_customers >= 1 and delta >= 1.0 / n_customers:
        raise PrivacyError(
            f"branch {branch_id}: delta {delta:g} is not below 1/n = {1.0 / n_customers:.3g} "
            f"for its {n_customers} customers; use privacy.delta <= "
            f"{default_delta(n_customers):g} (or leave it null for the default)"
        )
