"""A BlueZ-compatible peripheral simulator: owns ``org.bluez`` on a (private) D-Bus.

Unmodified bleak talks to this exactly as it talks to bluetoothd: ObjectManager
at ``/`` (dbus-fast's built-in one), ``org.bluez.Adapter1`` at
``/org/bluez/hci0``, one ``Device1`` per simulated wearable and, while
connected, GATT objects at bluetoothd-style paths
(``.../dev_AA_BB_CC_DD_EE_FF/service000a/char000b/desc000d``). Several
wearables run at once, each fed by a :mod:`firmware_sim.feeds` feed and
encoding its payloads with :mod:`firmware_sim.gatt` (never with edgeagent).

Faults a test can inject (:class:`Faults`, :meth:`BluezSim.drop`,
:meth:`BluezSim.vanish`): refused connects, device-initiated disconnects,
stalled notifications, malformed/truncated payloads, a device disappearing
and returning. Every sample carried by a valid notification is written to the
device's ``ledger`` so tests can check the agent's accounting exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import numpy as np
from dbus_fast import BusType, DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from firmware_sim import gatt
from firmware_sim.feeds import Feed, SyntheticFeed

log = logging.getLogger(__name__)

ADAPTER_PATH = "/org/bluez/hci0"
ERR_FAILED = "org.bluez.Error.Failed"
ERR_NOT_CONNECTED = "org.bluez.Error.NotConnected"
ERR_NOT_PERMITTED = "org.bluez.Error.NotPermitted"
ERR_NOT_SUPPORTED = "org.bluez.Error.NotSupported"
ERR_IN_PROGRESS = "org.bluez.Error.InProgress"
ERR_INVALID_LENGTH = "org.bluez.Error.InvalidValueLength"

B = Annotated[bool, DBusSignature("b")]
S = Annotated[str, DBusSignature("s")]
O = Annotated[str, DBusSignature("o")]  # noqa: E741 (D-Bus object path)
AS = Annotated[list[str], DBusSignature("as")]
AY = Annotated[bytes, DBusSignature("ay")]
N = Annotated[int, DBusSignature("n")]
Q = Annotated[int, DBusSignature("q")]
ASV = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
AQV = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
FD_MTU = Annotated[list[Any], DBusSignature("hq")]
Void = Annotated[None, DBusSignature("")]  # a D-Bus method without out-arguments

MTU = 232  # what a Polar strap negotiates; every simulated payload fits


def device_path(address: str) -> str:
    """bluetoothd's object path for a device address."""
    return f"{ADAPTER_PATH}/dev_{address.upper().replace(':', '_')}"


# --------------------------------------------------------------------- D-Bus objects


class Adapter1(ServiceInterface):
    """``org.bluez.Adapter1``: powered, central-capable, discovery on request."""

    def __init__(self, sim: BluezSim) -> None:
        super().__init__("org.bluez.Adapter1")
        self._sim = sim
        self.discovering = False
        self.filter: dict[str, Any] = {}

    @dbus_method()
    def StartDiscovery(self) -> Void:
        """Begin emitting RSSI updates for every device in range."""
        self.discovering = True
        self.emit_properties_changed({"Discovering": True})
        self._sim.discovery_changed()

    @dbus_method()
    def StopDiscovery(self) -> Void:
        """Stop discovery; bluetoothd answers NotReady-ish errors only if never started."""
        if not self.discovering:
            raise DBusError("org.bluez.Error.Failed", "No discovery started")
        self.discovering = False
        self.emit_properties_changed({"Discovering": False})
        self._sim.discovery_changed()

    @dbus_method()
    def SetDiscoveryFilter(self, properties: ASV) -> Void:
        """Remember the filter (UUIDs are honoured when emitting RSSI updates)."""
        self.filter = {k: v.value for k, v in properties.items()}

    @dbus_method()
    def GetDiscoveryFilters(self) -> AS:
        """The filter keys bluetoothd supports."""
        return [
            "UUIDs",
            "RSSI",
            "Pathloss",
            "Transport",
            "DuplicateData",
            "Discoverable",
            "Pattern",
        ]

    @dbus_method()
    def RemoveDevice(self, device: O) -> Void:
        """Forget a device (it comes back on the next advertisement, as with bluetoothd)."""
        self._sim.forget(device)

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> S:
        """Adapter address."""
        return "00:1A:7D:DA:71:13"

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> S:
        """Public address."""
        return "public"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> S:
        """Host name."""
        return "edgehub-sim"

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> S:
        """Alias = name."""
        return "edgehub-sim"

    @dbus_property(access=PropertyAccess.READ)
    def Powered(self) -> B:
        """Always on."""
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Discoverable(self) -> B:
        """Not discoverable (a hub is a central)."""
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Pairable(self) -> B:
        """Not pairable."""
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> B:
        """Whether a discovery session is active."""
        return self.discovering

    @dbus_property(access=PropertyAccess.READ)
    def Roles(self) -> AS:
        """bleak refuses adapters without "central"."""
        return ["central", "peripheral"]

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> AS:
        """Local services (none)."""
        return []


