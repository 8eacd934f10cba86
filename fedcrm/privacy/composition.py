"""Repeatable, fast composition with Opacus' accountants, for ledgers.

A ledger states the cumulative epsilon after every entry, and verification
recomputes all of them. One Opacus accountant call per entry costs 0.1-4 s
(RDP orders are re-evaluated; PRVs are re-discretised on a domain that
changes with every step count), far too slow for 1,000 entries. This module
keeps Opacus' maths and changes only the bookkeeping:

* RDP: the per-step RDP vector of each distinct ``(noise_multiplier,
  sample_rate)`` comes from :func:`opacus.accountants.analysis.rdp.compute_rdp`
  once; composition sums ``steps x vector``, as
  :class:`~opacus.accountants.RDPAccountant` does.
* PRV (Gopi et al. 2021, "Numerical composition of differential privacy"):
  :class:`LedgerPRVAccountant` is Opacus' :class:`PRVAccountant` on a domain
  from a ladder, so discretised PRVs are shared between entries: the
  truncation bound is Opacus' safe domain size rounded *up* to a power of
  2**0.25 and the mesh is Opacus' mesh for the step count rounded *up* to a
  power of 2 (so no coarser). On a fixed domain, composing PRVs multiplies
  their discrete Fourier transforms (Opacus' ``_compose_fourier`` does this
  for one PRV), so a ledger's epsilon is updated entry by entry with one
  product and one inverse FFT.

  The grid is capped at :data:`PRV_MAX_GRID` points. When Opacus' mesh for
  ``eps_error=0.01`` would need more, the mesh is coarser and the error bound
  that mesh implies (``mesh * sqrt(steps * log(12 / delta_error) / 2)``, the
  relation Opacus uses to pick the mesh) replaces 0.01 in the upper bound.
  The reported epsilon stays an upper bound; it is looser by that much.

Per-step RDP vectors cost 0.3-0.5 s each (Opacus evaluates the fractional
orders by series). A process that starts afresh for every message (a
deployed branch) may keep them in a directory named by the environment
variable ``FEDCRM_RDP_CACHE`` (the warm SuperExec sets a private one): the
same Opacus numbers, stored once per ``(noise_multiplier, sample_rate)``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import (
    DiscretePRV,
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    discretize,
)
from scipy.fft import irfft, next_fast_len, rfft

__all__ = [
    "PRV_EPS_ERROR",
    "PRV_MAX_GRID",
    "LedgerPRVAccountant",
    "RDPAccountant",
    "prv_trajectory",
    "rdp_trajectory",
]

#: Opacus' default ``eps_error`` of the PRV accountant; the error bound used when the grid allows.
PRV_EPS_ERROR = 0.01
#: Largest PRV grid: an inverse FFT of this size takes ~0.5 ms.
PRV_MAX_GRID = 2**16
RDP_ORDERS = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=float)

History = Sequence[tuple[float, float, int]]
DomainKey = tuple[float, float]  # (half width, mesh)


# ----------------------------------------------------------------------- RDP
RDP_CACHE_ENV = "FEDCRM_RDP_CACHE"
_ORDERS_TAG = hashlib.sha256(RDP_ORDERS.tobytes()).hexdigest()[:12]


def _rdp_cache_file(noise_multiplier: float, sample_rate: float) -> str | None:
    directory = os.environ.get(RDP_CACHE_ENV)
    if not directory or not os.path.isdir(directory):
        return None
    name = f"rdp-{float(noise_multiplier).hex()}-{float(sample_rate).hex()}-{_ORDERS_TAG}.npy"
    return os.path.join(directory, name)


@lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    path = _rdp_cache_file(noise_multiplier, sample_rate)
    out: np.ndarray | None = None
    if path is not None and os.path.exists(path):
        try:
            out = np.load(path, allow_pickle=False)
            if out.shape != RDP_ORDERS.shape or out.dtype != np.float64 or np.isnan(out).any():
                out = None
        except (OSError, ValueError):
            out = None
    if out is None:
        rdp = rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
        )
        out = np.asarray(rdp, dtype=np.float64)
        if path is not None:
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            try:
                np.save(tmp, out)
                os.replace(tmp, path)
            except OSError:
                pass  # a cache only
    out.setflags(write=False)
    return out


def _rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def rdp_trajectory(history: History, *, deltas: Sequence[float], at: Sequence[int]) -> list[float]:
    """RDP epsilon after each entry index in ``at`` of ``history``, at that entry's delta."""
    wanted = set(at)
    total = np.zeros_like(RDP_ORDERS)
    out = []
    for i, (sigma, q, steps) in enumerate(history):
        total = total + _rdp_per_step(sigma, q) * steps
        if i in wanted:
            out.append(_rdp_epsilon(total, deltas[i]))
    return out


