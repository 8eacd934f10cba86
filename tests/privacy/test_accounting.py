"""Accounting against independent results: closed forms, Opacus itself, round trips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from fedcrm.errors import PrivacyError
from fedcrm.privacy.accounting import (
    Mechanism,
    check_delta,
    compute_epsilon,
    default_delta,
    epsilon_trajectory,
    merge_history,
    noise_multiplier_for,
)

DELTA = 1e-5


def sgd(sigma: float, q: float = 0.04, steps: int = 25) -> Mechanism:
    return Mechanism("dp-sgd", noise_multiplier=sigma, sample_rate=q, steps=steps)


def gaussian_epsilon_exact(*, noise_multiplier: float, steps: int, delta: float) -> float:
    """Exact epsilon of `steps` Gaussian releases (Balle & Wang 2018, Theorem 8)."""
    mu = math.sqrt(steps) / noise_multiplier

    def delta_of(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(delta_of, 0.0, 100.0)


@pytest.mark.parametrize(("sigma", "steps"), [(2.0, 1), (8.0, 30), (30.0, 200)])
def test_gaussian_mechanism_matches_the_analytic_gaussian(sigma: float, steps: int) -> None:
    exact = gaussian_epsilon_exact(noise_multiplier=sigma, steps=steps, delta=DELTA)
    mechanism = Mechanism.gaussian(noise_multiplier=sigma, sensitivity=1.0, steps=steps)

    prv = compute_epsilon([mechanism], delta=DELTA, accountant="prv")
    rdp = compute_epsilon([mechanism], delta=DELTA, accountant="rdp")

    # PRV is an upper bound within its error (eps_error 0.01 plus the delta_error shift).
    assert exact - 1e-3 <= prv <= exact + 0.03
    assert rdp >= exact


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, 0.04, 25), (3.0, 0.01, 400)])
def test_prv_and_rdp_agree_and_prv_is_tighter(sigma: float, q: float, steps: int) -> None:
    mechanisms = [sgd(sigma, q, steps)]

    prv = compute_epsilon(mechanisms, delta=DELTA, accountant="prv")
    rdp = compute_epsilon(mechanisms, delta=DELTA, accountant="rdp")

    assert 0.7 * rdp <= prv <= rdp


def test_equals_opacus_accountants_on_the_same_history() -> None:
    mechanisms = [sgd(1.0, steps=25), sgd(1.5, q=0.02, steps=40)]
    history = [(1.0, 0.04, 25), (1.5, 0.02, 40)]
    rdp_accountant, prv_accountant = RDPAccountant(), PRVAccountant()
    rdp_accountant.history, prv_accountant.history = list(history), list(history)

    rdp = compute_epsilon(mechanisms, delta=DELTA, accountant="rdp")
    prv = compute_epsilon(mechanisms, delta=DELTA, accountant="prv")

    assert rdp == pytest.approx(rdp_accountant.get_epsilon(DELTA), rel=1e-12)
    # The ladder domain is finer and wider than Opacus' own: the same bound to ~1e-6.
    assert prv == pytest.approx(prv_accountant.get_epsilon(DELTA), abs=1e-5)


def test_merging_identical_mechanisms_equals_not_merging() -> None:
    rounds = [sgd(1.2, steps=10), sgd(1.2, steps=15), sgd(0.9, q=0.05, steps=5), sgd(1.2, steps=5)]
    unmerged = [(m.noise_multiplier, m.sample_rate, m.steps) for m in rounds]
    assert merge_history(rounds) == [(1.2, 0.04, 30), (0.9, 0.05, 5)]
    for accountant in (RDPAccountant(), PRVAccountant()):
        accountant.history = list(unmerged)  # Opacus composing every entry separately

        merged = compute_epsilon(rounds, delta=DELTA, accountant=accountant.mechanism())

        assert merged == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-4)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_epsilon_grows_with_steps(accountant: str) -> None:
    # 1..40 steps crosses the PRV domain ladder at 2, 4, 8, 16 and 32 steps.
    mechanisms = [sgd(1.0, steps=1)] * 40

    trajectory = epsilon_trajectory(mechanisms, deltas=[DELTA] * 40, accountants=[accountant] * 40)

    assert np.all(np.diff(trajectory) > 0)


def test_trajectory_equals_composing_every_prefix() -> None:
    mechanisms = [sgd(1.0 + 0.5 * (i % 3), steps=5 + i) for i in range(8)]
    mechanisms.append(Mechanism.gaussian(noise_multiplier=20.0, sensitivity=2.0, steps=4))
    deltas = [1e-5] * 5 + [1e-6] * 4
    accountants = ["prv", "rdp", "prv", "prv", "rdp", "prv", "prv", "rdp", "prv"]

    trajectory = epsilon_trajectory(mechanisms, deltas=deltas, accountants=accountants)

    for i, epsilon in enumerate(trajectory):
        direct = compute_epsilon(mechanisms[: i + 1], delta=deltas[i], accountant=accountants[i])
        assert epsilon == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_noise_multiplier_round_trip(accountant: str) -> None:
    sigma = noise_multiplier_for(
        target_epsilon=2.0, delta=DELTA, sample_rate=0.04, steps=125, accountant=accountant
    )

    epsilon = compute_epsilon([sgd(sigma, steps=125)], delta=DELTA, accountant=accountant)

    assert 2.0 - 0.011 <= epsilon <= 2.0


@pytest.mark.parametrize(
    ("target", "q", "steps", "accountant"),
    [(0.5, 0.5, 1, "rdp"), (8, 0.2, 4, "prv"), (1, 0.001, 1, "prv"), (4, 0.032, 160, "prv"),
     (0.3, 0.2, 1000, "prv"), (4, 1.0, 4, "rdp"), (8, 0.01, 1000, "prv")],
)  # fmt: skip
def test_noise_search_lands_in_the_band_with_few_accountant_calls(
    target: float, q: float, steps: int, accountant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call costs 0.1-0.5 s in a deployed branch's first round: interpolate, not bisect."""
    from fedcrm.privacy import accounting

    calls: list[float] = []

    def counted(mechanisms: list, **kw: object) -> float:
        calls.append(mechanisms[-1].noise_multiplier)
        return compute_epsilon(mechanisms, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(accounting, "compute_epsilon", counted)
    sigma = noise_multiplier_for(
        target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps, accountant=accountant
    )
    epsilon = compute_epsilon([sgd(sigma, q=q, steps=steps)], delta=DELTA, accountant=accountant)
    assert target - 0.01 <= epsilon <= target
    assert len(calls) <= 10, calls  # bisection took 7-14 on such cases (delta 1e-5)


def test_noise_multiplier_accounts_for_prior_runs() -> None:
    prior = [sgd(1.0, steps=50)]
    spent = compute_epsilon(prior, delta=DELTA, accountant="rdp")

    sigma = noise_multiplier_for(
        target_epsilon=spent + 1.0,
        delta=DELTA,
        sample_rate=0.04,
        steps=50,
        accountant="rdp",
        prior=prior,
    )

    total = compute_epsilon([*prior, sgd(sigma, steps=50)], delta=DELTA, accountant="rdp")
    assert spent + 1.0 - 0.011 <= total <= spent + 1.0


def test_unreachable_target_is_a_clear_error() -> None:
    prior = [sgd(0.8, steps=200)]
    with pytest.raises(PrivacyError, match=r"target epsilon 0\.5 unreachable with 25 steps"):
        noise_multiplier_for(
            target_epsilon=0.5,
            delta=DELTA,
            sample_rate=0.04,
            steps=25,
            accountant="rdp",
            prior=prior,
        )


def test_default_delta_is_a_power_of_ten_strictly_below_one_over_ten_n() -> None:
    assert default_delta(2000) == pytest.approx(1e-5)
    assert default_delta(1000) == pytest.approx(1e-5)  # 1e-4 is not strictly below
    assert default_delta(1001) == pytest.approx(1e-5)
    assert default_delta(1) == pytest.approx(1e-2)
    for n in (1, 7, 999, 1000, 12345, 10**6):
        delta = default_delta(n)
        assert delta < 1 / (10 * n)
        assert math.log10(delta) == pytest.approx(round(math.log10(delta)))


def test_delta_not_below_one_over_n_is_refused() -> None:
    check_delta(1e-4, 2000, "b1")
    with pytest.raises(PrivacyError, match=r"branch b1: delta 0\.001 is not below 1/n"):
        check_delta(1e-3, 1000, "b1")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "laplace"},
        {"noise_multiplier": 0.0},
        {"noise_multiplier": float("nan")},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"steps": 2.5},
    ],
)
def test_invalid_mechanisms_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "name": "dp-sgd",
        "noise_multiplier": 1.0,
        "sample_rate": 0.1,
        "steps": 1,
    }
    args.update(kwargs)
    with pytest.raises(PrivacyError):
        Mechanism(**args)  # type: ignore[arg-type]


