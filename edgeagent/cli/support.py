"""``edgeagent support-bundle -o FILE``: everything support needs, nothing secret.

One tar.gz with the redacted effective config, doctor results, versions, the
live (or last saved) status and counters, and recent logs. Private keys and
certificates are never read into it, and as a last line of defence every
secret value from the config is scrubbed from every file before it is
written. The archive is written to a temp file and renamed, mode 0600.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress

from edgeagent import __version__
from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, default_config_path, echo_json, error_list
from edgeagent.errors import ConfigError, ControlError
from edgeagent.ops.config import REDACTED, Config, load_config, redacted, to_toml

_OUTPUT: Any = typer.Option(..., "--output", "-o", help="Archive to write (.tar.gz).")


def versions() -> dict[str, str]:
    """Versions of the agent, Python, OS and every library the agent runs on."""
    from edgeagent.cli import library_versions

    return {
        "edgeagent": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        **library_versions(),
    }


def _secrets(cfg: Config | None) -> list[str]:
    """Every secret value set in the config (to scrub from the bundle)."""
    if cfg is None:
        return []
    fed = cfg.federation
    return [s.get_secret_value() for s in (fed.password, fed.key_password) if s is not None]


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    return text


def _status(cfg: Config | None) -> dict[str, Any]:
    """Live status from the daemon, else the last status.json it saved."""
    if cfg is None:
        return {"source": "none", "error": "config invalid; socket unknown"}
    from edgeagent.daemon.control import request

    try:
        return {"source": "daemon", "status": request(cfg.control.socket_path, "status")}
    except ControlError as exc:
        saved = cfg.agent.state_dir / "status.json"
        try:
            return {
                "source": f"file {saved}",
                "daemon_error": exc.problem,
                "status": json.loads(saved.read_text()),
            }
        except (OSError, ValueError) as exc2:
            return {"source": "none", "daemon_error": exc.problem, "file_error": str(exc2)}


def _logs() -> str:
    from edgeagent.cli.logs import journal_command, journald_available

    problem = journald_available()
    if problem:
        return f"(no logs: {problem})\n"
    try:
        res = subprocess.run(
            journal_command("edgeagent", 2000, False, None, False),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(journalctl failed: {exc})\n"
    return res.stdout + (f"\n(journalctl stderr: {res.stderr})\n" if res.stderr else "")


def build_bundle(
    config: Path | None, out: Path, on_step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Collect and write the bundle; returns its manifest."""
    from edgeagent.cli.doctor import run_checks

    path = config or default_config_path()
    files: dict[str, str] = {}
    step = on_step or (lambda _s: None)

    step("config")
    cfg: Config | None
    try:
        cfg = load_config(path)
        data = redacted(cfg)
        files["config.redacted.toml"] = to_toml(data)
        files["config.redacted.json"] = json.dumps(data, indent=1)
    except ConfigError as exc:
        cfg = None
        files["config-errors.json"] = json.dumps(error_list(exc), indent=1, default=str)
    secrets = _secrets(cfg)

    step("versions")
    files["versions.json"] = json.dumps(versions(), indent=1)
    step("doctor")
    checks = run_checks(config)
    files["doctor.json"] = json.dumps([asdict(c) for c in checks], indent=1)
    step("status")
    status = _status(cfg)
    files["status.json"] = json.dumps(status, indent=1, default=str)
    files["counters.json"] = json.dumps(
        (status.get("status") or {}).get("counters", {}), indent=1, default=str
    )
    step("logs")
    files["logs.txt"] = _logs()

    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "box_id": cfg.agent.box_id if cfg else None,
        "host": platform.node(),
        "edgeagent": __version__,
        "config_path": str(path),
        "doctor_failed": [c.name for c in checks if c.status == "fail"],
        "files": sorted(files),
    }
    files["manifest.json"] = json.dumps(manifest, indent=1)

    step("write")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            root = f"edgeagent-support-{manifest['box_id'] or 'unknown'}"
            for name, text in sorted(files.items()):
                blob = _scrub(text, secrets).encode()
                info = tarfile.TarInfo(f"{root}/{name}")
                info.size = len(blob)
                info.mtime = int(time.time())
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(blob))
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {**manifest, "path": str(out), "bytes": out.stat().st_size}


@app.command("support-bundle")
def support_bundle(
    output: Path = _OUTPUT,
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Write a support archive: redacted config, doctor, versions, status, counters, logs."""
    if as_json:
        manifest = build_bundle(config, output)
        echo_json(manifest)
        return
    err = Console(stderr=True)
    steps = ("config", "versions", "doctor", "status", "logs", "write")
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("collecting", total=len(steps))

        def step(label: str) -> None:
            progress.update(task, advance=1, description=f"collecting {label}")

        manifest = build_bundle(config, output, step)
    typer.echo(f"wrote {manifest['path']} ({manifest['bytes']} bytes)")
    if manifest["doctor_failed"]:
        typer.echo(f"doctor found problems: {', '.join(manifest['doctor_failed'])}")
