"""``edgeagent logs``: the daemon's journal, with a clear message where there is none.

The agent logs to stderr; under systemd that is journald. Boxes without
systemd (containers, dev laptops) have no journal, and ``journalctl`` there
prints a confusing "No journal files were found", so we detect that first.

Like every verb it takes ``-c/--config``: the config says which service it runs
under (a config with an ``[aggregator]`` table is the aggregator's) and which box
it is, and only that box's entries are shown (journald field ``EDGEAGENT_BOX``,
which the daemon adds to each entry), so two agents on one test bed do not mix.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import typer

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, config_if_any, fail
from edgeagent.cli.run import BOX_FIELD
from edgeagent.errors import EdgeAgentError
from edgeagent.ops.config import Config

JOURNAL_DIRS = (Path("/run/systemd/journal"), Path("/var/log/journal"))
BOX_UNIT = "edgeagent"
AGGREGATOR_UNIT = "edgeagent-aggregator"


def unit_of(cfg: Config | None) -> str:
    """The systemd unit a config runs under: the aggregator's config has ``[aggregator]``."""
    if cfg is not None and "aggregator" in cfg.model_fields_set:
        return AGGREGATOR_UNIT
    return BOX_UNIT


def journald_available() -> str | None:
    """None when journald can be read here, else the reason it cannot."""
    if shutil.which("journalctl") is None:
        return "journalctl is not installed"
    if not any(d.is_dir() and any(d.iterdir()) for d in JOURNAL_DIRS if d.exists()):
        return "journald is not running here (no /run/systemd/journal or /var/log/journal)"
    return None


def journal_command(
    unit: str,
    lines: int,
    follow: bool,
    since: str | None,
    as_json: bool,
    box_id: str | None = None,
) -> list[str]:
    """The journalctl invocation (pure, so it is testable without a journal)."""
    cmd = ["journalctl", "--no-pager", "-u", unit, "-n", str(lines)]
    if box_id:
        cmd.append(f"{BOX_FIELD}={box_id}")
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
    unit: str | None = typer.Option(
        None,
        help="systemd unit. Default: edgeagent-aggregator for a config with [aggregator], "
        "else edgeagent.",
        show_default=False,
    ),
    config: Path | None = CONFIG_OPTION,
    all_boxes: bool = typer.Option(
        False, "--all-boxes", help="Every agent's lines, not only the config's box."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (journal)."),
) -> None:
    """Show the daemon's logs from journald: the config's service, only the config's box."""
    cfg = config_if_any(config, as_json)
    box = None if all_boxes or cfg is None else cfg.agent.box_id
    problem = journald_available()
    if problem:
        why = EdgeAgentError(
            f"{problem}. The agent writes its log to stderr: see your service manager's "
            "log, or run `edgeagent run` in a terminal."
        )
        raise fail(why, as_json, 1)
    cmd = journal_command(unit or unit_of(cfg), lines, follow, since, as_json, box)
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
