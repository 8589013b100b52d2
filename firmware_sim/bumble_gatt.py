"""The simulated wearables as a real BLE peripheral, on Google's ``bumble`` stack.

The BlueZ-compatible simulator (:mod:`firmware_sim.bluez`) only works against
a bleak on the same D-Bus. To put a simulated wearable *on the air* -- so a
hub's real BlueZ + bleak, or any phone, can connect -- this module serves the
same GATT profiles from a bumble ``Device`` that owns a Bluetooth controller
(a USB dongle, ``hci-socket:0``, a UART HCI). bumble needs no BlueZ on the
device box; it drives the controller itself.

Two layers, like the rest of firmware_sim:

* :func:`profile` and :class:`StreamEngine` are pure: the GATT table as data
  (the same services, characteristics and flags as the BlueZ simulator's
  ``Peripheral``), and the streaming engine (feed samples in, notification
  payloads out, encoded with :mod:`firmware_sim.gatt`; PMD control point
  handled by its state machine). Frames are cut to fit the link's ATT MTU,
  as a Polar strap does, so a small-MTU central gets more, shorter frames
  rather than truncated ones.
* :class:`BumbleWearable` binds them to a bumble ``Device``: builds bumble
  services, follows CCCD writes, answers control-point writes by
  indication, and pumps notifications on a clock.

Never imports edgeagent (DESIGN.md §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from firmware_sim import gatt
from firmware_sim.feeds import Feed, SyntheticFeed

log = logging.getLogger(__name__)

CHEST_STRAP = "chest_strap"  # HR + RR, PMD ECG + ACC, battery (same names as bluez.py)
WRISTBAND = "wristband"  # thermometer, PMD ACC, battery
KINDS = (CHEST_STRAP, WRISTBAND)

PMD_HEADER = 10  # type byte + uint64 ns + frame type
ATT_OVERHEAD = 3  # opcode + handle of a Handle Value Notification
DEFAULT_MTU = 232  # what a Polar strap negotiates; 73 ECG samples fit


# ---------------------------------------------------------------------- the table


@dataclass(frozen=True)
class CharSpec:
    """One characteristic: UUID and BlueZ-style flags (read, write, notify, indicate)."""

    uuid: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class ServiceSpec:
    """One primary service and its characteristics, in handle order."""

    uuid: str
    chars: tuple[CharSpec, ...]


def profile(kind: str) -> tuple[ServiceSpec, ...]:
    """The GATT table of a simulated wearable (same as the BlueZ simulator exports)."""
    if kind not in KINDS:
        raise ValueError(f"unknown wearable kind {kind!r}; one of {KINDS}")
    if kind == CHEST_STRAP:
        first = ServiceSpec(
            gatt.HEART_RATE_SERVICE,
            (
                CharSpec(gatt.HEART_RATE_MEASUREMENT, ("notify",)),
                CharSpec(gatt.BODY_SENSOR_LOCATION, ("read",)),
            ),
        )
    else:
        first = ServiceSpec(
            gatt.HEALTH_THERMOMETER_SERVICE,
            (CharSpec(gatt.TEMPERATURE_MEASUREMENT, ("indicate",)),),
        )
    return (
        first,
        ServiceSpec(gatt.BATTERY_SERVICE, (CharSpec(gatt.BATTERY_LEVEL, ("read", "notify")),)),
        ServiceSpec(
            gatt.PMD_SERVICE,
            (
                CharSpec(gatt.PMD_CONTROL, ("read", "write", "indicate")),
                CharSpec(gatt.PMD_DATA, ("notify",)),
            ),
        ),
    )


def advertised_services(kind: str) -> list[str]:
    """Service UUIDs in the advertisement (as the BlueZ simulator's Device1.UUIDs)."""
    if kind == CHEST_STRAP:
        return [gatt.HEART_RATE_SERVICE, gatt.PMD_SERVICE]
    return [gatt.HEALTH_THERMOMETER_SERVICE, gatt.PMD_SERVICE]


def manufacturer_data(kind: str, battery: int) -> bytes:
    """Vendor bytes: kind marker and battery level (as the BlueZ simulator)."""
    return bytes([0x01 if kind == CHEST_STRAP else 0x02, max(0, min(100, battery))])


# ---------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class Notification:
    """One payload to send: which characteristic, how (indicate or notify), what it carries."""

    char: str
    payload: bytes
    stream: str
    t: np.ndarray  # device times (feed seconds) of the samples it carries
    indicate: bool = False


_PMD_STREAM = {gatt.PMD_ECG: "ecg", gatt.PMD_ACC: "acc"}


@dataclass
class StreamEngine:
    """Feed in, notifications out; the device-side logic of one wearable (no I/O).

    ``subscribe`` follows the central's CCCD writes, ``control`` answers PMD
    control-point writes, ``tick(dt)`` advances the device clock and returns
    what is due. Samples of streams nobody listens to are dropped at the
    source, exactly as a strap that is not streaming never measured them.
    ``ledger`` keeps every notification returned, for tests and the
    ``serve`` summary.
    """

    kind: str = CHEST_STRAP
    feed: Feed | None = None
    acc_hz: float = 50.0
    clock_base_s: float = 1000.0
    mtu: int = DEFAULT_MTU
    max_ecg_frame: int = 73
    max_acc_frame: int = 25
    ledger: list[Notification] = field(default_factory=list)

    def __post_init__(self) -> None:
        profile(self.kind)  # validates the kind
        if self.feed is None:
            self.feed = SyntheticFeed(acc_hz=self.acc_hz)
        caps: dict[int, dict[int, tuple[int, ...]]] = {}
        if self.kind == CHEST_STRAP:
            caps[gatt.PMD_ECG] = dict(gatt.PMD_CAPABILITIES[gatt.PMD_ECG])
        caps[gatt.PMD_ACC] = dict(gatt.PMD_CAPABILITIES[gatt.PMD_ACC])
        caps[gatt.PMD_ACC][gatt.PMD_SETTING_SAMPLE_RATE] = (int(self.acc_hz),)
        self.pmd = gatt.PmdControlPoint(capabilities=caps)
        self.subscribed: set[str] = set()
        self._pending: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._feed_t = 0.0
        self._last_hr_t = 0.0
        self._last_bpm = 70.0

    # -- central's requests

    def subscribe(self, char: str, on: bool) -> None:
        """A CCCD write: notifications/indications for ``char`` on or off."""
        (self.subscribed.add if on else self.subscribed.discard)(char)
        if not on and char == gatt.PMD_DATA:
            self._pending.pop("ecg", None)
            self._pending.pop("acc", None)

    def features(self) -> bytes:
        """The PMD control point's read value."""
        return gatt.pmd_features(tuple(self.pmd.capabilities))

    def control(self, request: bytes) -> bytes:
        """A write to the PMD control point; returns the response to indicate."""
        before = set(self.pmd.running)
        response = self.pmd.handle(request)
        for m in set(self.pmd.running) - before:
            self._pending.pop(_PMD_STREAM[m], None)  # a fresh start begins with fresh samples
        return response

    def reset(self) -> None:
        """The link went down: subscriptions and running measurements go with it."""
        self.subscribed.clear()
        self.pmd.running.clear()
        self._pending.clear()
        self._last_hr_t = self._feed_t

    # -- frame sizes

    def frame_samples(self, stream: str) -> int:
        """Samples per PMD frame: the strap's own size, cut to fit the ATT MTU."""
        room = max(0, self.mtu - ATT_OVERHEAD - PMD_HEADER)
        if stream == "ecg":
            return max(1, min(self.max_ecg_frame, room // 3))
        return max(1, min(self.max_acc_frame, room // 6))

    # -- clock

    def _wanted(self) -> set[str]:
        w: set[str] = set()
        if gatt.HEART_RATE_MEASUREMENT in self.subscribed:
            w |= {"hr", "rr"}
        if gatt.TEMPERATURE_MEASUREMENT in self.subscribed:
            w.add("skin_temp")
        if gatt.PMD_DATA in self.subscribed:
            w |= {_PMD_STREAM[m] for m in self.pmd.running}
        return w

    def tick(self, dt: float) -> list[Notification]:
        """Advance the device clock by ``dt`` seconds; return the notifications now due."""
        assert self.feed is not None
        chunk = self.feed.advance(dt)
        self._feed_t += dt
        wanted = self._wanted()
        for name, (t, v) in chunk.items():
            if name not in wanted:
                self._pending.pop(name, None)
                continue
            if len(t):
                ts, vs = self._pending.setdefault(name, ([], []))
                ts.append(np.asarray(t, np.float64))
                vs.append(np.asarray(v, np.float32))
        out: list[Notification] = []
        if "ecg" in wanted:
            out += self._frames("ecg", gatt.encode_pmd_ecg, lambda v: v[:, 0])
        if "acc" in wanted:
            out += self._frames("acc", gatt.encode_pmd_acc, lambda v: v)
        if "skin_temp" in wanted:
            t, v = self._take("skin_temp")
            for i in range(len(t)):
                payload = gatt.encode_temperature(float(v[i, 0]))
                out.append(
                    Notification(
                        gatt.TEMPERATURE_MEASUREMENT, payload, "skin_temp", t[i : i + 1], True
                    )
                )
        if "hr" in wanted and self._feed_t - self._last_hr_t >= 1.0:
            self._last_hr_t = self._feed_t
            _, hr = self._take("hr")
            rt, rr = self._take("rr")
            if len(hr):
                self._last_bpm = float(hr[-1, 0])
            payload = gatt.encode_heart_rate(round(self._last_bpm), [float(x) for x in rr[:, 0]])
            out.append(
                Notification(gatt.HEART_RATE_MEASUREMENT, payload, "hr", np.array([self._feed_t]))
            )
            if len(rt):
                # rr rides in the same payload; recorded separately for the accounting
                out.append(Notification(gatt.HEART_RATE_MEASUREMENT, b"", "rr", rt))
        sendable = [n for n in out if n.payload]
        self.ledger.extend(out)
        return sendable

    def _take(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        ts, vs = self._pending.pop(name, ([], []))
        if not ts:
            return np.zeros(0), np.zeros((0, 1), np.float32)
        return np.concatenate(ts), np.concatenate(vs)

    def _frames(
        self, name: str, encode: Callable[[int, Any], bytes], shape: Callable[[np.ndarray], Any]
    ) -> list[Notification]:
        t, v = self._take(name)
        n = self.frame_samples(name)
        out: list[Notification] = []
        i = 0
        while len(t) - i >= n:
            ft, fv = t[i : i + n], v[i : i + n]
            ts_ns = round((ft[-1] + self.clock_base_s) * 1e9)
            out.append(Notification(gatt.PMD_DATA, encode(ts_ns, shape(fv).tolist()), name, ft))
            i += n
        if i < len(t):
            self._pending[name] = ([t[i:]], [v[i:]])
        return out

    def sent(self, stream: str) -> np.ndarray:
        """Device times of every ``stream`` sample handed out in a notification."""
        parts = [n.t for n in self.ledger if n.stream == stream]
        return np.concatenate(parts) if parts else np.zeros(0)


# ---------------------------------------------------------------------- bumble binding

_PROPS = {"read": 0x02, "write": 0x08, "notify": 0x10, "indicate": 0x20}


class BumbleWearable:
    """A :class:`StreamEngine` served as GATT on a bumble ``Device``.

    Create it before ``device.power_on()`` (services must be in the database
    when the host starts), then ``await start_advertising()`` and run
    ``await pump_forever(stop)`` (or call ``await pump(dt)`` from a test to
    step the clock deterministically).
    """

    def __init__(
        self,
        device: Any,
        engine: StreamEngine | None = None,
        *,
        name: str | None = None,
        battery: int = 87,
    ) -> None:
        from bumble.gatt import Characteristic, CharacteristicValue, Service

        self.device = device
        self.engine = engine or StreamEngine()
        self.name = name or ("EA-strap-sim" if self.engine.kind == CHEST_STRAP else "EA-band-sim")
        self.battery = battery
        self.connection: Any = None
        self.chars: dict[str, Any] = {}
        self.events: list[tuple[float, str]] = []
        self._indicate_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        readers: dict[str, Callable[[Any], bytes]] = {
            gatt.BODY_SENSOR_LOCATION: lambda _c: b"\x01",  # chest
            gatt.BATTERY_LEVEL: lambda _c: gatt.encode_battery(self.battery),
            gatt.PMD_CONTROL: lambda _c: self.engine.features(),
        }
        services = []
        for svc in profile(self.engine.kind):
            chars = []
            for cs in svc.chars:
                props = 0
                for f in cs.flags:
                    props |= _PROPS[f]
                perms = Characteristic.READABLE
                if "write" in cs.flags:
                    perms |= Characteristic.WRITEABLE
                value: Any = CharacteristicValue(
                    read=readers.get(cs.uuid, lambda _c: b""),
                    write=self._on_control if cs.uuid == gatt.PMD_CONTROL else None,
                )
                ch = Characteristic(cs.uuid, Characteristic.Properties(props), perms, value)
                ch.on("subscription", self._subscription_handler(cs.uuid))
                self.chars[cs.uuid] = ch
                chars.append(ch)
            services.append(Service(svc.uuid, chars))
        device.add_services(services)
        device.on("connection", self._on_connection)

    # -- link events

    def _event(self, what: str) -> None:
        self.events.append((time.time(), what))
        log.info("%s %s", self.name, what)

    def _on_connection(self, connection: Any) -> None:
        self.connection = connection
        self.engine.reset()
        self._event(f"connected {connection.peer_address}")
        connection.on("disconnection", lambda reason: self._on_disconnection(reason))

    def _on_disconnection(self, reason: int) -> None:
        self.connection = None
        self.engine.reset()
        self._event(f"disconnected (reason 0x{reason:02X})")

    def _subscription_handler(self, uuid: str) -> Callable[..., None]:
        def on_subscription(_bearer: Any, notify: bool, indicate: bool) -> None:
            self.engine.subscribe(uuid, bool(notify or indicate))
            self._event(f"{'subscribed' if notify or indicate else 'unsubscribed'} {uuid[:8]}")

        return on_subscription

    def _on_control(self, _connection: Any, value: bytes) -> None:
        response = self.engine.control(bytes(value))

        async def answer() -> None:
            # after the write response has gone out, as a real ATT server does
            await asyncio.sleep(0)
            await self._send(gatt.PMD_CONTROL, response, indicate=True)

        task = asyncio.get_running_loop().create_task(answer())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sending

    async def _send(self, uuid: str, payload: bytes, *, indicate: bool) -> None:
        conn = self.connection
        if conn is None:
            return
        ch = self.chars[uuid]
        if indicate:
            async with self._indicate_lock:  # one outstanding indication per ATT bearer
                await self.device.indicate_subscriber(conn, ch, payload)
        else:
            await self.device.notify_subscriber(conn, ch, payload)

    async def pump(self, dt: float) -> int:
        """Advance the device clock by ``dt`` and send what is due; returns payloads sent."""
        conn = self.connection
        if conn is not None:
            self.engine.mtu = int(getattr(conn, "att_mtu", DEFAULT_MTU))
        sent = 0
        for n in self.engine.tick(dt):
            if self.connection is None:
                break
            await self._send(n.char, n.payload, indicate=n.indicate)
            sent += 1
        return sent

    async def pump_forever(self, stop: asyncio.Event, tick_s: float = 0.02) -> None:
        """Run the device clock in real time until ``stop`` is set."""
        last = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)
            now = time.monotonic()
            dt, last = now - last, now
            try:
                await self.pump(dt)
            except Exception as e:  # a dropped link mid-send must not stop the device
                self._event(f"send failed: {type(e).__name__}: {e}")

    # -- advertising

    def advertising_data(self) -> tuple[bytes, bytes]:
        """(advertisement, scan response): flags + name + 16-bit UUIDs + vendor; 128-bit PMD."""
        from bumble.core import UUID, AdvertisingData

        sixteen = [
            UUID.from_16_bits(int(u[4:8], 16))
            for u in advertised_services(self.engine.kind)
            if u.endswith(gatt._SIG_BASE)
        ]
        adv = AdvertisingData(
            [
                (AdvertisingData.FLAGS, bytes([0x06])),  # LE general discoverable, no BR/EDR
                (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
                (
                    AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                    b"".join(u.to_bytes() for u in sixteen),
                ),
                (
                    AdvertisingData.MANUFACTURER_SPECIFIC_DATA,
                    # 0xFFFF: the SIG's "no company" id, for test devices
                    b"\xff\xff" + manufacturer_data(self.engine.kind, self.battery),
                ),
            ]
        )
        scan = AdvertisingData(
            [
                (
                    AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                    UUID(gatt.PMD_SERVICE).to_bytes(),
                )
            ]
        )
        return bytes(adv), bytes(scan)

    async def start_advertising(self) -> None:
        """Advertise connectable; restart after each disconnection."""
        adv, scan = self.advertising_data()
        await self.device.start_advertising(
            auto_restart=True, advertising_data=adv, scan_response_data=scan
        )
