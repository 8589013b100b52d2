"""BLE ingestion through bleak: discover, connect to several wearables, subscribe, decode.

Layers, outermost first:

* :class:`BleSource` owns an asyncio loop in a background thread (so the daemon
  can run it beside the threaded serial source) and one task per wearable.
  Each task connects, subscribes, streams, and on any loss reconnects with the
  shared exponential backoff + jitter policy (:mod:`edgeagent.sources.retry`).
* :class:`BleDecoder` is the per-device, sans-I/O part: notification bytes +
  arrival time in, :class:`SampleBlock` / :class:`Gap` out. It maps device
  nanosecond time stamps to the agent clock, finds lost frames, drops
  overlaps, and is unit-tested without any radio or bus.
* :mod:`edgeagent.codecs.gatt` holds the pure byte decoders.

Clock mapping (PMD): the offset ``agent - device`` is taken at the first frame
of a connection (as the serial source does). After a reconnect a new offset is
only adopted if it differs from the old one by more than ``REBOOT_SLACK_S``:
the device's clock did not restart, so keeping the old offset makes the
missing span exact and the data on both sides of it perfectly aligned. Heart
rate and temperature carry no usable time: they are stamped on arrival, RR
intervals are placed back from the notification (the last one ends at it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeagent.codecs import gatt
from edgeagent.errors import EdgeAgentError, FrameError
from edgeagent.sources.bluez import close_loop, connect_client
from edgeagent.sources.link import LinkInput, LinkState, next_state
from edgeagent.sources.retry import Action, RetryPolicy, classify
from edgeagent.streams import Gap, LinkCounters, SampleBlock, Stream

log = logging.getLogger(__name__)

# A device clock that jumps by more than this between connections rebooted.
REBOOT_SLACK_S = 0.5
# A frame whose first sample is later than expected by more than this many
# sample periods means frames were lost (one period is normal jitter).
LOST_FRAME_PERIODS = 1.5
# D-Bus can stall: bound every call so a wedged bluetoothd never wedges us.
CONNECT_TIMEOUT_S = 10.0
CONTROL_TIMEOUT_S = 3.0

DEFAULT_PMD = {
    gatt.PMD_ECG: {gatt.PMD_SETTING_SAMPLE_RATE: 130, gatt.PMD_SETTING_RESOLUTION: 14},
    gatt.PMD_ACC: {gatt.PMD_SETTING_SAMPLE_RATE: 50, gatt.PMD_SETTING_RESOLUTION: 16},
}
_PMD_STREAM = {gatt.PMD_ECG: Stream.ECG, gatt.PMD_ACC: Stream.ACC}


class BleError(EdgeAgentError):
    """A wearable refused or broke the BLE conversation (reason + address)."""

    def __init__(self, address: str, reason: str, detail: str = "") -> None:
        self.address = address
        self.reason = reason
        self.detail = detail
        super().__init__(f"{address}: {reason}" + (f" ({detail})" if detail else ""))


# ---------------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Which advertisers to use. Empty criteria match everything; all given must match.

    ``name_pattern`` is a regular expression searched in the advertised name;
    ``addresses`` is an allow-list (case-insensitive); ``service_uuids`` matches
    when the advertisement lists at least one of them.
    """

    service_uuids: frozenset[str] = frozenset()
    name_pattern: str | None = None
    addresses: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.name_pattern is not None:
            try:
                re.compile(self.name_pattern)
            except re.error as e:
                raise ValueError(f"name_pattern {self.name_pattern!r}: {e}") from e

    def matches(self, address: str, name: str | None, uuids: Iterable[str]) -> bool:
        """Pure predicate over one advertisement."""
        if self.addresses and address.upper() not in {a.upper() for a in self.addresses}:
            return False
        if self.name_pattern is not None and not re.search(self.name_pattern, name or ""):
            return False
        if self.service_uuids:
            have = {u.lower() for u in uuids}
            if not have & {u.lower() for u in self.service_uuids}:
                return False
        return True


