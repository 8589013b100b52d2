"""``edgeagent model``: list, show, add, activate, roll back and verify detector models.

Operates on the registry in ``<state-dir>`` (``models.sqlite`` + ``models/``);
SQLite handles locking with a running daemon, which picks up the active
model on its next registry check. Errors print one line and exit 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.errors import EdgeAgentError
from edgeagent.model.graph import parse_model, read_meta
from edgeagent.model.registry import ModelRegistry
from edgeagent.model.signing import load_public_key

model_app = typer.Typer(
    help="Detector models: list, show, add, activate, rollback, verify.", no_args_is_help=True
)
app.add_typer(model_app, name="model")

_STATE = typer.Option(
    Path("/var/lib/edgeagent"), "--state-dir", help="Agent state directory (holds the registry)."
)
_JSON = typer.Option(False, "--json", help="Print JSON.")
_TRUST = typer.Option(
    [], "--trusted-key", help="Ed25519 public key file (PEM, raw or hex); repeatable."
)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from exc


def _registry(state_dir: Path, trusted: list[Path] | None = None) -> ModelRegistry:
    try:
        keys = [load_public_key(p) for p in trusted or []]
        return ModelRegistry(state_dir, trusted_keys=keys)
    except (EdgeAgentError, OSError) as exc:
        _fail(exc)
        raise


def _emit(doc: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(doc) if as_json else text)


@model_app.command("list")
def list_models(state_dir: Path = _STATE, as_json: bool = _JSON) -> None:
    """Every registered model, oldest first; the active one is marked with '*'."""
    reg = _registry(state_dir)
    active = reg.active()
    rows = [
        r.as_dict() | {"active": active is not None and r.version == active.version}
        for r in reg.list()
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no models registered; add one with `edgeagent model add FILE`")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created"]))
        flags = ("*" if r["active"] else " ") + ("S" if r["signed"] else "-")
        flags += "R" if r["rejected"] else " "
        typer.echo(f"{flags} {r['label']:14} {when}Z  {r['source']}")


@model_app.command("show")
def show(
    ref: str = typer.Argument("active", help="Version, label, hash prefix or 'active'."),
    state_dir: Path = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Details of one model: hash, signature, shapes, classes, training info, recent events."""
    reg = _registry(state_dir)
    try:
        rec = reg.get(ref)
        meta = read_meta(parse_model(reg.load_bytes(rec)))
    except EdgeAgentError as exc:
        _fail(exc)
        raise
    doc = rec.as_dict() | {
        "features": len(meta.feature_names),
        "classes": list(meta.classes),
        "hidden": meta.hidden,
        "latent": meta.latent,
        "thresholds": meta.thresholds,
        "events": [e for e in reg.events(200) if e["version"] == rec.version][:10],
    }
    lines = [f"{k:12} {v}" for k, v in doc.items() if k not in ("events", "info")]
    lines += [f"info.{k:7} {v}" for k, v in rec.info.items()]
    lines += [f"event        {e['kind']}: {e['detail']}" for e in doc["events"]]
    _emit(doc, as_json, "\n".join(lines))


_FILE = typer.Argument(..., help="ONNX model file.")
_SIG = typer.Option(None, help="Detached 64-byte Ed25519 signature file.")


@model_app.command("add")
def add(
    path: Path = _FILE,
    signature: Path | None = _SIG,
    trusted: list[Path] = _TRUST,
    activate: bool = typer.Option(False, "--activate", help="Make it active right away."),
    state_dir: Path = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Validate and register a model file (refused if corrupt, mis-shaped or badly signed)."""
    reg = _registry(state_dir, trusted)
    try:
        sig = signature.read_bytes() if signature else None
        rec = reg.add(path.read_bytes(), source=f"file:{path}", signature=sig)
        if activate:
            rec = reg.activate(rec.version, "cli add --activate")
    except (EdgeAgentError, OSError) as exc:
        _fail(exc)
        raise
    _emit(rec.as_dict(), as_json, f"added {rec.label}" + (" (active)" if activate else ""))


@model_app.command("activate")
def activate_cmd(
    ref: str = typer.Argument(..., help="Version, label or hash prefix."),
    state_dir: Path = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Make a registered model active (hash re-checked first)."""
    reg = _registry(state_dir)
    try:
        rec = reg.activate(ref, "cli activate")
    except EdgeAgentError as exc:
        _fail(exc)
        raise
    _emit(rec.as_dict(), as_json, f"active: {rec.label}")


@model_app.command("rollback")
def rollback(
    reason: str = typer.Option("manual", help="Recorded in the registry's event log."),
    state_dir: Path = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Reject the active model and return to the last good one before it."""
    reg = _registry(state_dir)
    try:
        rec = reg.rollback(reason)
    except EdgeAgentError as exc:
        _fail(exc)
        raise
    _emit(rec.as_dict(), as_json, f"rolled back; active: {rec.label}")


@model_app.command("verify")
def verify(
    ref: str = typer.Argument("active", help="Version, label, hash prefix, 'active' or 'all'."),
    trusted: list[Path] = _TRUST,
    state_dir: Path = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Re-check hash, ONNX validity and signature; exit 1 if any model fails."""
    reg = _registry(state_dir, trusted)
    try:
        refs: list[str | int] = [r.version for r in reg.list()] if ref == "all" else [ref]
        results = [reg.verify(r) for r in refs]
    except EdgeAgentError as exc:
        _fail(exc)
        raise
    if as_json:
        typer.echo(json.dumps(results))
    else:
        for r in results:
            status = "ok" if r["ok"] else "FAIL"
            typer.echo(
                f"{status:4} {r['label']}  signature={r.get('signature', '?')}  "
                f"{r.get('error', '')}".rstrip()
            )
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)
