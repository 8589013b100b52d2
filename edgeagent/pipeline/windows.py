"""Align one patient's multi-rate streams into fixed, overlapping windows.

Sources deliver ``SampleBlock``s on the agent clock at their own pace and rate
(ECG 130-500 Hz, accelerometer 50 Hz, temperature 1 Hz, ...). Features and the
detector need the *same* span of every modality at once, so a ``Windower``
buffers each (device, stream) and cuts windows ``[start, start + length_s)``
every ``hop_s`` seconds on a fixed grid of the agent clock.

Why it looks the way it does:

* Nothing is interpolated. A window carries, per stream, the samples that are
  really there, a ``coverage`` fraction (samples present / samples expected at
  the stream's own median spacing) and explicit ``gaps`` (``Gap`` events from
  the sources plus holes seen in the timestamps). Downstream code decides what
  a 60 % covered ECG window is worth; the windower never pretends.
* A window closes when every *active* stream's watermark (newest timestamp, or
  the end of a ``Gap`` the source reported) has passed its end, or when the
  agent clock ``now`` is ``lateness_s`` past its end. A stream that lags the
  newest stream by more than ``lateness_s`` stops counting as active. Either
  way one dead sensor cannot stall the other modalities.
* ``push`` is called for every block of every wearable (50 wearables is the
  sizing target), so it only validates with array operations and appends into
  a growable buffer; windows are cut with ``np.searchsorted``. No per-sample
  Python loop anywhere.
* Memory is bounded: after each emitted window everything older than the next
  window's start is trimmed, and a buffer never holds more than
  ``max_buffer_s`` seconds even if ``pop_ready`` is never called.
* Bad input is counted and dropped, never fatal and never kept silently: NaN or
  infinite values, out-of-order or duplicate timestamps, samples too late for
  any window still to come (see ``WindowCounters``).

This module does no I/O and knows nothing about devices beyond their names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeagent.errors import ConfigError
from edgeagent.streams import CHANNELS, Gap, SampleBlock, Stream

DEFAULT_LENGTH_S = 10.0
DEFAULT_HOP_S = 2.0
# How long a window may wait for a slow stream, on the agent clock. BLE
# notifications are batched by the radio stack for up to ~1-2 s; 5 s covers a
# short reconnect without holding alerts back for long.
DEFAULT_LATENESS_S = 5.0
# A spacing this many times the median spacing is a hole, not jitter: BLE and
# serial timestamps jitter by well under 2x the sample period once the source
# has mapped device time onto the agent clock.
HOLE_FACTOR = 2.5
# Sources stamp samples on the agent clock when they arrive, so a sample from
# the future is a clock bug; a little slack covers clock reads racing.
FUTURE_TOLERANCE_S = 2.0
# Streams stamped at events (one RR value per beat) have no nominal rate; a
# long interval there is a slow heart, not lost data, so no holes are inferred.
EVENT_STREAMS: frozenset[Stream] = frozenset({Stream.RR})
# Spacing estimates are the median over this many recent block medians, which
# is robust to a hole inside a block and cheap to update.
_DT_HISTORY = 32
_INITIAL_CAPACITY = 1024


@dataclass(frozen=True, eq=False)
class Window:
    """Everything one patient's sensors said about ``[start, end)`` on the agent clock.

    ``data`` maps each stream with at least one sample to ``(t, values)``
    (float64 seconds, float32 ``(n, channels)``), copied out of the buffers so
    the window stays valid after the windower moves on. ``coverage`` holds every
    stream the patient has ever sent, 0.0 when nothing arrived in this window.
    When two devices send the same stream the one with more samples in the
    window is used (``devices`` says which); mixing two ECG leads sample by
    sample would be meaningless. Equality is identity (arrays inside).
    """

    patient: str
    start: float
    end: float
    data: dict[Stream, tuple[np.ndarray, np.ndarray]]
    coverage: dict[Stream, float]
    present: frozenset[Stream]
    gaps: tuple[Gap, ...]
    devices: dict[Stream, str] = field(default_factory=dict)
    rates: dict[Stream, float] = field(default_factory=dict)  # Hz, from median spacing
    closed_by: str = "watermark"  # "watermark" | "lateness" | "flush"

    @property
    def length(self) -> float:
        """Window length in seconds."""
        return self.end - self.start


@dataclass
class WindowCounters:
    """What the windower accepted, dropped and emitted; shown by ``edgeagent status``.

    Every sample pushed is either kept (``samples_kept``) or dropped into
    exactly one of ``nonfinite``, ``future``, ``out_of_order``, ``duplicate``
    or ``late``; ``overflow`` counts kept samples trimmed later unwindowed.
    """

    blocks: int = 0
    samples_in: int = 0
    samples_kept: int = 0
    nonfinite: int = 0  # NaN/inf in t or any channel
    future: int = 0  # later than now + FUTURE_TOLERANCE_S (push with ``now``)
    out_of_order: int = 0  # older than a sample already received for that stream
    duplicate: int = 0  # same timestamp as the previous sample of that stream
    late: int = 0  # older than the start of every window still to come
    late_missed: int = 0  # kept, but arrived after a window that should have held it
    overflow: int = 0  # trimmed because a buffer exceeded max_buffer_s
    holes: int = 0  # spacing > HOLE_FACTOR x median spacing seen on push
    gaps_in: int = 0
    bad_gaps: int = 0  # Gap events with non-finite or reversed bounds
    windows_watermark: int = 0
    windows_lateness: int = 0
    windows_flush: int = 0
    windows_skipped_empty: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain dict for status output and JSON."""
        return dict(self.__dict__)


