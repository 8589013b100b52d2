"""``edgeagent alerts``: this box's alerts (list, show, export) and the fleet's (follow).

``list``, ``show`` and ``export`` read ``alerts.sqlite`` in the config's state
directory (``--state-dir`` reads a copied one) through a read-only connection: they
create nothing, change nothing, and work beside a running daemon or on a read-only
directory. Times are ISO 8601 (``2026-12-07T18:00:00Z``) in and out; ``--since`` and
``--until`` also take Unix seconds.

``ack`` gives a clinician's verdict on one alert to the running daemon (control
socket): ``--true`` confirms it (``--kind`` corrects its kind), ``--false``
dismisses it as a false alarm. The box labels the windows behind the alert with it
(``pipeline.feedback``); ``show`` then prints the verdict beside the alert.

``follow`` is the documented alert consumer of a fleet. It subscribes to every box's
alert topic on a persistent MQTT 5 session (nothing published while it is away is
lost within the session's expiry), prints each alert message once as one JSON line
on stdout, and drops repeats by ``msg-id`` (:class:`~edgeagent.transport.dedupe.SeenIds`,
kept in ``--seen FILE`` across restarts; each repeat is named on stderr). Boxes
deliver at least once; this consumer turns that into once.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import getpass
import json
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, JSON_OPTION, echo_json, fail, state_dir_of
from edgeagent.cli.human import human, iso
from edgeagent.errors import EdgeAgentError

alerts_app = typer.Typer(
    help="Alerts: this box's (list, show, export) and the fleet's (follow).", no_args_is_help=True
)
app.add_typer(alerts_app, name="alerts")

DB_NAME = "alerts.sqlite"
FEEDBACK_DB = "feedback.sqlite"

_STATE: Any = typer.Option(
    None, "--state-dir", help="Read this state directory instead of the config's.",
    show_default=False,
)  # fmt: skip
_SINCE: Any = typer.Option(None, "--since", help="Alerts ending at or after (ISO 8601 or Unix s).")
_UNTIL: Any = typer.Option(None, "--until", help="Alerts starting before (ISO 8601 or Unix s).")
_PATIENT: Any = typer.Option(None, "--patient", help="Only this patient.")
_CATEGORY: Any = typer.Option(None, "--category", help="clinical, sensor_fault, novelty, system.")
_FORMAT: Any = typer.Option("jsonl", "--format", help="jsonl or csv.")
_OUTPUT: Any = typer.Option(None, "--output", "-o", help="File (default: stdout).")
_LIMIT: Any = typer.Option(100, help="At most this many (the newest are last).")


class AlertsError(EdgeAgentError):
    """The alert store cannot be read, or a filter is malformed."""


def parse_time(text: str) -> float:
    """ISO 8601 (a date, or date and time; UTC unless it names an offset) or Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AlertsError(f"{text!r} is not an ISO 8601 time or Unix seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _connect(state: Path) -> sqlite3.Connection:
    path = state / DB_NAME
    if not path.is_file():
        raise AlertsError(f"no alerts yet: {path} does not exist")
    live = path.with_name(path.name + "-wal").exists()
    flags = "mode=ro" if live else "mode=ro&immutable=1"
    db = sqlite3.connect(f"file:{path}?{flags}", uri=True, timeout=10.0)
    db.row_factory = sqlite3.Row
    return db


def query(
    state: Path,
    since: float | None = None,
    until: float | None = None,
    patient: str | None = None,
    category: str | None = None,
    alert_id: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Alerts as dicts (every stored column; ``detail`` decoded), in start order."""
    q, args = "SELECT * FROM alerts WHERE 1=1", []  # type: ignore[var-annotated]
    for clause, value in (("end >= ?", since), ("start < ?", until), ("patient = ?", patient),
                          ("category = ?", category), ("id LIKE ?", alert_id)):  # fmt: skip
        if value is not None:
            q += f" AND {clause}"
            args.append(f"{value}%" if clause.startswith("id") else value)
    q += " ORDER BY start, created"
    if limit is not None:
        q += f" LIMIT {int(limit)}"
    try:
        db = _connect(state)
        try:
            rows = [dict(r) for r in db.execute(q, args)]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise AlertsError(f"cannot read {state / DB_NAME}: {exc}") from exc
    for r in rows:
        with contextlib.suppress(ValueError):
            r["detail"] = json.loads(r.get("detail") or "{}")
        for k in ("closed", "sent"):
            if k in r:
                r[k] = bool(r[k])
    return rows


def _window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    return (
        parse_time(since) if since is not None else None,
        parse_time(until) if until is not None else None,
    )


@alerts_app.command("list")
def list_alerts(
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    patient: str | None = _PATIENT,
    category: str | None = _CATEGORY,
    limit: int = _LIMIT,
    as_json: bool = JSON_OPTION,
) -> None:
    """Alerts in start order: id, times, patient, kind, score, open or closed."""
    state = state_dir_of(config, state_dir, as_json)
    try:
        lo, hi = _window(since, until)
        rows = query(state, lo, hi, patient, category)[-limit:] if limit > 0 else []
    except EdgeAgentError as exc:
        raise fail(exc, as_json) from exc
    if as_json:
        echo_json(rows)
        return
    if not rows:
        typer.echo("no alerts in that range")
    for r in rows:
        state_word = "closed" if r.get("closed") else "open"
        typer.echo(
            f"{r['id'][:12]}  {iso(r['start'])} .. {iso(r['end'])}  {r['patient'] or '-':10} "
            f"{r['category']:12} {r['kind']:16} score {r['score']:.2f}  {state_word}"
        )


def verdict_of(state: Path, alert_id: str) -> dict[str, Any] | None:
    """The verdict on ``alert_id`` from ``feedback.sqlite`` (read-only), or None."""
    path = state / FEEDBACK_DB
    if not path.is_file():
        return None
    live = path.with_name(path.name + "-wal").exists()
    flags = "mode=ro" if live else "mode=ro&immutable=1"
    try:
        db = sqlite3.connect(f"file:{path}?{flags}", uri=True, timeout=10.0)
        try:
            row = db.execute(
                "SELECT confirmed, label, source, split, t FROM verdicts WHERE alert = ?",
                (alert_id,),
            ).fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return None
    if row is None:
        return None
    return {"confirmed": bool(row[0]), "label": row[1], "source": row[2], "split": row[3],
            "t": row[4]}  # fmt: skip


@alerts_app.command("show")
def show(
    alert_id: str = typer.Argument(..., help="Alert id (a unique prefix will do)."),
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Every field of one alert."""
    state = state_dir_of(config, state_dir, as_json)
    try:
        rows = query(state, alert_id=alert_id, limit=2)
        if len(rows) != 1:
            what = "no alert" if not rows else "more than one alert"
            raise AlertsError(f"{what} matches {alert_id!r}; see `edgeagent alerts list`")
    except EdgeAgentError as exc:
        raise fail(exc, as_json) from exc
    (r,) = rows
    r["verdict"] = verdict_of(state, r["id"])
    if as_json:
        echo_json(r)
        return
    for k, v in r.items():
        if k == "verdict":
            continue
        shown = iso(v) if k in ("start", "end", "created") else human(v)
        typer.echo(f"{k:10} {shown}")
    v = r["verdict"]
    if v is None:
        typer.echo(f"{'verdict':10} none (`edgeagent alerts ack {r['id'][:12]} --true|--false`)")
    else:
        word = "confirmed" if v["confirmed"] else "dismissed"
        typer.echo(f"{'verdict':10} {word}, labelled {v['label']} by {v['source']} at "
                   f"{iso(v['t'])} ({v['split']})")  # fmt: skip


_ACK_FLAG: Any = typer.Option(
    None, "--true/--false", help="--true: the alert was right; --false: a false alarm.",
    show_default=False,
)  # fmt: skip
_KIND: Any = typer.Option(None, "--kind", help="With --true: the kind it really was.")
_ACK_PATIENT: Any = typer.Option(None, "--patient", help="Refuse unless it is this patient's.")
_SOURCE: Any = typer.Option(None, "--source", help="Who gives the verdict (default: cli:<user>).")
_ACK_SOCKET: Any = typer.Option(None, "--socket", help="Control socket path (overrides config).")


def _default_source() -> str:
    user = "".join(ch for ch in getpass.getuser() if ch.isalnum() or ch in "_.-")[:50]
    return f"cli:{user or 'unknown'}"


@alerts_app.command("ack")
def ack(
    alert_id: str = typer.Argument(..., help="Alert id (a unique prefix will do)."),
    confirmed: bool | None = _ACK_FLAG,
    kind: str | None = _KIND,
    patient: str | None = _ACK_PATIENT,
    source: str | None = _SOURCE,
    config: Path | None = CONFIG_OPTION,
    socket: Path | None = _ACK_SOCKET,
    as_json: bool = JSON_OPTION,
) -> None:
    """Confirm (--true) or dismiss (--false) an alert: its windows become labelled examples."""
    from edgeagent.cli.status import socket_path
    from edgeagent.daemon.control import request

    if confirmed is None:
        raise fail(AlertsError("say --true (the alert was right) or --false (a false alarm)"),
                   as_json)  # fmt: skip
    try:
        res = request(socket_path(config, socket), "alerts_ack", alert=alert_id.lower(),
                      confirmed=confirmed, kind=kind, patient=patient,
                      source=source or _default_source())  # fmt: skip
    except EdgeAgentError as exc:  # no daemon answering: nothing was recorded
        raise fail(exc, as_json, code=1) from exc
    if as_json:
        echo_json(res)
    elif res.get("accepted"):
        typer.echo(f"alert {res['alert']}: labelled {res['label']} ({res['windows']} window(s), "
                   f"{res['split']})")  # fmt: skip
    else:
        typer.echo(f"refused ({res.get('reason')}): {res.get('detail')}", err=True)
    if not res.get("accepted"):
        raise typer.Exit(1)


@alerts_app.command("export")
def export(
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    patient: str | None = _PATIENT,
    category: str | None = _CATEGORY,
    fmt: str = _FORMAT,
    output: Path | None = _OUTPUT,
) -> None:
    """Write the alerts of a time range as JSON lines or CSV (times ISO 8601)."""
    state = state_dir_of(config, state_dir, False)
    try:
        if fmt not in ("jsonl", "csv"):
            raise AlertsError(f"--format {fmt!r}: use jsonl or csv")
        lo, hi = _window(since, until)
        rows = query(state, lo, hi, patient, category)
    except EdgeAgentError as exc:
        raise fail(exc, False) from exc
    for r in rows:
        for k in ("start", "end", "created"):
            r[k] = iso(r[k])
    out = output.open("w", newline="") if output is not None else sys.stdout
    try:
        if fmt == "jsonl":
            for r in rows:
                out.write(json.dumps(r, default=str) + "\n")
        else:
            cols = list(rows[0]) if rows else ["id", "patient", "start", "end", "kind"]
            w = csv.DictWriter(out, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
    finally:
        if output is not None:
            out.close()
    if output is not None:
        typer.echo(f"wrote {len(rows)} alert(s) to {output}", err=True)


_PKI_DIR = typer.Option(
    None,
    "--pki-dir",
    help="Holds ca.crt and clients/ (default: the directory of the config's "
    "federation.ca_file, else ./pki).",
    show_default=False,
)
_SEEN = typer.Option(
    None, "--seen", help="SQLite file of handled msg-ids, so a restart drops repeats too."
)


@alerts_app.command("follow")
def follow(
    host: str | None = typer.Option(
        None, help="Broker host (default: the config's, else 127.0.0.1).", show_default=False
    ),
    port: int | None = typer.Option(
        None, help="Broker TLS port (default: the config's, else 8883).", show_default=False
    ),
    pki_dir: Path | None = _PKI_DIR,
    config: Path | None = CONFIG_OPTION,
    identity: str = typer.Option(
        "alerts",
        "--identity",
        help="Client certificate to connect with: `edgeagent pki issue-consumer` writes "
        "clients/alerts.crt, which the shipped ACL lets read every box's alerts.",
    ),
    fleet: str | None = typer.Option(
        None,
        help="Fleet whose alerts to follow (default: the config's, else default).",
        show_default=False,
    ),
    client_id: str = typer.Option(
        "alert-consumer", "--client-id", help="MQTT client id: the persistent session's name."
    ),
    seen: Path | None = _SEEN,
    count: int = typer.Option(0, "--count", help="Exit after this many new messages (0: never)."),
    timeout_s: float = typer.Option(0.0, "--timeout-s", help="Exit after this long (0: never)."),
) -> None:
    """Print each alert message once (JSON lines); repeats by msg-id are dropped and counted.

    The broker, the fleet and the PKI directory come from the config (-c) unless given.
    """
    from edgeagent.cli.config import config_if_any
    from edgeagent.cli.pki import pki_dir as pki_dir_of
    from edgeagent.ops.pki import Pki

    cfg = config_if_any(config, False)
    fed = cfg.federation if cfg is not None else None
    host = host or (fed.broker_host if fed is not None else "127.0.0.1")
    port = port or (fed.broker_port if fed is not None else 8883)
    fleet = fleet or (cfg.agent.fleet if cfg is not None else "default")
    pki_root = pki_dir_of(pki_dir, cfg)
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
        files = Pki(pki_root).client_files(identity).check()
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
