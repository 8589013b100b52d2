"""``edgeagent status``: ask the running daemon over its local control socket.

Without an answering daemon it shows the ``status.json`` the daemon wrote last,
marked stale with its age (and still exits 1: nothing is running).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgeagent.cli import app
from edgeagent.cli.config import (
    CONFIG_OPTION,
    JSON_OPTION,
    default_config_path,
    echo_json,
    error_doc,
)
from edgeagent.cli.human import iso
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
    for why in snap.get("degraded") or []:
        console.print(f"[bold red]degraded:[/] {why}")
    inference = snap.get("inference")  # Detector.backend.as_dict(), when detection runs
    if inference:
        console.print(f"inference: {inference.get('reason', inference.get('providers'))}")
    live = snap.get("liveness") or {}
    for name, text in (live.get("faults") or {}).items():
        console.print(f"[bold red]degraded[/] {name}: {text}")
    disk = ((snap.get("components") or {}).get("outbox") or {}).get("disk")
    if disk:
        console.print(
            f"disk: {disk['free_bytes']} bytes free under {disk['path']} "
            f"(floor {disk['floor_bytes']}, reserve {disk['reserve_bytes']})"
            + ("  [bold red]SHORT[/]" if disk.get("short") else "")
        )
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
    fb = ((snap.get("components") or {}).get("feedback") or {}).get("feedback")
    if fb and "confirmed" in fb:
        refused = sum(v for k, v in (fb.get("counters") or {}).items() if k.startswith("refused_"))
        console.print(
            f"feedback: {fb['confirmed']} confirmed, {fb['dismissed']} dismissed, "
            f"{fb['alerts_awaiting']} awaiting; labelled windows {fb['windows_train']} train, "
            f"{fb['windows_holdout']} held back; {refused} refused"
        )
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
        saved = last_saved(config, exc)
        if saved is None:
            if as_json:
                echo_json({"ok": False, "error": error_doc(exc)})
            else:
                typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
        if as_json:
            echo_json(saved)
        else:
            st = saved["stale"]
            typer.echo(
                f"STALE: {st['daemon_error']}; showing {st['file']} written "
                f"{iso(saved.get('time'))}, {_age(st['age_s'])} ago",
                err=True,
            )
            render(saved, Console())
        raise typer.Exit(1) from None  # the daemon is not answering, whatever the file says
    if as_json:
        echo_json(snap)
    else:
        render(snap, Console())


def last_saved(config: Path | None, exc: ControlError) -> dict[str, Any] | None:
    """The status.json the daemon left behind, marked ``stale`` with its age; None if none."""
    try:
        state = load_config(config or default_config_path()).agent.state_dir
    except ConfigError:
        return None
    f = state / "status.json"
    try:
        snap = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(snap, dict):
        return None
    written = snap.get("time")
    age = time.time() - float(written) if isinstance(written, (int, float)) else None
    snap["stale"] = {
        "file": str(f),
        "age_s": round(age, 1) if age is not None else None,
        "daemon_error": exc.problem,
    }
    return snap


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
