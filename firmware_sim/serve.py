"""``python -m firmware_sim serve``: the simulator as a standalone device on a real link.

A second box (a laptop, another Pi) plays the wearable so the hub under test
sees real hardware:

* ``serve --serial /dev/ttyUSB0``: the serial textile on a real port, e.g. a
  USB-serial adapter wired (TX/RX crossed, GND shared) to the hub's adapter.
  :class:`PortDevice` frames with the same :class:`~firmware_sim.serialdev.Framer`
  and fault injector as the pty device, paced in real time, and keeps
  sending through unplugs (the port is reopened when it comes back; what the
  device measured meanwhile is lost and counted, as on real firmware).
* ``serve --pty LINK``: the pty device (:mod:`firmware_sim.serve_serial`), for
  a hub on the same machine.
* ``serve --ble usb:0``: a BLE wearable on a Bluetooth controller owned by
  bumble (:mod:`firmware_sim.serve_bumble`), so the hub's real BlueZ connects
  over the air.

Every mode prints one JSON line when ready and one with its ledger when it
stops (SIGINT/SIGTERM or ``--duration``); ``--ledger FILE`` also writes the
final ledger there, so a bench script can compare it with the hub's counters.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from firmware_sim.serialdev import (
    DeviceFrame,
    FaultConfig,
    FaultInjector,
    Framer,
    GeneratorLike,
    Ledger,
    SineGenerator,
)

REOPEN_S = 0.5  # how often a device whose port is gone looks for it again
WRITE_TIMEOUT_S = 1.0  # a stuck USB adapter must not wedge the device clock


class PortDevice:
    """The serial wearable on a real tty (pyserial), in real time.

    Unlike a pty, a UART cannot tell whether anyone listens: bytes sent to a
    hub that is not reading are simply gone. The ledger therefore records
    what was *written*; the hub's HIL tests judge delivery with tolerances.
    """

    def __init__(
        self,
        port: str,
        generator: GeneratorLike | None = None,
        *,
        baudrate: int = 115200,
        device_id: str = "textile-01",
        firmware: str = "sim-serial-1.0",
        seed: int = 0,
        frame_s: float = 0.2,
        duration_s: float | None = None,
        faults: FaultConfig | None = None,
        hello_every_s: float = 5.0,
        heartbeat_every_s: float = 1.0,
        streams: tuple[str, ...] | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.generator: GeneratorLike = generator or SineGenerator(seed, streams)
        self.device_id = device_id
        self.firmware = firmware
        self.frame_s = frame_s
        self.duration_s = duration_s
        self.faults = FaultInjector(faults or FaultConfig(seed=seed))
        self.hello_every_s = hello_every_s
        self.heartbeat_every_s = heartbeat_every_s
        self.boot_id = random.Random(seed).getrandbits(32)
        self.stream_names = list(
            streams or getattr(self.generator, "streams", ("ecg", "acc", "skin_temp"))
        )
        self.framer = Framer()
        self.ledger = Ledger()
        self.sim_t = 0.0
        self.error: BaseException | None = None
        self._ser: Any = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> PortDevice:
        """Start the sender thread (the port is opened there, and reopened as needed)."""
        self._thread = threading.Thread(target=self._run, name="port-device", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stop sending and close the port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()

    def wait_done(self, timeout: float) -> bool:
        """Wait until ``duration_s`` of device time has been sent."""
        return self._done.wait(timeout)

    # -- port

    def _open(self) -> bool:
        import serial

        try:
            self._ser = serial.Serial(
                self.port, self.baudrate, timeout=0, write_timeout=WRITE_TIMEOUT_S
            )
        except (serial.SerialException, OSError):
            self._ser = None
            return False
        self.ledger.bump("port_opens")
        self.faults.pending_merge = False
        self._emit(
            self.framer.hello(
                self.sim_t, self.boot_id, self.firmware, self.device_id, self.stream_names
            )
        )
        return self._ser is not None

    def _close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except Exception:
                self.ledger.bump("close_errors")

    def _emit(self, frame: DeviceFrame) -> None:
        if self._ser is None:
            self._lose(frame, "unsent_no_port")
            return
        chunks, intact = self.faults.apply(frame.data, self.ledger)
        try:
            for c in chunks:
                self._ser.write(c)
        except Exception:  # SerialException, SerialTimeoutException, OSError (unplugged)
            self._close()
            self.ledger.bump("port_lost")
            self._lose(frame, "unsent_no_port")
            return
        if intact:
            self.ledger.bump(f"{frame.kind}_intact")
            if frame.kind == "samples":
                self.ledger.intact.append(frame)
        else:
            self.ledger.bump(f"{frame.kind}_corrupted")
            if frame.kind == "samples":
                self.ledger.lost.append((frame.stream, frame.seq))

    def _lose(self, frame: DeviceFrame, why: str) -> None:
        self.ledger.bump(why)
        if frame.kind == "samples":
            self.ledger.lost.append((frame.stream, frame.seq))

    # -- sender

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced via .error
            self.error = exc
        finally:
            self._done.set()

    def _loop(self) -> None:
        wall0 = time.monotonic()
        next_hello = self.hello_every_s
        next_beat = self.heartbeat_every_s
        next_try = 0.0
        while not self._stop.is_set():
            if self.duration_s is not None and self.sim_t >= self.duration_s - 1e-9:
                return
            if self._ser is None and time.monotonic() >= next_try and not self._open():
                next_try = time.monotonic() + REOPEN_S
            frames = self.framer.frames(self.generator.advance(self.frame_s))
            self.sim_t += self.frame_s
            if self.sim_t >= next_hello:
                next_hello += self.hello_every_s
                frames.append(
                    self.framer.hello(
                        self.sim_t, self.boot_id, self.firmware, self.device_id, self.stream_names
                    )
                )
            if self.sim_t >= next_beat:
                next_beat += self.heartbeat_every_s
                frames.append(self.framer.heartbeat(self.sim_t, self.boot_id))
            delay = wall0 + self.sim_t - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            for f in frames:
                self._emit(f)


# ---------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``serve``: one link mode, then device options."""
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serial", metavar="PORT", help="serve the textile on a real serial port")
    mode.add_argument("--pty", metavar="LINK", help="serve the textile on a pty (symlink LINK)")
    mode.add_argument(
        "--ble",
        metavar="TRANSPORT",
        help="serve a BLE wearable via bumble on a controller: usb:0, hci-socket:0, "
        "serial:/dev/ttyACM0,1000000 ...",
    )
    p.add_argument("--seed", type=int, default=0, help="simulation and fault seed")
    p.add_argument("--patient", type=int, default=0, help="physiology patient index")
    p.add_argument("--sine", action="store_true", help="simple test signal, not physiology")
    p.add_argument(
        "--recording", default=None, help="replay a recording dir, WFDB record or EDF file"
    )
    p.add_argument("--lead", default=None, help="ECG lead of a WFDB/EDF --recording")
    p.add_argument("--duration", type=float, default=None, help="device seconds, then exit")
    p.add_argument("--ledger", type=Path, default=None, help="write the final ledger (JSON)")
    p.add_argument("--device-id", default="textile-01", help="serial: id sent in HELLO")
    p.add_argument("--baud", type=int, default=115200, help="serial: baud rate")
    p.add_argument("--faults", default="", help="serial: e.g. bit_flip=0.01,garbage=0.005")
    p.add_argument(
        "--kind", default="chest_strap", choices=("chest_strap", "wristband"), help="BLE: profile"
    )
    p.add_argument("--name", default=None, help="BLE: advertised name")
    p.add_argument("--address", default=None, help="BLE: static random address (F0:..)")


