"""Fixed-point quantisation of real vectors into Z_2^b for secure summation.

Masks live in Z_2^b with ``b = bits`` (32 by default; uint32 arithmetic wraps
mod 2^32, and since 2^b divides 2^32 every sum reduced mod 2^b is the sum in
Z_2^b), so the values summed must be integers there too. A value ``v`` with
``|v| <= bound`` becomes ``round(v * scale) mod 2^b`` (two's complement), with
``scale = levels / bound`` and ``levels = (2^(b - 1 - headroom_bits) - 1) //
max_summands``: each box's value is an integer in ``[-levels, levels]`` (the
input is clamped to the bound first), so the sum of ``max_summands`` of them
stays inside ``(-2^(b-1), 2^(b-1))`` and decodes exactly, whatever the inputs.
Stated headroom, default 1 bit: the true sum may exceed its nominal worst case
by a factor of ``2^headroom_bits`` before it wraps.

Fewer bits per coordinate means fewer bytes on the wire: ``field_bits(v, m)``
sizes the field for ``v``-bit values summed over ``m`` boxes (``v +
ceil(log2 m)``), and ``pack``/``unpack`` write exactly ``b`` bits per
coordinate. With ``v = 8`` a box's value gets 255 levels (at least), which
stochastic rounding keeps unbiased.

Why a rotation: an L2 clip bounds each coordinate only by the whole norm, so
over that bound 8 bits leave an update of norm ``c`` with noise of norm about
``sqrt(d) * c / 254``, more than the update itself for d in the thousands. A
random orthonormal rotation (random signs, then the discrete Hartley
transform, ``rotate``) spreads the norm evenly: every coordinate is then about
``N(0, c^2 / d)``, so a bound of ``ROTATED_SIGMAS * c / sqrt(d)`` is almost
never reached (a coordinate beyond it is clamped and counted) and the noise
shrinks to about ``ROTATED_SIGMAS * c / 254``. The rotation is linear, so the
aggregator rotates the unmasked *sum* back (``unrotate``); its signs come from
the round nonce, which every box and the aggregator share (Kairouz et al. 2021,
"The Distributed Discrete Gaussian Mechanism", use a randomised Hadamard
transform the same way).

Rounding is stochastic by default (unbiased: E[q(v)] = v * scale), which keeps
the error of the sum zero-mean; deterministic rounding bounds the error of a
sum of m terms by m / (2 * scale).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

_BITS = 32
#: Fewest quantisation levels on each side of zero one box's value may get (an 8-bit
#: signed value: 255 levels in all).
_MIN_LEVELS = 127
#: Value widths a deployment may choose for updates inside secure aggregation.
VALUE_BITS = (8, 16, 32)


#: Rotated coordinates are bounded at this many standard deviations of a full-norm update.
ROTATED_SIGMAS = 6.0
_ROTATE_CONTEXT = b"edgeagent/fl/rotate/v1\x00"


def _signs(n: int, seed: bytes) -> np.ndarray:
    """``n`` random signs from SHAKE-256 of ``seed``: identical on every machine and numpy."""
    raw = hashlib.shake_256(_ROTATE_CONTEXT + seed).digest((n + 7) // 8)
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:n]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _hartley(x: np.ndarray) -> np.ndarray:
    """Orthonormal discrete Hartley transform (its own inverse), any length."""
    f = np.fft.fft(x)
    return (f.real - f.imag) / math.sqrt(x.size)


def rotate(x: np.ndarray, seed: bytes) -> np.ndarray:
    """The round's random rotation of ``x`` (orthonormal: norms and Gaussian noise keep)."""
    v = np.asarray(x, np.float64)
    return _hartley(_signs(v.size, seed) * v)


def unrotate(y: np.ndarray, seed: bytes) -> np.ndarray:
    """Inverse of ``rotate`` with the same seed."""
    v = np.asarray(y, np.float64)
    return _signs(v.size, seed) * _hartley(v)


def field_bits(value_bits: int, max_summands: int, headroom_bits: int = 0) -> int:
    """Bits of the modular sum for ``value_bits``-bit values over ``max_summands`` boxes.

    ``value_bits + ceil(log2(max_summands)) + headroom_bits``, at most 32: the
    sum of that many values of ``value_bits`` bits (sign included) never wraps.
    """
    if value_bits not in VALUE_BITS:
        raise ValueError(f"value_bits must be one of {VALUE_BITS}, got {value_bits!r}")
    if max_summands < 1 or headroom_bits < 0:
        raise ValueError("max_summands must be >= 1 and headroom_bits >= 0")
    return min(_BITS, value_bits + math.ceil(math.log2(max_summands)) + headroom_bits)


