"""The bumble peripheral, checked by a bumble central over bumble's in-process link.

No radio here (FIELD-NOTES: bumble cannot serve bleak without a kernel HCI),
so a second bumble Device plays the hub: it discovers the GATT database,
subscribes, starts PMD streaming and receives real ATT notifications and
indications through two bumble controllers on a LocalLink. Payloads are
checked byte for byte against the device's ledger, decoded with the agent's
own codecs, and the table is checked against the BlueZ simulator's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bumble", reason="bumble not installed (pip install bumble)")

from bumble.core import UUID, AdvertisingData
from bumble.device import Peer
from bumble.testing.test_utils import TwoDevices, async_barrier

from edgeagent.codecs import gatt as agent
from firmware_sim import gatt
from firmware_sim.bumble_gatt import (
    CHEST_STRAP,
    WRISTBAND,
    BumbleWearable,
    StreamEngine,
    profile,
)
from firmware_sim.feeds import SyntheticFeed

PROPS = {"read": 0x02, "write": 0x08, "notify": 0x10, "indicate": 0x20}
CCCD = UUID.from_16_bits(0x2902)


def _u(s: str) -> UUID:
    return UUID(s)


class Rig:
    """Central (devices[0]) connected to a simulated wearable (devices[1])."""

    def __init__(self, kind: str, seed: int = 3) -> None:
        self.two = TwoDevices()
        self.engine = StreamEngine(kind=kind, feed=SyntheticFeed(seed=seed))
        self.wearable = BumbleWearable(self.two.devices[1], self.engine, battery=64)
        self.peer: Any = None
        self.got: dict[str, list[bytes]] = {}

    async def connect(self, mtu: int | None = 232) -> None:
        await self.two.setup_connection()
        conn = self.two.connections[0]
        self.peer = Peer(conn)
        if mtu is not None:
            await self.peer.request_mtu(mtu)
        await self.peer.discover_services()
        for s in self.peer.services:
            await s.discover_characteristics()
            for c in s.characteristics:
                await c.discover_descriptors()

    def char(self, uuid: str) -> Any:
        (c,) = self.peer.get_characteristics_by_uuid(_u(uuid))
        return c

    async def subscribe(self, uuid: str, prefer_notify: bool = True) -> None:
        sink = self.got.setdefault(uuid, [])
        await self.peer.subscribe(self.char(uuid), lambda v: sink.append(bytes(v)), prefer_notify)

    async def pump(self, seconds: float, dt: float = 0.02) -> None:
        for _ in range(round(seconds / dt)):
            await self.wearable.pump(dt)
            await async_barrier()
        for _ in range(5):
            await async_barrier()


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh loop, bounded in time (no pytest-asyncio here)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30.0))

    return wrapper


async def _start_pmd(rig: Rig, meas: int, rate: int) -> agent.PmdResponse:
    await rig.subscribe(gatt.PMD_CONTROL, prefer_notify=False)
    before = len(rig.got[gatt.PMD_CONTROL])
    req = agent.encode_pmd_request(agent.PMD_OP_START, meas, {agent.PMD_SETTING_SAMPLE_RATE: rate})
    await rig.peer.write_value(rig.char(gatt.PMD_CONTROL), req, with_response=True)
    for _ in range(20):
        await async_barrier()
        if len(rig.got[gatt.PMD_CONTROL]) > before:
            break
    return agent.decode_pmd_response(rig.got[gatt.PMD_CONTROL][-1])


def _bluez_table(kind: str) -> list[tuple[str, list[tuple[str, tuple[str, ...]]]]]:
    """What the BlueZ simulator exports for a kind (its own D-Bus objects, recorded)."""
    from firmware_sim.bluez import GattCharacteristic1, GattService1, Peripheral

    exported: list[tuple[str, Any]] = []
    bus = SimpleNamespace(export=lambda p, i: exported.append((p, i)), unexport=lambda p, i: None)
    periph = Peripheral("AA:BB:CC:DD:EE:01", "x", kind=kind)
    periph.sim = SimpleNamespace(bus=bus)  # type: ignore[assignment]
    periph._export_gatt()
    table: list[tuple[str, list[tuple[str, tuple[str, ...]]]]] = []
    for _, iface in exported:
        if isinstance(iface, GattService1):
            table.append((iface.uuid, []))
        elif isinstance(iface, GattCharacteristic1):
            table[-1][1].append((iface.uuid, tuple(iface.flags)))
    return table


@pytest.mark.parametrize("kind", [CHEST_STRAP, WRISTBAND])
def test_profile_is_the_bluez_simulators_table(kind: str) -> None:
    mine = [(s.uuid, [(c.uuid, c.flags) for c in s.chars]) for s in profile(kind)]
    assert mine == _bluez_table(kind)


@pytest.mark.parametrize("kind", [CHEST_STRAP, WRISTBAND])
@aio
async def test_gatt_database_seen_by_a_central(kind: str) -> None:
    rig = Rig(kind)
    await rig.connect()
    for spec in profile(kind):
        (svc,) = rig.peer.get_services_by_uuid(_u(spec.uuid))
        assert [c.uuid for c in svc.characteristics] == [_u(c.uuid) for c in spec.chars]
        for cs, c in zip(spec.chars, svc.characteristics, strict=True):
            want = sum(PROPS[f] for f in cs.flags)
            assert int(c.properties) == want, cs.uuid
            has_cccd = any(d.type == CCCD for d in c.descriptors)
            assert has_cccd == bool({"notify", "indicate"} & set(cs.flags)), cs.uuid
    assert await rig.peer.read_value(rig.char(gatt.BATTERY_LEVEL)) == bytes([64])
    feats = agent.decode_pmd_features(await rig.peer.read_value(rig.char(gatt.PMD_CONTROL)))
    assert feats == ({agent.PMD_ECG, agent.PMD_ACC} if kind == CHEST_STRAP else {agent.PMD_ACC})
    if kind == CHEST_STRAP:
        assert await rig.peer.read_value(rig.char(gatt.BODY_SENSOR_LOCATION)) == b"\x01"


@aio
async def test_ecg_acc_and_heart_rate_byte_for_byte() -> None:
    rig = Rig(CHEST_STRAP, seed=5)
    await rig.connect(mtu=232)
    await rig.subscribe(gatt.HEART_RATE_MEASUREMENT)
    await rig.subscribe(gatt.PMD_DATA)
    resp = await _start_pmd(rig, agent.PMD_ECG, 130)
    assert resp.ok, resp
    resp = await _start_pmd(rig, agent.PMD_ACC, 50)
    assert resp.ok, resp
    await rig.pump(3.0)

    sent = [n for n in rig.engine.ledger if n.payload]
    pmd_sent = [n.payload for n in sent if n.char == gatt.PMD_DATA]
    hr_sent = [n.payload for n in sent if n.char == gatt.HEART_RATE_MEASUREMENT]
    assert pmd_sent and rig.got[gatt.PMD_DATA] == pmd_sent  # every frame, in order, exact
    assert len(hr_sent) >= 2 and rig.got[gatt.HEART_RATE_MEASUREMENT] == hr_sent

    # Same frames as the device spec says: 73 ECG samples at MTU 232, ts of the last sample.
    frames = [agent.decode_pmd_data(p) for p in rig.got[gatt.PMD_DATA]]
    ecg = [f for f in frames if f.measurement == agent.PMD_ECG]
    acc = [f for f in frames if f.measurement == agent.PMD_ACC]
    assert ecg and all(len(f.samples) == 73 for f in ecg)
    assert acc and all(len(f.samples) == 25 for f in acc)
    # Values: an independent feed with the same seed, rounded as the firmware does.
    ref = SyntheticFeed(seed=5).advance(3.0)
    got_uv = np.concatenate([np.asarray(f.samples, dtype=np.float64).reshape(-1) for f in ecg])
    t_sent = rig.engine.sent("ecg")
    idx = np.searchsorted(ref["ecg"][0], t_sent)
    np.testing.assert_array_equal(got_uv, np.round(ref["ecg"][1][idx, 0]))
    last_ns = [f.timestamp_ns for f in ecg]
    np.testing.assert_array_equal(
        last_ns, [round((t + 1000.0) * 1e9) for t in t_sent.reshape(len(ecg), 73)[:, -1]]
    )
    hr = [agent.decode_heart_rate(p) for p in rig.got[gatt.HEART_RATE_MEASUREMENT]]
    assert all(40 <= h.bpm <= 200 for h in hr)
    n_rr = sum(len(h.rr_s) for h in hr)
    assert n_rr == len(rig.engine.sent("rr")) and n_rr >= 2


@aio
async def test_small_mtu_gets_shorter_frames_never_truncated_ones() -> None:
    rig = Rig(CHEST_STRAP)
    await rig.connect(mtu=None)  # no MTU exchange: ATT default 23
    await rig.subscribe(gatt.PMD_DATA)
    assert (await _start_pmd(rig, agent.PMD_ECG, 130)).ok
    await rig.pump(1.0)
    got = rig.got[gatt.PMD_DATA]
    assert got and all(len(p) <= 20 for p in got)
    frames = [agent.decode_pmd_data(p) for p in got]  # every one decodes whole
    assert all(len(f.samples) == 3 for f in frames)
    assert sum(len(f.samples) for f in frames) == len(rig.engine.sent("ecg"))


@aio
async def test_wristband_temperature_by_indication_and_refused_ecg() -> None:
    rig = Rig(WRISTBAND)
    await rig.connect()
    await rig.subscribe(gatt.TEMPERATURE_MEASUREMENT, prefer_notify=False)
    await rig.subscribe(gatt.PMD_DATA)
    refused = await _start_pmd(rig, agent.PMD_ECG, 130)
    assert not refused.ok and refused.status == gatt.PMD_INVALID_MEASUREMENT_TYPE
    await rig.pump(3.1)
    temps = [agent.decode_temperature(p).celsius for p in rig.got[gatt.TEMPERATURE_MEASUREMENT]]
    assert len(temps) == 4 == len(rig.engine.sent("skin_temp"))  # t = 0, 1, 2, 3 s
    assert all(33.0 < t < 34.0 for t in temps)
    assert rig.got[gatt.PMD_DATA] == []  # nothing started, nothing sent


@aio
async def test_unsubscribed_streams_are_never_measured_and_disconnect_resets() -> None:
    rig = Rig(CHEST_STRAP)
    await rig.connect()
    await rig.pump(1.0)  # nobody subscribed
    assert [n for n in rig.engine.ledger if n.payload] == []
    await rig.subscribe(gatt.PMD_DATA)
    assert (await _start_pmd(rig, agent.PMD_ECG, 130)).ok
    await rig.pump(1.2)
    assert rig.got[gatt.PMD_DATA]
    await rig.two.connections[0].disconnect()
    for _ in range(10):
        await async_barrier()
    assert rig.wearable.connection is None and not rig.engine.pmd.running
    assert not rig.engine.subscribed


def test_advertisement_carries_name_services_and_vendor_bytes() -> None:
    engine = StreamEngine(kind=CHEST_STRAP)
    from bumble.controller import Controller
    from bumble.device import Device
    from bumble.host import Host
    from bumble.transport.common import AsyncPipeSink

    async def build() -> tuple[bytes, bytes]:
        c = Controller("C", public_address="F1:F1:F1:F1:F1:F1")
        dev = Device(host=Host(c, AsyncPipeSink(c)))
        return BumbleWearable(dev, engine, battery=55).advertising_data()

    adv_b, scan_b = asyncio.run(build())
    assert len(adv_b) <= 31 and len(scan_b) <= 31  # legacy advertising limits
    adv = AdvertisingData.from_bytes(adv_b)
    scan = AdvertisingData.from_bytes(scan_b)
    assert adv.get(AdvertisingData.COMPLETE_LOCAL_NAME) == "EA-strap-sim"
    uuids16 = adv.get(AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS)
    assert [str(u) for u in uuids16] == [str(UUID.from_16_bits(0x180D))]
    (pmd,) = scan.get(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
    assert pmd == _u(gatt.PMD_SERVICE)
    company, data = adv.get(AdvertisingData.MANUFACTURER_SPECIFIC_DATA)
    assert company == 0xFFFF and data == bytes([0x01, 55])


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown wearable kind"):
        StreamEngine(kind="toaster")


@aio
async def test_serve_on_advertises_and_streams_in_real_time() -> None:
    """The ``serve --ble`` path minus the radio: a central scans, finds the advertisement,
    connects to the advertised address and gets notifications from the real-time pump."""
    from bumble.hci import Address

    from firmware_sim.serve_bumble import default_address, serve_on

    two = TwoDevices()
    central, dev = two.devices
    engine = StreamEngine(kind=CHEST_STRAP, feed=SyntheticFeed(seed=9))
    wearable = BumbleWearable(dev, engine)
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(serve_on(dev, wearable, stop, on_ready=lambda _w: ready.set()))
    await central.power_on()
    await asyncio.wait_for(ready.wait(), 5.0)
    seen: list[Any] = []
    central.on("advertisement", seen.append)
    await central.start_scanning()
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.01)
    await central.stop_scanning()
    assert seen, "no advertisement seen"
    adv = seen[0]
    assert adv.data.get(AdvertisingData.COMPLETE_LOCAL_NAME) == "EA-strap-sim"
    conn = await central.connect(adv.address)
    peer = Peer(conn)
    await peer.request_mtu(232)
    await peer.discover_services()
    for s in peer.services:
        await s.discover_characteristics()
    (hr,) = peer.get_characteristics_by_uuid(_u(gatt.HEART_RATE_MEASUREMENT))
    got: list[bytes] = []
    await peer.subscribe(hr, lambda v: got.append(bytes(v)))
    await asyncio.sleep(2.3)  # the pump runs on the wall clock: HR once a second
    stop.set()
    served = await asyncio.wait_for(task, 5.0)
    assert served is engine and 2 <= len(got) <= 3
    assert got == [
        n.payload for n in engine.ledger if n.char == gatt.HEART_RATE_MEASUREMENT and n.payload
    ]
    assert Address(default_address(0x123456)).is_static  # a valid static random address
