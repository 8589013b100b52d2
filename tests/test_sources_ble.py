"""BLE source: pure parts as tables, the whole source against the BlueZ simulator."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest

from edgeagent.codecs import gatt
from edgeagent.errors import FrameError
from edgeagent.sources.ble import BleDecoder, BleSource, DeviceFilter
from edgeagent.sources.link import LinkState
from edgeagent.streams import Stream
from firmware_sim.bluez import CHEST_STRAP, WRISTBAND, BluezSimThread, Peripheral
from tests.plugins.ble import BleCollected

STRAP = "AA:00:00:00:00:01"
BAND = "AA:00:00:00:00:02"
OTHER = "BB:00:00:00:00:03"


# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("flt", "address", "name", "uuids", "ok"),
    [
        (DeviceFilter(), "AA:01", None, [], True),
        (DeviceFilter(addresses=frozenset({"aa:01"})), "AA:01", "x", [], True),
        (DeviceFilter(addresses=frozenset({"AA:02"})), "AA:01", "x", [], False),
        (DeviceFilter(name_pattern=r"^Polar H10"), "AA:01", "Polar H10 9A", [], True),
        (DeviceFilter(name_pattern=r"^Polar H10"), "AA:01", None, [], False),
        (
            DeviceFilter(service_uuids=frozenset({gatt.HEART_RATE_SERVICE})),
            "AA:01",
            "x",
            [gatt.HEART_RATE_SERVICE.upper()],
            True,
        ),
        (DeviceFilter(service_uuids=frozenset({gatt.PMD_SERVICE})), "AA:01", "x", [], False),
        (
            DeviceFilter(name_pattern="Band", addresses=frozenset({"AA:01"})),
            "AA:01",
            "Polar",
            [],
            False,
        ),
    ],
)
def test_device_filter(
    flt: DeviceFilter, address: str, name: str | None, uuids: list[str], ok: bool
) -> None:
    assert flt.matches(address, name, uuids) is ok


def test_device_filter_rejects_bad_regex() -> None:
    with pytest.raises(ValueError, match="name_pattern"):
        DeviceFilter(name_pattern="(")


def _ecg(ts_ns: int, n: int, start: int = 0) -> bytes:
    vals = b"".join((v & 0xFFFFFF).to_bytes(3, "little") for v in range(start, start + n))
    return bytes([0]) + struct.pack("<Q", ts_ns) + bytes([0]) + vals


def _decoder() -> BleDecoder:
    d = BleDecoder("strap")
    d.pmd_rates[gatt.PMD_ECG] = 100.0
    return d


def test_pmd_clock_mapping_and_lost_frames() -> None:
    d = _decoder()
    # frame 1: 10 samples, last at device 5.09 s, arrives at agent 1000.0
    b, g = d.feed_pmd(_ecg(5_090_000_000, 10), 1000.0)
    assert not g and b[0].stream is Stream.ECG
    np.testing.assert_allclose(b[0].t, 1000.0 - np.arange(9, -1, -1) / 100.0)
    # frame 2 follows exactly: device time decides, arrival jitter does not
    b, g = d.feed_pmd(_ecg(5_190_000_000, 10, 10), 1000.37)
    assert not g and b[0].t[0] == pytest.approx(1000.01)
    # frame 3 lost; frame 4 opens a gap of exactly one frame
    b, g = d.feed_pmd(_ecg(5_390_000_000, 10, 30), 1000.3)
    assert len(g) == 1 and g[0].reason == "lost frames"
    assert (g[0].start, g[0].end) == pytest.approx((1000.1, 1000.21))
    assert d.counters.extra["samples_missing"] == 10 and d.counters.seq_gaps == 1
    # a replayed frame is dropped and counted, never delivered twice
    b, g = d.feed_pmd(_ecg(5_390_000_000, 10, 30), 1000.4)
    assert b == [] and d.counters.duplicates == 10
    assert d.counters.samples_ok == 30 and d.counters.frames_ok == 4


def test_pmd_reconnect_keeps_clock_unless_rebooted() -> None:
    d = _decoder()
    d.feed_pmd(_ecg(5_090_000_000, 10), 1000.0)
    d.new_connection()
    # same device clock 2 s later, arriving with 0.2 s more latency: old offset kept
    b, g = d.feed_pmd(_ecg(7_090_000_000, 10), 1002.2)
    assert b[0].t[-1] == pytest.approx(1002.0)
    assert g[0].reason == "disconnected" and g[0].end == pytest.approx(1001.91)
    # device rebooted (clock back near 0): re-anchored on arrival
    d.new_connection()
    b, g = d.feed_pmd(_ecg(90_000_000, 10), 1010.0)
    assert b[0].t[-1] == pytest.approx(1010.0) and g[0].reason == "disconnected"


def test_pmd_rejects_unstarted_and_malformed() -> None:
    d = BleDecoder("strap")
    with pytest.raises(FrameError):
        d.feed_pmd(_ecg(1, 3), 1.0)  # ECG never started: no rate, refuse to guess
    with pytest.raises(FrameError):
        d.feed_pmd(_ecg(1, 3)[:-1], 1.0)
    assert d.counters.malformed == 2 and d.counters.samples_ok == 0


def test_heart_rate_rr_placed_back_from_arrival() -> None:
    d = BleDecoder("strap")
    b, _ = d.feed_heart_rate(bytes([0x10, 0x4B, 0x00, 0x04, 0x00, 0x02]), 50.0)
    hr, rr = b
    assert hr.stream is Stream.HR and hr.t.tolist() == [50.0] and hr.values[0, 0] == 75
    assert rr.stream is Stream.RR
    assert rr.t.tolist() == [49.5, 50.0] and rr.values[:, 0].tolist() == [1.0, 0.5]
    b, _ = d.feed_temperature(bytes([0x00, 0x6C, 0x01, 0x00, 0xFF]), 51.0)
    assert b[0].values[0, 0] == pytest.approx(36.4)
    b, _ = d.feed_temperature(bytes([0x00, 0xFF, 0xFF, 0x7F, 0x00]), 52.0)  # NaN: counted
    assert b == [] and d.counters.extra["temp_invalid"] == 1


# ---------------------------------------------------------- against the simulator

Factory = Callable[..., tuple[BleSource, BleCollected]]


def _add(sim: BluezSimThread, *periphs: Peripheral) -> list[Peripheral]:
    return [sim.call(sim.sim.add, p) for p in periphs]


def _assert_exact(p: Peripheral, got: BleCollected, stream: str) -> None:
    """Every sample the device sent validly arrived exactly once, in order."""
    blocks = [b for b in got.blocks if b.device == p.address and b.stream == stream]
    t = np.concatenate([b.t for b in blocks]) if blocks else np.zeros(0)
    assert len(t) == len(p.sent(stream)), stream
    assert np.all(np.diff(t) > 0), f"{stream}: duplicated or out-of-order samples"


def test_two_devices_stream_with_filters(bluez_sim: BluezSimThread, ble_source: Factory) -> None:
    strap, band, _ = _add(
        bluez_sim,
        Peripheral(STRAP, "Polar H10 S1", CHEST_STRAP),
        Peripheral(BAND, "Band W1", WRISTBAND),
        Peripheral(OTHER, "Headphones", CHEST_STRAP),
    )
    src, got = ble_source(DeviceFilter(name_pattern=r"^(Polar|Band)"))
    assert got.wait_for(lambda: got.n(STRAP, "ecg") > 300 and got.n(BAND, "skin_temp") >= 2)
    assert OTHER not in src.links
    assert src.links[STRAP].state is LinkState.STREAMING
    assert set(src.links[STRAP].streams) == {"hr", "rr", "ecg", "acc"}
    assert set(src.links[BAND].streams) == {"skin_temp", "acc"}
    assert src.links[STRAP].battery == 87
    src.stop()
    for s in ("ecg", "acc", "hr"):
        _assert_exact(strap, got, s)
    _assert_exact(band, got, "skin_temp")
    assert src.counters[STRAP].malformed == 0 and not got.gaps


def test_disconnect_refused_connect_and_stall(
    bluez_sim: BluezSimThread, ble_source: Factory
) -> None:
    (strap,) = _add(bluez_sim, Peripheral(STRAP, "Polar H10 S1", CHEST_STRAP))
    strap.faults.refuse_connects = 2
    src, got = ble_source(DeviceFilter(addresses=frozenset({STRAP})), stall_s=0.8)
    assert got.wait_for(lambda: got.n(STRAP, "ecg") > 150)
    # establish_connection tries twice per call (CONNECT_ATTEMPTS): two refusals cost one
    # failed call, reported once, and the source's own backoff paces the next call
    assert got.kinds(STRAP).count("connect_failed") == 1
    assert strap.faults.refuse_connects == 0
    # disconnect mid-stream: reported, reconnected, the missing span is a gap
    bluez_sim.call(bluez_sim.sim.drop, STRAP)
    assert got.wait_for(
        lambda: (
            {g.stream for g in got.gaps if g.reason == "disconnected"} >= {Stream.ECG, Stream.ACC}
        )
    )
    # stall: notifications stop, the link stays up; reported and resumed
    before = got.n(STRAP, "ecg")
    bluez_sim.call(bluez_sim.sim.stall, STRAP, 1.5)
    assert got.wait_for(lambda: "resumed" in got.kinds(STRAP) and got.n(STRAP, "ecg") > before)
    assert got.wait_for(lambda: any(g.reason == "lost frames" for g in got.gaps))
    src.stop()
    kinds = got.kinds(STRAP)
    assert kinds.index("disconnected") < kinds.index("stalled") < kinds.index("resumed")
    assert src.counters[STRAP].reconnects == 1
    assert src.counters[STRAP].extra["stalls"] == 1
    _assert_exact(strap, got, "ecg")
    _assert_exact(strap, got, "acc")
    ecg_gaps = [g for g in got.gaps if g.stream is Stream.ECG]
    assert [g.reason for g in ecg_gaps] == ["disconnected", "lost frames"], got.gaps


def test_malformed_payloads_and_vanishing_device(
    bluez_sim: BluezSimThread, ble_source: Factory
) -> None:
    (band,) = _add(bluez_sim, Peripheral(BAND, "Band W1", WRISTBAND))
    src, got = ble_source(DeviceFilter(service_uuids=frozenset({gatt.HEALTH_THERMOMETER_SERVICE})))
    assert got.wait_for(lambda: got.n(BAND, "acc") > 50)
    band.faults.malformed = 3
    band.faults.malformed_mode = "truncate"
    assert got.wait_for(lambda: src.counters[BAND].malformed == 3)
    band.faults.malformed = 1
    band.faults.malformed_mode = "garbage"
    assert got.wait_for(lambda: src.counters[BAND].malformed == 4)
    n_before = got.n(BAND, "acc")
    assert got.wait_for(lambda: got.n(BAND, "acc") > n_before + 25)  # a good frame after them
    n_before = got.n(BAND, "acc")
    bluez_sim.run(bluez_sim.sim.vanish(BAND, 1.0))
    assert got.wait_for(lambda: got.n(BAND, "acc") > n_before + 50, timeout=15)
    src.stop()
    assert got.kinds(BAND).count("malformed") == 4
    assert src.counters[BAND].reconnects >= 1
    _assert_exact(band, got, "acc")
    _assert_exact(band, got, "skin_temp")
    # each corrupted ACC frame left a hole reported as lost frames (temperature has no rate)
    bad_acc = sum(1 for _, what in band.events if what == "sent malformed acc payload")
    acc_holes = [g for g in got.gaps if g.stream is Stream.ACC and g.reason == "lost frames"]
    assert (len(acc_holes) > 0) == (bad_acc > 0)  # back-to-back bad frames make one hole
    assert sum(round((g.end - g.start) * 50.0) - 1 for g in acc_holes) == 25 * bad_acc
