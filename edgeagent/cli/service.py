"""``edgeagent service install|uninstall``: put the agent in place on a box, or take it out.

Thin: the steps live in :mod:`edgeagent.ops.install` (testable in a temporary
root); this module parses options, prints each step and sets the exit code
(0 ok, 1 a step failed).

Like every verb they take ``-c/--config``: ``install -c FILE`` validates FILE and
installs it as /etc/edgeagent/config.toml with the state directory it names;
``uninstall --purge -c FILE`` also deletes that state directory. Without ``-c``
(or ``$EDGEAGENT_CONFIG``) install writes the example config once and keeps an
existing one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.cli.config import (
    CONFIG_OPTION,
    JSON_OPTION,
    echo_json,
    explicit_config_path,
    load_or_exit,
)
from edgeagent.errors import ConfigError, InstallError
from edgeagent.ops.config import load_config
from edgeagent.ops.install import CONFIG_DIR, GROUPS, USER, Report, install, uninstall

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


_CONFIG: Any = typer.Option(
    None,
    "--config",
    "-c",
    help="Config to install as /etc/edgeagent/config.toml (validated first); its "
    "agent.state_dir is created. Default: $EDGEAGENT_CONFIG; without either the example "
    "config is written once and an existing one is kept.",
    show_default=False,
)


@service_app.command("install")
def install_cmd(
    root: Path = _ROOT,
    dry_run: bool = _DRY,
    config: Path | None = _CONFIG,
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
    named = explicit_config_path(config)
    text, state = None, None
    if named is not None:
        state = load_or_exit(named, as_json).agent.state_dir
        text = named.read_text()
    try:
        report = install(
            root, dry_run=dry_run, exe=exe, user=user, groups=GROUPS, enable=not no_enable,
            config_text=text, state_dir=state,
        )  # fmt: skip
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
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Remove the unit and udev rule; keep config and state unless --purge.

    With --purge, the state directory the config names goes too (default: the
    installed /etc/edgeagent/config.toml under --root, when it loads).
    """
    named = explicit_config_path(config)
    state = None
    if named is not None:
        state = load_or_exit(named, as_json).agent.state_dir
    else:
        with contextlib.suppress(ConfigError, OSError):
            state = load_config(root / CONFIG_DIR / "config.toml").agent.state_dir
    _finish(uninstall(root, dry_run=dry_run, purge=purge, user=user, state_dir=state), as_json)
