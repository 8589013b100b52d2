"""``edgeagent outbox``: inspect, flush and purge the store-and-forward outbox.

Every verb reads the state directory, the broker and the box's certificate
from the config (``-c``); ``--state-dir`` points stats and purge at a copied
state directory instead. ``stats`` only reads (it works on a read-only file).
``flush`` sends everything now, for a technician on site after a long outage:
through the running daemon's own connection when there is one (the broker
binds the client id to the certificate, so a second client with the box's
certificate would take the daemon's session over), else over a connection of
its own. ``purge`` is the explicit, counted way to throw messages away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.cli.config import (
    CONFIG_OPTION,
    JSON_OPTION,
    echo_json,
    fail,
    load_or_exit,
    state_dir_of,
)
from edgeagent.errors import ControlError, EdgeAgentError, OutboxError
from edgeagent.transport.outbox import DB_NAME, KINDS, Outbox

outbox_app = typer.Typer(
    help="Store-and-forward outbox: stats, flush, purge.", no_args_is_help=True
)
app.add_typer(outbox_app, name="outbox")

_STATE: Any = typer.Option(
    None, "--state-dir", help="Read this state directory instead of the config's.",
    show_default=False,
)  # fmt: skip


def _open(state_dir: Path, as_json: bool, *, readonly: bool = False) -> Outbox:
    path = state_dir / DB_NAME
    try:
        if not path.is_file():
            raise OutboxError(f"no outbox at {path}")
        return Outbox(path, readonly=readonly)
    except OutboxError as exc:
        raise fail(exc, as_json) from exc


@outbox_app.command("stats")
def stats(
    config: Path | None = CONFIG_OPTION, state_dir: Path | None = _STATE,
    as_json: bool = JSON_OPTION,
) -> None:  # fmt: skip
    """Rows and bytes per kind, oldest message age, and drop/delivery counters."""
    with _open(state_dir_of(config, state_dir, as_json), as_json, readonly=True) as ob:
        doc = ob.stats()
    if as_json:
        echo_json(doc)
        return
    typer.echo(f"outbox {doc['path']}: {doc['rows']} rows, {doc['bytes']} bytes")
    by_kind = doc["by_kind"]
    assert isinstance(by_kind, dict)
    for kind, s in by_kind.items():
        typer.echo(
            f"  {kind:10} {s['rows']:8} rows {s['bytes']:12} bytes oldest {s['oldest_age_s']} s"
        )
    counters = doc["counters"]
    assert isinstance(counters, dict)
    for name, value in counters.items():
        typer.echo(f"  {name:24} {value}")


@outbox_app.command("purge")
def purge(
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    kind: str | None = typer.Option(None, help=f"Only this kind ({', '.join(KINDS)})."),
    older_than_s: float | None = typer.Option(None, "--older-than-s", help="Only older rows."),
    yes: bool = typer.Option(False, "--yes", help="Required: purged messages are gone."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete stored messages (counted as purged.<kind>)."""
    if not yes:
        msg = "purge deletes undelivered messages; pass --yes to confirm"
        raise fail(OutboxError(msg), as_json)
    with _open(state_dir_of(config, state_dir, as_json), as_json) as ob:
        try:
            n = ob.purge(kind=kind, older_than_s=older_than_s)
        except OutboxError as exc:
            raise fail(exc, as_json) from exc
        left = ob.count()
    if as_json:
        echo_json({"purged": n, "rows": left})
    else:
        typer.echo(f"purged {n} message(s); {left} left")


@outbox_app.command("flush")
def flush(
    config: Path | None = CONFIG_OPTION,
    timeout_s: float = typer.Option(60.0, "--timeout-s", help="Give up after this long."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Send everything stored now (through the daemon if it runs); exit 1 if rows remain."""
    from edgeagent.daemon.control import daemon_listening, request

    cfg = load_or_exit(config, as_json)
    try:
        doc = request(cfg.control.socket_path, "flush", timeout=timeout_s + 5.0,
                      timeout_s=timeout_s)  # fmt: skip
    except ControlError as exc:
        if daemon_listening(cfg.control.socket_path):
            # A daemon runs but could not flush: a second client with the box's
            # certificate would take its session over, so say why and stop here.
            raise fail(exc, as_json, 1) from exc
        doc = _flush_alone(cfg, timeout_s, as_json)
    if as_json:
        echo_json(doc)
    else:
        via = "through the daemon" if doc["via"] == "daemon" else "directly"
        typer.echo(
            f"{via}: delivered {doc['delivered']}, rejected {doc['rejected']}, {doc['rows']} left"
        )
        if doc.get("refused"):
            typer.echo(f"refused: {doc['refused']}", err=True)
    if not doc["complete"]:
        raise typer.Exit(1)


def _flush_alone(cfg: Any, timeout_s: float, as_json: bool) -> dict[str, Any]:
    """No daemon: connect as the box (the broker names the client after the certificate)."""
    from edgeagent.ops.pki import TlsFiles
    from edgeagent.transport.mqtt import MqttLink, OutboxForwarder

    fed = cfg.federation
    if fed.ca_file is None or fed.cert_file is None or fed.key_file is None:
        raise fail(
            OutboxError("flush needs federation.ca_file, cert_file and key_file in the config"),
            as_json,
        )
    with _open(cfg.agent.state_dir, as_json) as ob:
        before = ob.count()
        try:
            files = TlsFiles(fed.ca_file, fed.cert_file, fed.key_file).check()
            link = MqttLink(cfg.agent.box_id, fed.broker_host, fed.broker_port, files,
                            cfg.agent.fleet, status=False)  # fmt: skip
            link.connect(timeout=min(timeout_s, 15.0))
        except EdgeAgentError as exc:
            raise fail(exc, as_json) from exc
        try:
            fw = OutboxForwarder(ob, link)
            done = fw.drain(timeout_s)
        finally:
            link.close()
        return {
            "via": "direct",
            "connected": True,
            "before": before,
            "delivered": fw.delivered,
            "rejected": fw.rejected,
            "rows": ob.count(),
            "complete": done,
            "refused": fw.refusal["problem"] if fw.refusal else None,
        }
