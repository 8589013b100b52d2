"""Fixed-point quantisation into Z_2^b: sums decode exactly within the stated error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.fl.quantize import (
    ROTATED_SIGMAS,
    Quantizer,
    add_mod,
    field_bits,
    pack,
    packed_bytes,
    rotate,
    sub_mod,
    unpack,
    unrotate,
)


def test_sum_of_worst_case_values_does_not_wrap() -> None:
    q = Quantizer(bound=3.0, max_summands=1000, headroom_bits=1)
    total = np.zeros(2, dtype=np.uint32)
    for _ in range(1000):
        add_mod(total, q.quantize(np.array([3.0, -3.0]))[0])
    np.testing.assert_allclose(q.dequantize(total), [3000.0, -3000.0], atol=1000 * q.step)


def test_headroom_is_the_stated_factor() -> None:
    q = Quantizer(bound=1.0, max_summands=10, headroom_bits=1)
    one = q.quantize(np.array([1.0]))[0]
    total = np.zeros(1, dtype=np.uint32)
    for _ in range(19):  # 1.9 x the nominal worst case still decodes
        add_mod(total, one)
    assert q.dequantize(total)[0] == pytest.approx(19.0, abs=1e-6)
    for _ in range(2):  # 2.1 x wraps around: this is where the headroom ends
        add_mod(total, one)
    assert q.dequantize(total)[0] < 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=20),
    st.integers(1, 30),
)
def test_deterministic_rounding_error_bound(values: list[float], m: int) -> None:
    q = Quantizer(bound=50.0, max_summands=30)
    v = np.array(values)
    total = np.zeros(v.size, dtype=np.uint32)
    for _ in range(m):
        add_mod(total, q.quantize(v)[0])
    assert np.all(np.abs(q.dequantize(total) - m * v) <= m * q.step / 2 + 1e-9)


def test_stochastic_rounding_is_unbiased() -> None:
    q = Quantizer(bound=1.0, max_summands=2**20)  # coarse steps make bias visible
    x = np.full(20000, 0.3 * q.step)
    rng = np.random.default_rng(5)
    mean = q.dequantize(q.quantize(x, rng)[0]).mean()
    assert abs(mean - 0.3 * q.step) < 0.02 * q.step
    assert q.dequantize(q.quantize(x)[0]).mean() == 0.0  # nearest rounding is biased here


def test_clamps_are_counted_and_nan_refused() -> None:
    q = Quantizer(bound=1.0, max_summands=4)
    vec, clamped = q.quantize(np.array([0.5, 2.0, -7.0]))
    assert clamped == 2
    np.testing.assert_allclose(q.dequantize(vec), [0.5, 1.0, -1.0], atol=q.step)
    with pytest.raises(ValueError, match="NaN"):
        q.quantize(np.array([np.nan]))


def test_masking_cancels_mod_2_32() -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 2**32, 100, dtype=np.uint64).astype(np.uint32)
    q = Quantizer(bound=10.0, max_summands=2)
    x, _ = q.quantize(rng.uniform(-10, 10, 100))
    y = add_mod(x.copy(), mask)
    np.testing.assert_array_equal(sub_mod(y, mask), x)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bound": 0.0, "max_summands": 1},
        {"bound": 1.0, "max_summands": 0},
        {"bound": float("inf"), "max_summands": 1},
        {"bound": 1.0, "max_summands": 1, "headroom_bits": 40},
        {"bound": 1.0, "max_summands": 2**28},
    ],
)
def test_bad_settings_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Quantizer(**kwargs)


# -- quantised updates: a field of b bits, b-bit packing -----------------------------------------


def test_field_bits_size_the_sum_for_the_fleet() -> None:
    assert field_bits(8, 1) == 8 and field_bits(8, 8) == 11 and field_bits(8, 9) == 12
    assert field_bits(16, 1000) == 26 and field_bits(16, 2**20) == 32  # capped at 32
    assert field_bits(32, 5) == 32
    with pytest.raises(ValueError):
        field_bits(12, 5)


@pytest.mark.parametrize("value_bits", [8, 16])
@pytest.mark.parametrize("m", [2, 7, 8, 9, 100, 1000])
def test_no_overflow_at_max_participants_with_max_norm_inputs(value_bits: int, m: int) -> None:
    q = Quantizer(bound=2.5, max_summands=m, headroom_bits=0, bits=field_bits(value_bits, m))
    assert q.levels >= 2 ** (value_bits - 1) - 1  # at least the announced resolution
    rng = np.random.default_rng(m)
    for sign in (1.0, -1.0):
        total = np.zeros(3, dtype=np.uint32)
        for _ in range(m):  # every box at the bound, one coordinate far beyond it (clamped)
            vec, _ = q.quantize(np.array([sign * 2.5, sign * 2.5, sign * 1e9]), rng)
            assert int(vec.max()) < q.modulus
            add_mod(total, vec)
        np.testing.assert_array_equal(q.dequantize(total), np.full(3, sign * m * 2.5))


def test_stochastic_rounding_is_unbiased_at_8_bits() -> None:
    """Mean error over many draws stays within 4 standard errors of zero (fixed seed)."""
    q = Quantizer(bound=1.0, max_summands=8, headroom_bits=0, bits=field_bits(8, 8))
    rng = np.random.default_rng(24)
    x = rng.uniform(-1, 1, 200)
    draws = 4000
    err = np.zeros(x.size)
    for _ in range(draws):
        err += q.dequantize(q.quantize(x, rng)[0]) - x
    mean = err / draws
    # one draw's error has variance p(1-p) step^2 <= step^2 / 4
    assert np.all(np.abs(mean) < 4 * (q.step / 2) / np.sqrt(draws))
    nearest = q.dequantize(q.quantize(x)[0]) - x
    assert np.abs(nearest).mean() > 10 * np.abs(mean).mean()  # the test can tell bias apart


@pytest.mark.parametrize("bits", [2, 8, 11, 12, 16, 26, 32])
def test_pack_round_trips_at_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 2**bits, 37, dtype=np.uint64).astype(np.uint32)
    data = pack(v, bits)
    assert len(data) == packed_bytes(37, bits) == (37 * bits + 7) // 8
    np.testing.assert_array_equal(unpack(data, bits, 37), v)
    with pytest.raises(ValueError):
        unpack(data + b"\x00", bits, 37)


def test_stray_padding_bits_are_refused() -> None:
    data = bytearray(pack(np.array([1, 2, 3], np.uint32), 11))  # 33 bits: 7 padding bits
    data[-1] |= 0x80
    with pytest.raises(ValueError, match="padding"):
        unpack(bytes(data), 11, 3)


def test_rotation_is_orthonormal_invertible_and_fixed_by_its_seed() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=1001)
    y = rotate(x, b"nonce-a")
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x))
    np.testing.assert_allclose(unrotate(y, b"nonce-a"), x, atol=1e-12)
    np.testing.assert_array_equal(rotate(x, b"nonce-a"), y)  # same seed, same rotation
    assert not np.allclose(unrotate(y, b"nonce-b"), x)
    # a spike (the whole norm in one coordinate) is spread: no coordinate keeps much of it
    spike = np.zeros(1001)
    spike[17] = 1.0
    assert np.abs(rotate(spike, b"nonce-a")).max() <= np.sqrt(2 / 1001) + 1e-12


def test_rotated_8_bit_noise_is_far_below_the_unrotated() -> None:
    """The reason for the rotation: at 8 bits over an L2 clip the noise norm drops by
    about sqrt(d) / ROTATED_SIGMAS."""
    d, clip = 4000, 1.0
    rng = np.random.default_rng(4)
    x = rng.normal(size=d)
    x *= clip / np.linalg.norm(x)
    flat = Quantizer(clip, 8, 0, field_bits(8, 8))
    spread = Quantizer(ROTATED_SIGMAS * clip / np.sqrt(d), 8, 0, field_bits(8, 8))
    err_flat = np.linalg.norm(flat.dequantize(flat.quantize(x, rng)[0]) - x)
    y = rotate(x, b"n")
    q, clamped = spread.quantize(y, rng)
    err_rot = np.linalg.norm(unrotate(spread.dequantize(q), b"n") - x)
    assert clamped == 0
    assert err_rot < err_flat / 5 and err_rot < 0.05 * clip
