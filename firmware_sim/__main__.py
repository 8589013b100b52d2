"""``python -m firmware_sim`` (also ``firmware-sim``): run simulated wearables from a shell.

Subcommands live in a registry so each device module can add its own without
touching this file: a module listed in ``PLUGIN_MODULES`` may define

    CLI_COMMANDS = {"serve": (help_text, add_arguments, run)}

where ``add_arguments(parser: argparse.ArgumentParser) -> None`` declares its
options and ``run(args: argparse.Namespace) -> int`` returns the exit status.
Plain tuples, not a class from here, so device modules never import this
``__main__`` (which would load it twice under ``python -m``). A module that is
missing is skipped; one that fails to import is reported and skipped, so a
broken BLE stack never takes ``record`` down with it.

Built in: ``record OUT_DIR`` (simulate a session into a recording directory)
and ``replay SRC`` (stream a recording directory, WFDB record or EDF file
through the serial device on a pty, or with ``--ble`` as a chest strap on the
BlueZ D-Bus simulator).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
Command = tuple[str, AddArguments, Run]

# Device modules that may contribute subcommands (see module docstring).
PLUGIN_MODULES: tuple[str, ...] = (
    "firmware_sim.serialdev",
    "firmware_sim.bluez",
    "firmware_sim.feeds",
    "firmware_sim.serve",
)


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _add_record_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if needed)")
    p.add_argument("--seconds", type=float, required=True, help="session length")
    p.add_argument("--seed", type=int, default=0, help="population seed (default 0)")
    p.add_argument("--patient", type=int, default=0, help="patient index in the population")
    p.add_argument("--anomaly-rate", type=float, default=6.0, help="clinical episodes per hour")
    p.add_argument("--fault-rate", type=float, default=2.0, help="sensor-fault episodes per hour")
    p.add_argument("--kinds", type=_csv_list, default=None, help="only these kinds (comma list)")
    p.add_argument("--streams", type=_csv_list, default=None, help="only these streams")
    p.add_argument("--ecg-hz", type=float, default=250.0)
    p.add_argument("--acc-hz", type=float, default=50.0)
    p.add_argument("--temp-hz", type=float, default=1.0)
    p.add_argument("--env-hz", type=float, default=0.2)
    p.add_argument("--chunk-s", type=float, default=60.0, help="simulate and write in chunks")


def _run_record(args: argparse.Namespace) -> int:
    from firmware_sim.physiology import SimConfig, make_patient
    from firmware_sim.recording import record

    cfg = SimConfig(
        ecg_hz=args.ecg_hz,
        acc_hz=args.acc_hz,
        temp_hz=args.temp_hz,
        env_hz=args.env_hz,
        anomaly_rate_per_hour=args.anomaly_rate,
        fault_rate_per_hour=args.fault_rate,
        kinds=args.kinds,
    )
    try:
        profile = make_patient(args.patient, seed=args.seed)
        summary = record(
            args.out_dir, profile, args.seconds, cfg, chunk_s=args.chunk_s, streams=args.streams
        )
    except ValueError as exc:
        print(f"record: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary.path} ({profile.patient_id}, {summary.seconds:g} s)")
    for name, n in summary.rows.items():
        print(f"  {name:10} {n:>9} rows")
    print(f"  labels     {len(summary.labels):>9}")
    for lab in summary.labels:
        print(f"    {lab.start:9.1f} .. {lab.end:9.1f}  {lab.kind}")
    return 0


def _add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recording", metavar="SRC", help="recording directory, WFDB record or EDF file to replay"
    )
    p.add_argument("--lead", default=None, help="ECG lead of a WFDB/EDF record (default MLII, II)")
    link = p.add_mutually_exclusive_group(required=True)
    link.add_argument("--link", help="serial: symlink path for the pty (e.g. /tmp/textile)")
    link.add_argument(
        "--ble",
        action="store_true",
        help="BLE: serve it as a chest strap on the BlueZ D-Bus simulator (ECG at 130 Hz)",
    )
    p.add_argument("--bus", default=None, help="BLE: D-Bus address (default: the system bus)")
    p.add_argument("--private-bus", action="store_true", help="BLE: start a private dbus-daemon")
    p.add_argument("--fast", action="store_true", help="serial: as fast as the reader takes it")
    p.add_argument("--faults", default="", help='fault spec, e.g. "bit_flip=0.01,garbage=0.005"')
    p.add_argument("--seed", type=int, default=0, help="seed for injected faults")


def _run_replay(args: argparse.Namespace) -> int:
    from firmware_sim.recording import open_player

    try:
        player = open_player(args.recording, args.lead)
    except (ValueError, OSError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if args.ble:
        return _replay_ble(args, player.duration)
    try:
        serialdev = importlib.import_module("firmware_sim.serialdev")
    except ImportError as exc:
        print(f"replay: the serial device is unavailable ({exc})", file=sys.stderr)
        return 1
    try:
        faults = serialdev.FaultConfig.parse(args.faults, seed=args.seed) if args.faults else None
    except ValueError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2

    def ready(dev: object) -> None:
        print(f"replaying {args.recording} ({player.duration:.1f} s) on {args.link}", flush=True)

    try:
        ledger = serialdev.serve(
            args.link,
            seed=args.seed,
            realtime=not args.fast,
            faults=faults,
            duration_s=player.duration,
            generator=player,
            on_ready=ready,
        )
    except KeyboardInterrupt:
        return 130
    print("done: " + ", ".join(f"{k}={v}" for k, v in sorted(ledger.counts.items())))
    return 0


def _replay_ble(args: argparse.Namespace, duration_s: float) -> int:
    """The recording on one simulated chest strap, in real time, until it ends."""
    try:
        serve_ble = importlib.import_module("firmware_sim.serve_ble")
    except ImportError as exc:
        print(f"replay: the BLE simulator is unavailable ({exc})", file=sys.stderr)
        return 1
    if args.fast:
        print(
            "replay: --fast is ignored over BLE (the strap streams in real time)", file=sys.stderr
        )
    print(f"replaying {args.recording} ({duration_s:.1f} s) as a BLE chest strap", flush=True)
    ns = argparse.Namespace(
        straps=1,
        bands=0,
        seconds=duration_s,
        bus=args.bus,
        private_bus=args.private_bus,
        feed="physiology",
        recording=args.recording,
        lead=args.lead,
        seed=args.seed,
    )
    return int(serve_ble.run(ns))


COMMANDS: dict[str, Command] = {
    "record": (
        "simulate a patient session into a recording directory",
        _add_record_arguments,
        _run_record,
    ),
    "replay": (
        "stream a recording, WFDB record or EDF file as the serial device or a BLE strap",
        _add_replay_arguments,
        _run_replay,
    ),
}


def load_plugins(modules: Sequence[str] = PLUGIN_MODULES) -> list[str]:
    """Import device modules and merge their CLI_COMMANDS; return problems met (not raised)."""
    problems: list[str] = []
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name != mod_name:
                problems.append(f"{mod_name}: {exc}")
            continue
        except Exception as exc:  # a broken device module must not break the others
            problems.append(f"{mod_name}: {type(exc).__name__}: {exc}")
            continue
        for name, cmd in dict(getattr(mod, "CLI_COMMANDS", {})).items():
            if name in COMMANDS and COMMANDS[name] is not cmd:
                problems.append(f"{mod_name}: subcommand {name!r} already registered; ignored")
                continue
            COMMANDS[name] = cmd
    return problems


def build_parser(problems: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argparse tree for every registered subcommand (``problems`` go in the help)."""
    epilog = None
    if problems:
        epilog = "device modules not loaded: " + "; ".join(problems)
    parser = argparse.ArgumentParser(
        prog="firmware-sim",
        description="Simulated wearables for edgeagent tests and demos.",
        epilog=epilog,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    # Problems are shown in --help rather than on every run: a module that is
    # mid-development must not spam unrelated subcommands.
    args = build_parser(load_plugins()).parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
