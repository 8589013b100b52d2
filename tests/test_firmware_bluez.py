"""The BlueZ simulator seen through unmodified bleak on a private dbus-daemon."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakDBusError, BleakError

from firmware_sim import gatt
from firmware_sim.bluez import CHEST_STRAP, WRISTBAND, BluezSimThread, Peripheral

STRAP = "C0:FF:EE:00:00:01"
BAND = "C0:FF:EE:00:00:02"


@pytest.fixture
def two_devices(bluez_sim: BluezSimThread) -> tuple[Peripheral, Peripheral]:
    strap = bluez_sim.call(bluez_sim.sim.add, Peripheral(STRAP, "Polar H10 A1", CHEST_STRAP))
    band = bluez_sim.call(bluez_sim.sim.add, Peripheral(BAND, "Band B2", WRISTBAND))
    return strap, band


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_scan_sees_advertisements(two_devices: tuple[Peripheral, Peripheral]) -> None:
    found = _run(BleakScanner.discover(timeout=0.6, return_adv=True))
    by_addr = {d.address: (d, a) for d, a in found.values()}
    d, a = by_addr[STRAP]
    assert d.name == "Polar H10 A1"
    assert -80 < a.rssi < -50
    assert gatt.HEART_RATE_SERVICE in a.service_uuids and gatt.PMD_SERVICE in a.service_uuids
    assert a.manufacturer_data == {0x006B: bytes([0x01, 87])}
    assert gatt.HEALTH_THERMOMETER_SERVICE in by_addr[BAND][1].service_uuids


def test_gatt_table_paths_and_reads(two_devices: tuple[Peripheral, Peripheral]) -> None:
    async def go() -> dict[str, Any]:
        async with BleakClient(STRAP, timeout=10) as c:
            out: dict[str, Any] = {"paths": []}
            for s in c.services:
                out["paths"].append(s.obj[0])
                for ch in s.characteristics:
                    out["paths"].append(ch.obj[0])
                    out["paths"] += [d.obj[0] for d in ch.descriptors]
            hr = c.services.get_characteristic(gatt.HEART_RATE_MEASUREMENT)
            out["cccd"] = bytes(await c.read_gatt_descriptor(hr.descriptors[0]))
            out["battery"] = bytes(await c.read_gatt_char(gatt.BATTERY_LEVEL))
            out["features"] = bytes(await c.read_gatt_char(gatt.PMD_CONTROL))
            out["location"] = bytes(await c.read_gatt_char(gatt.BODY_SENSOR_LOCATION))
            return out

    out = _run(go())
    prefix = "/org/bluez/hci0/dev_C0_FF_EE_00_00_01/service"
    assert all(p.startswith(prefix) for p in out["paths"])
    assert any(p.endswith("/desc000d") for p in out["paths"])  # bluetoothd-style handles
    assert out["cccd"] == b"\x00\x00"
    assert out["battery"] == bytes([87])
    assert out["features"] == bytes([0x0F, 0x05, 0x00])
    assert out["location"] == b"\x01"


@pytest.mark.parametrize("acquire", [False, True])
def test_pmd_control_and_stream(two_devices: tuple[Peripheral, Peripheral], acquire: bool) -> None:
    strap = two_devices[0]

    async def go() -> tuple[list[bytes], list[bytes]]:
        ctrl: list[bytes] = []
        data: list[bytes] = []
        async with BleakClient(STRAP, timeout=10) as c:
            await c.start_notify(gatt.PMD_CONTROL, lambda _c, b: ctrl.append(bytes(b)))
            await c.start_notify(
                gatt.PMD_DATA,
                lambda _c, b: data.append(bytes(b)),
                bluez={"use_start_notify": not acquire},
            )
            # wrong ACC rate first: the device answers "invalid sample rate"
            await c.write_gatt_char(gatt.PMD_CONTROL, gatt.encode_pmd_start(2, {0: 200}), True)
            await c.write_gatt_char(gatt.PMD_CONTROL, gatt.encode_pmd_start(0, {0: 130}), True)
            await c.write_gatt_char(gatt.PMD_CONTROL, gatt.encode_pmd_start(0, {0: 130}), True)
            await asyncio.sleep(1.3)
            await c.write_gatt_char(gatt.PMD_CONTROL, bytes([3, 0]), True)
            await asyncio.sleep(0.2)
        return ctrl, data

    ctrl, data = _run(go())
    assert [r[3] for r in ctrl] == [
        gatt.PMD_INVALID_SAMPLE_RATE,
        gatt.PMD_SUCCESS,
        gatt.PMD_ALREADY_IN_STATE,
        gatt.PMD_SUCCESS,
    ]
    assert len(data) >= 1 and all(d[0] == 0 and len(d) == 10 + 73 * 3 for d in data)
    # every frame the central got is in the device's ledger, and nothing else is
    assert len(strap.sent("ecg")) == 73 * len(data)


def test_refused_connect_then_ok(two_devices: tuple[Peripheral, Peripheral]) -> None:
    two_devices[0].faults.refuse_connects = 1

    async def go() -> bool:
        with pytest.raises(BleakDBusError):
            await BleakClient(STRAP, timeout=10).connect()
        async with BleakClient(STRAP, timeout=10) as c:
            return c.is_connected

    assert _run(go())


def test_remote_disconnect_and_vanish(
    bluez_sim: BluezSimThread, two_devices: tuple[Peripheral, Peripheral]
) -> None:
    async def go() -> list[str]:
        seen: list[str] = []
        c = BleakClient(BAND, disconnected_callback=lambda _c: seen.append("lost"), timeout=10)
        await c.connect()
        await c.start_notify(gatt.TEMPERATURE_MEASUREMENT, lambda _c, b: seen.append(b.hex()))
        await asyncio.sleep(1.2)
        bluez_sim.loop.call_soon_threadsafe(bluez_sim.sim.drop, BAND)
        for _ in range(50):
            if "lost" in seen:
                break
            await asyncio.sleep(0.05)
        return seen

    seen = _run(go())
    assert "lost" in seen
    assert any(s.startswith("04") for s in seen)  # flags 0x04: Celsius + type
    # vanish: the device object leaves the bus; a scan does not find it until it returns
    job = asyncio.run_coroutine_threadsafe(bluez_sim.sim.vanish(BAND, 1.5), bluez_sim.loop)
    time.sleep(0.2)
    assert _run(BleakScanner.find_device_by_address(BAND, timeout=0.5)) is None
    job.result(5)
    assert _run(BleakScanner.find_device_by_address(BAND, timeout=2.0)) is not None


def test_gatt_calls_on_dead_link_fail_cleanly(two_devices: tuple[Peripheral, Peripheral]) -> None:
    async def go() -> None:
        c = BleakClient(STRAP, timeout=10)
        await c.connect()
        await c.disconnect()
        with pytest.raises(BleakError):
            await c.read_gatt_char(gatt.BATTERY_LEVEL)

    _run(go())
