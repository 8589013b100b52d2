"""``edgeagent outbox``: inspect, flush and purge the store-and-forward outbox.

Operates directly on ``<state-dir>/outbox.sqlite3`` (SQLite handles the locking
with a running daemon). ``flush`` connects with a box certificate and sends
everything now, for a technician on site after a long outage; ``purge`` is the
explicit, counted way to throw messages away.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeagent.cli import app
from edgeagent.errors import EdgeAgentError, OutboxError
from edgeagent.transport.outbox import DB_NAME, KINDS, Outbox

outbox_app = typer.Typer(
    help="Store-and-forward outbox: stats, flush, purge.", no_args_is_help=True
)
app.add_typer(outbox_app, name="outbox")

_STATE = typer.Option(
    Path("/var/lib/edgeagent"), "--state-dir", help="Agent state directory (holds the outbox)."
)
_JSON = typer.Option(False, "--json", help="Print JSON.")
_PKI_DIR = typer.Option(Path("pki"), "--pki-dir", help="Holds ca.crt and clients/.")


def _open(state_dir: Path, must_exist: bool = True) -> Outbox:
    if must_exist and not (state_dir / DB_NAME).is_file():
        typer.echo(f"error: no outbox at {state_dir / DB_NAME}", err=True)
        raise typer.Exit(2)
    try:
        return Outbox.in_state_dir(state_dir)
    except OutboxError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@outbox_app.command("stats")
def stats(state_dir: Path = _STATE, as_json: bool = _JSON) -> None:
    """Rows and bytes per kind, oldest message age, and drop/delivery counters."""
    with _open(state_dir) as ob:
        doc = ob.stats()
    if as_json:
        typer.echo(json.dumps(doc))
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
    state_dir: Path = _STATE,
    kind: str | None = typer.Option(None, help=f"Only this kind ({', '.join(KINDS)})."),
    older_than_s: float | None = typer.Option(None, "--older-than-s", help="Only older rows."),
    yes: bool = typer.Option(False, "--yes", help="Required: purged messages are gone."),
    as_json: bool = _JSON,
) -> None:
    """Delete stored messages (counted as purged.<kind>)."""
    if not yes:
        typer.echo("error: purge deletes undelivered messages; pass --yes to confirm", err=True)
        raise typer.Exit(2)
    with _open(state_dir) as ob:
        try:
            n = ob.purge(kind=kind, older_than_s=older_than_s)
        except OutboxError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        left = ob.count()
    if as_json:
        typer.echo(json.dumps({"purged": n, "rows": left}))
    else:
        typer.echo(f"purged {n} message(s); {left} left")


@outbox_app.command("flush")
def flush(
    state_dir: Path = _STATE,
    host: str = typer.Option("127.0.0.1", help="Broker host."),
    port: int = typer.Option(8883, help="Broker TLS port."),
    pki_dir: Path = _PKI_DIR,
    box_id: str = typer.Option(..., "--box-id", help="Which box certificate to connect with."),
    fleet: str = typer.Option("default", help="Fleet (for the status topic)."),
    timeout_s: float = typer.Option(60.0, "--timeout-s", help="Give up after this long."),
    as_json: bool = _JSON,
) -> None:
    """Connect now and send everything stored; exit 1 if rows remain."""
    from edgeagent.ops.pki import Pki
    from edgeagent.transport.mqtt import MqttLink, OutboxForwarder

    with _open(state_dir) as ob:
        before = ob.count()
        try:
            files = Pki(pki_dir).client_files(box_id).check()
            link = MqttLink(f"{box_id}-flush", host, port, files, fleet, identity=box_id,
                            status=False)  # fmt: skip
            link.connect(timeout=min(timeout_s, 15.0))
        except EdgeAgentError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        try:
            fw = OutboxForwarder(ob, link)
            done = fw.drain(timeout_s)
        finally:
            link.close()
        doc = {
            "before": before,
            "delivered": fw.delivered,
            "rejected": fw.rejected,
            "rows": ob.count(),
            "complete": done,
        }
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        typer.echo(f"delivered {doc['delivered']}, rejected {doc['rejected']}, {doc['rows']} left")
    if not done:
        raise typer.Exit(1)
