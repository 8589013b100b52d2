"""``edgeagent serial list|probe``: which serial ports exist, and what one of them sends.

A field engineer's first question after plugging a textile in is "did it show
up, and under which name?" — so ``list`` shows pyserial's view of the ports
(USB ids, stable /dev/serial/by-id links) next to the configured devices and
whether this user may open them. The second is "does it speak?": ``probe``
reads the port for a few seconds through the agent's own frame decoder and
shows the hello, the streams with their frame and sample counts, and the
link counters (bad CRC, resyncs, gaps, dropped bytes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, JSON_OPTION, default_config_path, echo_json, fail
from edgeagent.errors import ConfigError, SourceError
from edgeagent.ops.config import load_config

_CONFIG: Any = typer.Option(None, "--config", "-c", help="Also show configured ports.")
serial_app = typer.Typer(help="Serial ports (wired textiles and hubs).", no_args_is_help=True)
app.add_typer(serial_app, name="serial")


def _by_id() -> dict[str, str]:
    """Real device path -> stable /dev/serial/by-id link (what configs should use)."""
    out: dict[str, str] = {}
    d = Path("/dev/serial/by-id")
    if d.is_dir():
        for link in d.iterdir():
            out[str(link.resolve())] = str(link)
    return out


def _access(path: str) -> str:
    if not os.path.exists(path):
        return "missing"
    return "rw" if os.access(path, os.R_OK | os.W_OK) else "denied"


def list_ports(config: Path | None = None) -> list[dict[str, Any]]:
    """Detected ports plus configured ones (a configured port may be absent)."""
    from serial.tools import list_ports as lp

    by_id = _by_id()
    rows: dict[str, dict[str, Any]] = {}
    for p in lp.comports():
        rows[p.device] = {
            "port": p.device,
            "detected": True,
            "description": p.description,
            "hwid": p.hwid,
            "by_id": by_id.get(p.device),
            "access": _access(p.device),
            "configured_as": None,
        }
    try:
        cfg = load_config(config or default_config_path())
        devices = cfg.devices.serial
    except ConfigError:
        devices = ()
    for dev in devices:
        real = os.path.realpath(dev.port)
        row = rows.get(real) or rows.get(dev.port)
        if row is None:
            row = rows[dev.port] = {
                "port": dev.port,
                "detected": False,
                "description": "",
                "hwid": "",
                "by_id": None,
                "access": _access(dev.port),
                "configured_as": None,
            }
        row["configured_as"] = f"{dev.device_id} (patient {dev.patient})"
    return sorted(rows.values(), key=lambda r: r["port"])


@serial_app.command("list")
def list_cmd(
    config: Path | None = _CONFIG,
    as_json: bool = JSON_OPTION,
) -> None:
    """List serial ports: detected, configured, and whether this user can open them."""
    rows = list_ports(config)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        typer.echo("no serial ports found (plug a device in, or check dmesg)")
        return
    t = Table(title="serial ports")
    for col in ("port", "detected", "access", "configured as", "description", "by-id"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(
            r["port"],
            "yes" if r["detected"] else "no",
            r["access"],
            r["configured_as"] or "",
            r["description"],
            r["by_id"] or "",
        )
    Console().print(t)


_SECONDS: Any = typer.Option(5.0, "--seconds", "-s", help="How long to listen.")


def probe(port: str, seconds: float, baud: int = 115200) -> dict[str, Any]:
    """Read ``port`` for ``seconds`` and decode what arrives (the port is opened exclusively,
    so a port the daemon holds is reported busy rather than read from two sides)."""
    import time

    import serial

    from edgeagent.codecs.serial_frame import (
        FrameDecoder,
        Heartbeat,
        Hello,
        SampleFrame,
        SeqKind,
        SeqTracker,
    )
    from edgeagent.streams import LinkCounters

    counters = LinkCounters()
    dec, seq = FrameDecoder(counters), SeqTracker()
    streams: dict[str, dict[str, int]] = {}
    hello: dict[str, Any] | None = None
    heartbeats = nbytes = 0
    try:
        ser = serial.Serial(port, baud, timeout=0.1, exclusive=True)
    except (serial.SerialException, OSError) as exc:
        advice = f"{exc}; is the daemon using it? (systemctl stop edgeagent; edgeagent serial list)"
        raise SourceError(port, "cannot_open", advice) from exc
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            data = ser.read(4096)
            nbytes += len(data)
            dec.feed(data)
            for f in dec.frames():
                if isinstance(f, Hello):
                    hello = {
                        "device_id": f.device_id,
                        "firmware": f.firmware,
                        "boot_id": f.boot_id,
                        "streams": [str(s) for s in f.streams],
                    }
                elif isinstance(f, Heartbeat):
                    heartbeats += 1
                elif isinstance(f, SampleFrame):
                    kind, missing = seq.judge(f)
                    s = streams.setdefault(str(f.stream), {"frames": 0, "samples": 0})
                    if kind is SeqKind.DUPLICATE:
                        counters.duplicates += 1
                        continue
                    counters.frames_missing += missing
                    counters.seq_gaps += int(kind is SeqKind.GAP)
                    s["frames"] += 1
                    s["samples"] += f.n
    finally:
        ser.close()
    return {
        "port": port,
        "seconds": round(time.monotonic() - t0, 2),
        "bytes": nbytes,
        "hello": hello,
        "heartbeats": heartbeats,
        "streams": streams,
        "counters": counters.as_dict(),
    }


@serial_app.command("probe")
def probe_cmd(
    port: str | None = typer.Argument(
        None,
        help="Serial port, e.g. /dev/serial/by-id/usb-... Default: the config's first "
        "[[devices.serial]] port.",
        show_default=False,
    ),
    seconds: float = _SECONDS,
    baud: int | None = typer.Option(
        None,
        "--baud",
        help="Baud rate (default: the config's for PORT, else 115200; "
        "ignored by ptys and USB CDC).",
        show_default=False,
    ),
    config: Path | None = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Read frames from PORT for a few seconds; show the hello, streams and link counters.
    Exit 1 when no valid frame arrived."""
    from edgeagent.cli.config import config_if_any

    cfg = config_if_any(config, as_json)
    devs = list(cfg.devices.serial) if cfg is not None else []
    if port is None:
        if not devs:
            no_port = ConfigError("devices.serial", [], "name PORT, or give a config (-c) "
                                  "with a [[devices.serial]] port")  # fmt: skip
            raise fail(no_port, as_json)
        port = devs[0].port
    if baud is None:
        baud = next((d.baudrate for d in devs if d.port == port), 115200)
    try:
        doc = probe(port, seconds, baud)
    except SourceError as exc:
        raise fail(exc, as_json, 1) from exc
    ok = doc["counters"]["frames_ok"] > 0
    if as_json:
        echo_json(doc)
    else:
        typer.echo(f"{port}: {doc['bytes']} bytes in {doc['seconds']} s")
        h = doc["hello"]
        typer.echo(
            f"hello: {h['device_id']} firmware {h['firmware']} boot {h['boot_id']} "
            f"streams {', '.join(h['streams'])}"
            if h
            else "hello: none seen (sent at connect)"
        )
        typer.echo(f"heartbeats: {doc['heartbeats']}")
        for name, s in doc["streams"].items():
            rate = s["samples"] / doc["seconds"] if doc["seconds"] else 0.0
            typer.echo(f"stream {name:10} {s['frames']:6} frames {s['samples']:8} samples "
                       f"{rate:8.1f} /s")  # fmt: skip
        typer.echo("counters: " + "  ".join(f"{k}={v}" for k, v in doc["counters"].items()))
        if not ok:
            typer.echo("no valid frame: check the cable, the baud rate and the device's power",
                       err=True)  # fmt: skip
    if not ok:
        raise typer.Exit(1)