class Device1(ServiceInterface):
    """``org.bluez.Device1`` for one simulated wearable."""

    def __init__(self, periph: Peripheral) -> None:
        super().__init__("org.bluez.Device1")
        self._p = periph

    @dbus_method()
    async def Connect(self) -> Void:
        """Connect, resolve services, report ServicesResolved (bleak waits for it)."""
        await self._p.connect()

    @dbus_method()
    async def Disconnect(self) -> Void:
        """Host-initiated disconnect."""
        self._p.disconnect("local")

    @dbus_method()
    def Pair(self) -> Void:
        """These wearables need no pairing; bluetoothd answers AlreadyExists then."""
        raise DBusError("org.bluez.Error.AlreadyExists", "Already Exists")

    @dbus_method()
    def CancelPairing(self) -> Void:
        """Nothing to cancel."""
        raise DBusError("org.bluez.Error.DoesNotExist", "Does Not Exist")

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> S:
        """Device address."""
        return self._p.address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> S:
        """Wearables use random static addresses."""
        return "random"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> S:
        """Advertised local name."""
        return self._p.name

    @dbus_property(access=PropertyAccess.READ)
    def Alias(self) -> S:
        """Alias = name (bleak reports the alias as the device name)."""
        return self._p.name

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> O:
        """Owning adapter."""
        return ADAPTER_PATH

    @dbus_property(access=PropertyAccess.READ)
    def Paired(self) -> B:
        """Never paired."""
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Bonded(self) -> B:
        """Never bonded."""
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Trusted(self) -> B:
        """Not trusted."""
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Blocked(self) -> B:
        """Not blocked."""
        return False

    @dbus_property(access=PropertyAccess.READ)
    def LegacyPairing(self) -> B:
        """LE only."""
        return False

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> B:
        """Link state."""
        return self._p.connected

    @dbus_property(access=PropertyAccess.READ)
    def ServicesResolved(self) -> B:
        """True once GATT objects are exported."""
        return self._p.services_resolved

    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> N:
        """Last advertisement's signal strength."""
        return self._p.rssi

    @dbus_property(access=PropertyAccess.READ)
    def TxPower(self) -> N:
        """Advertised TX power."""
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> AS:
        """Advertised service UUIDs."""
        return list(self._p.service_uuids)

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> AQV:
        """Company id -> bytes, ``a{qv}`` like bluetoothd (0x006B is Polar's id)."""
        return {0x006B: Variant("ay", self._p.manufacturer_data)}

    @dbus_property(access=PropertyAccess.READ)
    def ServiceData(self) -> ASV:
        """No service data."""
        return {}


class GattService1(ServiceInterface):
    """``org.bluez.GattService1``."""

    def __init__(self, uuid: str, device: str, handle: int) -> None:
        super().__init__("org.bluez.GattService1")
        self.uuid, self.device, self.handle = uuid, device, handle

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> S:
        """Service UUID."""
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> O:
        """Owning device."""
        return self.device

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> B:
        """Primary service."""
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> Q:
        """Attribute handle."""
        return self.handle

    @dbus_property(access=PropertyAccess.READ)
    def Includes(self) -> Annotated[list[str], DBusSignature("ao")]:
        """No included services."""
        return []