def _serial_generator(args: argparse.Namespace) -> GeneratorLike | None:
    if getattr(args, "recording", None):
        from firmware_sim.recording import open_player

        return open_player(args.recording, args.lead)
    if args.sine:
        return None
    from firmware_sim.physiology import Generator, make_patient

    return Generator(make_patient(args.patient, seed=args.seed))


def _finish(counts: dict[str, Any], ledger_path: Path | None) -> None:
    print(json.dumps({"ledger": counts}), flush=True)
    if ledger_path is not None:
        ledger_path.write_text(json.dumps(counts, indent=1, sort_keys=True))


def _run_port(args: argparse.Namespace) -> int:
    try:
        faults = FaultConfig.parse(args.faults, seed=args.seed)
    except ValueError as exc:
        print(f"serve: --faults: {exc}", file=sys.stderr)
        return 2
    dev = PortDevice(
        args.serial,
        _serial_generator(args),
        baudrate=args.baud,
        device_id=args.device_id,
        seed=args.seed,
        duration_s=args.duration,
        faults=faults,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    dev.start()
    print(json.dumps({"serial": args.serial, "device_id": args.device_id}), flush=True)
    try:
        while not stop.is_set() and not dev.wait_done(0.2):
            pass
    finally:
        dev.stop()
    counts = dict(dev.ledger.counts)
    counts["sample_values_sent"] = sum(
        len(f.values) for f in dev.ledger.intact if f.values is not None
    )
    _finish(counts, args.ledger)
    if dev.error is not None:
        print(f"serve: device failed: {dev.error!r}", file=sys.stderr)
        return 1
    return 0


def _run_pty(args: argparse.Namespace) -> int:
    from firmware_sim import serve_serial

    ns = argparse.Namespace(
        link=args.pty,
        seed=args.seed,
        patient=args.patient,
        device_id=args.device_id,
        realtime=True,
        duration=args.duration,
        faults=args.faults,
        sine=args.sine,
        recording=args.recording,
        lead=args.lead,
    )
    return serve_serial.run(ns)


def run(args: argparse.Namespace) -> int:
    """Dispatch on the link mode; returns the exit status."""
    if getattr(args, "recording", None):
        from firmware_sim.recording import open_player

        try:  # refuse a bad recording before any link is opened
            open_player(args.recording, args.lead)
        except (ValueError, OSError) as exc:
            print(f"serve: --recording: {exc}", file=sys.stderr)
            return 2
    if args.serial:
        return _run_port(args)
    if args.pty:
        return _run_pty(args)
    from firmware_sim import serve_bumble

    return serve_bumble.run(args)


CLI_COMMANDS = {
    "serve": (
        "run a simulated wearable on a real link (serial port, pty, or BLE via bumble)",
        add_arguments,
        run,
    )
}
