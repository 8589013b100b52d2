"""One agent, three wearables: a chest strap and a wristband over BLE (bleak -> BlueZ
simulator on a private D-Bus) and a textile shirt over serial (real pty), all into
one Windower. Checks modality coverage, time alignment, and exact sample accounting
across an injected BLE disconnect (missing span reported as a gap, nothing duplicated).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edgeagent.pipeline.windows import Window, Windower
from edgeagent.sources.ble import BleSource, DeviceFilter
from edgeagent.sources.link import LinkState
from edgeagent.sources.retry import RetryPolicy
from edgeagent.sources.serial import SerialSource
from edgeagent.streams import Gap, SampleBlock, Stream
from firmware_sim.bluez import CHEST_STRAP, WRISTBAND, BluezSimThread, Peripheral
from firmware_sim.feeds import PhysiologyFeed
from firmware_sim.serialdev import PtyDevice

STRAP = "E0:00:00:00:00:01"
BAND = "E0:00:00:00:00:02"
ALL = {Stream.ECG, Stream.ACC, Stream.SKIN_TEMP, Stream.ENV, Stream.HR}


def _wait(cond: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(cond())  # type: ignore[operator]


def test_ble_and_serial_into_one_windower(bluez_sim: BluezSimThread, tmp_path: Path) -> None:
    strap = bluez_sim.call(
        bluez_sim.sim.add,
        Peripheral(STRAP, "Polar H10 P0", CHEST_STRAP, feed=PhysiologyFeed(0, seed=3)),
    )
    band = bluez_sim.call(
        bluez_sim.sim.add, Peripheral(BAND, "Band P0", WRISTBAND, feed=PhysiologyFeed(0, seed=4))
    )
    shirt = PtyDevice(tmp_path / "ttyTEXTILE0", realtime=True, seed=5, streams=("env",)).start()

    windower = Windower(6.0, 2.0, patient="p0")
    lock = threading.Lock()
    blocks: list[SampleBlock] = []
    gaps: list[Gap] = []
    windows: list[Window] = []

    def on_block(b: SampleBlock) -> None:
        with lock:
            blocks.append(b)
            windower.push(b)
            windows.extend(windower.pop_ready())

    def on_gap(g: Gap) -> None:
        with lock:
            gaps.append(g)
            windower.push_gap(g)

    ble = BleSource(
        DeviceFilter(addresses=frozenset({STRAP, BAND})),
        on_block,
        on_gap,
        retry=RetryPolicy(base_s=0.1, cap_s=0.5),
        scan_s=0.5,
        rescan_s=0.5,
        seed=2,
    )
    ser = SerialSource(
        str(tmp_path / "ttyTEXTILE0"),
        "textile-01",
        on_block,
        on_gap,
        retry=RetryPolicy(base_s=0.02, cap_s=0.2),
    )
    ser.start()
    ble.start()
    try:
        assert _wait(
            lambda: (
                all(li.state is LinkState.STREAMING for li in ble.links.values())
                and len(ble.links) == 2
            ),
            15,
        )
        time.sleep(5.0)
        bluez_sim.call(bluez_sim.sim.drop, STRAP)
        assert _wait(lambda: ble.counters[STRAP].reconnects == 1, 10)
        time.sleep(9.0)
    finally:
        ble.stop()
        ser.stop()
        shirt.stop()
    with lock:
        windows.extend(windower.flush())

    # exact accounting on the BLE side across the disconnect
    for p, stream in ((strap, "ecg"), (strap, "acc"), (strap, "hr"), (band, "acc")):
        got = [b for b in blocks if b.device == p.address and b.stream == stream]
        t = np.concatenate([b.t for b in got])
        assert len(t) == len(p.sent(stream)), (p.name, stream)
        assert np.all(np.diff(t) > 0), (p.name, stream, "duplicate or reordered")
    # the device's ECG values arrive unchanged (int24 uV quantisation only)
    ecg = np.concatenate(
        [b.values[:, 0] for b in blocks if b.device == STRAP and b.stream == "ecg"]
    )
    assert np.abs(ecg).max() > 100.0
    # the missing span is one gap per strap stream, and its length matches the device clock
    dis = [g for g in gaps if g.device == STRAP and g.reason == "disconnected"]
    assert {g.stream for g in dis} >= {Stream.ECG, Stream.ACC, Stream.HR}
    sent = strap.sent("ecg")
    hole = np.diff(sent).max()
    (ecg_gap,) = [g for g in dis if g.stream is Stream.ECG]
    assert abs((ecg_gap.end - ecg_gap.start) - hole) < 1e-6
    assert ble.counters[STRAP].malformed == 0 and ble.counters[STRAP].duplicates == 0

    # windows carry every modality, aligned on one clock
    full = [w for w in windows if w.present >= ALL]
    assert len(full) >= 3, [sorted(w.present) for w in windows]
    for w in full:
        for s in ALL:
            t = w.data[s][0]
            assert w.start <= t.min() and t.max() < w.end
        assert w.coverage[Stream.ECG] > 0.0
        assert w.devices[Stream.ENV] == "textile-01"
        assert w.devices[Stream.ECG] == STRAP
    # ECG and ACC of the strap share a device clock: in an uninterrupted window both
    # cover it fully, and the window that spans the disconnect shows the gap
    clean = [w for w in full if not w.gaps]
    assert clean and all(w.coverage[Stream.ECG] > 0.95 for w in clean)
    spanning = [w for w in windows if w.start < ecg_gap.end and ecg_gap.start < w.end]
    assert spanning
    for w in spanning:
        lost = min(w.end, ecg_gap.end) - max(w.start, ecg_gap.start)
        assert any(g.stream is Stream.ECG and g.reason == "disconnected" for g in w.gaps)
        assert w.coverage[Stream.ECG] <= 1.0 - lost / w.length + 0.02
    # samples enter on the agent clock within a fraction of a second of "now"
    last_ecg = max(b.t[-1] for b in blocks if b.stream == "ecg")
    assert abs(last_ecg - time.time()) < 2.0
