"""``edgeagent config validate|show``: check and display the one TOML config.

``validate`` is systemd's ExecStartPre, so a bad edit fails the unit's start
with every problem listed (key, value, fix) instead of a crash-loop. ``show``
prints the effective config (defaults filled in) with secrets redacted, safe
to paste into a ticket. Also holds the small helpers the other ops verbs
share (the --config option, JSON output, config loading with clean exits).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.errors import ConfigError, ConfigErrors
from edgeagent.ops.config import DEFAULT_PATH, Config, load_config, redacted, to_toml

# Exit code for an invalid configuration (distinct from 1 = runtime failure).
EXIT_CONFIG = 2

config_app = typer.Typer(help="Validate and show the agent configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def default_config_path() -> Path:
    """``$EDGEAGENT_CONFIG`` or /etc/edgeagent/config.toml."""
    return Path(os.environ.get("EDGEAGENT_CONFIG", str(DEFAULT_PATH)))


# Shared options (module-level singletons, reused by every ops verb).
CONFIG_OPTION: Any = typer.Option(
    None,
    "--config",
    "-c",
    help="Config file (default: $EDGEAGENT_CONFIG or /etc/edgeagent/config.toml).",
    show_default=False,
)
JSON_OPTION: Any = typer.Option(False, "--json", help="Print JSON instead of a table.")


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=1, default=str))


def error_doc(exc: BaseException) -> dict[str, Any]:
    """An error as JSON: its type, message and, where it has one, its ``reason``."""
    doc: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    reason = getattr(exc, "reason", None)
    if reason is not None:
        doc["reason"] = str(reason)
    if isinstance(exc, ConfigError):
        doc["errors"] = error_list(exc)
    return doc


def fail(exc: BaseException, as_json: bool, code: int = EXIT_CONFIG) -> typer.Exit:
    """Print ``exc`` as the verb's error (JSON under --json) and return the Exit to raise."""
    if as_json:
        echo_json({"ok": False, "error": error_doc(exc)})
    else:
        typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code)


def state_dir_of(config: Path | None, override: Path | None, as_json: bool) -> Path:
    """``--state-dir`` when given (a copied state directory), else the config's."""
    if override is not None:
        return override
    return load_or_exit(config, as_json).agent.state_dir


def explicit_config_path(path: Path | None) -> Path | None:
    """The config the user named: ``-c`` or ``$EDGEAGENT_CONFIG``; None when neither."""
    if path is not None:
        return path
    env = os.environ.get("EDGEAGENT_CONFIG")
    return Path(env) if env else None


def config_if_any(path: Path | None, as_json: bool) -> Config | None:
    """The config of a verb that also works without one (``pki``, ``logs``).

    A config the user named must load (every problem listed, exit 2, as for any
    verb). Otherwise the default file is used when it exists and loads: these verbs
    also run on machines without a box config (the PKI machine), and ``logs`` is
    what an engineer reaches for on a box whose config is broken.
    """
    named = explicit_config_path(path)
    if named is not None:
        return load_or_exit(named, as_json)
    try:
        return load_config(DEFAULT_PATH) if DEFAULT_PATH.is_file() else None
    except (ConfigError, OSError):  # unreadable here (/etc/edgeagent is 0750) or invalid
        return None


def error_list(exc: ConfigError) -> list[dict[str, Any]]:
    """Every problem of a ConfigError as JSON-able dicts."""
    errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    return [{"key": e.key, "value": _jsonable(e.value), "problem": e.problem} for e in errors]


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)
    return v


def load_or_exit(path: Path | None, as_json: bool) -> Config:
    """Load the config or print every problem and exit with EXIT_CONFIG."""
    p = path or default_config_path()
    try:
        return load_config(p)
    except ConfigError as exc:
        if as_json:
            echo_json(
                {"ok": False, "path": str(p), "error": error_doc(exc), "errors": error_list(exc)}
            )
        else:
            typer.echo(f"{p}: invalid configuration", err=True)
            for e in error_list(exc):
                typer.echo(f"  {e['key']} = {e['value']!r}: {e['problem']}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None


def identity_problem(cfg: Config) -> ConfigError | None:
    """The client certificate must name this box: the broker takes its CN as the box's
    identity, so with another CN every publish under ``node/<box_id>/`` is refused."""
    from edgeagent.errors import PkiError
    from edgeagent.ops.pki import common_name

    fed = cfg.federation
    if not fed.enabled or fed.cert_file is None:
        return None
    try:
        cn = common_name(fed.cert_file)
    except (OSError, ValueError, PkiError) as exc:
        return ConfigError("federation.cert_file", str(fed.cert_file), f"unreadable: {exc}")
    if cn != cfg.agent.box_id:
        return ConfigError(
            "federation.cert_file",
            str(fed.cert_file),
            f"the certificate is issued to {cn!r} but agent.box_id is {cfg.agent.box_id!r}: "
            "the broker would refuse every message of this box; install clients/"
            f"{cfg.agent.box_id}.crt and .key (edgeagent pki issue {cfg.agent.box_id}) "
            "or correct agent.box_id",
        )
    return None


@config_app.command("validate")
def validate(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check the config file; exit 2 listing every problem (key, value, fix)."""
    cfg = load_or_exit(config, as_json)
    p = config or default_config_path()
    problem = identity_problem(cfg)
    if problem is not None:
        if as_json:
            echo_json({"ok": False, "path": str(p), "error": error_doc(problem),
                       "errors": error_list(problem)})  # fmt: skip
        else:
            typer.echo(f"{p}: invalid configuration", err=True)
            typer.echo(f"  {problem.key} = {problem.value!r}: {problem.problem}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    summary = {
        "ok": True,
        "path": str(p),
        "box_id": cfg.agent.box_id,
        "serial_devices": len(cfg.devices.serial),
        "ble_devices": len(cfg.devices.ble.device),
        "federation": cfg.federation.enabled,
    }
    if as_json:
        echo_json(summary)
    else:
        typer.echo(
            f"{p}: OK (box {cfg.agent.box_id}, {summary['serial_devices']} serial, "
            f"{summary['ble_devices']} BLE devices, federation "
            f"{'on' if cfg.federation.enabled else 'off'})"
        )


@config_app.command("show")
def show(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the effective config (defaults filled in) with secrets redacted."""
    cfg = load_or_exit(config, as_json)
    data = redacted(cfg)
    if as_json:
        echo_json(data)
    else:
        typer.echo(to_toml(data), nl=False)