WEARABLE_SERVICES = frozenset(
    {gatt.HEART_RATE_SERVICE, gatt.HEALTH_THERMOMETER_SERVICE, gatt.PMD_SERVICE}
)


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One advertiser seen during a scan (what ``edgeagent devices scan`` prints)."""

    address: str
    name: str | None
    rssi: int
    services: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "services": list(self.services),
        }


async def scan_async(
    timeout: float = 3.0, device_filter: DeviceFilter | None = None, adapter: str | None = None
) -> list[ScanResult]:
    """Scan for ``timeout`` seconds and return matching advertisers, strongest first."""
    from bleak import BleakScanner

    kwargs: dict[str, Any] = {"bluez": {"adapter": adapter}} if adapter else {}
    found = await BleakScanner.discover(timeout=timeout, return_adv=True, **kwargs)
    flt = device_filter or DeviceFilter()
    out = [
        ScanResult(d.address, d.name, int(a.rssi), tuple(a.service_uuids))
        for d, a in found.values()
        if flt.matches(d.address, d.name, a.service_uuids)
    ]
    return sorted(out, key=lambda r: -r.rssi)


def scan(
    timeout: float = 3.0, device_filter: DeviceFilter | None = None, adapter: str | None = None
) -> list[ScanResult]:
    """Blocking :func:`scan_async` for the CLI."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(scan_async(timeout, device_filter, adapter))
    finally:
        close_loop(loop)


# -------------------------------------------------------------- sans-I/O decoder


@dataclass
class _StreamTrack:
    last_t: float | None = None  # agent time of the last sample delivered
    pending_gap_reason: str | None = None


class BleDecoder:
    """Per-device notification decoder: bytes + arrival time -> blocks and gaps.

    ``pmd_rates`` gives the sample rate per PMD measurement as negotiated on the
    control point (PMD frames carry only the last sample's time).
    """

    def __init__(self, device: str, counters: LinkCounters | None = None) -> None:
        self.device = device
        self.counters = counters if counters is not None else LinkCounters()
        self.pmd_rates: dict[int, float] = {}
        self._offset: float | None = None
        self._offset_fresh = False
        self._tracks: dict[Stream, _StreamTrack] = {}

    def _bump(self, key: str, n: int = 1) -> None:
        self.counters.extra[key] = self.counters.extra.get(key, 0) + n

    def new_connection(self) -> None:
        """The link was re-established: the next PMD frame re-anchors the clock."""
        self._offset_fresh = False
        for tr in self._tracks.values():
            if tr.last_t is not None:
                tr.pending_gap_reason = "disconnected"

    def _emit(
        self, stream: Stream, t: np.ndarray, v: np.ndarray, period: float | None
    ) -> tuple[list[SampleBlock], list[Gap]]:
        tr = self._tracks.setdefault(stream, _StreamTrack())
        gaps: list[Gap] = []
        if tr.last_t is not None:
            keep = t > tr.last_t + 1e-9
            if not keep.all():
                self.counters.duplicates += int((~keep).sum())
                t, v = t[keep], v[keep]
            if len(t) == 0:
                return [], []
            expected = tr.last_t + (period or 0.0)
            late = t[0] - expected
            if tr.pending_gap_reason is not None or (
                period is not None and late > (LOST_FRAME_PERIODS - 1) * period
            ):
                reason = tr.pending_gap_reason or "lost frames"
                gaps.append(Gap(self.device, stream, tr.last_t, float(t[0]), reason))
                if period is not None:
                    self._bump("samples_missing", max(0, round(late / period)))
                if reason == "lost frames":
                    self.counters.seq_gaps += 1
        tr.pending_gap_reason = None
        tr.last_t = float(t[-1])
        self.counters.samples_ok += len(t)
        return [SampleBlock(self.device, stream, t, v.astype(np.float32, copy=False))], gaps

    def feed_pmd(self, data: bytes, arrival: float) -> tuple[list[SampleBlock], list[Gap]]:
        """A PMD data notification. Raises FrameError (counted) on malformed bytes."""
        try:
            frame = gatt.decode_pmd_data(data)
        except FrameError:
            self.counters.malformed += 1
            raise
        stream = _PMD_STREAM.get(frame.measurement)
        rate = self.pmd_rates.get(frame.measurement)
        if stream is None or rate is None:
            self.counters.malformed += 1
            raise FrameError("unexpected", f"measurement {frame.measurement} was not started")
        dev_last = frame.timestamp_ns / 1e9
        candidate = arrival - dev_last
        if not self._offset_fresh:
            if self._offset is None or abs(candidate - self._offset) > REBOOT_SLACK_S:
                self._offset = candidate
            self._offset_fresh = True
        assert self._offset is not None
        n = frame.samples.shape[0]
        t = dev_last + self._offset - (np.arange(n - 1, -1, -1, dtype=np.float64) / rate)
        self.counters.frames_ok += 1
        return self._emit(stream, t, frame.samples, 1.0 / rate)

    def feed_heart_rate(self, data: bytes, arrival: float) -> tuple[list[SampleBlock], list[Gap]]:
        """A Heart Rate Measurement: HR stamped on arrival, RR placed back from it."""
        try:
            hr = gatt.decode_heart_rate(data)
        except FrameError:
            self.counters.malformed += 1
            raise
        self.counters.frames_ok += 1
        blocks, gaps = self._emit(
            Stream.HR, np.array([arrival]), np.array([[hr.bpm]], np.float32), None
        )
        if hr.rr_s:
            rr = np.asarray(hr.rr_s, dtype=np.float64)
            ends = arrival - np.concatenate([np.cumsum(rr[::-1][:-1])[::-1], [0.0]])
            b, g = self._emit(Stream.RR, ends, rr.astype(np.float32)[:, None], None)
            blocks += b
            gaps += g
        return blocks, gaps

    def feed_temperature(self, data: bytes, arrival: float) -> tuple[list[SampleBlock], list[Gap]]:
        """A Temperature Measurement, stamped on arrival."""
        try:
            m = gatt.decode_temperature(data)
        except FrameError:
            self.counters.malformed += 1
            raise
        self.counters.frames_ok += 1
        if not np.isfinite(m.celsius):
            self._bump("temp_invalid")
            return [], []
        return self._emit(
            Stream.SKIN_TEMP, np.array([arrival]), np.array([[m.celsius]], np.float32), None
        )


