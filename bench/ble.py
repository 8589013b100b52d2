"""BLE path benchmark: notifications/s through bleak, and notification-to-window delay.

What is measured (this machine, one run; simulator and agent share the 2 cores,
so these are lower bounds for a hub whose radio stack runs elsewhere):

1. ``throughput``: the BlueZ simulator floods PMD ECG frames (10 samples each)
   as fast as the path accepts them to one BleSource (bleak's real BlueZ
   backend over a private dbus-daemon), decoded into SampleBlocks. Two
   delivery paths: StartNotify (every notification is a D-Bus
   PropertiesChanged signal) is the baseline; AcquireNotify (a SEQPACKET socket
   per characteristic, bluez={"use_start_notify": False}) is reported as a
   ratio to it. The pure decode rate of the same frames is shown as the ceiling.
2. ``latency``: frames paced like a real strap (73 ECG samples per frame, about
   1.8 frames/s; here 20 frames/s to get enough points) from the moment the
   simulator hands a notification to the bus to the moment its samples have
   been pushed into the Windower: median / p99 per path.

Run: python bench/ble.py [--quick]   (writes bench/results/ble.json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import select
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.codecs import gatt as codec
from edgeagent.pipeline.windows import Windower
from edgeagent.sources.ble import DEFAULT_PMD, BleSource, DeviceFilter, LinkState
from edgeagent.sources.retry import RetryPolicy
from edgeagent.streams import SampleBlock
from firmware_sim import gatt
from firmware_sim.bluez import CHEST_STRAP, BluezSim, BluezSimThread, Peripheral

ADDR = "B0:00:00:00:00:01"


class SilentFeed:
    """No samples: the benchmark sends its own frames."""

    def advance(self, seconds: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {}


def _frame(k: int, n: int) -> bytes:
    ts = round((10.0 + (k + 1) * n / 130.0) * 1e9)
    return gatt.encode_pmd_ecg(ts, [(k * n + i) % 2000 - 1000 for i in range(n)])


async def _send(
    sim: BluezSim, frames: list[bytes], rate_hz: float | None, stamps: list[float]
) -> int:
    """Send frames to the subscribed PMD data characteristic; pace at rate_hz (None = flood)."""
    ch = sim.peripherals[ADDR].chars[gatt.PMD_DATA]
    assert sim.bus is not None
    # dbus-fast treats EAGAIN on its socket as fatal, so a flood must wait until the
    # bus socket can take more (the radio's flow control plays this role on a strap)
    sock = sim.bus._sock
    t0 = time.perf_counter()
    for k, f in enumerate(frames):
        if rate_hz is not None:
            delay = t0 + k / rate_hz - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        while ch.acquired is None and not select.select([], [sock], [], 0)[1]:
            await asyncio.sleep(0.0005)
        while True:
            stamps.append(time.time())
            if ch.send(f):
                break
            stamps.pop()
            if not ch.subscribed:
                return k
            await asyncio.sleep(0.0005)  # socket full: back-pressure, like a radio's credit
        if rate_hz is None and k % 64 == 63:
            await asyncio.sleep(0)  # let the bus write out
    return len(frames)


def _run_path(acquire: bool, n_flood: int, n_paced: int) -> dict[str, Any]:
    daemon = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert daemon.stdout is not None
    address = daemon.stdout.readline().strip()
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    sim = BluezSim(bus_address=address)
    sim.add(Peripheral(ADDR, "Bench H10", CHEST_STRAP, feed=SilentFeed()))
    th = BluezSimThread(sim)
    th.start()
    lock = threading.Lock()
    windower = Windower(10.0, 2.0, patient="bench")
    arrivals: list[float] = []
    n_samples = [0]

    def on_block(b: SampleBlock) -> None:
        if b.stream != "ecg":
            return
        with lock:
            windower.push(b)
            windower.pop_ready()
            arrivals.append(time.time())
            n_samples[0] += len(b)

    src = BleSource(
        DeviceFilter(addresses=frozenset({ADDR})),
        on_block,
        pmd_settings={codec.PMD_ECG: dict(DEFAULT_PMD[codec.PMD_ECG])},
        use_acquire_notify=acquire,
        retry=RetryPolicy(base_s=0.1, cap_s=0.5),
        scan_s=0.3,
        rescan_s=0.3,
        stall_s=30.0,
        stall_reconnect_s=60.0,
    )
    try:
        src.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            ADDR in src.links and src.links[ADDR].state is LinkState.STREAMING
        ):
            time.sleep(0.05)
        time.sleep(0.3)
        # 1) flood
        frames = [_frame(k, 10) for k in range(n_flood)]
        stamps: list[float] = []
        sent = th.run(_send(sim, frames, None, stamps), timeout=120)
        deadline = time.monotonic() + 30
        while len(arrivals) < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        got = len(arrivals)
        span = arrivals[-1] - stamps[0] if got else float("nan")
        flood = {
            "sent": sent,
            "received": got,
            "notifications_per_s": got / span,
            "samples_per_s": n_samples[0] / span,
        }
        # 2) paced latency (frames continue the device clock)
        base = len(arrivals)
        frames = [_frame(n_flood + k, 73) for k in range(n_paced)]
        stamps = []
        th.run(_send(sim, frames, 20.0, stamps), timeout=120)
        deadline = time.monotonic() + 10
        while len(arrivals) < base + len(stamps) and time.monotonic() < deadline:
            time.sleep(0.01)
        lat = np.array(arrivals[base : base + len(stamps)]) - np.array(
            stamps[: len(arrivals) - base]
        )
        latency = {
            "frames": len(lat),
            "median_ms": float(np.median(lat) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "max_ms": float(lat.max() * 1e3),
        }
        counters = src.counters[ADDR].as_dict()
    finally:
        src.stop()
        th.stop()
        daemon.terminate()
        daemon.wait(5)
    return {"flood": flood, "latency": latency, "counters": counters}


def _decode_ceiling(n: int) -> float:
    frames = [_frame(k, 10) for k in range(n)]
    t0 = time.perf_counter()
    for f in frames:
        codec.decode_pmd_data(f)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames (CI smoke)")
    args = ap.parse_args()
    n_flood, n_paced = (1000, 60) if args.quick else (5000, 200)
    start = _run_path(False, n_flood, n_paced)
    acquire = _run_path(True, n_flood, n_paced)
    ceiling = _decode_ceiling(20000)
    base_rate = start["flood"]["notifications_per_s"]
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "frames": {"flood": n_flood, "paced": n_paced, "paced_rate_hz": 20.0},
        "start_notify": start,
        "acquire_notify": acquire,
        "decode_only_frames_per_s": ceiling,
        "ratios": {
            "acquire_vs_start_notify_throughput": acquire["flood"]["notifications_per_s"]
            / base_rate,
            "decode_ceiling_vs_start_notify": ceiling / base_rate,
            "acquire_vs_start_notify_median_latency": acquire["latency"]["median_ms"]
            / start["latency"]["median_ms"],
        },
    }
    out = Path(__file__).parent / "results" / "ble.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("BLE path (bleak BlueZ backend -> simulator on a private dbus-daemon)")
    for name, r in (("StartNotify  ", start), ("AcquireNotify", acquire)):
        f, lat = r["flood"], r["latency"]
        print(
            f"  {name}: {f['notifications_per_s']:8.0f} notif/s ({f['samples_per_s']:8.0f} ECG"
            f" samples/s, {f['received']}/{f['sent']} received); notification->window"
            f" median {lat['median_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms"
        )
    print(f"  decode only (ceiling): {ceiling:8.0f} frames/s")
    for k, v in result["ratios"].items():
        print(f"  {k}: {v:.2f}x")
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