class _Buffer:
    """Samples of one (device, stream): a growable array with a moving head.

    Appends copy into spare capacity (amortised O(1)); trimming only moves
    ``lo``; the live part is compacted to the front when space runs out.
    """

    __slots__ = ("_dts", "device", "dt", "hi", "last_t", "lo", "stream", "t", "v", "watermark")

    def __init__(self, device: str, stream: Stream) -> None:
        self.device = device
        self.stream = stream
        self.t = np.empty(_INITIAL_CAPACITY, dtype=np.float64)
        self.v = np.empty((_INITIAL_CAPACITY, len(CHANNELS[stream])), dtype=np.float32)
        self.lo = 0
        self.hi = 0
        self.last_t = -math.inf  # newest accepted sample, even if trimmed since
        self.watermark = -math.inf  # last_t, or later when a Gap says nothing is coming
        self.dt = math.nan  # median sample spacing, seconds
        self._dts: list[float] = []

    def __len__(self) -> int:
        return self.hi - self.lo

    def append(self, t: np.ndarray, v: np.ndarray) -> None:
        n = t.shape[0]
        if self.hi + n > self.t.shape[0]:
            live = self.hi - self.lo
            cap = self.t.shape[0]
            while live + n > cap // 2:
                cap *= 2
            if cap != self.t.shape[0]:
                new_t = np.empty(cap, dtype=np.float64)
                new_v = np.empty((cap, self.v.shape[1]), dtype=np.float32)
            else:
                new_t, new_v = self.t, self.v
            new_t[:live] = self.t[self.lo : self.hi]
            new_v[:live] = self.v[self.lo : self.hi]
            self.t, self.v, self.lo, self.hi = new_t, new_v, 0, live
        self.t[self.hi : self.hi + n] = t
        self.v[self.hi : self.hi + n] = v
        self.hi += n

    def update_dt(self, block_median: float) -> None:
        self._dts.append(block_median)
        if len(self._dts) > _DT_HISTORY:
            del self._dts[0]
        s = sorted(self._dts)
        mid = len(s) // 2
        self.dt = s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])

    def trim_before(self, t0: float, keep_one: bool = False) -> int:
        """Drop samples older than ``t0``; ``keep_one`` keeps the newest of them.

        The kept sample lets the next window see a hole that straddles its
        start as a hole (spacing across the boundary), not as missing data.
        """
        k = int(np.searchsorted(self.t[self.lo : self.hi], t0, side="left"))
        if keep_one:
            k = max(k - 1, 0)
        self.lo += k
        return k

    def times(self) -> np.ndarray:
        return self.t[self.lo : self.hi]


