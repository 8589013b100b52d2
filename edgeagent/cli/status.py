"""``edgeagent status``: ask the running daemon over its local control socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, JSON_OPTION, default_config_path, echo_json
from edgeagent.daemon.control import request
from edgeagent.errors import ConfigError, ControlError
from edgeagent.ops.config import ControlSection, load_config

_SOCKET: Any = typer.Option(None, "--socket", help="Control socket path (overrides config).")


def socket_path(config: Path | None, socket: Path | None) -> Path:
    """--socket wins; else the config's control.socket_path; else the default path.

    A broken config must not stop an engineer from asking a running daemon.
    """
    if socket is not None:
        return socket
    try:
        return load_config(config or default_config_path()).control.socket_path
    except ConfigError:
        return ControlSection().socket_path


def render(snap: dict[str, Any], console: Console) -> None:
    """Human view of a status snapshot."""
    up = snap.get("uptime_s") or 0.0
    console.print(
        f"[bold]{snap.get('box_id')}[/] ({snap.get('fleet')})  state [bold]{snap.get('state')}[/]"
        f"  version {snap.get('version')}  uptime {up / 3600:.2f} h"
        f"  model {snap.get('model_version') or '-'}  last round {snap.get('last_round') or '-'}"
    )
    inference = snap.get("inference")  # Detector.backend.as_dict(), when detection runs
    if inference:
        console.print(f"inference: {inference.get('reason', inference.get('providers'))}")
    live = snap.get("liveness") or {}
    if live:
        t = Table(title=f"components ({live.get('summary')})")
        for col in ("component", "state", "since progress s", "backlog", "progress", "note"):
            t.add_column(col)
        for c in live.get("components", []):
            style = "red" if c["state"] == "stalled" else ""
            t.add_row(
                c["name"],
                c["state"],
                f"{c['since_progress_s']:.1f}",
                str(c["backlog"]),
                str(c["progress_total"]),
                c.get("note", ""),
                style=style,
            )
        console.print(t)
    links = snap.get("links") or {}
    t = Table(title="links")
    for col in ("device", "kind", "patient", "state", "frames ok", "bad crc", "gaps"):
        t.add_column(col)
    for dev, info in links.items():
        c = info.get("counters", {})
        t.add_row(
            dev,
            str(info.get("kind", "")),
            str(info.get("patient", "")),
            str(info.get("state", "")),
            str(c.get("frames_ok", "")),
            str(c.get("bad_crc", "")),
            str(c.get("seq_gaps", "")),
        )
    console.print(t if links else "links: none configured")
    ob = snap.get("outbox")
    console.print(
        f"outbox: depth {ob['depth']} dropped {ob['dropped']}" if ob else "outbox: not running"
    )
    proc = snap.get("process")
    if proc:
        console.print(
            f"process: cpu {proc['cpu_percent']:.1f}%  rss {proc['rss_bytes'] / 2**20:.1f} MiB"
            f"  threads {proc['threads']}"
        )
    counters = snap.get("counters") or {}
    if counters:
        console.print("counters: " + "  ".join(f"{k}={v}" for k, v in counters.items()))


@app.command()
def status(
    config: Path | None = CONFIG_OPTION,
    socket: Path | None = _SOCKET,
    as_json: bool = JSON_OPTION,
    timeout: float = typer.Option(5.0, help="Seconds to wait for the daemon."),
) -> None:
    """Show the running daemon's status: links, components, outbox, counters."""
    path = socket_path(config, socket)
    try:
        snap = request(path, "status", timeout=timeout)
    except ControlError as exc:
        if as_json:
            echo_json({"ok": False, "error": str(exc)})
        else:
            typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if as_json:
        echo_json(snap)
    else:
        render(snap, Console())
