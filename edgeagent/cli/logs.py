"""``edgeagent logs``: the daemon's journal, with a clear message where there is none.

The agent logs to stderr; under systemd that is journald. Boxes without
systemd (containers, dev laptops) have no journal, and ``journalctl`` there
prints a confusing "No journal files were found", so we detect that first.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import typer

from edgeagent.cli import app

JOURNAL_DIRS = (Path("/run/systemd/journal"), Path("/var/log/journal"))


def journald_available() -> str | None:
    """None when journald can be read here, else the reason it cannot."""
    if shutil.which("journalctl") is None:
        return "journalctl is not installed"
    if not any(d.is_dir() and any(d.iterdir()) for d in JOURNAL_DIRS if d.exists()):
        return "journald is not running here (no /run/systemd/journal or /var/log/journal)"
    return None


def journal_command(
    unit: str, lines: int, follow: bool, since: str | None, as_json: bool
) -> list[str]:
    """The journalctl invocation (pure, so it is testable without a journal)."""
    cmd = ["journalctl", "--no-pager", "-u", unit, "-n", str(lines)]
    cmd += ["-o", "json" if as_json else "short-iso"]
    if follow:
        cmd.append("-f")
    if since:
        cmd += ["--since", since]
    return cmd


@app.command()
def logs(
    lines: int = typer.Option(200, "--lines", "-n", min=1, help="How many recent lines."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    since: str | None = typer.Option(None, help='journalctl --since, e.g. "1 hour ago".'),
    unit: str = typer.Option("edgeagent", help="systemd unit (edgeagent-aggregator too)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (journal)."),
) -> None:
    """Show the daemon's logs from journald."""
    problem = journald_available()
    if problem:
        typer.echo(
            f"edgeagent logs: {problem}. The agent writes its log to stderr: see your "
            "service manager's log, or run `edgeagent run` in a terminal.",
            err=True,
        )
        raise typer.Exit(1)
    cmd = journal_command(unit, lines, follow, since, as_json)
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
