"""The agent's vocabulary for sensor data: streams, channels and sample blocks.

Every source (serial, BLE, replay) turns device bytes into ``SampleBlock``s on
the agent's clock and hands them to one callback; every consumer (windows,
evaluation, benchmarks) reads only these types. Keeping this module tiny and
dependency-free (numpy only) is what lets sources and pipeline evolve apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Stream(StrEnum):
    """A physical quantity a wearable reports. Values are the recording-format names."""

    ECG = "ecg"  # microvolts
    ACC = "acc"  # x, y, z in milli-g
    SKIN_TEMP = "skin_temp"  # degrees Celsius
    ENV = "env"  # ambient degrees Celsius, relative humidity %
    HR = "hr"  # beats per minute as reported by the device
    RR = "rr"  # RR interval in seconds, stamped at the beat that ends it


CHANNELS: dict[Stream, tuple[str, ...]] = {
    Stream.ECG: ("uv",),
    Stream.ACC: ("x", "y", "z"),
    Stream.SKIN_TEMP: ("celsius",),
    Stream.ENV: ("celsius", "humidity"),
    Stream.HR: ("bpm",),
    Stream.RR: ("seconds",),
}


@dataclass(frozen=True, slots=True, eq=False)
class SampleBlock:
    """Consecutive samples of one stream from one device.

    ``t`` is float64 seconds on the agent's clock (device time mapped by the
    source), non-decreasing; ``values`` is float32 with one column per channel.
    ``seq`` is the device's frame sequence number when it has one.
    """

    device: str
    stream: Stream
    t: np.ndarray
    values: np.ndarray
    seq: int | None = None

    def __post_init__(self) -> None:
        n_ch = len(CHANNELS[self.stream])
        if self.t.ndim != 1:
            raise ValueError(f"t must be 1-D, got shape {self.t.shape}")
        if self.values.shape != (self.t.shape[0], n_ch):
            raise ValueError(
                f"{self.stream} values must have shape ({self.t.shape[0]}, {n_ch}), "
                f"got {self.values.shape}"
            )

    def __len__(self) -> int:
        return int(self.t.shape[0])


@dataclass(frozen=True, slots=True)
class Gap:
    """A span the source knows it has no data for (link drop, lost frames).

    Windows report gaps explicitly instead of interpolating across them.
    """

    device: str
    stream: Stream | None  # None: every stream of the device
    start: float
    end: float
    reason: str


@dataclass(slots=True)
class LinkCounters:
    """Per-source counters shown by ``edgeagent status``; sources only add."""

    frames_ok: int = 0
    samples_ok: int = 0
    bad_crc: int = 0
    malformed: int = 0
    resyncs: int = 0
    seq_gaps: int = 0
    frames_missing: int = 0
    duplicates: int = 0
    bytes_dropped: int = 0
    reconnects: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {k: getattr(self, k) for k in self.__slots__ if k != "extra"}
        out.update(self.extra)
        return out
