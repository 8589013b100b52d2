"""``edgeagent service install|uninstall``: put the agent in place on a box, or take it out.

Thin: the steps live in :mod:`edgeagent.ops.install` (testable in a temporary
root); this module parses options, prints each step and sets the exit code
(0 ok, 1 a step failed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.cli.config import JSON_OPTION, echo_json
from edgeagent.errors import InstallError
from edgeagent.ops.install import GROUPS, USER, Report, install, uninstall

service_app = typer.Typer(
    help="Install or remove the systemd unit, udev rule, user and directories.",
    no_args_is_help=True,
)
app.add_typer(service_app, name="service")

_ROOT: Any = typer.Option(
    Path("/"), "--root", help="Install into this directory tree instead of the live system."
)
_DRY: Any = typer.Option(False, "--dry-run", help="Change nothing; print what would be done.")


def _finish(report: Report, as_json: bool) -> None:
    if as_json:
        echo_json(report.as_dict())
    else:
        head = f"{report.operation} into {report.root}" + (" (dry run)" if report.dry_run else "")
        typer.echo(head)
        for a in report.actions:
            typer.echo("  " + a.line())
        if report.operation == "install" and report.ok and not report.dry_run:
            typer.echo(
                "next: edit /etc/edgeagent/config.toml (box_id, devices), then "
                "`edgeagent config validate` and `systemctl start edgeagent`"
            )
    if not report.ok:
        raise typer.Exit(1)


@service_app.command("install")
def install_cmd(
    root: Path = _ROOT,
    dry_run: bool = _DRY,
    as_json: bool = JSON_OPTION,
    exe: str | None = typer.Option(
        None, "--exe", help="edgeagent command for ExecStart (default: the one on PATH)."
    ),
    user: str = typer.Option(USER, "--user", help="System user the unit runs as."),
    no_enable: bool = typer.Option(False, "--no-enable", help="Do not enable at boot."),
) -> None:
    """Create user/groups, /etc/edgeagent, /var/lib/edgeagent, the unit and the udev rule.

    Idempotent: run it again after an upgrade; unchanged steps say so.
    """
    try:
        report = install(
            root, dry_run=dry_run, exe=exe, user=user, groups=GROUPS, enable=not no_enable
        )
    except InstallError as exc:
        typer.echo(f"install: {exc}", err=True)
        raise typer.Exit(1) from None
    _finish(report, as_json)


@service_app.command("uninstall")
def uninstall_cmd(
    root: Path = _ROOT,
    dry_run: bool = _DRY,
    as_json: bool = JSON_OPTION,
    purge: bool = typer.Option(
        False, "--purge", help="Also delete config, state (outbox, models, keys) and the user."
    ),
    user: str = typer.Option(USER, "--user", help="System user the unit runs as."),
) -> None:
    """Remove the unit and udev rule; keep config and state unless --purge."""
    _finish(uninstall(root, dry_run=dry_run, purge=purge, user=user), as_json)
