"""Real vectors as integers mod ``t`` that add up exactly over the contributors.

BFV slots hold integers modulo a small plain modulus ``t`` (about 2**20.8
here, see :mod:`fedcrm.crypto.bfv`); a fixed-point value needs more range and
precision than one slot gives. :class:`LimbCodec` writes each value ``v``
(``|v| <= bound``) as ``u = round(v * 2**scale_bits) + offset`` with
``offset = bound * 2**scale_bits`` (so ``u >= 0``) and cuts ``u`` into
``limbs`` digits of ``limb_bits`` bits each, one slot per digit. The sum of a
digit over at most ``max_contributors`` vectors stays below ``t`` (``limb_bits``
is chosen for that), so the decrypted slot sums are exact integers and
``sum(v) = (sum of digits recombined - k * offset) / 2**scale_bits`` for ``k``
contributors. Values beyond ``bound`` are clipped (and counted).

Every branch derives the same codec from public numbers only (``t``, the
number of branches in the roster, the bound and the precision asked for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedcrm.errors import EncryptionError


@dataclass(frozen=True)
class LimbCodec:
    """Fixed-point values in ``limbs`` base-``2**limb_bits`` digits (see the module docstring)."""

    plain_modulus: int
    max_contributors: int
    bound: float
    scale_bits: int
    limb_bits: int
    limbs: int

    @classmethod
    def plan(
        cls, *, plain_modulus: int, max_contributors: int, bound: float, precision_bits: int
    ) -> LimbCodec:
        """The fewest digits that carry ``|v| <= bound`` at ``2**-precision_bits``.

        Raises
        ------
        EncryptionError
            When ``max_contributors`` leave no room for a digit.
        """
        if max_contributors < 1 or not (bound > 0 and math.isfinite(bound)):
            raise EncryptionError("a codec needs >= 1 contributor and a finite bound > 0")
        limb_bits = math.floor(math.log2((plain_modulus - 1) / max_contributors))
        if limb_bits < 1:
            raise EncryptionError(
                f"{max_contributors} contributors leave no room in plain modulus {plain_modulus}"
            )
        span_bits = math.ceil(math.log2(2 * bound * 2**precision_bits + 1))
        limbs = max(1, math.ceil(span_bits / limb_bits))
        if limbs * limb_bits + math.log2(max_contributors) >= 62:
            raise EncryptionError("the bound and precision asked for need more than 62 bits")
        # Spend the digits' whole room on precision.
        scale_bits = limbs * limb_bits - math.ceil(math.log2(2 * bound + 1))
        return cls(plain_modulus, max_contributors, float(bound), scale_bits, limb_bits, limbs)

    @property
    def offset(self) -> int:
        """What is added to every scaled value so that it is non-negative."""
        return round(self.bound * 2**self.scale_bits)

    @property
    def precision(self) -> float:
        """The spacing of representable values."""
        return 2.0**-self.scale_bits

    def length(self, n_values: int) -> int:
        """Slots that ``n_values`` values take."""
        return n_values * self.limbs

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """Digits (int64 in ``[0, t)``, ``limbs`` per value, least significant first).

        Returns the digits and how many values were clipped to the bound.
        """
        v = np.asarray(values, dtype=np.float64).ravel()
        if not np.all(np.isfinite(v)):
            raise EncryptionError("values to encode must be finite")
        clipped = int(np.count_nonzero(np.abs(v) > self.bound))
        v = np.clip(v, -self.bound, self.bound)
        u = np.rint(v * 2.0**self.scale_bits).astype(np.int64) + self.offset
        base = np.int64(1) << np.int64(self.limb_bits)
        out = np.empty((v.size, self.limbs), dtype=np.int64)
        for i in range(self.limbs):
            out[:, i] = u % base
            u //= base
        return out.ravel(), clipped

    def decode(self, digit_sums: np.ndarray, contributors: int) -> np.ndarray:
        """The sum of the values of ``contributors`` encoded vectors.

        Raises
        ------
        EncryptionError
            When the digit sums cannot be a sum of ``contributors`` encodings.
        """
        d = np.asarray(digit_sums, dtype=np.int64)
        if d.size % self.limbs or not 1 <= contributors <= self.max_contributors:
            raise EncryptionError("the aggregate does not fit this codec (length or contributors)")
        most = contributors * ((1 << self.limb_bits) - 1)
        if d.size and (d.min() < 0 or d.max() > most):
            raise EncryptionError("the aggregate's digits are out of range for its contributors")
        d = d.reshape(-1, self.limbs)
        total = np.zeros(d.shape[0], dtype=np.int64)  # < 2**62: see plan()
        for i in reversed(range(self.limbs)):
            total = total * (np.int64(1) << np.int64(self.limb_bits)) + d[:, i]
        scaled = total - np.int64(contributors) * np.int64(self.offset)
        return scaled.astype(np.float64) / 2.0**self.scale_bits
