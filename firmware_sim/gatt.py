"""Device-side GATT payload encoders, written from the Bluetooth SIG and Polar PMD specs.

This module is the firmware's half of every BLE byte layout the agent decodes
(DESIGN.md §3). It deliberately shares no code with ``edgeagent.codecs``: the
two sides are bound only by the published test vectors, so an encoder bug and
a decoder bug cannot cancel each other out.

Everything here is pure: numbers in, ``bytes`` out (and, for the PMD control
point, request bytes in, a response and a state change out).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

# --- UUIDs (128-bit forms as BlueZ reports them) ---------------------------------

_SIG_BASE = "-0000-1000-8000-00805f9b34fb"


def sig_uuid(short: int) -> str:
    """The 128-bit UUID string of a 16-bit Bluetooth SIG assigned number."""
    return f"0000{short:04x}{_SIG_BASE}"


HEART_RATE_SERVICE = sig_uuid(0x180D)
HEART_RATE_MEASUREMENT = sig_uuid(0x2A37)
BODY_SENSOR_LOCATION = sig_uuid(0x2A38)
HEALTH_THERMOMETER_SERVICE = sig_uuid(0x1809)
TEMPERATURE_MEASUREMENT = sig_uuid(0x2A1C)
BATTERY_SERVICE = sig_uuid(0x180F)
BATTERY_LEVEL = sig_uuid(0x2A19)
CCCD = sig_uuid(0x2902)
PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"

# --- Heart Rate Measurement (0x2A37) ---------------------------------------------

HR_FLAG_UINT16 = 0x01
HR_FLAG_CONTACT_DETECTED = 0x02
HR_FLAG_CONTACT_SUPPORTED = 0x04
HR_FLAG_ENERGY = 0x08
HR_FLAG_RR = 0x10


def encode_heart_rate(
    bpm: int,
    rr_s: Sequence[float] = (),
    *,
    contact: bool | None = True,
    energy_kj: int | None = None,
    force_uint16: bool = False,
) -> bytes:
    """Encode one Heart Rate Measurement notification.

    RR intervals go out in units of 1/1024 s, rounded, as the SIG spec says;
    ``contact=None`` means the strap does not support contact detection.
    """
    if not 0 <= bpm <= 0xFFFF:
        raise ValueError(f"heart rate {bpm} out of range")
    flags = 0
    body = b""
    if force_uint16 or bpm > 0xFF:
        flags |= HR_FLAG_UINT16
        body += struct.pack("<H", bpm)
    else:
        body += struct.pack("<B", bpm)
    if contact is not None:
        flags |= HR_FLAG_CONTACT_SUPPORTED
        if contact:
            flags |= HR_FLAG_CONTACT_DETECTED
    if energy_kj is not None:
        flags |= HR_FLAG_ENERGY
        body += struct.pack("<H", min(energy_kj, 0xFFFF))
    if rr_s:
        flags |= HR_FLAG_RR
        for rr in rr_s:
            body += struct.pack("<H", min(round(rr * 1024.0), 0xFFFF))
    return bytes([flags]) + body


# --- IEEE-11073 32-bit FLOAT and Health Thermometer (0x2A1C) ---------------------

FLOAT_NAN = 0x007FFFFF
FLOAT_NRES = 0x00800000
FLOAT_POS_INF = 0x007FFFFE
FLOAT_NEG_INF = 0x00800002


def encode_float32_11073(value: float, decimals: int = 2) -> bytes:
    """Encode a number as IEEE-11073 FLOAT: 24-bit signed mantissa, 8-bit signed exponent.

    ``decimals`` is the resolution the device reports (a thermometer: 2 -> 0.01 °C).
    Trailing zero digits are folded into the exponent like real firmware does,
    so 36.40 goes out as 364e-1, the SIG spec's worked example.
    """
    if math.isnan(value):
        raw = FLOAT_NAN
    elif math.isinf(value):
        raw = FLOAT_POS_INF if value > 0 else FLOAT_NEG_INF
    else:
        exponent = -decimals
        mantissa = round(value * 10**decimals)
        while mantissa != 0 and mantissa % 10 == 0 and exponent < 0:
            mantissa //= 10
            exponent += 1
        while not -0x7FFFFD <= mantissa <= 0x7FFFFD:
            mantissa = round(mantissa / 10)
            exponent += 1
        if exponent > 127:
            raw = FLOAT_POS_INF if mantissa > 0 else FLOAT_NEG_INF
        else:
            raw = ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)
    return struct.pack("<I", raw)


TEMP_FLAG_FAHRENHEIT = 0x01
TEMP_FLAG_TIMESTAMP = 0x02
TEMP_FLAG_TYPE = 0x04
TEMP_TYPE_BODY = 0x02  # "Body (general)" in the SIG temperature-type table


def encode_temperature(
    celsius: float,
    *,
    fahrenheit: bool = False,
    timestamp: tuple[int, int, int, int, int, int] | None = None,
    temp_type: int | None = TEMP_TYPE_BODY,
) -> bytes:
    """Encode one Temperature Measurement indication (flags, FLOAT, opt. time, opt. type)."""
    flags = 0
    value = celsius
    if fahrenheit:
        flags |= TEMP_FLAG_FAHRENHEIT
        value = celsius * 9.0 / 5.0 + 32.0
    body = encode_float32_11073(value)
    if timestamp is not None:
        flags |= TEMP_FLAG_TIMESTAMP
        year, month, day, hh, mm, ss = timestamp
        body += struct.pack("<HBBBBB", year, month, day, hh, mm, ss)
    if temp_type is not None:
        flags |= TEMP_FLAG_TYPE
        body += bytes([temp_type])
    return bytes([flags]) + body


def encode_battery(percent: int) -> bytes:
    """Battery Level (0x2A19): one uint8, 0..100."""
    return bytes([max(0, min(100, int(percent)))])


# --- Polar PMD (measurement data) service ----------------------------------------

PMD_ECG = 0x00
PMD_ACC = 0x02
PMD_OP_GET_SETTINGS = 0x01
PMD_OP_START = 0x02
PMD_OP_STOP = 0x03
PMD_RESPONSE = 0xF0
PMD_FEATURES = 0x0F

PMD_SETTING_SAMPLE_RATE = 0x00
PMD_SETTING_RESOLUTION = 0x01
PMD_SETTING_RANGE = 0x02

# error statuses a Polar device answers in byte 3 of a control-point response
PMD_SUCCESS = 0
PMD_INVALID_OP_CODE = 1
PMD_INVALID_MEASUREMENT_TYPE = 2
PMD_NOT_SUPPORTED = 3
PMD_INVALID_LENGTH = 4
PMD_INVALID_PARAMETER = 5
PMD_ALREADY_IN_STATE = 6
PMD_INVALID_RESOLUTION = 7
PMD_INVALID_SAMPLE_RATE = 8
PMD_INVALID_RANGE = 9
PMD_INVALID_STATE = 12

# what this simulated strap supports: setting -> allowed values, per measurement
PMD_CAPABILITIES: dict[int, dict[int, tuple[int, ...]]] = {
    PMD_ECG: {PMD_SETTING_SAMPLE_RATE: (130,), PMD_SETTING_RESOLUTION: (14,)},
    PMD_ACC: {
        PMD_SETTING_SAMPLE_RATE: (25, 50, 100, 200),
        PMD_SETTING_RESOLUTION: (16,),
        PMD_SETTING_RANGE: (2, 4, 8),
    },
}
_SETTING_ERROR = {
    PMD_SETTING_SAMPLE_RATE: PMD_INVALID_SAMPLE_RATE,
    PMD_SETTING_RESOLUTION: PMD_INVALID_RESOLUTION,
    PMD_SETTING_RANGE: PMD_INVALID_RANGE,
}


def encode_pmd_settings(settings: dict[int, Sequence[int]]) -> bytes:
    """Settings TLV: [setting type][count][count x uint16 LE] per setting."""
    out = b""
    for kind, values in settings.items():
        out += bytes([kind, len(values)]) + b"".join(struct.pack("<H", v) for v in values)
    return out


def encode_pmd_start(measurement: int, settings: dict[int, int]) -> bytes:
    """A START_MEASUREMENT request, as a phone app writes it."""
    return bytes([PMD_OP_START, measurement]) + encode_pmd_settings(
        {k: (v,) for k, v in settings.items()}
    )


def pmd_features(measurements: Sequence[int]) -> bytes:
    """The control point's read value: 0x0F then a bitmask of supported measurement types."""
    mask = 0
    for m in measurements:
        mask |= 1 << m
    return bytes([PMD_FEATURES]) + struct.pack("<H", mask)


