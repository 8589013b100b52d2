"""Pure decoders for the GATT payloads the agent subscribes to (DESIGN.md §3).

One function per profile, bytes in, a frozen dataclass out; anything that does
not match the specification raises :class:`edgeagent.errors.FrameError` with a
reason the source counts (``truncated``, ``bad_length``, ``bad_type`` ...).
No I/O and no clock here: mapping device time to the agent clock is the
source's job, so these functions are tested against byte vectors alone.

Specifications: Bluetooth SIG Heart Rate Service 1.0 (0x2A37), Health
Thermometer Service 1.0 (0x2A1C, IEEE-11073-20601 FLOAT), Battery Service
(0x2A19), and Polar's published PMD (measurement data) protocol for the
ECG/accelerometer stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from edgeagent.errors import FrameError

_SIG_BASE = "-0000-1000-8000-00805f9b34fb"


def sig_uuid(short: int) -> str:
    """The 128-bit UUID string (lower case, as bleak reports it) of a SIG 16-bit UUID."""
    return f"0000{short:04x}{_SIG_BASE}"


HEART_RATE_SERVICE = sig_uuid(0x180D)
HEART_RATE_MEASUREMENT = sig_uuid(0x2A37)
HEALTH_THERMOMETER_SERVICE = sig_uuid(0x1809)
TEMPERATURE_MEASUREMENT = sig_uuid(0x2A1C)
BATTERY_SERVICE = sig_uuid(0x180F)
BATTERY_LEVEL = sig_uuid(0x2A19)
PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"

# ------------------------------------------------------------------ Heart Rate


@dataclass(frozen=True, slots=True)
class HeartRate:
    """One Heart Rate Measurement. ``rr_s`` are RR intervals in seconds, oldest first."""

    bpm: int
    contact: bool | None  # None: the sensor does not support contact detection
    energy_kj: int | None
    rr_s: tuple[float, ...]


def decode_heart_rate(data: bytes) -> HeartRate:
    """Decode 0x2A37: flags, uint8/uint16 HR, optional energy, optional uint16 RR (1/1024 s)."""
    if len(data) < 2:
        raise FrameError("truncated", f"heart rate needs >= 2 bytes, got {len(data)}")
    flags = data[0]
    i = 1
    if flags & 0x01:
        if len(data) < 3:
            raise FrameError("truncated", "uint16 heart rate flagged but missing")
        (bpm,) = struct.unpack_from("<H", data, i)
        i += 2
    else:
        bpm = data[i]
        i += 1
    contact: bool | None = bool(flags & 0x02) if flags & 0x04 else None
    energy: int | None = None
    if flags & 0x08:
        if len(data) < i + 2:
            raise FrameError("truncated", "energy expended flagged but missing")
        (energy,) = struct.unpack_from("<H", data, i)
        i += 2
    rr: tuple[float, ...] = ()
    if flags & 0x10:
        rest = len(data) - i
        if rest % 2:
            raise FrameError("bad_length", f"RR field has odd length {rest}")
        raw = struct.unpack_from(f"<{rest // 2}H", data, i)
        rr = tuple(v / 1024.0 for v in raw)
    elif len(data) != i:
        raise FrameError("bad_length", f"{len(data) - i} trailing bytes without RR flag")
    return HeartRate(bpm=bpm, contact=contact, energy_kj=energy, rr_s=rr)


# --------------------------------------------------- IEEE-11073 FLOAT, thermometer

_FLOAT_SPECIAL = {
    0x007FFFFF: float("nan"),  # NaN
    0x00800000: float("nan"),  # NRes (not at this resolution)
    0x007FFFFE: float("inf"),
    0x00800002: float("-inf"),
    0x00800001: float("nan"),  # reserved for future use
}


def decode_float32_11073(data: bytes) -> float:
    """Decode an IEEE-11073 32-bit FLOAT (LE): value = mantissa(int24) * 10**exponent(int8)."""
    if len(data) != 4:
        raise FrameError("bad_length", f"FLOAT is 4 bytes, got {len(data)}")
    (raw,) = struct.unpack("<I", data)
    mantissa = raw & 0xFFFFFF
    if mantissa in _FLOAT_SPECIAL and (raw >> 24) == 0:
        return _FLOAT_SPECIAL[mantissa]
    if mantissa >= 0x800000:
        mantissa -= 0x1000000
    exponent = raw >> 24
    if exponent >= 0x80:
        exponent -= 0x100
    # round away binary noise at the stated decimal resolution
    value = mantissa * 10.0**exponent
    return round(value, -exponent) if exponent < 0 else value


@dataclass(frozen=True, slots=True)
class Temperature:
    """One Temperature Measurement, always in Celsius (converted when sent in Fahrenheit)."""

    celsius: float
    timestamp: tuple[int, int, int, int, int, int] | None
    temp_type: int | None


def decode_temperature(data: bytes) -> Temperature:
    """Decode 0x2A1C: flags (bit0 F, bit1 time stamp, bit2 type), FLOAT, opt. fields."""
    if len(data) < 5:
        raise FrameError("truncated", f"temperature needs >= 5 bytes, got {len(data)}")
    flags = data[0]
    value = decode_float32_11073(data[1:5])
    i = 5
    stamp: tuple[int, int, int, int, int, int] | None = None
    if flags & 0x02:
        if len(data) < i + 7:
            raise FrameError("truncated", "time stamp flagged but missing")
        stamp = struct.unpack_from("<HBBBBB", data, i)
        i += 7
    ttype: int | None = None
    if flags & 0x04:
        if len(data) < i + 1:
            raise FrameError("truncated", "temperature type flagged but missing")
        ttype = data[i]
        i += 1
    if len(data) != i:
        raise FrameError("bad_length", f"{len(data) - i} trailing bytes")
    if flags & 0x01:
        value = (value - 32.0) * 5.0 / 9.0
    return Temperature(celsius=value, timestamp=stamp, temp_type=ttype)


def decode_battery(data: bytes) -> int:
    """Decode 0x2A19: one uint8 percentage; values above 100 are invalid per spec."""
    if len(data) != 1:
        raise FrameError("bad_length", f"battery level is 1 byte, got {len(data)}")
    if data[0] > 100:
        raise FrameError("out_of_range", f"battery level {data[0]} > 100")
    return data[0]


# -------------------------------------------------------------------- Polar PMD

PMD_ECG = 0x00
PMD_ACC = 0x02
PMD_OP_GET_SETTINGS = 0x01
PMD_OP_START = 0x02
PMD_OP_STOP = 0x03
PMD_SETTING_SAMPLE_RATE = 0x00
PMD_SETTING_RESOLUTION = 0x01
PMD_SETTING_RANGE = 0x02

PMD_STATUS: dict[int, str] = {
    0: "success",
    1: "invalid op code",
    2: "invalid measurement type",
    3: "not supported",
    4: "invalid length",
    5: "invalid parameter",
    6: "already in state",
    7: "invalid resolution",
    8: "invalid sample rate",
    9: "invalid range",
    10: "invalid MTU",
    11: "invalid number of channels",
    12: "invalid state",
    13: "device in charger",
}


def encode_pmd_request(op: int, measurement: int, settings: dict[int, int] | None = None) -> bytes:
    """Build a control-point request; settings go as TLV [type][1][uint16 LE]."""
    out = bytes([op, measurement])
    for kind, value in (settings or {}).items():
        out += bytes([kind, 1]) + struct.pack("<H", value)
    return out


@dataclass(frozen=True, slots=True)
class PmdResponse:
    """A control-point response: which request it answers and the device's status."""

    op: int
    measurement: int
    status: int
    params: bytes

    @property
    def ok(self) -> bool:
        """True when the device accepted the request."""
        return self.status == 0

    @property
    def status_text(self) -> str:
        """The status as Polar names it, for logs and errors."""
        return PMD_STATUS.get(self.status, f"unknown status {self.status}")


