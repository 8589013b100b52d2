"""``edgeagent serial list``: which serial ports exist and which the config expects.

A field engineer's first question after plugging a textile in is "did it show
up, and under which name?" — so this lists pyserial's view of the ports
(USB ids, stable /dev/serial/by-id links) next to the configured devices and
whether this user may open them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgeagent.cli import app
from edgeagent.cli.config import JSON_OPTION, default_config_path, echo_json
from edgeagent.errors import ConfigError
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