def pmd_response(op: int, measurement: int, status: int, params: bytes = b"") -> bytes:
    """Control-point response: [0xF0][op][measurement][status][more=0][params]."""
    return bytes([PMD_RESPONSE, op & 0xFF, measurement & 0xFF, status, 0]) + params


def _int24(values: Sequence[int]) -> bytes:
    out = bytearray()
    for v in values:
        v = max(-0x800000, min(0x7FFFFF, int(v)))
        out += (v & 0xFFFFFF).to_bytes(3, "little")
    return bytes(out)


def encode_pmd_ecg(timestamp_ns: int, microvolts: Sequence[float]) -> bytes:
    """ECG data frame: [0x00][uint64 ns of the LAST sample][frame type 0][int24 uV ...]."""
    return (
        bytes([PMD_ECG])
        + struct.pack("<Q", timestamp_ns)
        + bytes([0x00])
        + _int24([round(v) for v in microvolts])
    )


def encode_pmd_acc(timestamp_ns: int, xyz_mg: Sequence[Sequence[float]]) -> bytes:
    """ACC data frame: [0x02][uint64 ns of the LAST sample][frame type 1][int16 x,y,z mg ...]."""
    body = b"".join(
        struct.pack("<hhh", *(max(-32768, min(32767, round(c))) for c in s)) for s in xyz_mg
    )
    return bytes([PMD_ACC]) + struct.pack("<Q", timestamp_ns) + bytes([0x01]) + body