# ----------------------------------------------------------------------- PRV
def _safe_half_width(history: History, delta_error: float) -> float:
    """Opacus' ``compute_safe_domain_size`` (Gopi et al., remark 5.6) with cached RDP."""
    total_steps = sum(n for _, _, n in history)
    composed = sum((_rdp_per_step(s, q) * n for s, q, n in history), np.zeros_like(RDP_ORDERS))
    width = _rdp_epsilon(composed, delta_error / 4)
    for sigma, q, _ in history:
        width = max(width, _rdp_epsilon(_rdp_per_step(sigma, q), delta_error / (8 * total_steps)))
    return max(width, PRV_EPS_ERROR) + 3


def _plan(history: History, delta_error: float) -> tuple[DomainKey, float]:
    """Ladder domain of ``history`` and the epsilon error bound its mesh implies."""
    width = _safe_half_width(history, delta_error)
    if not math.isfinite(width):
        raise ValueError("privacy loss is unbounded (noise multiplier too small)")
    half_width = 2.0 ** (math.ceil(4 * math.log2(width)) / 4)
    steps = sum(n for _, _, n in history)
    spread = math.sqrt(math.log(12 / delta_error) / 2)  # mesh = eps_error / (sqrt(steps) * spread)
    mesh = PRV_EPS_ERROR / (math.sqrt(1 << (steps - 1).bit_length()) * spread)
    mesh = max(mesh, 2 * half_width / (PRV_MAX_GRID - 2))
    eps_error = max(PRV_EPS_ERROR, mesh * math.sqrt(steps) * spread)
    return (half_width, mesh), eps_error


@lru_cache(maxsize=32)
def _domain(key: DomainKey) -> Domain:
    """Grid from ``-half_width`` to at least ``half_width``, 0 on it, FFT-friendly size."""
    half_width, mesh = key
    below_zero = math.ceil(half_width / mesh)
    mesh = half_width / below_zero
    size = next_fast_len(2 * below_zero + 2, real=True)
    while size % 2:
        size = next_fast_len(size + 1, real=True)
    return Domain(t_min=-half_width, t_max=-half_width + (size - 1) * mesh, size=size)