def packed_bytes(n: int, bits: int) -> int:
    """Length of ``n`` values packed at ``bits`` bits each."""
    return (n * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """``bits`` bits per value (each ``< 2^bits``), least significant first, little-endian.

    At 8, 16 and 32 bits this is the plain little-endian array; other widths are
    a bit stream (the last byte's unused high bits zero).
    """
    v = np.asarray(values, dtype=np.uint32)
    if bits in (8, 16, 32):
        return v.astype(f"<u{bits // 8}").tobytes()
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits!r}")
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, n: int) -> np.ndarray:
    """The ``n`` uint32 values ``pack`` wrote; ``ValueError`` on a wrong length or stray bits."""
    if len(data) != packed_bytes(n, bits):
        raise ValueError(f"{len(data)} bytes cannot hold exactly {n} values of {bits} bits")
    if bits in (8, 16, 32):
        return np.frombuffer(data, dtype=f"<u{bits // 8}").astype(np.uint32)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if flat[n * bits :].any():
        raise ValueError("packed values carry non-zero padding bits")
    planes = flat[: n * bits].reshape(n, bits).astype(np.uint32)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)


@dataclass(frozen=True, slots=True)
class Quantizer:
    """Maps floats with ``|v| <= bound`` into Z_2^bits so that sums of ``max_summands`` decode.

    ``clipped`` counts how many coordinates ``quantize`` had to clamp to the
    bound in its last call (a caller that sees non-zero values mis-set the bound).
    """

    bound: float
    max_summands: int
    headroom_bits: int = 1
    #: Width of the modular sum (the SecAgg field): 32, or fewer for quantised updates.
    bits: int = _BITS
    #: > 0: the last coordinate (a FedAvg payload's n_k) has this bound of its own, so the
    #: update coordinates get the resolution of their own bound (n_cap * clip), not n_cap's.
    count_bound: float = 0.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.bound) or self.bound <= 0:
            raise ValueError(f"bound must be a positive finite number, got {self.bound!r}")
        if self.max_summands < 1:
            raise ValueError(f"max_summands must be >= 1, got {self.max_summands!r}")
        if not 0 <= self.headroom_bits <= 16:
            raise ValueError(f"headroom_bits must be in 0..16, got {self.headroom_bits!r}")
        if not np.isfinite(self.count_bound) or self.count_bound < 0:
            raise ValueError(f"count_bound must be finite and >= 0, got {self.count_bound!r}")
        if not 2 <= self.bits <= _BITS or self.headroom_bits > self.bits - 2:
            raise ValueError(f"bits must be in 2..32 and above the headroom, got {self.bits!r}")
        if self.levels < _MIN_LEVELS:
            raise ValueError(
                f"max_summands {self.max_summands} leaves {self.levels} < {_MIN_LEVELS} levels "
                f"per box value in {self.bits} bits; split the boxes into groups, widen the "
                "field or lower headroom_bits"
            )

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def levels(self) -> int:
        """Largest |integer| one box's value becomes: ``max_summands`` of them never wrap."""
        return ((1 << (self.bits - 1 - self.headroom_bits)) - 1) // self.max_summands

    @property
    def scale(self) -> float:
        """Fixed-point steps per unit: ``bound`` maps to ``levels``."""
        return self.levels / self.bound

    def _bounds(self, n: int) -> float | np.ndarray:
        """The bound of each of ``n`` coordinates (a scalar unless ``count_bound`` is set)."""
        if not self.count_bound or n < 1:
            return self.bound
        b = np.full(n, self.bound)
        b[-1] = self.count_bound
        return b

    @property
    def step(self) -> float:
        """Size of one quantisation step in the original units."""
        return 1.0 / self.scale

    def quantize(
        self, values: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, int]:
        """Return ``(uint32 vector of values mod 2^bits, number of clamped coordinates)``.

        ``rng`` given: stochastic rounding (unbiased); ``None``: round to nearest.
        NaN or infinite input is refused: a single NaN would poison the whole sum.
        """
        v = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError("cannot quantise NaN or infinite values")
        bound = self._bounds(v.size)
        clamped = int(np.count_nonzero(np.abs(v) > bound))
        v = np.clip(v, -bound, bound) * (self.levels / bound)
        if rng is None:
            q = np.rint(v)
        else:
            floor = np.floor(v)
            q = floor + (rng.random(v.shape) < (v - floor))
        return self.reduce(q.astype(np.int64).astype(np.uint32)), clamped

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """``values mod 2^bits`` (in place on a uint32 array, returned for chaining)."""
        v = np.asarray(values, dtype=np.uint32)
        if self.bits < _BITS:
            np.bitwise_and(v, np.uint32(self.modulus - 1), out=v)
        return v

    def dequantize(self, total: np.ndarray) -> np.ndarray:
        """Decode a sum in Z_2^bits (two's complement) back into float64 units.

        ``total`` may be any uint32 sum of values and masks: it is reduced mod 2^bits first.
        """
        t = self.reduce(np.array(total, dtype=np.uint32)).astype(np.int64)
        t = np.where(t >= self.modulus // 2, t - self.modulus, t)
        return t.astype(np.float64) * (self._bounds(t.size) / self.levels)


def add_mod(acc: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """``acc + vec`` in Z_2^32, hence in every Z_2^b (in place on ``acc``, returned)."""
    np.add(acc, vec, out=acc, casting="unsafe")
    return acc


def sub_mod(acc: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """``acc - vec`` in Z_2^32 (in place on ``acc``)."""
    np.subtract(acc, vec, out=acc, casting="unsafe")
    return acc
