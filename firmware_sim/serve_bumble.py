"""``serve --ble TRANSPORT``: a simulated BLE wearable on a real Bluetooth controller.

bumble opens the controller through one of its transports (``usb:0`` for a
USB dongle it takes over, ``hci-socket:0`` for a kernel HCI device taken
down from BlueZ with ``hciconfig hci0 down``, ``serial:/dev/ttyACM0,1000000``
for a UART HCI board) and runs its own host stack on it, so the device box
needs no BlueZ. The hub's BlueZ + bleak then scan, connect and stream from it
over the air, exactly as from a real strap; the GATT table and frames are
:mod:`firmware_sim.bumble_gatt`'s, the same as the D-Bus simulator's.

:func:`serve_on` takes an already built bumble ``Device``, which is how the
tests run it on bumble's in-process link without a radio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from firmware_sim.bumble_gatt import CHEST_STRAP, BumbleWearable, StreamEngine
from firmware_sim.feeds import Feed, PhysiologyFeed, SyntheticFeed


def default_address(seed: int) -> str:
    """A static random address (two top bits set) derived from the seed, stable per box."""
    return f"F0:EA:{(seed >> 16) & 0xFF:02X}:{(seed >> 8) & 0xFF:02X}:{seed & 0xFF:02X}:01"


def make_feed(args: argparse.Namespace) -> Feed:
    """A ``--recording`` (ECG resampled to the strap's 130 Hz), else physiology, or ``--sine``."""
    if getattr(args, "recording", None):
        from firmware_sim.feeds import PMD_ECG_HZ, RecordingFeed

        return RecordingFeed(args.recording, lead=getattr(args, "lead", None), ecg_hz=PMD_ECG_HZ)
    if getattr(args, "sine", False):
        return SyntheticFeed(seed=args.seed)
    return PhysiologyFeed(args.patient, seed=args.seed)


async def serve_on(
    device: Any,
    wearable: BumbleWearable,
    stop: asyncio.Event,
    *,
    duration_s: float | None = None,
    on_ready: Any = None,
) -> StreamEngine:
    """Power on, advertise, stream until ``stop`` (or ``duration_s`` of wall time)."""
    await device.power_on()
    await wearable.start_advertising()
    if on_ready is not None:
        on_ready(wearable)
    if duration_s is not None:
        asyncio.get_running_loop().call_later(duration_s, stop.set)
    await wearable.pump_forever(stop)
    return wearable.engine


def _summary(engine: StreamEngine, wearable: BumbleWearable) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for n in engine.ledger:
        if n.payload:
            counts[f"{n.stream}_notifications"] = counts.get(f"{n.stream}_notifications", 0) + 1
        counts[f"{n.stream}_samples"] = counts.get(f"{n.stream}_samples", 0) + len(n.t)
    counts["link_events"] = [e for _, e in wearable.events]
    return counts


async def _main(args: argparse.Namespace) -> int:
    from bumble.device import Device
    from bumble.hci import Address
    from bumble.transport import open_transport

    try:
        transport = await open_transport(args.ble)
    except Exception as exc:  # bumble raises its own untyped errors per transport
        print(f"serve: cannot open BLE transport {args.ble!r}: {exc}", file=sys.stderr)
        return 2
    async with transport:
        address = args.address or default_address(args.seed)
        engine = StreamEngine(kind=args.kind, feed=make_feed(args))
        name = args.name or ("EA-strap-sim" if args.kind == CHEST_STRAP else "EA-band-sim")
        device = Device.with_hci(name, Address(address), transport.source, transport.sink)
        wearable = BumbleWearable(device, engine, name=name)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(w: BumbleWearable) -> None:
            print(json.dumps({"ble": args.ble, "address": address, "name": name}), flush=True)

        await serve_on(device, wearable, stop, duration_s=args.duration, on_ready=ready)
        counts = _summary(engine, wearable)
    print(json.dumps({"ledger": counts}), flush=True)
    ledger: Path | None = getattr(args, "ledger", None)
    if ledger is not None:
        ledger.write_text(json.dumps(counts, indent=1, sort_keys=True))
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry from ``serve --ble``; returns the exit status."""
    try:
        import bumble  # noqa: F401
    except ImportError:
        print("serve: --ble needs bumble (pip install bumble)", file=sys.stderr)
        return 2
    return asyncio.run(_main(args))