class Windower:
    """Cuts one patient's sample blocks into aligned multimodal windows.

    Feed it with ``push(block)`` and ``push_gap(gap)`` from the sources'
    callbacks, then call ``pop_ready(now)`` (``now`` = agent clock) whenever
    convenient, e.g. once per second. Windows start on multiples of ``hop_s``
    so every patient's windows line up on the same grid. Not thread-safe: one
    windower per patient, driven from one thread.
    """

    def __init__(
        self,
        length_s: float = DEFAULT_LENGTH_S,
        hop_s: float = DEFAULT_HOP_S,
        *,
        patient: str = "",
        lateness_s: float = DEFAULT_LATENESS_S,
        max_buffer_s: float | None = None,
    ) -> None:
        if not (math.isfinite(length_s) and length_s > 0):
            raise ConfigError("windows.length_s", length_s, "must be a positive number of seconds")
        if not (math.isfinite(hop_s) and 0 < hop_s <= length_s):
            raise ConfigError("windows.hop_s", hop_s, f"must be > 0 and <= length_s ({length_s})")
        if not (math.isfinite(lateness_s) and lateness_s >= 0):
            raise ConfigError("windows.lateness_s", lateness_s, "must be >= 0 seconds")
        if max_buffer_s is None:
            # Generous: a replay may push a minute before popping; 60 s of a
            # 250 Hz ECG is 180 kB.
            max_buffer_s = max(60.0, 2 * (length_s + lateness_s))
        if not (math.isfinite(max_buffer_s) and max_buffer_s >= length_s + lateness_s):
            raise ConfigError(
                "windows.max_buffer_s",
                max_buffer_s,
                f"must be >= length_s + lateness_s ({length_s + lateness_s})",
            )
        self.length_s = float(length_s)
        self.hop_s = float(hop_s)
        self.patient = patient
        self.lateness_s = float(lateness_s)
        self.max_buffer_s = float(max_buffer_s)
        self.counters = WindowCounters()
        self._buffers: dict[tuple[str, Stream], _Buffer] = {}
        self._gaps: list[Gap] = []
        self._next_k: int | None = None  # grid index of the next window to emit
        self._emitted_end = -math.inf  # end of the last emitted window

    # -- input -------------------------------------------------------------

    @property
    def next_start(self) -> float | None:
        """Start of the next window to be emitted (None before any data)."""
        if self._next_k is None:
            starts = [b.t[b.lo] for b in self._buffers.values() if len(b)]
            if not starts:
                return None
            return math.floor(min(starts) / self.hop_s) * self.hop_s
        return self._next_k * self.hop_s

    def push(self, block: SampleBlock, now: float | None = None) -> int:
        """Buffer a block; return how many of its samples were kept.

        Rows with NaN/inf, timestamps not strictly after the stream's newest
        sample, or older than every window still to come are dropped and
        counted. With ``now`` (agent clock), samples more than
        ``FUTURE_TOLERANCE_S`` in the future are dropped too: one bogus
        timestamp would otherwise drag the watermark ahead and make every
        real sample after it "late". Everything else is appended as-is (no
        resampling).
        """
        c = self.counters
        c.blocks += 1
        n = len(block)
        c.samples_in += n
        if n == 0:
            return 0
        t = np.asarray(block.t, dtype=np.float64)
        v = np.asarray(block.values, dtype=np.float32)
        ok = np.isfinite(t) & np.isfinite(v).all(axis=1)
        if not ok.all():
            c.nonfinite += int(n - np.count_nonzero(ok))
        if now is not None:
            future = ok & (t > now + FUTURE_TOLERANCE_S)
            if future.any():
                c.future += int(np.count_nonzero(future))
                ok &= ~future
        if not ok.all():
            t, v = t[ok], v[ok]
            if t.shape[0] == 0:
                return 0
        key = (block.device, block.stream)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffer(block.device, block.stream)
        # Keep only samples strictly after everything seen before them.
        prev_max = np.maximum.accumulate(np.concatenate(([buf.last_t], t[:-1])))
        keep = t > prev_max
        if not keep.all():
            # A dropped sample is a duplicate when its timestamp is already
            # held (a resent frame), otherwise it is out of order.
            dup = t == prev_max
            held = buf.times()
            if held.shape[0]:
                pos = np.searchsorted(held, t).clip(max=held.shape[0] - 1)
                dup |= ~keep & (held[pos] == t)
            c.duplicate += int(np.count_nonzero(dup))
            c.out_of_order += int(np.count_nonzero(~keep & ~dup))
            t, v = t[keep], v[keep]
            if t.shape[0] == 0:
                return 0
        prev_last = buf.last_t
        buf.last_t = float(t[-1])
        buf.watermark = max(buf.watermark, buf.last_t)
        if self._next_k is not None:
            next_start = self._next_k * self.hop_s
            if t[0] < next_start:
                alive = t >= next_start
                c.late += int(t.shape[0] - np.count_nonzero(alive))
                t, v = t[alive], v[alive]
                if t.shape[0] == 0:
                    return 0
                prev_last = -math.inf  # spacing across the dropped part is not a rate
            if t[0] < self._emitted_end:
                c.late_missed += int(np.searchsorted(t, self._emitted_end, side="left"))
        spacings = _spacings(t, prev_last)
        if spacings.shape[0]:
            med = _median(spacings)
            if block.stream not in EVENT_STREAMS:
                ref = buf.dt if math.isfinite(buf.dt) else med
                c.holes += int(np.count_nonzero(spacings > HOLE_FACTOR * ref))
            buf.update_dt(med)
        buf.append(t, v)
        if buf.last_t - buf.t[buf.lo] > self.max_buffer_s:
            c.overflow += buf.trim_before(buf.last_t - self.max_buffer_s)
        c.samples_kept += int(t.shape[0])
        return int(t.shape[0])

    def push_gap(self, gap: Gap) -> None:
        """Record a span a source knows is empty; it also advances that stream's watermark.

        A gap with ``stream=None`` covers every stream of ``gap.device``.
        Advancing the watermark lets windows before ``gap.end`` close without
        waiting for the lateness timeout.
        """
        self.counters.gaps_in += 1
        if not (math.isfinite(gap.start) and math.isfinite(gap.end) and gap.start <= gap.end):
            self.counters.bad_gaps += 1
            return
        self._gaps.append(gap)
        for (device, stream), buf in self._buffers.items():
            if device == gap.device and (gap.stream is None or gap.stream == stream):
                buf.watermark = max(buf.watermark, gap.end)

    def forget(self, device: str) -> int:
        """Drop a device (unpaired, replaced) so windows stop reporting it as missing.

        Returns how many buffered samples were discarded (not counted as
        dropped: the caller chose to discard them).
        """
        gone = [k for k in self._buffers if k[0] == device]
        n = sum(len(self._buffers[k]) for k in gone)
        for k in gone:
            del self._buffers[k]
        self._gaps = [g for g in self._gaps if g.device != device]
        return n

    def status(self) -> dict[str, Any]:
        """Counters plus, per (device, stream), rate, newest timestamp and buffer size."""
        return {
            "patient": self.patient,
            "next_start": self.next_start,
            "counters": self.counters.as_dict(),
            "streams": {
                f"{dev}/{stream}": {
                    "rate_hz": (1.0 / b.dt) if math.isfinite(b.dt) and b.dt > 0 else None,
                    "watermark": b.watermark if math.isfinite(b.watermark) else None,
                    "buffered": len(b),
                }
                for (dev, stream), b in self._buffers.items()
            },
        }

    # -- output ------------------------------------------------------------

    def pop_ready(self, now: float | None = None) -> list[Window]:
        """Return the windows that can close now, oldest first.

        A window closes when every active stream's watermark is at or past its
        end, or when ``now`` (agent clock) is at least ``lateness_s`` past its
        end and some data exists after its start. Windows with no sample of
        any stream are skipped (counted), so a long outage does not produce
        a burst of empty windows.
        """
        out: list[Window] = []
        if not self._buffers:
            return out
        if self._next_k is None:
            starts = [b.t[b.lo] for b in self._buffers.values() if len(b)]
            if not starts:
                return out
            self._next_k = math.floor(min(starts) / self.hop_s)
        flush = now is not None and math.isinf(now) and now > 0
        while True:
            start = self._next_k * self.hop_s
            end = start + self.length_s
            wms = [b.watermark for b in self._buffers.values()]
            max_wm = max(wms)
            if max_wm <= start:
                break
            active_min = min(w for w in wms if w >= max_wm - self.lateness_s)
            if active_min >= end:
                closed_by = "watermark"
            elif now is not None and now >= end + self.lateness_s:
                closed_by = "flush" if flush else "lateness"
            else:
                break
            window = self._cut(start, end, closed_by)
            if window is None:
                self.counters.windows_skipped_empty += 1
                self._skip_empty(start)
            else:
                out.append(window)
                setattr(
                    self.counters,
                    f"windows_{closed_by}",
                    getattr(self.counters, f"windows_{closed_by}") + 1,
                )
                self._emitted_end = end
                self._next_k += 1
            self._trim()
        return out

    def flush(self) -> list[Window]:
        """Close every window that has any data (end of a replay or shutdown)."""
        return self.pop_ready(now=math.inf)

    # -- internals ---------------------------------------------------------

    def _skip_empty(self, start: float) -> None:
        """Jump to the first grid window that can contain the next buffered sample."""
        assert self._next_k is not None
        nxt = [
            b.t[b.lo + int(np.searchsorted(b.times(), start, side="left"))]
            for b in self._buffers.values()
            if len(b) and b.t[b.hi - 1] >= start
        ]
        if not nxt:
            self._next_k += 1
            return
        first = min(nxt)
        # The first window [k*hop, k*hop + L) whose end is after ``first``.
        k = math.floor((first - self.length_s) / self.hop_s) + 1
        self._next_k = max(self._next_k + 1, k)

    def _trim(self) -> None:
        assert self._next_k is not None
        start = self._next_k * self.hop_s
        for b in self._buffers.values():
            b.trim_before(start, keep_one=True)
        if self._gaps:
            self._gaps = [g for g in self._gaps if g.end > start]

    def _cut(self, start: float, end: float, closed_by: str) -> Window | None:
        best: dict[Stream, tuple[int, _Buffer, int, int]] = {}
        for (_, stream), b in self._buffers.items():
            times = b.times()
            i0, i1 = np.searchsorted(times, (start, end), side="left")
            n = int(i1 - i0)
            if stream not in best or n > best[stream][0]:
                best[stream] = (n, b, int(i0), int(i1))
        if all(n == 0 for n, *_ in best.values()):
            return None
        data: dict[Stream, tuple[np.ndarray, np.ndarray]] = {}
        coverage: dict[Stream, float] = {}
        devices: dict[Stream, str] = {}
        rates: dict[Stream, float] = {}
        gaps: list[Gap] = []
        length = end - start
        for stream, (n, b, i0, i1) in best.items():
            dt = b.dt
            if n:
                lo = b.lo
                data[stream] = (b.t[lo + i0 : lo + i1].copy(), b.v[lo + i0 : lo + i1].copy())
                devices[stream] = b.device
                if math.isfinite(dt) and dt > 0:
                    rates[stream] = 1.0 / dt
            if stream in EVENT_STREAMS:
                coverage[stream] = 1.0 if n else 0.0
            elif math.isfinite(dt) and dt > 0:
                # Rounded: float spacing error must not turn a full window into 0.99999.
                coverage[stream] = round(min(1.0, n * dt / length), 6)
            else:
                coverage[stream] = 1.0 if n else 0.0
            gaps.extend(self._holes(b, i0, i1, start, end))
        used = {stream: b.device for stream, (_, b, _, _) in best.items()}
        used_devices = set(used.values())
        for g in self._gaps:
            if not (g.end > start and g.start < end):
                continue
            # A gap of a device whose stream this window did not use says
            # nothing about the window's data (another device covered it).
            if g.stream is None:
                if g.device not in used_devices and any(k[0] == g.device for k in self._buffers):
                    continue
            elif g.stream in used and used[g.stream] != g.device:
                continue
            gaps.append(Gap(g.device, g.stream, max(g.start, start), min(g.end, end), g.reason))
        gaps.sort(key=lambda g: (g.start, g.device, str(g.stream)))
        return Window(
            patient=self.patient,
            start=start,
            end=end,
            data=data,
            coverage=coverage,
            present=frozenset(data),
            gaps=tuple(_dedupe(gaps)),
            devices=devices,
            rates=rates,
            closed_by=closed_by,
        )

    def _holes(self, b: _Buffer, i0: int, i1: int, start: float, end: float) -> list[Gap]:
        """Holes in ``[start, end)`` seen in one buffer's timestamps, clipped to the window."""
        if b.stream in EVENT_STREAMS:
            return []
        times = b.times()
        dt = b.dt
        if i1 == i0:
            before = times[i0 - 1] if i0 > 0 else -math.inf
            return [Gap(b.device, b.stream, max(start, float(before)), end, "no data")]
        if not (math.isfinite(dt) and dt > 0):
            return []
        thresh = HOLE_FACTOR * dt
        out: list[Gap] = []
        j0 = max(i0 - 1, 0)
        j1 = min(i1 + 1, times.shape[0])
        seg = times[j0:j1]
        d = np.diff(seg)
        for k in np.flatnonzero(d > thresh):
            g0, g1 = max(float(seg[k]), start), min(float(seg[k + 1]), end)
            if g1 > g0:
                out.append(Gap(b.device, b.stream, g0, g1, "hole"))
        if i0 == 0 and times[0] - start > thresh:
            out.append(Gap(b.device, b.stream, start, float(times[0]), "no data"))
        if i1 == times.shape[0] and end - times[i1 - 1] > thresh:
            out.append(Gap(b.device, b.stream, float(times[i1 - 1]), end, "no data"))
        return out


def _spacings(t: np.ndarray, prev: float) -> np.ndarray:
    """Sample spacings of a block, including the step from the previous sample if known."""
    if math.isinf(prev):
        return t[1:] - t[:-1]
    d = np.empty(t.shape[0])
    d[0] = t[0] - prev
    np.subtract(t[1:], t[:-1], out=d[1:])
    return d


def _median(x: np.ndarray) -> float:
    """Median of a short 1-D array; np.median's overhead dominates at block sizes."""
    s = np.sort(x)
    m = s.shape[0] // 2
    return float(s[m]) if s.shape[0] % 2 else 0.5 * float(s[m - 1] + s[m])


def _dedupe(gaps: list[Gap]) -> list[Gap]:
    """Drop a detected hole when a source-reported gap already covers it."""
    reported = [g for g in gaps if g.reason not in ("hole", "no data")]
    if not reported:
        return gaps
    out = []
    for g in gaps:
        if g.reason in ("hole", "no data") and any(
            r.device == g.device
            and (r.stream is None or r.stream == g.stream)
            and r.start <= g.start
            and r.end >= g.end
            for r in reported
        ):
            continue
        out.append(g)
    return out