def decode_pmd_response(data: bytes) -> PmdResponse:
    """Decode a control-point indication: [0xF0][op][measurement][status][more][params]."""
    if len(data) < 4:
        raise FrameError("truncated", f"PMD response needs >= 4 bytes, got {len(data)}")
    if data[0] != 0xF0:
        raise FrameError("bad_type", f"PMD response must start with 0xF0, got {data[0]:#04x}")
    params = bytes(data[5:]) if len(data) > 5 else b""
    return PmdResponse(op=data[1], measurement=data[2], status=data[3], params=params)


def decode_pmd_settings(params: bytes) -> dict[int, tuple[int, ...]]:
    """Decode a settings TLV list into setting type -> allowed values."""
    out: dict[int, tuple[int, ...]] = {}
    i = 0
    while i < len(params):
        if i + 2 > len(params):
            raise FrameError("truncated", "settings TLV header cut")
        kind, count = params[i], params[i + 1]
        end = i + 2 + 2 * count
        if end > len(params):
            raise FrameError("truncated", f"setting {kind} promises {count} values")
        out[kind] = struct.unpack_from(f"<{count}H", params, i + 2)
        i = end
    return out


@dataclass(frozen=True, slots=True, eq=False)
class PmdFrame:
    """One PMD data frame. ``timestamp_ns`` is the device time of the LAST sample.

    ``samples`` is float32, (n, 1) microvolts for ECG or (n, 3) milli-g for ACC.
    """

    measurement: int
    timestamp_ns: int
    frame_type: int
    samples: np.ndarray


