"""Shamir secret sharing over GF(2^128), share-compatible with pycryptodome, but fast.

Why not ``Crypto.Protocol.SecretSharing.Shamir`` directly: its field
multiplication walks the 128 bits of an operand in Python with string
building per bit (~50 us per product) and ``combine`` inverts one element
per share, so a 16-of-31 split costs ~27 ms and a combine ~55 ms per 16-byte
chunk here. SecAgg+ does three chunks per box on every box and per survivor
on the aggregator, which made Shamir the largest cost of a 1,000-box round.

This module uses the same field (x^128 + x^7 + x^2 + x + 1, big-endian
16-byte encoding), the same polynomial layout (constant term = secret,
random coefficients from the OS CSPRNG) and the same share indices (1..n),
so shares interoperate with pycryptodome in both directions (tested). Two
facts make it fast: share indices are small integers, so evaluating the
polynomial (Horner) only multiplies by elements of a few bits; and the
Lagrange coefficients at 0 depend only on the set of indices, so they are
computed once per index set and cached.

As with pycryptodome, combining too few or corrupted shares returns garbage
silently: callers must check the result against a commitment.
"""

from __future__ import annotations

import os
from functools import lru_cache

_IRR_LOW = (1 << 7) | (1 << 2) | (1 << 1) | 1  # x^128 = x^7 + x^2 + x + 1
_MASK = (1 << 128) - 1
CHUNK = 16


def _reduce(r: int) -> int:
    """Reduce a carry-less product (< 2^255) modulo the field polynomial."""
    while r >> 128:
        hi = r >> 128
        r = (r & _MASK) ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7)
    return r


def _clmul(a: int, b: int) -> int:
    """Carry-less product (no reduction); loops over the bits of the smaller operand."""
    if a < b:
        a, b = b, a
    r = 0
    i = 0
    while b:
        if b & 1:
            r ^= a << i
        b >>= 1
        i += 1
    return r


def mul(a: int, b: int) -> int:
    """Product in GF(2^128)."""
    return _reduce(_clmul(a, b))


#: Squaring in characteristic 2 spreads the bits: byte -> 16-bit value with zeros between.
_SPREAD = tuple(sum(((b >> i) & 1) << (2 * i) for i in range(8)) for b in range(256))


def square(a: int) -> int:
    """a^2 in GF(2^128) by bit spreading (much cheaper than a general product)."""
    r = 0
    for i in range(16):
        r |= _SPREAD[(a >> (8 * i)) & 0xFF] << (16 * i)
    return _reduce(r)


def inverse(a: int) -> int:
    """a^(2^128 - 2) by Itoh-Tsujii: 127 squarings and 12 products."""
    if a == 0:
        raise ValueError("inversion of zero")
    beta, k = a, 1  # beta = a^(2^k - 1)
    for bit in bin(127)[3:]:
        t = beta
        for _ in range(k):
            t = square(t)
        beta, k = mul(t, beta), 2 * k
        if bit == "1":
            beta, k = mul(square(beta), a), k + 1
    return square(beta)


def split(k: int, n: int, secret: bytes) -> list[tuple[int, bytes]]:
    """``n`` shares (index 1..n, 16 bytes each) of a 16-byte secret, any ``k`` rebuild it."""
    if len(secret) != CHUNK:
        raise ValueError("secret must be 16 bytes")
    if not 1 <= k <= n <= 255:
        raise ValueError(f"need 1 <= k ({k}) <= n ({n}) <= 255")
    coeffs = [int.from_bytes(os.urandom(CHUNK), "big") for _ in range(k - 1)]
    coeffs.append(int.from_bytes(secret, "big"))
    out = []
    for x in range(1, n + 1):
        y = 0
        for c in coeffs:  # Horner, highest degree first (as pycryptodome)
            y = _reduce(_clmul(y, x)) ^ c
        out.append((x, y.to_bytes(CHUNK, "big")))
    return out


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_j with f(0) = sum_j l_j * f(x_j) for distinct indices ``xs``."""
    if len(set(xs)) != len(xs) or not all(1 <= x <= 255 for x in xs):
        raise ValueError("share indices must be distinct and in 1..255")
    nums, dens = [], []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:  # small-by-large products: cheap
                num = mul(num, xm)
                den = mul(den, xm ^ xj)
        nums.append(num)
        dens.append(den)
    # one inversion for all denominators (Montgomery's batch trick)
    prefix = [1]
    for d in dens:
        prefix.append(mul(prefix[-1], d))
    inv = inverse(prefix[-1])
    out = [0] * len(xs)
    for j in range(len(xs) - 1, -1, -1):
        out[j] = mul(nums[j], mul(inv, prefix[j]))
        inv = mul(inv, dens[j])
    return tuple(out)


def combine(shares: list[tuple[int, bytes]]) -> bytes:
    """The secret from ``(index, 16-byte share)`` pairs (exactly ``k`` of them, as pycryptodome)."""
    xs = tuple(int(i) for i, _ in shares)
    coeffs = lagrange_at_zero(xs)
    acc = 0
    for lj, (_, y) in zip(coeffs, shares, strict=True):
        if len(y) != CHUNK:
            raise ValueError("shares must be 16 bytes")
        acc ^= mul(lj, int.from_bytes(y, "big"))
    return acc.to_bytes(CHUNK, "big")