@lru_cache(maxsize=1024)
def _truncated_mean(sigma: float, q: float, half_width: float) -> float:
    prv = PoissonSubsampledGaussianPRV(sample_rate=q, noise_multiplier=sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(TruncatedPrivacyRandomVariable(prv, -half_width, half_width).mean())


class _TruncatedPRV(TruncatedPrivacyRandomVariable):
    """Opacus' PRV truncated to ``[-half_width, half_width]``, its mean cached.

    The mean (a numerical integral, the slowest part of discretising) does not
    depend on the mesh, so every domain of the same width shares it.
    """

    def __init__(self, sigma: float, q: float, half_width: float) -> None:
        prv = PoissonSubsampledGaussianPRV(sample_rate=q, noise_multiplier=sigma)
        super().__init__(prv, -half_width, half_width)
        self._mean_key = (sigma, q, half_width)

    def mean(self) -> float:
        return _truncated_mean(*self._mean_key)


@lru_cache(maxsize=64)
def _discretised(sigma: float, q: float, key: DomainKey) -> tuple[np.ndarray, float]:
    """Fourier transform of the discretised truncated PRV, and its mean shift."""
    domain = _domain(key)
    with np.errstate(divide="ignore", invalid="ignore"):  # log(1 - q) at q = 1
        dprv = discretize(_TruncatedPRV(sigma, q, key[0]), domain)
    spectrum = rfft(dprv.pmf)
    spectrum.setflags(write=False)
    return spectrum, dprv.domain.shifts


@lru_cache(maxsize=16)
def _power(sigma: float, q: float, key: DomainKey, steps: int) -> np.ndarray:
    spectrum, _ = _discretised(sigma, q, key)
    out = spectrum**steps
    out.setflags(write=False)
    return out


class _Composition:
    """Running composition of PRVs on one ladder domain (products of Fourier transforms)."""

    def __init__(self, key: DomainKey) -> None:
        self.key = key
        self.domain = _domain(key)
        self.spectrum = np.ones(self.domain.size // 2 + 1, dtype=complex)
        self.count = 0
        self.shift = 0.0

    def add(self, sigma: float, q: float, steps: int) -> None:
        self.spectrum = self.spectrum * _power(sigma, q, self.key, steps)
        self.count += steps
        self.shift += steps * _discretised(sigma, q, self.key)[1]

    def dprv(self, start: int = 0) -> DiscretePRV:
        """The composed PRV on the grid points from index ``start`` up."""
        size, dt = self.domain.size, self.domain.dt
        zero = round(-self.domain.t_min / dt)
        # The sum of `count` grid values t_min + i*dt sits at index sum(i) - (count-1)*zero
        # (Opacus' _compose_fourier rolls by the same amount on its symmetric grid).
        offset = ((self.count - 1) * zero + start) % size
        pmf = irfft(self.spectrum, n=size)
        pmf = np.concatenate([pmf[offset:], pmf[:offset]])[: size - start]
        t_min = self.domain.t_min + self.shift
        domain = Domain(t_min=t_min + start * dt, t_max=t_min + (size - 1) * dt, size=size - start)
        return DiscretePRV(pmf=pmf, domain=domain)

    def epsilon(
        self, delta: float, delta_error: float, eps_error: float, *, floor: float = -math.inf
    ) -> float:
        """Opacus' ``eps_upper`` of the composition, searched above ``floor`` first.

        ``DiscretePRV.compute_epsilon`` reads only tail sums of the pmf above
        the answer, so the grid above ``floor`` gives the same value whenever
        the answer lies above ``floor``; otherwise the whole grid is searched.
        """
        start = 0
        if math.isfinite(floor):
            start = math.floor((floor - self.domain.t_min - self.shift) / self.domain.dt) - 1
            start = max(0, start - start % 2)  # Domain sizes are even
        if start > 0:
            try:
                return float(self.dprv(start).compute_epsilon(delta, delta_error, eps_error)[2])
            except RuntimeError:  # the answer lies below `floor`
                pass
        return float(self.dprv().compute_epsilon(delta, delta_error, eps_error)[2])


class LedgerPRVAccountant(PRVAccountant):
    """Opacus' PRV accountant on a ladder domain (see the module docstring)."""

    def get_epsilon(self, delta: float, *, delta_error: float | None = None, **_: object) -> float:
        """Upper bound on epsilon at ``delta`` (Opacus' ``eps_upper``)."""
        delta_error = delta / 1000 if delta_error is None else delta_error
        key, eps_error = _plan(self.history, delta_error)
        composition = _Composition(key)
        for sigma, q, steps in self.history:
            composition.add(sigma, q, steps)
        return composition.epsilon(delta, delta_error, eps_error)


def prv_trajectory(history: History, *, deltas: Sequence[float], at: Sequence[int]) -> list[float]:
    """PRV epsilon after each entry index in ``at``; equals :class:`LedgerPRVAccountant`'s."""
    wanted = set(at)
    merged: dict[tuple[float, float], int] = {}
    pending: list[tuple[float, float, int]] = []
    composition: _Composition | None = None
    out: list[float] = []
    for i, (sigma, q, steps) in enumerate(history):
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
        pending.append((sigma, q, steps))
        if i not in wanted:
            continue
        delta_error = deltas[i] / 1000  # Opacus' default
        merged_history = [(s, r, n) for (s, r), n in merged.items()]
        key, eps_error = _plan(merged_history, delta_error)
        if composition is None or composition.key != key:
            composition = _Composition(key)
            pending = merged_history
        for s, r, n in pending:
            composition.add(s, r, n)
        pending = []
        # Epsilon only grows along a ledger at a fixed delta: search above the last one first.
        floor = out[-1] - 1.0 if out else -math.inf
        out.append(composition.epsilon(deltas[i], delta_error, eps_error, floor=floor))
    return out
