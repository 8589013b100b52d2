"""``edgeagent run``: the daemon's entry point (systemd's ExecStart).

Logs go to stderr: under systemd that is the journal (``JOURNAL_STREAM`` is
set), where timestamps are added by journald, so we leave them out there.
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


class _JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority so journald files it right."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelname, 6)
        return f"<{prio}>" + super().format(record)


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


def setup_logging(level: str, as_json: bool) -> None:
    """Configure the root logger once for the daemon."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
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
    setup_logging(cfg.agent.log_level, as_json)
    from edgeagent.daemon.wiring import run_daemon

    raise typer.Exit(run_daemon(cfg))
