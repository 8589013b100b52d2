"""``edgeagent alerts follow``: the documented alert consumer of a fleet.

Subscribes to every box's alert topic on a persistent MQTT 5 session (nothing
published while it is away is lost within the session's expiry), prints each
alert message once as one JSON line on stdout, and drops repeats by ``msg-id``
(:class:`~edgeagent.transport.dedupe.SeenIds`, kept in ``--seen FILE`` across
restarts; each repeat is named on stderr). Boxes deliver at least once; this
consumer turns that into once.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.errors import EdgeAgentError

alerts_app = typer.Typer(help="Alerts as the fleet receives them.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


_PKI_DIR = typer.Option(Path("pki"), "--pki-dir", help="Holds ca.crt and clients/.")
_SEEN = typer.Option(
    None, "--seen", help="SQLite file of handled msg-ids, so a restart drops repeats too."
)


@alerts_app.command("follow")
def follow(
    host: str = typer.Option("127.0.0.1", help="Broker host."),
    port: int = typer.Option(8883, help="Broker TLS port."),
    pki_dir: Path = _PKI_DIR,
    identity: str = typer.Option(
        "aggregator", "--identity", help="Client certificate to connect with (may read alerts)."
    ),
    fleet: str = typer.Option("default", help="Fleet whose alerts to follow."),
    client_id: str = typer.Option(
        "alert-consumer", "--client-id", help="MQTT client id: the persistent session's name."
    ),
    seen: Path | None = _SEEN,
    count: int = typer.Option(0, "--count", help="Exit after this many new messages (0: never)."),
    timeout_s: float = typer.Option(0.0, "--timeout-s", help="Exit after this long (0: never)."),
) -> None:
    """Print each alert message once (JSON lines); repeats by msg-id are dropped and counted."""
    from edgeagent.ops.pki import Pki
    from edgeagent.transport import topics
    from edgeagent.transport.dedupe import SeenIds
    from edgeagent.transport.mqtt import Message, MqttLink

    ids = SeenIds(seen)
    done = threading.Event()
    lock = threading.Lock()

    def on_message(m: Message) -> None:
        try:
            body: dict[str, Any] = json.loads(m.payload)
        except ValueError:
            body = {"unparsed": m.payload[:200].decode(errors="replace")}
        mid = m.msg_id or f"{body.get('id')}.{body.get('event')}"
        if not ids.first(mid):
            typer.echo(f"repeat dropped: {mid}", err=True)
            return
        with lock:
            typer.echo(json.dumps({"msg_id": mid, "topic": m.topic, **body}))
        if count and ids.first_seen >= count:
            done.set()

    try:
        files = Pki(pki_dir).client_files(identity).check()
        link = MqttLink(client_id, host, port, files, fleet, identity=identity, status=False,
                        on_message=on_message)  # fmt: skip
        link.connect(timeout=15.0)
        link.subscribe(topics.node_filter(fleet, "alert")).wait(10.0)
    except EdgeAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    try:
        while not done.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        link.close(timeout=2.0)
        typer.echo(
            f"alerts follow: {ids.first_seen} new, {ids.duplicates} repeat(s) dropped", err=True
        )
        ids.close()
