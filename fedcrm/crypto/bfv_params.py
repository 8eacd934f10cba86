"""The numbers behind fedcrm's BFV encryption and the maths that justifies them.

BFV runs with polynomial degree N = 8192, a 60-bit coefficient modulus and a
prime plain modulus ``t = 1 mod 2N``. Here are those constants, the HE
standard's bounds that give their security level, and the exact bound on the
probability that a sum of fresh ciphertexts decrypts wrong, from which
:func:`choose_plain_modulus` picks the largest ``t`` meeting the target for
the maximum number of contributions. Why each number is what it is is told
in :mod:`fedcrm.crypto.bfv`.
"""

from __future__ import annotations

import math

import tenseal.sealapi as seal

from fedcrm.crypto.bfv_wire import MAX_CONTRIBUTIONS

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (30, 30)
PLAIN_MODULUS = 1785857
FAILURE_LOG2_TARGET = -40.0
CBD_WIDTH = 21  # SEAL's centred binomial noise: Hamming weight difference of two 21-bit strings
HE_STANDARD_MAX_LOG_Q = {128: 218, 192: 152, 256: 118}  # N = 8192, ternary secret


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    if n < 2 or any(n % p == 0 for p in bases):
        return n in bases
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def data_modulus() -> int:
    """The prime SEAL picks as the data modulus ``q`` for N = 8192, [30, 30]."""
    return int(seal.CoeffModulus.Create(POLY_MODULUS_DEGREE, list(COEFF_MOD_BIT_SIZES))[0].value())


def decryption_failure_log2(
    *, plain_modulus: int, data_modulus: int, contributions: int, degree: int = POLY_MODULUS_DEGREE
) -> float:
    """log2 of an upper bound on the probability that a sum of fresh ciphertexts decrypts wrong.

    Union bound over the ``degree`` coefficients of ``P(|B - 21K| >= q/(2t) -
    K/2)`` with ``B ~ Binomial(42K, 1/2)`` (exact, integer arithmetic); see
    the docstring of :mod:`fedcrm.crypto.bfv`.
    """
    n, centre = 2 * CBD_WIDTH * contributions, CBD_WIDTH * contributions
    bound = math.ceil(data_modulus / (2 * plain_modulus) - contributions / 2)
    if bound <= 0:
        return 0.0
    term, tail = math.comb(n, centre + bound) if centre + bound <= n else 0, 0
    for k in range(centre + bound, n + 1):  # C(n, k+1) = C(n, k) * (n-k) / (k+1), exactly
        tail += term
        term = term * (n - k) // (k + 1)
    tail *= 2
    if tail == 0:
        return -math.inf
    return min(0.0, math.log2(tail) - n + math.log2(degree))


def choose_plain_modulus(
    contributions: int = MAX_CONTRIBUTIONS, *, target_log2: float = FAILURE_LOG2_TARGET
) -> int:
    """The largest prime ``t = 1 mod 2N`` whose sums of ``contributions`` meet ``target_log2``.

    The failure probability grows with ``t``, so candidates are tried upwards
    until the first one that misses the target.
    """
    q, step = data_modulus(), 2 * POLY_MODULUS_DEGREE
    best = None
    for k in range(1, q // step):
        t = k * step + 1
        if not _is_prime(t):
            continue
        failure = decryption_failure_log2(
            plain_modulus=t, data_modulus=q, contributions=contributions
        )
        if failure > target_log2:
            break
        best = t
    if best is None:
        raise ValueError("no plain modulus meets the target")
    return best


def security_level_bits() -> int:
    """The HE-standard security level of the coefficient modulus (N = 8192)."""
    log_q = sum(COEFF_MOD_BIT_SIZES)
    return max(level for level, bound in HE_STANDARD_MAX_LOG_Q.items() if log_q <= bound)
