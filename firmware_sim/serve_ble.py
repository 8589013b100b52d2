"""``firmware-sim serve-ble``: simulated BLE wearables on a D-Bus, for bleak to find.

Starts (or joins) a bus, takes ``org.bluez`` on it and serves chest straps and
wristbands until the time is up or Ctrl-C. With ``--private-bus`` it starts its
own dbus-daemon and prints the address to export as ``DBUS_SYSTEM_BUS_ADDRESS``
for the agent (``edgeagent devices scan`` then lists the devices).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading

from firmware_sim.bluez import CHEST_STRAP, WRISTBAND, BluezSim, BluezSimThread, Peripheral
from firmware_sim.feeds import PMD_ECG_HZ, Feed, PhysiologyFeed, RecordingFeed, SyntheticFeed


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``serve-ble``."""
    p.add_argument("--straps", type=int, default=1, help="chest straps (HR, ECG, ACC)")
    p.add_argument("--bands", type=int, default=1, help="wristbands (skin temperature, ACC)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0 = never)")
    p.add_argument("--bus", default=None, help="bus address (default: the system bus)")
    p.add_argument("--private-bus", action="store_true", help="start a private dbus-daemon")
    p.add_argument(
        "--feed",
        choices=("physiology", "synthetic"),
        default="physiology",
        help="signal source per device (physiology = firmware_sim.physiology patients)",
    )
    p.add_argument(
        "--recording",
        default=None,
        help="replay this recording dir, WFDB record or EDF file on device 1",
    )
    p.add_argument("--lead", default=None, help="ECG lead of a WFDB/EDF --recording")
    p.add_argument("--seed", type=int, default=0)


def _feed(args: argparse.Namespace, index: int) -> Feed:
    if args.recording and index == 0:
        # The strap's ECG is announced at 130 Hz (gatt.PMD_CAPABILITIES): resample to it.
        return RecordingFeed(args.recording, lead=args.lead, ecg_hz=PMD_ECG_HZ)
    if args.feed == "physiology":
        return PhysiologyFeed(index, seed=args.seed)
    return SyntheticFeed(seed=args.seed + index)


def run(args: argparse.Namespace) -> int:
    """Serve until ``--seconds`` elapse or SIGINT/SIGTERM."""
    try:  # a bad --recording is refused before anything is started
        feeds = [_feed(args, i) for i in range(args.straps + args.bands)]
    except (ValueError, OSError) as exc:
        print(f"error: --recording: {exc}", file=sys.stderr)
        return 2
    daemon: subprocess.Popen[str] | None = None
    address = args.bus
    if args.private_bus:
        daemon = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        print(f"DBUS_SYSTEM_BUS_ADDRESS={address}", flush=True)
    address = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    sim = BluezSim(bus_address=address)
    for i in range(args.straps):
        addr = f"F0:00:00:00:01:{i + 1:02X}"
        sim.add(Peripheral(addr, f"Polar H10 SIM{i + 1}", CHEST_STRAP, feed=feeds[i]))
    for i in range(args.bands):
        addr = f"F0:00:00:00:02:{i + 1:02X}"
        feed = feeds[args.straps + i]
        sim.add(Peripheral(addr, f"Band SIM{i + 1}", WRISTBAND, feed=feed))
    th = BluezSimThread(sim)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        th.start()
        for p in sim.peripherals.values():
            print(f"serving {p.name} {p.address} ({p.kind})", flush=True)
        done.wait(args.seconds if args.seconds > 0 else None)
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        th.stop()
        if daemon is not None:
            daemon.terminate()
            daemon.wait(5)
    return 0
