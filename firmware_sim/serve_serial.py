"""``serve --serial``: run a simulated serial wearable on a pty until interrupted.

Meant to be registered by ``firmware_sim/__main__.py`` (``add_arguments`` +
``run``) so that ``python -m firmware_sim serve --serial ...`` works, and
runnable on its own as ``python -m firmware_sim.serve_serial ...``. Prints
the port path first (so scripts can wait for it) and the ledger counts at the
end, as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence

from firmware_sim.serialdev import FaultConfig, GeneratorLike, PtyDevice

DEFAULT_LINK = "/tmp/edgeagent-ttyTEXTILE0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the serial device options to a (sub)parser."""
    parser.add_argument("--link", default=DEFAULT_LINK, help="stable port path (a symlink)")
    parser.add_argument("--seed", type=int, default=0, help="simulation and fault seed")
    parser.add_argument("--patient", type=int, default=0, help="physiology patient index")
    parser.add_argument("--device-id", default="textile-01", help="id sent in HELLO")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True)
    pace.add_argument("--fast", dest="realtime", action="store_false", help="as fast as read")
    parser.add_argument("--duration", type=float, default=None, help="device seconds, then exit")
    parser.add_argument(
        "--faults",
        default="",
        help="comma list, e.g. bit_flip=0.01,garbage=0.005,cut_short=0.002,vanish_every_s=60",
    )
    parser.add_argument(
        "--sine", action="store_true", help="use the small sine generator, not physiology"
    )


def _generator(args: argparse.Namespace) -> GeneratorLike | None:
    if getattr(args, "recording", None):
        from firmware_sim.recording import open_player

        return open_player(args.recording, getattr(args, "lead", None))
    if args.sine:
        return None  # PtyDevice falls back to its SineGenerator
    from firmware_sim.physiology import Generator, make_patient

    return Generator(make_patient(args.patient, seed=args.seed))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM or ``--duration``; return the exit status."""
    try:
        faults = FaultConfig.parse(args.faults, seed=args.seed)
    except ValueError as exc:
        print(f"error: --faults: {exc}", file=sys.stderr)
        return 2
    dev = PtyDevice(
        args.link,
        _generator(args),
        device_id=args.device_id,
        seed=args.seed,
        realtime=args.realtime,
        duration_s=args.duration,
        faults=faults,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    dev.start()
    print(json.dumps({"port": str(dev.link), "device_id": args.device_id}), flush=True)
    try:
        while not stop.is_set() and not dev.wait_done(0.2):
            pass
    finally:
        dev.stop()
    print(json.dumps({"ledger": dev.ledger.counts}), flush=True)
    if dev.error is not None:
        print(f"error: device failed: {dev.error!r}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m firmware_sim.serve_serial``."""
    parser = argparse.ArgumentParser(
        prog="firmware_sim serve --serial", description="Serve a simulated serial wearable."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
