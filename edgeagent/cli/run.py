"""``edgeagent run``: the daemon's entry point (systemd's ExecStart).

Under systemd (``JOURNAL_STREAM`` set) records go to journald's native socket as
structured entries (priority, logger, code location; a traceback stays one
entry at its record's priority); without that socket they go to stderr with a
``<N>`` priority prefix on every line. Journald adds the timestamps. Elsewhere
logs go to stderr with timestamps.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import typer

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, load_or_exit

# syslog priorities journald reads from a "<N>" line prefix (sd-daemon(3)).
_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


#: journald's native socket (systemd.journal-fields(7)); structured fields, one datagram
#: per record, so a traceback stays one entry with the record's priority.
JOURNAL_SOCKET = "/run/systemd/journal/socket"


class _JournalFormatter(logging.Formatter):
    """Prefix every line with its syslog priority so journald files it right (stream
    fallback: journald reads the prefix per line, so a traceback's lines get it too)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelname, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).split("\n"))


#: Journal field naming the box (its config's ``agent.box_id``): ``edgeagent logs -c`` matches
#: on it, so on a machine running several agents (a test bed) each config shows its own lines.
BOX_FIELD = "EDGEAGENT_BOX"


def journal_fields(record: logging.LogRecord, message: str, box_id: str | None = None) -> bytes:
    """One record in journald's native protocol: ``KEY=value`` lines, and the binary
    form (``KEY\n`` + 64-bit little-endian length + bytes) for multi-line values."""
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(_SYSLOG_PRIORITY.get(record.levelname, 6)),
        "SYSLOG_IDENTIFIER": "edgeagent",
        "LOGGER": record.name,
        "CODE_FILE": record.pathname or "",
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName or "",
        "THREAD_NAME": record.threadName or "",
    }
    if box_id:
        fields[BOX_FIELD] = box_id
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Send records to journald as structured entries over its native socket."""

    def __init__(self, path: str = JOURNAL_SOCKET, box_id: str | None = None) -> None:
        super().__init__()
        import socket

        self.path = path
        self.box_id = box_id
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sock.sendto(journal_fields(record, self.format(record), self.box_id), self.path)
        except OSError:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers that parse structure."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, as_json: bool, box_id: str | None = None) -> None:
    """Configure the root logger once for the daemon (``box_id`` tags journald entries)."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM") and os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler(box_id=box_id)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@app.command()
def run(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Log one JSON object per line."),
) -> None:
    """Run the agent daemon in the foreground until SIGTERM/SIGINT (systemd: Type=notify)."""
    cfg = load_or_exit(config, as_json)
    setup_logging(cfg.agent.log_level, as_json, cfg.agent.box_id)
    from edgeagent.daemon.wiring import run_daemon

    raise typer.Exit(run_daemon(cfg))
