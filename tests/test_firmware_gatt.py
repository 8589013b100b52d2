"""Device-side encoders against the same published vectors the agent's decoders use."""

from __future__ import annotations

import math

import pytest

from firmware_sim import gatt


def test_heart_rate_vectors() -> None:
    assert gatt.encode_heart_rate(72, [1.0]) == bytes([0x16, 0x48, 0x00, 0x04])
    assert gatt.encode_heart_rate(72, contact=None) == bytes([0x00, 0x48])
    assert gatt.encode_heart_rate(60, contact=False) == bytes([0x04, 0x3C])
    assert gatt.encode_heart_rate(300, [0.5, 1.0], contact=None, energy_kj=258) == bytes(
        [0x19, 0x2C, 0x01, 0x02, 0x01, 0x00, 0x02, 0x00, 0x04]
    )
    # RR rounds to the nearest 1/1024 s
    assert gatt.encode_heart_rate(75, [0.8125, 864 / 1024], contact=None)[2:] == bytes(
        [0x40, 0x03, 0x60, 0x03]
    )
    with pytest.raises(ValueError):
        gatt.encode_heart_rate(-1)


@pytest.mark.parametrize(
    ("value", "decimals", "raw"),
    [
        (36.4, 2, bytes([0x6C, 0x01, 0x00, 0xFF])),  # spec example, trailing zero folded
        (36.98, 2, bytes([0x72, 0x0E, 0x00, 0xFE])),
        (-1.0, 0, bytes([0xFF, 0xFF, 0xFF, 0x00])),
        (-10.0, 1, bytes([0xF6, 0xFF, 0xFF, 0x00])),  # -10 x 10^0 after folding
        (math.nan, 2, bytes([0xFF, 0xFF, 0x7F, 0x00])),
        (math.inf, 2, bytes([0xFE, 0xFF, 0x7F, 0x00])),
        (-math.inf, 2, bytes([0x02, 0x00, 0x80, 0x00])),
    ],
)
def test_float11073_vectors(value: float, decimals: int, raw: bytes) -> None:
    assert gatt.encode_float32_11073(value, decimals) == raw


def test_temperature_vectors() -> None:
    assert gatt.encode_temperature(36.4, temp_type=None) == bytes([0x00, 0x6C, 0x01, 0x00, 0xFF])
    data = gatt.encode_temperature(37.0, fahrenheit=True, timestamp=(2024, 3, 5, 10, 20, 30))
    assert data == bytes([0x07, 0xDA, 0x03, 0x00, 0xFF, 0xE8, 0x07, 3, 5, 10, 20, 30, 0x02])


def test_pmd_frames() -> None:
    ecg = gatt.encode_pmd_ecg(1_000_000_000, [1000, -1000, 9e9])
    assert ecg == (
        bytes([0x00])
        + (1_000_000_000).to_bytes(8, "little")
        + bytes([0x00, 0xE8, 0x03, 0x00, 0x18, 0xFC, 0xFF, 0xFF, 0xFF, 0x7F])
    )
    acc = gatt.encode_pmd_acc(42, [(-1, 2, 1000), (0, -40000, 32767)])
    assert acc[9] == 0x01 and acc[10:] == bytes(
        [0xFF, 0xFF, 0x02, 0x00, 0xE8, 0x03, 0x00, 0x00, 0x00, 0x80, 0xFF, 0x7F]
    )


def test_control_point_like_a_strap() -> None:
    cp = gatt.PmdControlPoint()
    start_ecg = bytes.fromhex("02000001820001010e00")
    assert gatt.encode_pmd_start(0, {0: 130, 1: 14}) == start_ecg
    assert cp.handle(start_ecg) == bytes.fromhex("f002000000")
    assert cp.running == {0: {0: 130, 1: 14}}
    assert cp.handle(start_ecg)[3] == gatt.PMD_ALREADY_IN_STATE
    assert cp.handle(bytes.fromhex("0300")) == bytes.fromhex("f003000000")
    assert cp.handle(bytes.fromhex("0300"))[3] == gatt.PMD_INVALID_STATE
    # get settings answers with the TLV of what is supported
    assert cp.handle(bytes.fromhex("0100")) == bytes.fromhex("f0010000000001820001010e00")


@pytest.mark.parametrize(
    ("request_hex", "status"),
    [
        ("", gatt.PMD_INVALID_LENGTH),
        ("02", gatt.PMD_INVALID_LENGTH),
        ("0900", gatt.PMD_INVALID_OP_CODE),
        ("0205", gatt.PMD_INVALID_MEASUREMENT_TYPE),
        ("0200000182000101", gatt.PMD_INVALID_LENGTH),  # second setting cut
        ("02000001fa00", gatt.PMD_INVALID_SAMPLE_RATE),  # 250 Hz ECG
        ("0200000182000101 1000", gatt.PMD_INVALID_RESOLUTION),
        ("02020001320002010900", gatt.PMD_INVALID_RANGE),  # ACC range 9 g
        ("0200", gatt.PMD_INVALID_PARAMETER),  # no sample rate
        ("020007018200", gatt.PMD_INVALID_PARAMETER),  # unknown setting type 7
        ("020000028200 8200", gatt.PMD_INVALID_LENGTH),  # two values for one setting
    ],
)
def test_control_point_errors(request_hex: str, status: int) -> None:
    cp = gatt.PmdControlPoint()
    resp = cp.handle(bytes.fromhex(request_hex.replace(" ", "")))
    assert resp[0] == 0xF0 and resp[3] == status
    assert cp.running == {}


def test_features_read() -> None:
    assert gatt.pmd_features([gatt.PMD_ECG, gatt.PMD_ACC]) == bytes([0x0F, 0x05, 0x00])
    assert gatt.encode_battery(150) == b"\x64"
