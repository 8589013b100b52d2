"""Hardware-in-the-loop bench descriptions and the checks every link run must pass.

The HIL suite (tests/hil/, docs/hil.md) runs the *same* assertions against
the simulator (in CI) and against real hardware on a bench. What differs is
only what the bench is and how much slack real radios and UARTs need, so
both live here as data:

* :class:`HilBench` -- the bench file (TOML) or command-line options: which
  serial port / BLE address to use, the expected streams and rates, an
  optional command that unplugs and replugs the device (to test reconnects),
  and tolerances. Unknown keys are errors; every error names the key.
* :class:`LinkRun` + the ``check_*`` functions -- pure checks over what a
  source delivered (blocks, gaps, counters). Each returns a list of problems
  (empty = pass), so a test can print them all at once.

Defaults: the simulator target is held to zero tolerance (it is exact); a
hardware target gets the tolerances in its bench section.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeagent.errors import BenchError
from edgeagent.streams import Gap, LinkCounters, SampleBlock

_MAC: Final = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
SERIAL_STREAMS: Final = ("ecg", "acc", "skin_temp", "env", "hr", "rr")
# What firmware_sim's physiology textile sends (SimConfig defaults); a bench overrides.
SERIAL_RATES_HZ: Final = {"ecg": 250.0, "acc": 50.0, "skin_temp": 1.0, "env": 0.2}
BLE_STREAMS: Final = {"chest_strap": ("ecg", "acc", "hr", "rr"), "wristband": ("acc", "skin_temp")}
BLE_RATES_HZ: Final = {"chest_strap": {"ecg": 130.0, "acc": 50.0}, "wristband": {"acc": 50.0}}

#: Plausible physical values per stream (units of edgeagent.streams). A wrong
#: scale or byte order lands far outside: uV read as mV, mg as g, LE as BE.
PHYSICAL_RANGE: Final = {
    "ecg": (-50_000.0, 50_000.0),
    "acc": (-16_500.0, 16_500.0),
    "skin_temp": (15.0, 45.0),
    "env": (-40.0, 100.0),
    "hr": (20.0, 300.0),
    "rr": (0.2, 3.0),
}


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchInfo(_Table):
    """``[bench]``: who and where, for reports."""

    name: str = "bench"
    notes: str = ""


class SerialBench(_Table):
    """``[serial]``: a wired wearable (or firmware_sim serve --serial) on a real port."""

    port: str = Field(description="Port path, e.g. /dev/ttyUSB0 or /dev/edgeagent/0403-6001-X.")
    baudrate: int = Field(default=115200, ge=1200, le=12_000_000)
    device_id: str | None = Field(default=None, description="Expected id in the device's HELLO.")
    streams: tuple[str, ...] = SERIAL_STREAMS
    rates_hz: dict[str, float] = Field(default_factory=lambda: dict(SERIAL_RATES_HZ))
    duration_s: float = Field(default=20.0, gt=0, le=3600)
    replug_cmd: str | None = Field(default=None, description="Unplugs and replugs the device.")
    replug_down_s: float = Field(default=3.0, ge=0, le=120)
    max_bad_frame_ratio: float = Field(default=0.01, ge=0, le=1)
    max_loss_ratio: float = Field(default=0.02, ge=0, le=1)
    rate_tolerance: float = Field(default=0.02, ge=0, le=0.5)

    @field_validator("streams")
    @classmethod
    def _streams(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in v if s not in SERIAL_STREAMS]
        if bad:
            raise ValueError(f"unknown streams {bad}; choose from {list(SERIAL_STREAMS)}")
        if not v:
            raise ValueError("list at least one stream")
        return v

    @field_validator("rates_hz")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        for k, hz in v.items():
            if k not in SERIAL_STREAMS or not (0 < hz <= 10_000):
                raise ValueError(f"rates_hz.{k} = {hz}: a known stream and 0 < Hz <= 10000")
        return v


class BleBench(_Table):
    """``[ble]``: a wearable (or firmware_sim serve --ble) in radio range of the hub."""

    address: str = Field(description="The wearable's address, AA:BB:CC:DD:EE:FF.")
    kind: str = Field(default="chest_strap", description="chest_strap or wristband.")
    adapter: str = "hci0"
    duration_s: float = Field(default=20.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=30.0, gt=0, le=600)
    replug_cmd: str | None = Field(default=None, description="Takes the wearable away and back.")
    replug_down_s: float = Field(default=5.0, ge=0, le=120)
    max_bad_frame_ratio: float = Field(default=0.01, ge=0, le=1)
    max_loss_ratio: float = Field(default=0.05, ge=0, le=1)
    rate_tolerance: float = Field(default=0.03, ge=0, le=0.5)

    @field_validator("address")
    @classmethod
    def _mac(cls, v: str) -> str:
        v = v.strip().upper()
        if not _MAC.match(v):
            raise ValueError(f"{v!r} is not a Bluetooth address like AA:BB:CC:DD:EE:FF")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in BLE_STREAMS:
            raise ValueError(f"{v!r}: choose chest_strap or wristband")
        return v


class HilBench(_Table):
    """A described bench: any subset of a serial and a BLE device."""

    bench: BenchInfo = Field(default_factory=BenchInfo)
    serial: SerialBench | None = None
    ble: BleBench | None = None

    def describes(self, link: str) -> bool:
        """Is hardware for ``link`` ("serial" or "ble") described."""
        return getattr(self, link) is not None


def _raise(exc: ValidationError, where: str) -> BenchError:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    return BenchError(key, f"{msg} (got {value!r}) in {where}")


def parse_bench(data: Mapping[str, Any], where: str = "bench") -> HilBench:
    """Validate a bench table (already parsed TOML)."""
    try:
        return HilBench.model_validate(dict(data))
    except ValidationError as exc:
        raise _raise(exc, where) from None


def load_bench(path: Path) -> HilBench:
    """Read and validate a bench file; errors name the file and the key."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise BenchError("(file)", f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError("(file)", f"{path}: not TOML: {exc}") from None
    return parse_bench(data, str(path))