def test_no_mechanism_spends_nothing() -> None:
    assert compute_epsilon([], delta=DELTA, accountant="prv") == 0.0
    with pytest.raises(PrivacyError, match="unknown accountant"):
        compute_epsilon([sgd(1.0)], delta=DELTA, accountant="gdp")  # type: ignore[arg-type]


def test_rdp_vectors_kept_on_disk_are_opacus_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployed branch's fresh processes share per-step RDP vectors (FEDCRM_RDP_CACHE)."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    from fedcrm.deploy import warm_exec
    from fedcrm.privacy import composition

    assert warm_exec.RDP_CACHE_ENV == composition.RDP_CACHE_ENV
    monkeypatch.setenv(composition.RDP_CACHE_ENV, str(tmp_path))
    sigma, q = 1.2345, 0.0321
    want = rdp_analysis.compute_rdp(
        q=q, noise_multiplier=sigma, steps=1, orders=list(composition.RDP_ORDERS)
    )
    composition._rdp_per_step.cache_clear()
    first = composition._rdp_per_step(sigma, q)
    (stored,) = tmp_path.glob("rdp-*.npy")
    composition._rdp_per_step.cache_clear()  # as in the next message's process
    np.testing.assert_array_equal(composition._rdp_per_step(sigma, q), want)
    np.testing.assert_array_equal(first, want)
    # A damaged file is not trusted: the vector is computed again.
    np.save(stored, np.zeros(3))
    composition._rdp_per_step.cache_clear()
    np.testing.assert_array_equal(composition._rdp_per_step(sigma, q), want)
    composition._rdp_per_step.cache_clear()
