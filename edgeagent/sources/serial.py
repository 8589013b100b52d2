"""Serial wearables: pyserial reader thread around the sans-I/O frame codec.

Two layers, so the interesting part is testable without a port:

* ``FrameMapper`` (pure): decoded frames in, ``SampleBlock``s and ``Gap``s out
  on the agent clock. It drops duplicated frames (their samples are never
  delivered twice), turns sequence gaps into per-stream ``Gap``s, and a
  dropped link into a device-wide ``Gap`` once data resumes.
* ``SerialSource`` (I/O): opens the port, reads in chunks with a short
  timeout, feeds the decoder and the mapper, and reopens a vanished port with
  exponential backoff plus jitter (``sources.retry``). ``stop()`` returns
  within one read timeout.

Clock mapping. The device stamps samples in ns since its boot. The first
sample frame of a device boot fixes ``agent = anchor + (device_ns -
anchor_ns) * 1e-9`` with the frame's last sample taken as "now" (it cannot
have been measured later than it arrived). The offset is kept across
reconnects of the same boot (the device clock did not stop, and re-anchoring
would add transport jitter); a new ``boot_id`` in HELLO, or device time
jumping back by more than ``REBOOT_BACKWARD_S``, starts a new anchor. Crystal
drift (tens of ppm, seconds per day) is absorbed by slewing: when the mapped
time of fresh samples drifts more than ``max_skew_s`` from the agent clock the
offset is nudged by at most ``MAX_SLEW`` of the device time that passed, so
agent time stays strictly increasing per stream (never a step backwards).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Final

import numpy as np
import serial

from edgeagent.codecs.serial_frame import (
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    SampleFrame,
    SeqKind,
    SeqTracker,
)
from edgeagent.errors import SourceError
from edgeagent.sources.retry import FAST_RETRY_S, Action, RetryPolicy, classify
from edgeagent.streams import Gap, LinkCounters, SampleBlock

log = logging.getLogger(__name__)

# Device time going back this far within one boot can only be a restart whose
# HELLO we missed (lost to corruption); smaller steps back are duplicates.
REBOOT_BACKWARD_S: Final = 10.0
# Largest clock correction per second of device time (500 ppm): ten times a
# poor crystal's drift, small enough that sample spacing changes by < 0.05 %.
MAX_SLEW: Final = 5e-4
DEFAULT_MAX_SKEW_S: Final = 2.0
# pyserial read timeout: bounds how long stop() waits and how late a frame is.
READ_TIMEOUT_S: Final = 0.05

STATES: Final = ("connecting", "open", "backoff", "stopped", "failed")


class FrameMapper:
    """Turns decoded frames into agent-clock blocks and gaps (no I/O, no threads).

    ``now`` is passed in on every call (agent clock, epoch seconds) so tests
    and replays control time. ``max_skew_s=None`` disables drift slewing (use
    it when the device runs faster than real time).
    """

    def __init__(
        self,
        device: str,
        counters: LinkCounters | None = None,
        max_skew_s: float | None = DEFAULT_MAX_SKEW_S,
    ) -> None:
        self.device = device
        self.counters = counters if counters is not None else LinkCounters()
        self.max_skew_s = max_skew_s
        self.hello: Hello | None = None
        self.tracker = SeqTracker()
        self._anchor_t: float | None = None
        self._anchor_ns = 0
        self._last_ns = 0  # newest device time seen (any stream), for slewing
        self._last_t = -math.inf  # newest agent time delivered (any stream)
        self._down_since: float | None = None

    # -- clock

    def _map(self, ns: np.ndarray) -> np.ndarray:
        assert self._anchor_t is not None
        return self._anchor_t + (ns - self._anchor_ns).astype(np.float64) * 1e-9

    def _bump(self, key: str) -> None:
        extra = self.counters.extra
        extra[key] = extra.get(key, 0) + 1

    def _new_boot(self, now: float, reason: str) -> list[Gap]:
        out: list[Gap] = []
        if math.isfinite(self._last_t):
            out.append(Gap(self.device, None, self._last_t, max(now, self._last_t), reason))
        self.tracker.reset()
        self._anchor_t = None
        self._last_ns = 0
        self._bump("device_restarts")
        return out

    # -- link events

    def link_down(self, now: float) -> None:
        """The port closed or failed; the gap is reported when data resumes."""
        if self._down_since is None:
            self._down_since = self._last_t if math.isfinite(self._last_t) else now

    # -- frames

    def feed(self, frame: Frame, now: float) -> list[SampleBlock | Gap]:
        """Process one decoded frame; return what to deliver, in order."""
        if isinstance(frame, SampleFrame):
            return self._samples(frame, now)
        out: list[SampleBlock | Gap] = []
        boot = frame.boot_id
        known = self.hello.boot_id if self.hello is not None else None
        if known is not None and boot != known:
            out.extend(self._new_boot(now, "device restarted"))
        if isinstance(frame, Hello):
            self.hello = frame
        elif isinstance(frame, Heartbeat):
            self._bump("heartbeats")
            if self.hello is None:
                # No HELLO yet (joined mid-stream): remember the boot anyway.
                self.hello = Hello(-1, 0, boot, "", "", ())
        return out

    def _samples(self, frame: SampleFrame, now: float) -> list[SampleBlock | Gap]:
        out: list[SampleBlock | Gap] = []
        last_end = self.tracker.last_end_ns(frame.stream)
        if last_end is not None and frame.t0_ns < last_end - REBOOT_BACKWARD_S * 1e9:
            out.extend(self._new_boot(now, "device clock went back (restart)"))
        kind, missing = self.tracker.judge(frame)
        if kind is SeqKind.DUPLICATE:
            self.counters.duplicates += 1
            return out
        if self._anchor_t is None:
            self._anchor_t = now
            self._anchor_ns = frame.end_ns
            self._bump("clock_anchors")
        t = self._map(frame.times_ns())
        if self._down_since is not None:
            start = self._down_since
            out.append(Gap(self.device, None, start, max(start, float(t[0])), "link down"))
            self._down_since = None
        if kind is SeqKind.GAP:
            self.counters.seq_gaps += 1
            self.counters.frames_missing += missing
            prev_t = float(self._map(np.array([last_end], dtype=np.int64))[0])
            out.append(
                Gap(self.device, frame.stream, prev_t, float(t[0]), f"{missing} frame(s) lost")
            )
        self.counters.samples_ok += frame.n
        out.append(SampleBlock(self.device, frame.stream, t, frame.values, frame.seq))
        self._last_t = max(self._last_t, float(t[-1]))
        self._slew(frame.end_ns, float(t[-1]), now)
        return out

    def _slew(self, end_ns: int, end_t: float, now: float) -> None:
        if self._anchor_t is None:
            return
        span = max(0, end_ns - self._last_ns) * 1e-9 if self._last_ns else 0.0
        self._last_ns = max(self._last_ns, end_ns)
        if self.max_skew_s is None or span == 0.0:
            return
        lag = now - end_t  # > 0: device clock slow (or link latency)
        if abs(lag) <= self.max_skew_s:
            return
        excess = lag - math.copysign(self.max_skew_s, lag)
        step = math.copysign(min(abs(excess), MAX_SLEW * span), excess)
        self._anchor_t += step
        self._bump("clock_slews")


class SerialSource:
    """Reads one serial wearable on a background thread.

    ``on_block``/``on_gap`` run on the reader thread; keep them short (push
    into a windower or a queue). An exception in a callback is logged and
    counted (``counters.extra["callback_errors"]``), never kills the reader.
    ``state`` is one of ``connecting``, ``open``, ``backoff``, ``stopped``,
    ``failed`` (gave up: see ``last_error``).
    """

    def __init__(
        self,
        port: str,
        device_id: str,
        on_block: Callable[[SampleBlock], None],
        on_gap: Callable[[Gap], None] | None = None,
        *,
        baudrate: int = 115200,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        max_skew_s: float | None = DEFAULT_MAX_SKEW_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.port = port
        self.device_id = device_id
        self.on_block = on_block
        self.on_gap = on_gap
        self.baudrate = baudrate
        self.retry = retry or RetryPolicy()
        self.rng = rng or random.Random()
        self.read_timeout_s = read_timeout_s
        self.clock = clock
        self.counters = LinkCounters()
        self.decoder = FrameDecoder(self.counters)
        self.mapper = FrameMapper(device_id, self.counters, max_skew_s)
        self.state = "stopped"
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serial: serial.Serial | None = None
        self._opened_before = False

    @property
    def alive(self) -> bool:
        """True while the reader thread runs (the daemon's liveness reads this)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def device_info(self) -> Hello | None:
        """The device's latest HELLO (identity, firmware, streams), if any."""
        return self.mapper.hello

    def start(self) -> None:
        """Start the reader thread (idempotent while running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.state = "connecting"
        self._thread = threading.Thread(
            target=self._run, name=f"serial-{self.device_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop reading and close the port; returns within about one read timeout."""
        self._stop.set()
        ser = self._serial
        if ser is not None:
            with contextlib.suppress(AttributeError, OSError, serial.SerialException):
                ser.cancel_read()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.state != "failed":
            self.state = "stopped"

    def _deliver(self, items: list[SampleBlock | Gap]) -> None:
        for item in items:
            try:
                if isinstance(item, SampleBlock):
                    self.on_block(item)
                elif self.on_gap is not None:
                    self.on_gap(item)
            except Exception:
                log.exception("serial %s: callback failed", self.device_id)
                self.counters.extra["callback_errors"] = (
                    self.counters.extra.get("callback_errors", 0) + 1
                )

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self.state = "connecting"
            try:
                ser = serial.Serial(
                    self.port, self.baudrate, timeout=self.read_timeout_s, exclusive=True
                )
            except Exception as exc:
                if not self._wait_retry(exc, attempt):
                    return
                attempt += 1
                continue
            attempt = 0
            self._serial = ser
            if self.last_error is not None:  # a line when it comes back, and the error clears
                log.warning("serial %s: back on %s (was: %s)", self.device_id, self.port,
                            self.last_error)  # fmt: skip
                self.last_error = None
            if self._opened_before:
                self.counters.reconnects += 1
            self._opened_before = True
            self.decoder.reset()
            self.state = "open"
            try:
                self._read_loop(ser)
            except Exception as exc:
                self.mapper.link_down(self.clock())
                self._close()
                if not self._wait_retry(exc, attempt):
                    return
                attempt += 1
                continue
            self._close()
        self.state = "stopped"

    def _read_loop(self, ser: serial.Serial) -> None:
        while not self._stop.is_set():
            # One read call: either everything waiting, or up to the timeout for
            # the first byte. A failing second read would lose the first's bytes.
            data = ser.read(max(1, ser.in_waiting))
            if not data:
                continue
            self.decoder.feed(data)
            now = self.clock()
            while (frame := self.decoder.next_frame()) is not None:
                self._deliver(self.mapper.feed(frame, now))

    def _close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                ser.close()

    def _wait_retry(self, exc: BaseException, attempt: int) -> bool:
        """Sleep before the next try; False when the source gives up or is stopped."""
        verdict = classify(exc)
        self.last_error = exc
        if verdict.action is Action.GIVE_UP or self.retry.exhausted(attempt):
            self.last_error = SourceError(self.device_id, verdict.reason, verdict.advice)
            log.error("serial %s: giving up: %s", self.device_id, self.last_error)
            self.state = "failed"
            return False
        if verdict.action is Action.RETRY_FAST:
            delay = FAST_RETRY_S
        else:
            delay = self.retry.delay(attempt, self.rng)
        log.info(
            "serial %s: %s; retry in %.2f s%s",
            self.device_id,
            verdict.reason,
            delay,
            f" ({verdict.advice})" if verdict.advice else "",
        )
        self.state = "backoff"
        return not self._stop.wait(delay)