def bench_from_options(
    bench_file: Path | None = None,
    serial: str | None = None,
    ble: str | None = None,
    ble_kind: str | None = None,
    duration_s: float | None = None,
) -> HilBench:
    """Merge a bench file with command-line options (options win)."""
    data: dict[str, Any] = {}
    if bench_file is not None:
        data = load_bench(bench_file).model_dump(exclude_none=True)
    if serial:
        data.setdefault("serial", {})["port"] = serial
    if ble:
        data.setdefault("ble", {})["address"] = ble
    if ble_kind and "ble" in data:
        data["ble"]["kind"] = ble_kind
    if duration_s is not None:
        for link in ("serial", "ble"):
            if link in data:
                data[link]["duration_s"] = duration_s
    return parse_bench(data, "command-line options" if bench_file is None else str(bench_file))


# ---------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Tolerances:
    """How far a run may stray from perfect (the simulator gets zeros)."""

    max_bad_frame_ratio: float = 0.0
    max_loss_ratio: float = 0.0
    rate_tolerance: float = 0.005


@dataclass
class LinkRun:
    """What one source delivered during a HIL run."""

    device: str
    blocks: list[SampleBlock] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    counters: LinkCounters = field(default_factory=LinkCounters)

    def stream(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(t, values) of one stream, concatenated in arrival order."""
        got = [b for b in self.blocks if b.stream == name]
        if not got:
            return np.zeros(0), np.zeros((0, 1), np.float32)
        return np.concatenate([b.t for b in got]), np.concatenate([b.values for b in got])

    def n(self, name: str) -> int:
        """Samples of one stream."""
        return sum(len(b) for b in self.blocks if b.stream == name)


def check_framing(run: LinkRun, tol: Tolerances) -> list[str]:
    """Frames decode; rejects stay within tolerance; the counters add up."""
    c = run.counters
    out: list[str] = []
    if c.frames_ok <= 0:
        out.append("no frame decoded")
        return out
    bad = c.bad_crc + c.malformed
    ratio = bad / (c.frames_ok + bad)
    if ratio > tol.max_bad_frame_ratio:
        out.append(
            f"bad frames {bad}/{c.frames_ok + bad} = {ratio:.4f} > {tol.max_bad_frame_ratio}"
        )
    delivered = sum(len(b) for b in run.blocks)
    if c.samples_ok and c.samples_ok != delivered:
        out.append(f"samples_ok counter {c.samples_ok} != samples delivered {delivered}")
    return out


def check_decoding(run: LinkRun, streams: Sequence[str]) -> list[str]:
    """Every expected stream arrives, finite, in physical range, time increasing."""
    out: list[str] = []
    for s in streams:
        t, v = run.stream(s)
        if len(t) == 0:
            out.append(f"{s}: no samples")
            continue
        if not np.all(np.isfinite(v)):
            out.append(f"{s}: non-finite values")
        lo, hi = PHYSICAL_RANGE[s]
        if float(np.min(v)) < lo or float(np.max(v)) > hi:
            out.append(f"{s}: values {np.min(v):.4g}..{np.max(v):.4g} outside [{lo}, {hi}]")
        if len(t) > 1 and not np.all(np.diff(t) > 0):
            out.append(f"{s}: agent time not strictly increasing")
    t, v = run.stream("acc")
    if len(v) >= 10:
        g = float(np.median(np.linalg.norm(v, axis=1)))
        if not 500.0 <= g <= 1500.0:  # gravity: a scale error shows here first
            out.append(f"acc: median |a| = {g:.0f} mg, expected about 1000 mg (gravity)")
    return out


def _covered(gaps: Sequence[Gap], stream: str, t0: float, t1: float) -> float:
    """Seconds within [t0, t1] that gaps of ``stream`` (or device-wide ones) cover."""
    spans = sorted(
        (max(g.start, t0), min(g.end, t1))
        for g in gaps
        if (g.stream is None or str(g.stream) == stream) and g.end > t0 and g.start < t1
    )
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            if cur_a is not None and cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None and cur_b is not None:
        total += cur_b - cur_a
    return total


def check_accounting(run: LinkRun, rates_hz: Mapping[str, float], tol: Tolerances) -> list[str]:
    """Samples received + samples the gaps say are missing = what the clock says was measured.

    Per regular stream, over the span from its first to its last sample: the
    sample rate seen inside blocks matches the nominal rate, and every second
    of that span is either delivered or reported as a gap (within tolerance).
    """
    out: list[str] = []
    for s, hz in rates_hz.items():
        t, _ = run.stream(s)
        if len(t) < 3:
            continue
        span = float(t[-1] - t[0])
        if span <= 0:
            continue
        d = np.diff(t)
        est = 1.0 / float(np.median(d))
        if abs(est - hz) / hz > max(tol.rate_tolerance, 1e-6):
            out.append(f"{s}: rate {est:.3f} Hz, nominal {hz} Hz (tolerance {tol.rate_tolerance})")
        expected = span * hz + 1.0
        missing = _covered(run.gaps, s, float(t[0]), float(t[-1])) * hz
        accounted = len(t) + missing
        slack = max(2.0, expected * tol.max_loss_ratio) + len(run.gaps) * 2.0
        if abs(accounted - expected) > slack:
            out.append(
                f"{s}: {len(t)} received + {missing:.0f} in gaps = {accounted:.0f}, "
                f"but {span:.2f} s at {hz} Hz is {expected:.0f} (slack {slack:.0f})"
            )
        loss = missing / expected
        if loss > tol.max_loss_ratio + 1e-9:
            out.append(f"{s}: {loss:.3%} of the span lost in gaps > {tol.max_loss_ratio:.3%}")
    return out


def check_reconnect(
    run: LinkRun, since: float, streams: Sequence[str], min_reconnects: int = 1
) -> list[str]:
    """After the device went away at ``since``: reconnected, outage reported, data resumed.

    Links report outages differently (serial: one device-wide gap; BLE: one
    gap per stream on the next notification), so each expected stream must
    show a gap -- its own or a device-wide one -- ending after ``since``, and
    samples after it.
    """
    out: list[str] = []
    c = run.counters
    if c.reconnects < min_reconnects:
        out.append(f"reconnects {c.reconnects} < {min_reconnects}")
    for s in streams:
        down = [
            g for g in run.gaps if (g.stream is None or str(g.stream) == s) and g.end > since - 1.0
        ]
        if not down:
            out.append(f"{s}: no gap reported for the outage")
            continue
        if any(not (g.end > g.start) or not math.isfinite(g.end) for g in down):
            out.append(f"{s}: malformed outage gap(s): {down}")
        t, _ = run.stream(s)
        if not len(t) or float(t[-1]) <= max(g.end for g in down) - 1e-9:
            out.append(f"{s}: no data after the outage")
    return out