class GattCharacteristic1(ServiceInterface):
    """``org.bluez.GattCharacteristic1`` with StartNotify and AcquireNotify."""

    def __init__(
        self,
        periph: Peripheral,
        path: str,
        uuid: str,
        service: str,
        handle: int,
        flags: list[str],
        value: bytes = b"",
        on_write: Callable[[bytes], None] | None = None,
        on_read: Callable[[], bytes] | None = None,
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self._p = periph
        self.path, self.uuid, self.service, self.handle, self.flags = (
            path,
            uuid,
            service,
            handle,
            flags,
        )
        self.value = value
        self.notifying = False
        self.acquired: socket.socket | None = None
        self._on_write = on_write
        self._on_read = on_read

    @property
    def subscribed(self) -> bool:
        """True when a central listens (StartNotify or AcquireNotify)."""
        return self.notifying or self.acquired is not None

    def send(self, payload: bytes) -> bool:
        """Deliver one notification/indication to the subscribed central; False if none."""
        self.value = payload
        if self.acquired is not None:
            try:
                self.acquired.send(payload)
                return True
            except BlockingIOError:
                return False  # receiver not draining: BlueZ drops too
            except OSError:
                self._release_acquired()
                return False
        if self.notifying:
            self.emit_properties_changed({"Value": payload})
            return True
        return False

    def _release_acquired(self) -> None:
        sock, self.acquired = self.acquired, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(Exception):
                self.emit_properties_changed({"NotifyAcquired": False})

    def reset(self) -> None:
        """Link gone: forget subscriptions (bluetoothd drops them with the ATT bearer)."""
        self.notifying = False
        self._release_acquired()

    @dbus_method()
    def ReadValue(self, options: ASV) -> AY:
        """Read the current value (or the device's answer for computed values)."""
        if "read" not in self.flags:
            raise DBusError(ERR_NOT_PERMITTED, "Read not permitted")
        self._p.require_connected()
        if self._on_read is not None:
            self.value = self._on_read()
        return self.value

    @dbus_method()
    def WriteValue(self, value: AY, options: ASV) -> Void:
        """Write (with response); the device may answer by indication afterwards."""
        if "write" not in self.flags and "write-without-response" not in self.flags:
            raise DBusError(ERR_NOT_PERMITTED, "Write not permitted")
        self._p.require_connected()
        if self._on_write is not None:
            # answer after the write reply has left, as a real ATT server does
            asyncio.get_running_loop().call_soon(self._on_write, bytes(value))

    @dbus_method()
    def StartNotify(self) -> Void:
        """Subscribe via PropertiesChanged(Value)."""
        if "notify" not in self.flags and "indicate" not in self.flags:
            raise DBusError(ERR_NOT_SUPPORTED, "Operation is not supported")
        self._p.require_connected()
        if self.acquired is not None:
            raise DBusError(ERR_NOT_PERMITTED, "Notify acquired")
        if not self.notifying:
            self.notifying = True
            self.emit_properties_changed({"Notifying": True})

    @dbus_method()
    def StopNotify(self) -> Void:
        """Unsubscribe."""
        if self.notifying:
            self.notifying = False
            self.emit_properties_changed({"Notifying": False})

    @dbus_method()
    def AcquireNotify(self, options: ASV) -> FD_MTU:
        """Hand the central one end of a SEQPACKET socket; each packet = one notification."""
        if "notify" not in self.flags:
            raise DBusError(ERR_NOT_SUPPORTED, "Operation is not supported")
        self._p.require_connected()
        if self.notifying or self.acquired is not None:
            raise DBusError(ERR_IN_PROGRESS, "Notify already acquired")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        self.acquired = mine
        loop = asyncio.get_running_loop()

        def on_hup() -> None:
            try:
                if mine.recv(1) == b"":
                    self._release_acquired()
            except BlockingIOError:
                return
            except OSError:
                self._release_acquired()

        loop.add_reader(mine.fileno(), on_hup)
        # The bus passes the fd (SCM_RIGHTS) after this returns and never closes it;
        # close our copy once it surely went out. socket.close() is idempotent, so
        # unlike a raw fd this can never close an unrelated, reused descriptor.
        loop.call_later(5.0, theirs.close)
        loop.call_soon(self.emit_properties_changed, {"NotifyAcquired": True})
        return [theirs.fileno(), MTU]

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> S:
        """Characteristic UUID."""
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> O:
        """Owning service."""
        return self.service

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> AY:
        """Cached value (last read or notified)."""
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> B:
        """StartNotify active."""
        return self.notifying

    @dbus_property(access=PropertyAccess.READ)
    def NotifyAcquired(self) -> B:
        """AcquireNotify active (its presence tells bleak AcquireNotify is supported)."""
        return self.acquired is not None

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> AS:
        """GATT properties."""
        return self.flags

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> Q:
        """Negotiated ATT MTU."""
        return MTU

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> Q:
        """Attribute handle."""
        return self.handle


class GattDescriptor1(ServiceInterface):
    """``org.bluez.GattDescriptor1`` (the CCCD: value mirrors the characteristic's subscription)."""

    def __init__(self, uuid: str, char: GattCharacteristic1, char_path: str, handle: int) -> None:
        super().__init__("org.bluez.GattDescriptor1")
        self.uuid, self._char, self.char_path, self.handle = uuid, char, char_path, handle

    def _cccd(self) -> bytes:
        return bytes([1 if self._char.subscribed else 0, 0])

    @dbus_method()
    def ReadValue(self, options: ASV) -> AY:
        """CCCD value: 0x0001 when notifying."""
        return self._cccd()

    @dbus_method()
    def WriteValue(self, value: AY, options: ASV) -> Void:
        """bluetoothd forbids writing the CCCD directly; use StartNotify."""
        raise DBusError(ERR_NOT_PERMITTED, "Write not permitted")

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> S:
        """Descriptor UUID."""
        return self.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Characteristic(self) -> O:
        """Owning characteristic."""
        return self.char_path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> AY:
        """Cached value."""
        return self._cccd()

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> AS:
        """Read only through D-Bus."""
        return ["read"]

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> Q:
        """Attribute handle."""
        return self.handle


# ------------------------------------------------------------------------ devices

CHEST_STRAP = "chest_strap"  # HR + RR, PMD ECG + ACC, battery
WRISTBAND = "wristband"  # thermometer (skin temperature), PMD ACC, battery


@dataclass
class Faults:
    """Faults the next connections/notifications suffer; tests set these fields.

    ``refuse_connects``: the next N Connect() calls fail. ``malformed``: the next
    N data notifications are corrupted (``malformed_mode`` "truncate" cuts them
    mid-sample, "garbage" sends an unknown frame type). ``stall_s``: from now,
    notifications stop for that long while the clock runs on (data is lost).
    """

    refuse_connects: int = 0
    malformed: int = 0
    malformed_mode: str = "truncate"
    stalled_until: float = 0.0
    connect_delay_s: float = 0.0


@dataclass
class LedgerEntry:
    """One valid notification the device sent: stream, device times of its samples."""

    stream: str
    t: np.ndarray


@dataclass
class Peripheral:
    """One simulated wearable: identity, advertisement, GATT table and stream engine."""

    address: str
    name: str
    kind: str = CHEST_STRAP
    feed: Feed | None = None
    rssi: int = -60
    ecg_frame: int = 73  # samples per ECG notification (a Polar H10 sends 73 at MTU 232)
    acc_frame: int = 25
    acc_hz: float = 50.0
    clock_base_s: float = 1000.0  # device clock at feed time 0 (ns time stamps start here)
    faults: Faults = field(default_factory=Faults)
    ledger: list[LedgerEntry] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    battery: int = 87

    def __post_init__(self) -> None:
        if self.feed is None:
            # seeded from the address so a device's signal is the same in every run
            seed = int(self.address.replace(":", ""), 16) & 0xFFFF
            self.feed = SyntheticFeed(seed=seed, acc_hz=self.acc_hz)
        self.path = device_path(self.address)
        self.connected = False
        self.services_resolved = False
        self.present = True
        self.sim: BluezSim | None = None
        self.device_iface = Device1(self)
        self.chars: dict[str, GattCharacteristic1] = {}
        self._gatt: list[tuple[str, ServiceInterface]] = []
        caps: dict[int, dict[int, tuple[int, ...]]] = {}
        if self.kind == CHEST_STRAP:
            caps[gatt.PMD_ECG] = dict(gatt.PMD_CAPABILITIES[gatt.PMD_ECG])
        caps[gatt.PMD_ACC] = dict(gatt.PMD_CAPABILITIES[gatt.PMD_ACC])
        caps[gatt.PMD_ACC][gatt.PMD_SETTING_SAMPLE_RATE] = (int(self.acc_hz),)
        self.pmd = gatt.PmdControlPoint(capabilities=caps)
        self._pending: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._feed_t = 0.0
        self._last_hr_t = 0.0
        self._last_bpm = 70.0

    # -- advertisement

    @property
    def service_uuids(self) -> list[str]:
        """UUIDs in the advertisement."""
        if self.kind == CHEST_STRAP:
            return [gatt.HEART_RATE_SERVICE, gatt.PMD_SERVICE]
        return [gatt.HEALTH_THERMOMETER_SERVICE, gatt.PMD_SERVICE]

    @property
    def manufacturer_data(self) -> bytes:
        """Vendor bytes: kind marker and battery level."""
        return bytes([0x01 if self.kind == CHEST_STRAP else 0x02, self.battery])

    # -- link

    def require_connected(self) -> None:
        """bluetoothd answers GATT calls on a dead link with NotConnected."""
        if not self.connected:
            raise DBusError(ERR_NOT_CONNECTED, "Not Connected")

    def _event(self, what: str) -> None:
        self.events.append((time.time(), what))
        log.info("%s %s", self.name, what)

    async def connect(self) -> None:
        """Connect: faults first, then export GATT and flip Connected/ServicesResolved."""
        if not self.present:
            raise DBusError("org.freedesktop.DBus.Error.UnknownObject", "device gone")
        if self.connected:
            raise DBusError("org.bluez.Error.AlreadyConnected", "Already Connected")
        if self.faults.connect_delay_s:
            await asyncio.sleep(self.faults.connect_delay_s)
        if self.faults.refuse_connects > 0:
            self.faults.refuse_connects -= 1
            self._event("connect refused")
            raise DBusError(ERR_FAILED, "le-connection-abort-by-remote (simulated refusal)")
        self.connected = True
        self.device_iface.emit_properties_changed({"Connected": True})
        self._export_gatt()
        self.services_resolved = True
        self.device_iface.emit_properties_changed({"ServicesResolved": True})
        self._discard_pending()
        self._event("connected")

    def disconnect(self, who: str) -> None:
        """Tear the link down (``who`` = "local" host request or "remote" fault)."""
        if not self.connected:
            return
        for ch in self.chars.values():
            ch.reset()
        self.pmd.running.clear()
        self.services_resolved = False
        self.device_iface.emit_properties_changed({"ServicesResolved": False})
        self._unexport_gatt()
        self.connected = False
        self.device_iface.emit_properties_changed({"Connected": False})
        self._event(f"disconnected ({who})")

    # -- GATT table

    def _export_gatt(self) -> None:
        assert self.sim is not None and self.sim.bus is not None
        bus = self.sim.bus
        handle = 0x000A
        self.chars = {}
        self._gatt = []

        def service(uuid: str) -> str:
            nonlocal handle
            p = f"{self.path}/service{handle:04x}"
            self._gatt.append((p, GattService1(uuid, self.path, handle)))
            handle += 1
            return p

        def char(spath: str, uuid: str, flags: list[str], **kw: Any) -> None:
            nonlocal handle
            p = f"{spath}/char{handle:04x}"
            ch = GattCharacteristic1(self, p, uuid, spath, handle, flags, **kw)
            self._gatt.append((p, ch))
            self.chars[uuid] = ch
            handle += 2  # declaration + value
            if "notify" in flags or "indicate" in flags:
                d = f"{p}/desc{handle:04x}"
                self._gatt.append((d, GattDescriptor1(gatt.CCCD, ch, p, handle)))
                handle += 1

        if self.kind == CHEST_STRAP:
            s = service(gatt.HEART_RATE_SERVICE)
            char(s, gatt.HEART_RATE_MEASUREMENT, ["notify"])
            char(s, gatt.BODY_SENSOR_LOCATION, ["read"], value=b"\x01")
        else:
            s = service(gatt.HEALTH_THERMOMETER_SERVICE)
            char(s, gatt.TEMPERATURE_MEASUREMENT, ["indicate"])
        s = service(gatt.BATTERY_SERVICE)
        char(
            s,
            gatt.BATTERY_LEVEL,
            ["read", "notify"],
            on_read=lambda: gatt.encode_battery(self.battery),
        )
        s = service(gatt.PMD_SERVICE)
        measurements = tuple(self.pmd.capabilities)
        char(
            s,
            gatt.PMD_CONTROL,
            ["read", "write", "indicate"],
            on_read=lambda: gatt.pmd_features(measurements),
            on_write=self._on_pmd_control,
        )
        char(s, gatt.PMD_DATA, ["notify"])
        for p, iface in self._gatt:
            bus.export(p, iface)

    def _unexport_gatt(self) -> None:
        if self.sim is None or self.sim.bus is None:
            return
        for p, iface in reversed(self._gatt):
            self.sim.bus.unexport(p, iface)
        self._gatt = []
        self.chars = {}

    def _on_pmd_control(self, request: bytes) -> None:
        before = set(self.pmd.running)
        response = self.pmd.handle(request)
        for m in set(self.pmd.running) - before:
            # a freshly started measurement begins with fresh samples
            self._pending.pop(_PMD_STREAM[m], None)
        ch = self.chars.get(gatt.PMD_CONTROL)
        if ch is not None:
            ch.send(response)

    # -- streaming engine

    def _discard_pending(self) -> None:
        self._pending.clear()
        self._last_hr_t = self._feed_t

    def _wanted(self) -> set[str]:
        if not self.connected:
            return set()
        w: set[str] = set()
        hr = self.chars.get(gatt.HEART_RATE_MEASUREMENT)
        if hr is not None and hr.subscribed:
            w |= {"hr", "rr"}
        tm = self.chars.get(gatt.TEMPERATURE_MEASUREMENT)
        if tm is not None and tm.subscribed:
            w.add("skin_temp")
        data = self.chars.get(gatt.PMD_DATA)
        if data is not None and data.subscribed:
            w |= {_PMD_STREAM[m] for m in self.pmd.running}
        return w

    def tick(self, dt: float) -> None:
        """Advance the device clock by ``dt`` seconds and send whatever is due."""
        assert self.feed is not None
        chunk = self.feed.advance(dt)
        self._feed_t += dt
        wanted = self._wanted()
        stalled = time.monotonic() < self.faults.stalled_until
        for name, (t, v) in chunk.items():
            if name not in wanted or stalled:
                self._pending.pop(name, None)  # nobody listens: these samples are never sent
                continue
            if len(t) == 0:
                continue
            ts, vs = self._pending.setdefault(name, ([], []))
            ts.append(t)
            vs.append(v)
        if not wanted or stalled:
            if stalled:
                self._last_hr_t = self._feed_t
            return
        if "ecg" in wanted:
            self._flush_frames("ecg", self.ecg_frame, gatt.encode_pmd_ecg, lambda v: v[:, 0])
        if "acc" in wanted:
            self._flush_frames("acc", self.acc_frame, gatt.encode_pmd_acc, lambda v: v)
        if "skin_temp" in wanted:
            t, v = self._take("skin_temp")
            ch = self.chars[gatt.TEMPERATURE_MEASUREMENT]
            for i in range(len(t)):
                self._send(ch, "skin_temp", gatt.encode_temperature(float(v[i, 0])), t[i : i + 1])
        if "hr" in wanted and self._feed_t - self._last_hr_t >= 1.0:
            self._last_hr_t = self._feed_t
            _, hr = self._take("hr")
            rt, rr = self._take("rr")
            if len(hr):
                self._last_bpm = float(hr[-1, 0])
            ch = self.chars[gatt.HEART_RATE_MEASUREMENT]
            payload = gatt.encode_heart_rate(round(self._last_bpm), [float(x) for x in rr[:, 0]])
            self._send(ch, "hr", payload, np.array([self._feed_t]), rr_t=rt)

    def _take(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        ts, vs = self._pending.pop(name, ([], []))
        if not ts:
            return np.zeros(0), np.zeros((0, 1), np.float32)
        return np.concatenate(ts), np.concatenate(vs)

    def _flush_frames(
        self,
        name: str,
        n: int,
        encode: Callable[[int, Any], bytes],
        shape: Callable[[np.ndarray], Any],
    ) -> None:
        t, v = self._take(name)
        ch = self.chars[gatt.PMD_DATA]
        i = 0
        while len(t) - i >= n:
            ft, fv = t[i : i + n], v[i : i + n]
            ts_ns = round((ft[-1] + self.clock_base_s) * 1e9)
            self._send(ch, name, encode(ts_ns, shape(fv).tolist()), ft)
            i += n
        if i < len(t):
            self._pending[name] = ([t[i:]], [v[i:]])

    def _send(
        self,
        ch: GattCharacteristic1,
        stream: str,
        payload: bytes,
        t: np.ndarray,
        rr_t: np.ndarray | None = None,
    ) -> None:
        if self.faults.malformed > 0:
            self.faults.malformed -= 1
            if self.faults.malformed_mode == "garbage":
                payload = bytes([0x7E]) + payload[1:]
            else:
                payload = payload[: max(1, len(payload) - 2)]
            ch.send(payload)
            self._event(f"sent malformed {stream} payload")
            return
        if ch.send(payload):
            self.ledger.append(LedgerEntry(stream, t.copy()))
            if rr_t is not None and len(rr_t):
                self.ledger.append(LedgerEntry("rr", rr_t.copy()))

    def sent(self, stream: str) -> np.ndarray:
        """Device times (feed seconds) of every ``stream`` sample sent in a valid notification."""
        parts = [e.t for e in self.ledger if e.stream == stream]
        return np.concatenate(parts) if parts else np.zeros(0)


_PMD_STREAM = {gatt.PMD_ECG: "ecg", gatt.PMD_ACC: "acc"}


# ------------------------------------------------------------------------ the sim

T = TypeVar("T")


class BluezSim:
    """Owns ``org.bluez`` on a bus and runs every peripheral's clock.

    Use from asyncio (``await start()`` / ``await stop()``) or through
    :class:`BluezSimThread` from synchronous tests and the CLI.
    """

    def __init__(self, bus_address: str | None = None, tick_s: float = 0.02) -> None:
        self.bus_address = bus_address
        self.tick_s = tick_s
        self.bus: MessageBus | None = None
        self.adapter = Adapter1(self)
        self.peripherals: dict[str, Peripheral] = {}
        self._task: asyncio.Task[None] | None = None
        self._adv_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect to the bus, export the adapter, request the name ``org.bluez``."""
        if self.bus_address:
            bus = MessageBus(bus_address=self.bus_address, negotiate_unix_fd=True)
        else:
            bus = MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        self.bus = await bus.connect()
        self.bus.export(ADAPTER_PATH, self.adapter)
        for p in self.peripherals.values():
            if p.present:
                self.bus.export(p.path, p.device_iface)
        await self.bus.request_name("org.bluez")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Disconnect every device and leave the bus."""
        for t in (self._task, self._adv_task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        for p in self.peripherals.values():
            p.disconnect("shutdown")
        if self.bus is not None:
            self.bus.disconnect()
            await self.bus.wait_for_disconnect()
            self.bus = None

    def add(self, periph: Peripheral) -> Peripheral:
        """Add a wearable (exported at once when the sim runs)."""
        periph.sim = self
        self.peripherals[periph.address.upper()] = periph
        if self.bus is not None and periph.present:
            self.bus.export(periph.path, periph.device_iface)
        return periph

    def forget(self, path: str) -> None:
        """Adapter.RemoveDevice: drop the object; it reappears on the next advertisement."""
        for p in self.peripherals.values():
            if p.path == path and self.bus is not None:
                p.disconnect("removed")
                self.bus.unexport(p.path, p.device_iface)
                self.bus.export(p.path, p.device_iface)

    def discovery_changed(self) -> None:
        """Start or stop the advertisement loop with the adapter's discovery state."""
        if self.adapter.discovering and self._adv_task is None:
            self._adv_task = asyncio.get_running_loop().create_task(self._advertise())
        elif not self.adapter.discovering and self._adv_task is not None:
            self._adv_task.cancel()
            self._adv_task = None

    async def _advertise(self) -> None:
        """While discovering, each present, unconnected device advertises (RSSI update)."""
        k = 0
        while True:
            for p in list(self.peripherals.values()):
                if p.present and not p.connected:
                    p.rssi = -55 - (int(p.address[-2:], 16) * 7 + k * 3) % 20
                    p.device_iface.emit_properties_changed({"RSSI": p.rssi})
            k += 1
            await asyncio.sleep(0.1)

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            dt, last = now - last, now
            for p in list(self.peripherals.values()):
                try:
                    p.tick(dt)
                except Exception:  # a device bug must not stop the others
                    log.exception("peripheral %s tick failed", p.name)

    # -- faults

    def drop(self, address: str) -> None:
        """Device-initiated disconnect mid-stream."""
        self.peripherals[address.upper()].disconnect("remote")

    async def vanish(self, address: str, seconds: float) -> None:
        """The device leaves range (link drop, object removed) and returns after ``seconds``."""
        p = self.peripherals[address.upper()]
        p.disconnect("remote")
        p.present = False
        if self.bus is not None:
            self.bus.unexport(p.path, p.device_iface)
        p._event("vanished")
        await asyncio.sleep(seconds)
        p.present = True
        if self.bus is not None:
            self.bus.export(p.path, p.device_iface)
        p._event("returned")

    def stall(self, address: str, seconds: float) -> None:
        """Notifications stop for ``seconds`` while the link stays up."""
        self.peripherals[address.upper()].faults.stalled_until = time.monotonic() + seconds


class BluezSimThread:
    """Runs a :class:`BluezSim` on its own event loop in a daemon thread."""

    def __init__(self, sim: BluezSim) -> None:
        self.sim = sim
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bluez-sim", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start the loop and the sim; returns once ``org.bluez`` is owned."""
        self._thread.start()
        self.run(self.sim.start(), timeout)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the sim's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Call a plain function on the sim's loop (the sim is not thread-safe)."""

        async def _call() -> T:
            return fn(*args)

        return self.run(_call(), timeout)

    def stop(self) -> None:
        """Stop the sim and the loop."""
        with contextlib.suppress(Exception):
            self.run(self.sim.stop(), 10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)


# ------------------------------------------------------------ firmware-sim CLI hook


def _cli_add_arguments(p: Any) -> None:
    from firmware_sim.serve_ble import add_arguments

    add_arguments(p)


def _cli_run(args: Any) -> int:
    from firmware_sim.serve_ble import run

    return run(args)


# picked up by firmware_sim.__main__ (see its docstring)
CLI_COMMANDS = {
    "serve-ble": ("serve simulated BLE wearables over D-Bus", _cli_add_arguments, _cli_run),
}
