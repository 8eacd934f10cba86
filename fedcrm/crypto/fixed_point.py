"""Fixed-point encoding of real vectors as integers mod ``t`` whose sums never wrap.

Range arithmetic
----------------
A value ``x`` becomes ``q = round(x * scale)`` (to nearest, ties to even),
clipped to ``[-R, R]`` with ``R = floor((t - 1) / (2 K))`` where ``K`` is the
most contributions a sum may hold, and is stored as ``q mod t`` (a negative
``q`` as ``t + q``). A sum of at most ``K`` such values lies in ``[-K R, K R]
⊆ [-(t-1)/2, (t-1)/2]``: each integer of that interval has exactly one residue
mod ``t``, so :func:`dequantize` reads the true sum back from the sum mod
``t`` (residues above ``(t-1)/2`` are the negative ones). Masks uniform mod
``t`` cancel exactly in the sum, so the same holds for masked values.

With fedcrm's BFV plain modulus ``t = 1785857`` and ``K = 64``: ``R = 13952``,
so at ``scale = 2**8`` each contribution may carry values in ``[-54.5, 54.5]``
at a resolution of ``1/256``; with ``K = 10``, ``R = 89292``. Pick ``scale``
from the range the values are known to have (e.g. a clipping norm), and send
weights as fractions or small integers, not raw example counts. Values
outside the range are clipped (and counted in a log line), never wrapped.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedcrm.errors import EncryptionError

logger = logging.getLogger(__name__)


def max_abs_quantized(*, plain_modulus: int, max_contributors: int) -> int:
    """``R``: the largest ``|round(x * scale)|`` one contribution may carry."""
    if max_contributors < 1 or plain_modulus < 3:
        raise EncryptionError("max_contributors must be >= 1 and the plain modulus >= 3")
    bound = (plain_modulus - 1) // (2 * max_contributors)
    if bound < 1:
        raise EncryptionError(f"plain modulus {plain_modulus} too small for {max_contributors}")
    return bound


def max_abs_value(*, scale: float, plain_modulus: int, max_contributors: int) -> float:
    """The largest ``|x|`` :func:`quantize` keeps without clipping."""
    return max_abs_quantized(plain_modulus=plain_modulus, max_contributors=max_contributors) / scale


def quantize(values: Any, *, scale: float, plain_modulus: int, max_contributors: int) -> np.ndarray:
    """Encode real values as integers mod ``t`` (see the module docstring for the range).

    Parameters
    ----------
    values
        Flat array of finite reals.
    scale
        Fixed-point scale (> 0): resolution ``1 / scale``.
    plain_modulus
        ``t``.
    max_contributors
        ``K``, the most contributions any sum of these values will hold.

    Returns
    -------
    numpy.ndarray
        int64 residues in ``[0, t)``.

    Raises
    ------
    EncryptionError
        Non-finite values, a non-positive scale, or a range below one step.
    """
    bound = max_abs_quantized(plain_modulus=plain_modulus, max_contributors=max_contributors)
    if not np.isfinite(scale) or scale <= 0:
        raise EncryptionError(f"scale must be finite and positive, got {scale!r}")
    vec = np.asarray(values, dtype=np.float64)
    if vec.ndim != 1:
        raise EncryptionError(f"expected a flat vector, got shape {vec.shape}")
    if not np.all(np.isfinite(vec)):
        raise EncryptionError("values contain NaN or infinity; refusing to quantize")
    scaled = np.rint(vec * scale)
    clipped = int(np.count_nonzero(np.abs(scaled) > bound))
    if clipped:
        logger.warning(
            "%d of %d values clipped to +-%.6g (fixed-point range for %d contributions)",
            clipped,
            vec.size,
            bound / scale,
            max_contributors,
        )
    return np.clip(scaled, -bound, bound).astype(np.int64) % plain_modulus


def dequantize(sum_mod_t: Any, *, scale: float, plain_modulus: int) -> np.ndarray:
    """Decode a sum of quantized values (residues mod ``t``) to reals (signed).

    Raises
    ------
    EncryptionError
        A residue outside ``[0, t)`` or a non-positive scale.
    """
    if not np.isfinite(scale) or scale <= 0:
        raise EncryptionError(f"scale must be finite and positive, got {scale!r}")
    vec = np.asarray(sum_mod_t, dtype=np.int64)
    if vec.size and (vec.min() < 0 or vec.max() >= plain_modulus):
        raise EncryptionError(f"residues must lie in [0, {plain_modulus})")
    signed = np.where(vec > (plain_modulus - 1) // 2, vec - plain_modulus, vec)
    return signed.astype(np.float64) / scale
