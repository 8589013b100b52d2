"""Byte-vector tests for the agent's GATT decoders (spec worked examples + edge cases).

Vectors are written out as literal bytes from the specifications, never
produced by firmware_sim's encoders, so both sides are bound by the same
published layouts rather than by each other.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeagent.codecs import gatt
from edgeagent.errors import FrameError


@pytest.mark.parametrize(
    ("data", "bpm", "contact", "energy", "rr"),
    [
        # flags 0x00: uint8 HR, no contact support, nothing else
        (bytes([0x00, 0x48]), 72, None, None, ()),
        # flags 0x16: uint8 HR 72, contact supported+detected, one RR of 1024/1024 s
        (bytes([0x16, 0x48, 0x00, 0x04]), 72, True, None, (1.0,)),
        # flags 0x04: contact supported but not detected
        (bytes([0x04, 0x3C]), 60, False, None, ()),
        # flags 0x19: uint16 HR 300, energy 0x0102 kJ, RR 512 and 1024 ticks
        (bytes([0x19, 0x2C, 0x01, 0x02, 0x01, 0x00, 0x02, 0x00, 0x04]), 300, None, 258, (0.5, 1.0)),
        # flags 0x10: two RR intervals 0x0340 (=832/1024 s = 0.8125 s) and 0x0360
        (bytes([0x10, 0x4B, 0x40, 0x03, 0x60, 0x03]), 75, None, None, (0.8125, 864 / 1024)),
    ],
)
def test_heart_rate_vectors(
    data: bytes, bpm: int, contact: bool | None, energy: int | None, rr: tuple[float, ...]
) -> None:
    hr = gatt.decode_heart_rate(data)
    assert (hr.bpm, hr.contact, hr.energy_kj) == (bpm, contact, energy)
    assert hr.rr_s == pytest.approx(rr)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (bytes([0x00]), "truncated"),
        (bytes([0x01, 0x48]), "truncated"),  # uint16 flagged, one byte
        (bytes([0x08, 0x48, 0x01]), "truncated"),  # energy flagged, cut
        (bytes([0x10, 0x48, 0x00]), "bad_length"),  # odd RR bytes
        (bytes([0x00, 0x48, 0x00]), "bad_length"),  # trailing bytes, no RR flag
    ],
)
def test_heart_rate_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as e:
        gatt.decode_heart_rate(data)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (bytes([0x6C, 0x01, 0x00, 0xFF]), 36.4),  # Health Thermometer example: 364 x 10^-1
        (bytes([0x72, 0x0E, 0x00, 0xFE]), 36.98),  # 3698 x 10^-2
        (bytes([0xFF, 0xFF, 0xFF, 0x00]), -1.0),  # mantissa -1, exponent 0
        (bytes([0x0C, 0x00, 0x00, 0x02]), 1200.0),  # 12 x 10^2
        (bytes([0x9C, 0xFF, 0xFF, 0xFF]), -10.0),  # -100 x 10^-1
    ],
)
def test_float11073_vectors(raw: bytes, value: float) -> None:
    assert gatt.decode_float32_11073(raw) == pytest.approx(value)


def test_float11073_specials() -> None:
    assert math.isnan(gatt.decode_float32_11073(bytes([0xFF, 0xFF, 0x7F, 0x00])))  # NaN
    assert math.isnan(gatt.decode_float32_11073(bytes([0x00, 0x00, 0x80, 0x00])))  # NRes
    assert gatt.decode_float32_11073(bytes([0xFE, 0xFF, 0x7F, 0x00])) == math.inf
    assert gatt.decode_float32_11073(bytes([0x02, 0x00, 0x80, 0x00])) == -math.inf
    with pytest.raises(FrameError):
        gatt.decode_float32_11073(b"\x00\x00\x00")


def test_temperature_vectors() -> None:
    # flags 0: Celsius, 36.4
    m = gatt.decode_temperature(bytes([0x00, 0x6C, 0x01, 0x00, 0xFF]))
    assert m.celsius == pytest.approx(36.4) and m.timestamp is None and m.temp_type is None
    # flags 0x07: Fahrenheit 98.6 (986e-1), time stamp 2024-03-05 10:20:30, type 2 (body)
    data = bytes([0x07, 0xDA, 0x03, 0x00, 0xFF, 0xE8, 0x07, 3, 5, 10, 20, 30, 0x02])
    m = gatt.decode_temperature(data)
    assert m.celsius == pytest.approx(37.0)
    assert m.timestamp == (2024, 3, 5, 10, 20, 30)
    assert m.temp_type == 2


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x00, 0x6C, 0x01, 0x00]),  # FLOAT cut
        bytes([0x02, 0x6C, 0x01, 0x00, 0xFF, 0xE8, 0x07]),  # time stamp cut
        bytes([0x04, 0x6C, 0x01, 0x00, 0xFF]),  # type flagged, missing
        bytes([0x00, 0x6C, 0x01, 0x00, 0xFF, 0x00]),  # trailing byte
    ],
)
def test_temperature_rejects(data: bytes) -> None:
    with pytest.raises(FrameError):
        gatt.decode_temperature(data)


def test_battery() -> None:
    assert gatt.decode_battery(b"\x57") == 87
    with pytest.raises(FrameError):
        gatt.decode_battery(b"\x65")  # 101 %
    with pytest.raises(FrameError):
        gatt.decode_battery(b"")


def test_pmd_ecg_frame() -> None:
    # [0x00][ts = 1_000_000_000 ns][frame type 0][int24: 1000, -1000, 0x7FFFFF]
    data = (
        bytes([0x00])
        + (1_000_000_000).to_bytes(8, "little")
        + bytes([0x00])
        + bytes([0xE8, 0x03, 0x00, 0x18, 0xFC, 0xFF, 0xFF, 0xFF, 0x7F])
    )
    f = gatt.decode_pmd_data(data)
    assert f.measurement == gatt.PMD_ECG and f.timestamp_ns == 1_000_000_000
    assert f.samples.dtype == np.float32 and f.samples.shape == (3, 1)
    assert f.samples[:, 0].tolist() == [1000.0, -1000.0, 8388607.0]


def test_pmd_acc_frame() -> None:
    # [0x02][ts][frame type 1][int16 x,y,z = (-1, 2, 1000), (0, -32768, 32767)]
    body = bytes([0xFF, 0xFF, 0x02, 0x00, 0xE8, 0x03, 0x00, 0x00, 0x00, 0x80, 0xFF, 0x7F])
    data = bytes([0x02]) + (42).to_bytes(8, "little") + bytes([0x01]) + body
    f = gatt.decode_pmd_data(data)
    assert f.samples.shape == (2, 3)
    assert f.samples.tolist() == [[-1, 2, 1000], [0, -32768, 32767]]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes(9), "truncated"),
        (bytes([0x00]) + bytes(8) + bytes([0x00]), "truncated"),  # no samples
        (bytes([0x00]) + bytes(8) + bytes([0x00, 1, 2]), "bad_length"),  # 2 of 3 bytes
        (bytes([0x02]) + bytes(8) + bytes([0x01]) + bytes(7), "bad_length"),
        (bytes([0x7E]) + bytes(8) + bytes([0x00, 1, 2, 3]), "bad_type"),
        (bytes([0x00]) + bytes(8) + bytes([0x05, 1, 2, 3]), "bad_type"),
    ],
)
def test_pmd_data_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as e:
        gatt.decode_pmd_data(data)
    assert e.value.reason == reason


def test_pmd_control_request_and_response() -> None:
    # Polar's documented ECG start: 02 00 00 01 82 00 01 01 0E 00 (130 Hz, 14 bit)
    req = gatt.encode_pmd_request(gatt.PMD_OP_START, gatt.PMD_ECG, {0: 130, 1: 14})
    assert req == bytes.fromhex("02000001820001010e00")
    ok = gatt.decode_pmd_response(bytes.fromhex("f002000000"))
    assert ok.ok and ok.op == 2 and ok.measurement == 0
    bad = gatt.decode_pmd_response(bytes.fromhex("f002020800"))
    assert not bad.ok and bad.status_text == "invalid sample rate"
    settings = gatt.decode_pmd_response(bytes.fromhex("f0010000000001820001010e00"))
    assert gatt.decode_pmd_settings(settings.params) == {0: (130,), 1: (14,)}
    with pytest.raises(FrameError):
        gatt.decode_pmd_response(bytes.fromhex("f102"))
    with pytest.raises(FrameError):
        gatt.decode_pmd_response(bytes.fromhex("0102000000"))
    with pytest.raises(FrameError):
        gatt.decode_pmd_settings(bytes([0x00, 0x02, 0x82, 0x00]))


def test_pmd_features() -> None:
    assert gatt.decode_pmd_features(bytes([0x0F, 0x05, 0x00])) == frozenset({0, 2})
    with pytest.raises(FrameError):
        gatt.decode_pmd_features(bytes([0x0E, 0x05]))