@dataclass
class PmdControlPoint:
    """The device's PMD control-point state machine (sans-I/O).

    ``handle(request)`` returns the response bytes to indicate and updates
    ``running`` (measurement type -> chosen settings). Mirrors a Polar strap:
    every request gets a response, errors are statuses, never silence.
    """

    capabilities: dict[int, dict[int, tuple[int, ...]]] = field(
        default_factory=lambda: {k: dict(v) for k, v in PMD_CAPABILITIES.items()}
    )
    running: dict[int, dict[int, int]] = field(default_factory=dict)

    def handle(self, request: bytes) -> bytes:
        """Process one write to the control point and return the response to indicate."""
        if len(request) < 2:
            op = request[0] if request else 0
            return pmd_response(op, 0, PMD_INVALID_LENGTH)
        op, meas = request[0], request[1]
        if op not in (PMD_OP_GET_SETTINGS, PMD_OP_START, PMD_OP_STOP):
            return pmd_response(op, meas, PMD_INVALID_OP_CODE)
        if meas not in self.capabilities:
            return pmd_response(op, meas, PMD_INVALID_MEASUREMENT_TYPE)
        caps = self.capabilities[meas]
        if op == PMD_OP_GET_SETTINGS:
            if len(request) != 2:
                return pmd_response(op, meas, PMD_INVALID_LENGTH)
            return pmd_response(op, meas, PMD_SUCCESS, encode_pmd_settings(caps))
        if op == PMD_OP_STOP:
            if len(request) != 2:
                return pmd_response(op, meas, PMD_INVALID_LENGTH)
            if meas not in self.running:
                return pmd_response(op, meas, PMD_INVALID_STATE)
            del self.running[meas]
            return pmd_response(op, meas, PMD_SUCCESS)
        # START: parse the settings TLV strictly
        if meas in self.running:
            return pmd_response(op, meas, PMD_ALREADY_IN_STATE)
        chosen: dict[int, int] = {}
        i = 2
        while i < len(request):
            if i + 2 > len(request):
                return pmd_response(op, meas, PMD_INVALID_LENGTH)
            kind, count = request[i], request[i + 1]
            end = i + 2 + 2 * count
            if count != 1 or end > len(request):
                return pmd_response(op, meas, PMD_INVALID_LENGTH)
            (value,) = struct.unpack_from("<H", request, i + 2)
            if kind not in caps:
                return pmd_response(op, meas, PMD_INVALID_PARAMETER)
            if value not in caps[kind]:
                return pmd_response(op, meas, _SETTING_ERROR.get(kind, PMD_INVALID_PARAMETER))
            chosen[kind] = value
            i = end
        if PMD_SETTING_SAMPLE_RATE not in chosen:
            return pmd_response(op, meas, PMD_INVALID_PARAMETER)
        for kind, allowed in caps.items():
            chosen.setdefault(kind, allowed[-1])
        self.running[meas] = chosen
        return pmd_response(op, meas, PMD_SUCCESS)