# ------------------------------------------------------------------ link state


@dataclass
class LinkInfo:
    """Per-device link status; updated only by the source's loop."""

    address: str
    name: str | None = None
    state: LinkState = LinkState.SEARCHING
    since: float = field(default_factory=time.time)
    last_error: str = ""
    battery: int | None = None
    streams: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "address": self.address,
            "name": self.name,
            "state": str(self.state),
            "since": self.since,
            "last_error": self.last_error,
            "battery": self.battery,
            "streams": list(self.streams),
        }


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """Something an operator should see: connect refused, stall, malformed payload ..."""

    t: float
    device: str
    kind: str
    detail: str = ""


# ---------------------------------------------------------------------- source


class BleSource:
    """Streams every matching wearable; keeps going through any link fault.

    ``expected`` (optional) is the number of devices to look for; the scan loop
    keeps looking for new matches until that many are handled (default: keep
    scanning every ``rescan_s``). Callbacks run on the source's thread.
    """

    def __init__(
        self,
        device_filter: DeviceFilter,
        on_block: Callable[[SampleBlock], None],
        on_gap: Callable[[Gap], None] | None = None,
        on_event: Callable[[LinkEvent], None] | None = None,
        *,
        pmd_settings: dict[int, dict[int, int]] | None = None,
        retry: RetryPolicy | None = None,
        scan_s: float = 1.0,
        rescan_s: float = 2.0,
        stall_s: float = 3.0,
        stall_reconnect_s: float = 8.0,
        use_acquire_notify: bool = True,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.filter = device_filter
        self.on_block = on_block
        self.on_gap = on_gap
        self.on_event = on_event
        self.pmd_settings = pmd_settings if pmd_settings is not None else DEFAULT_PMD
        self.retry = retry or RetryPolicy()
        self.scan_s, self.rescan_s = scan_s, rescan_s
        self.stall_s, self.stall_reconnect_s = stall_s, stall_reconnect_s
        self.use_acquire_notify = use_acquire_notify
        self.clock = clock
        self.counters: dict[str, LinkCounters] = {}
        self.links: dict[str, LinkInfo] = {}
        self.events: deque[LinkEvent] = deque(maxlen=1000)
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_evt: asyncio.Event | None = None
        self._ready = threading.Event()
        self._scan_lock: asyncio.Lock | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._decoders: dict[str, BleDecoder] = {}

    @property
    def alive(self) -> bool:
        """True while the source's thread runs (the daemon's liveness reads this)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The source's event loop while it is open (None before start and after stop)."""
        loop = self._loop
        return loop if loop is not None and not loop.is_closed() else None

    @property
    def state(self) -> str:
        """Overall state: "streaming" if any device streams, else the best state seen."""
        if self._thread is None or not self._thread.is_alive():
            return "stopped"
        states = {li.state for li in self.links.values()}
        return "streaming" if LinkState.STREAMING in states else "searching"

    # -- lifecycle

    def start(self) -> None:
        """Start the background thread and its event loop."""
        if self._thread is not None:
            raise RuntimeError("BleSource already started")
        self._thread = threading.Thread(target=self._thread_main, name="ble-source", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every device task (disconnecting cleanly) and join the thread."""
        loop, evt = self._loop, self._stop_evt
        if loop is not None and evt is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(evt.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            close_loop(loop)

    async def _main(self) -> None:
        self._stop_evt = asyncio.Event()
        self._scan_lock = asyncio.Lock()
        self._ready.set()
        scanner = asyncio.create_task(self._scan_loop())
        await self._stop_evt.wait()
        scanner.cancel()
        tasks = [scanner, *self._tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for li in self.links.values():
            self._apply(li, LinkInput.STOP)

    # -- events and state

    def _event(self, device: str, kind: str, detail: str = "") -> None:
        ev = LinkEvent(self.clock(), device, kind, detail)
        self.events.append(ev)
        log.info("ble %s: %s %s", device, kind, detail)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:
                log.exception("on_event callback failed")

    def _apply(self, li: LinkInfo, event: LinkInput) -> None:
        """Move the link through its transition table (``sources.link``)."""
        state = next_state(li.state, event)
        if li.state != state:
            li.state = state
            li.since = self.clock()

    def _deliver(self, blocks: list[SampleBlock], gaps: list[Gap]) -> None:
        # a consumer bug must not kill bleak's notification path: log and count it
        try:
            for g in gaps:
                if self.on_gap is not None:
                    self.on_gap(g)
            for b in blocks:
                self.on_block(b)
        except Exception:
            log.exception("ble consumer callback failed")
            c = self.counters.setdefault(
                blocks[0].device if blocks else gaps[0].device, LinkCounters()
            )
            c.extra["callback_errors"] = c.extra.get("callback_errors", 0) + 1

    # -- discovery

    async def _scan_loop(self) -> None:
        from bleak import BleakScanner

        while True:
            try:
                assert self._scan_lock is not None
                async with self._scan_lock:
                    found = await BleakScanner.discover(timeout=self.scan_s, return_adv=True)
                for d, a in found.values():
                    addr = d.address.upper()
                    if addr in self._tasks or not self.filter.matches(
                        addr, d.name, a.service_uuids
                    ):
                        continue
                    self.links[addr] = LinkInfo(addr, d.name)
                    self.counters[addr] = LinkCounters()
                    self._decoders[addr] = BleDecoder(addr, self.counters[addr])
                    self._event(addr, "discovered", f"{d.name} rssi={a.rssi}")
                    self._tasks[addr] = asyncio.create_task(self._device_loop(addr))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # no adapter yet, bus restarting ...
                self._event("adapter", "scan_failed", repr(e))
            await asyncio.sleep(self.rescan_s)

    # -- one device

    async def _device_loop(self, addr: str) -> None:
        li = self.links[addr]
        counters = self.counters[addr]
        attempt = 0
        first = True
        while True:
            try:
                streamed = await self._session(addr, li, counters, first)
                first = False
                if streamed:
                    attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                li.last_error = f"{type(e).__name__}: {e}"
                counters.extra["connect_failures"] = counters.extra.get("connect_failures", 0) + 1
                verdict = classify(e)
                self._event(addr, "connect_failed", li.last_error)
                if verdict.action is Action.GIVE_UP or self.retry.exhausted(attempt):
                    self._apply(li, LinkInput.GIVE_UP)
                    self._event(addr, "gave_up", verdict.advice or verdict.reason)
                    return
                if verdict.action is Action.RETRY_FAST:
                    self._apply(li, LinkInput.RETRY_NOW)
                    await asyncio.sleep(0.05)
                    continue
            delay = self.retry.delay(attempt, self._rng)
            attempt += 1
            self._apply(li, LinkInput.ENDED)
            await asyncio.sleep(delay)

    async def _session(self, addr: str, li: LinkInfo, counters: LinkCounters, first: bool) -> bool:
        """One connection: find, connect, subscribe, stream until lost. True if data flowed."""
        from bleak import BleakClient, BleakScanner

        self._apply(li, LinkInput.SEARCH)
        assert self._scan_lock is not None
        async with self._scan_lock:
            dev = await BleakScanner.find_device_by_address(addr, timeout=max(self.scan_s, 2.0))
        if dev is None:
            raise BleError(addr, "not found", "device not advertising")
        self._apply(li, LinkInput.FOUND)
        lost = asyncio.Event()
        client = await connect_client(
            BleakClient, dev, addr, lambda _c: lost.set(), CONNECT_TIMEOUT_S
        )
        dec = self._decoders[addr]
        if not first:
            counters.reconnects += 1
        dec.new_connection()
        self._event(addr, "connected")
        if li.last_error:  # a line when it comes back, and the error clears
            self._event(addr, "back", f"(was: {li.last_error})")
            li.last_error = ""
        last_data = [time.monotonic()]
        streamed = False
        try:
            self._apply(li, LinkInput.CONNECTED)
            await self._subscribe(client, addr, li, dec, last_data)
            self._apply(li, LinkInput.SUBSCRIBED)
            stalled = False
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), 0.25)
                quiet = time.monotonic() - last_data[0]
                if quiet < self.stall_s:
                    streamed = True
                    if stalled:
                        stalled = False
                        self._apply(li, LinkInput.RESUMED)
                        self._event(addr, "resumed", f"after {quiet:.1f}s")
                elif not stalled:
                    stalled = True
                    counters.extra["stalls"] = counters.extra.get("stalls", 0) + 1
                    self._apply(li, LinkInput.QUIET)
                    self._event(addr, "stalled", f"no notification for {quiet:.1f}s")
                elif quiet > self.stall_reconnect_s:
                    self._event(addr, "stall_reconnect", f"silent for {quiet:.1f}s")
                    break
            if lost.is_set():
                self._event(addr, "disconnected", "link lost")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), CONTROL_TIMEOUT_S)
        return streamed

    async def _subscribe(
        self, client: Any, addr: str, li: LinkInfo, dec: BleDecoder, last_data: list[float]
    ) -> None:
        services = {s.uuid.lower() for s in client.services}
        streams: list[str] = []
        acquire = {"bluez": {"use_start_notify": not self.use_acquire_notify}}

        def handler(kind: str) -> Callable[[Any, bytearray], None]:
            feed = {
                "hr": dec.feed_heart_rate,
                "temp": dec.feed_temperature,
                "pmd": dec.feed_pmd,
            }[kind]

            def on_notify(_char: Any, data: bytearray) -> None:
                last_data[0] = time.monotonic()
                try:
                    blocks, gaps = feed(bytes(data), self.clock())
                except FrameError as e:
                    self._event(addr, "malformed", f"{kind}: {e}")
                    return
                self._deliver(blocks, gaps)

            return on_notify

        if gatt.BATTERY_SERVICE in services:
            with contextlib.suppress(Exception):
                li.battery = gatt.decode_battery(
                    bytes(
                        await asyncio.wait_for(
                            client.read_gatt_char(gatt.BATTERY_LEVEL), CONTROL_TIMEOUT_S
                        )
                    )
                )
        if gatt.HEART_RATE_SERVICE in services:
            await client.start_notify(gatt.HEART_RATE_MEASUREMENT, handler("hr"))
            streams += ["hr", "rr"]
        if gatt.HEALTH_THERMOMETER_SERVICE in services:
            await client.start_notify(gatt.TEMPERATURE_MEASUREMENT, handler("temp"))
            streams.append("skin_temp")
        if gatt.PMD_SERVICE in services:
            streams += await self._start_pmd(client, addr, dec, handler("pmd"), acquire)
        li.streams = tuple(streams)
        self._event(addr, "subscribed", ",".join(streams))

    async def _start_pmd(
        self,
        client: Any,
        addr: str,
        dec: BleDecoder,
        on_data: Callable[[Any, bytearray], None],
        acquire: dict[str, Any],
    ) -> list[str]:
        responses: asyncio.Queue[gatt.PmdResponse] = asyncio.Queue()

        def on_control(_c: Any, data: bytearray) -> None:
            try:
                responses.put_nowait(gatt.decode_pmd_response(bytes(data)))
            except FrameError as e:
                self._event(addr, "malformed", f"pmd control: {e}")

        features = gatt.decode_pmd_features(
            bytes(
                await asyncio.wait_for(client.read_gatt_char(gatt.PMD_CONTROL), CONTROL_TIMEOUT_S)
            )
        )
        await client.start_notify(gatt.PMD_CONTROL, on_control)
        await client.start_notify(gatt.PMD_DATA, on_data, **acquire)
        started: list[str] = []
        for meas, settings in self.pmd_settings.items():
            if meas not in features:
                continue
            # the rate must be known before the first frame can arrive
            dec.pmd_rates[meas] = float(settings[gatt.PMD_SETTING_SAMPLE_RATE])
            req = gatt.encode_pmd_request(gatt.PMD_OP_START, meas, settings)
            await asyncio.wait_for(
                client.write_gatt_char(gatt.PMD_CONTROL, req, response=True), CONTROL_TIMEOUT_S
            )
            resp = await asyncio.wait_for(responses.get(), CONTROL_TIMEOUT_S)
            if resp.ok or resp.status == 6:  # 6 = already in state: it streams already
                started.append(str(_PMD_STREAM[meas]))
            else:
                dec.pmd_rates.pop(meas, None)
                counters = self.counters[addr]
                counters.extra["pmd_errors"] = counters.extra.get("pmd_errors", 0) + 1
                self._event(addr, "pmd_start_refused", f"{_PMD_STREAM[meas]}: {resp.status_text}")
        return started
