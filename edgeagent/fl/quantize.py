"""Fixed-point quantisation of real vectors into Z_2^32 for secure summation.

Masks live in Z_2^32 (uint32 arithmetic wraps), so the values summed must be
integers there too. A value ``v`` with ``|v| <= bound`` becomes
``round(v * scale) mod 2^32`` (two's complement). The sum of up to
``max_summands`` such values decodes correctly as long as it stays inside
``(-2^31, 2^31)``; ``scale`` is chosen so that the worst case uses at most
``2^(31 - headroom_bits)``, leaving ``headroom_bits`` bits for additive noise and
rounding. Stated headroom, default 1 bit: the true sum may exceed its nominal
worst case by a factor of 2 (e.g. distributed DP noise) before it wraps.

Rounding is stochastic by default (unbiased: E[q(v)] = v * scale), which keeps
the error of the sum zero-mean; deterministic rounding bounds the error of a
sum of m terms by m / (2 * scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BITS = 32
_MOD = 1 << _BITS
#: Fewest quantisation levels one box's value may get (8 bits of resolution).
_MIN_LEVELS = 256


@dataclass(frozen=True, slots=True)
class Quantizer:
    """Maps floats with ``|v| <= bound`` to uint32 so that sums of ``max_summands`` decode.

    ``clipped`` counts how many coordinates ``quantize`` had to clamp to the
    bound in its last call (a caller that sees non-zero values mis-set the bound).
    """

    bound: float
    max_summands: int
    headroom_bits: int = 1

    def __post_init__(self) -> None:
        if not np.isfinite(self.bound) or self.bound <= 0:
            raise ValueError(f"bound must be a positive finite number, got {self.bound!r}")
        if self.max_summands < 1:
            raise ValueError(f"max_summands must be >= 1, got {self.max_summands!r}")
        if not 0 <= self.headroom_bits <= 16:
            raise ValueError(f"headroom_bits must be in 0..16, got {self.headroom_bits!r}")
        if self.scale * self.bound < _MIN_LEVELS:
            raise ValueError(
                f"max_summands {self.max_summands} leaves fewer than {_MIN_LEVELS} levels per "
                "box value; split the boxes into groups or lower headroom_bits"
            )

    @property
    def scale(self) -> float:
        """Fixed-point steps per unit: worst-case |sum| maps to 2^(31 - headroom_bits)."""
        return float(2 ** (_BITS - 1 - self.headroom_bits)) / (self.bound * self.max_summands)

    @property
    def step(self) -> float:
        """Size of one quantisation step in the original units."""
        return 1.0 / self.scale

    def quantize(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, int]:
        """Return ``(uint32 vector, number of clamped coordinates)``.

        ``rng`` given: stochastic rounding (unbiased); ``None``: round to nearest.
        NaN or infinite input is refused: a single NaN would poison the whole sum.
        """
        v = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError("cannot quantise NaN or infinite values")
        clamped = int(np.count_nonzero(np.abs(v) > self.bound))
        v = np.clip(v, -self.bound, self.bound) * self.scale
        if rng is None:
            q = np.rint(v)
        else:
            floor = np.floor(v)
            q = floor + (rng.random(v.shape) < (v - floor))
        return q.astype(np.int64).astype(np.uint32), clamped

    def dequantize(self, total: np.ndarray) -> np.ndarray:
        """Decode a uint32 sum (two's complement) back into float64 units."""
        t = np.asarray(total, dtype=np.uint32).astype(np.int64)
        t = np.where(t >= _MOD // 2, t - _MOD, t)
        return t.astype(np.float64) / self.scale


def add_mod(acc: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """``acc + vec`` in Z_2^32 (in place on ``acc``, returned for chaining)."""
    np.add(acc, vec, out=acc, casting="unsafe")
    return acc


def sub_mod(acc: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """``acc - vec`` in Z_2^32 (in place on ``acc``)."""
    np.subtract(acc, vec, out=acc, casting="unsafe")
    return acc