_PMD_LAYOUT: dict[tuple[int, int], tuple[int, int]] = {
    # (measurement, frame type) -> (bytes per value, channels)
    (PMD_ECG, 0x00): (3, 1),
    (PMD_ACC, 0x00): (1, 3),
    (PMD_ACC, 0x01): (2, 3),
    (PMD_ACC, 0x02): (3, 3),
}


def decode_pmd_data(data: bytes) -> PmdFrame:
    """Decode a data notification: [type][uint64 ns LE][frame type][samples]."""
    if len(data) < 10:
        raise FrameError("truncated", f"PMD frame needs >= 10 bytes, got {len(data)}")
    meas = data[0]
    (ts,) = struct.unpack_from("<Q", data, 1)
    ftype = data[9]
    layout = _PMD_LAYOUT.get((meas, ftype))
    if layout is None:
        raise FrameError("bad_type", f"measurement {meas} frame type {ftype} not supported")
    width, channels = layout
    body = np.frombuffer(data, dtype=np.uint8, offset=10)
    step = width * channels
    if body.size == 0:
        raise FrameError("truncated", "PMD frame has no samples")
    if body.size % step:
        raise FrameError(
            "bad_length",
            f"{body.size} sample bytes is not a multiple of {step} (measurement {meas})",
        )
    n = body.size // step
    if width == 1:
        vals = body.view(np.int8).astype(np.float32)
    elif width == 2:
        vals = body.view("<i2").astype(np.float32)
    else:
        b = body.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v & 0x800000, v - 0x1000000, v)
        vals = v.astype(np.float32)
    return PmdFrame(
        measurement=meas, timestamp_ns=ts, frame_type=ftype, samples=vals.reshape(n, channels)
    )


def decode_pmd_features(data: bytes) -> frozenset[int]:
    """Decode the control point's read value: 0x0F then a bitmask of measurement types."""
    if len(data) < 2 or data[0] != 0x0F:
        raise FrameError("bad_type", "PMD feature read must start with 0x0F")
    mask = int.from_bytes(data[1:], "little")
    return frozenset(i for i in range(8 * (len(data) - 1)) if mask >> i & 1)
