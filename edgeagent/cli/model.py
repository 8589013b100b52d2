"""``edgeagent model``: list, show, add, activate, roll back and verify detector models.

Operates on the registry in the config's state directory (``models.sqlite`` +
``models/``; ``--state-dir`` reads a copied one); SQLite handles locking with a
running daemon, which picks up the active model on its next registry check.
``list``, ``show`` and ``verify`` only read: they create nothing and work on a
read-only directory. Errors print one line (JSON under ``--json``) and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, fail, state_dir_of
from edgeagent.cli.human import human, iso
from edgeagent.errors import EdgeAgentError
from edgeagent.model.graph import parse_model, read_meta
from edgeagent.model.registry import ModelRegistry
from edgeagent.model.signing import load_public_key

model_app = typer.Typer(
    help="Detector models: list, show, add, activate, rollback, verify.", no_args_is_help=True
)
app.add_typer(model_app, name="model")

_STATE: Any = typer.Option(
    None, "--state-dir", help="Read this state directory instead of the config's.",
    show_default=False,
)  # fmt: skip
_JSON = typer.Option(False, "--json", help="Print JSON.")
_TRUST = typer.Option(
    [], "--trusted-key", help="Ed25519 public key file (PEM, raw or hex); repeatable."
)


def _registry(
    config: Path | None,
    state_dir: Path | None,
    as_json: bool,
    trusted: list[Path] | None = None,
    *,
    readonly: bool = False,
) -> ModelRegistry:
    state = state_dir_of(config, state_dir, as_json)
    try:
        keys = [load_public_key(p) for p in trusted or []]
        return ModelRegistry(state, trusted_keys=keys, readonly=readonly)
    except (EdgeAgentError, OSError) as exc:
        raise fail(exc, as_json) from exc


def _emit(doc: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(doc) if as_json else text)


def figures_line(fig: dict[str, Any] | None) -> str:
    """The figures behind a lifecycle decision, as one line a person reads."""
    if not fig:
        return "decided by an operator"
    parts = []
    if "windows" in fig:
        parts.append(
            f"windows {fig['windows']}, would-be alerts {fig.get('shadow_alerts')}"
            f" vs {fig.get('active_alerts')}, alert windows {fig.get('shadow_flagged')}"
            f" vs {fig.get('active_flagged')}"
            + (f" (against {fig['against']})" if fig.get("against") else "")
        )
    if fig.get("labelled"):
        a, s = fig.get("active_agreement"), fig.get("shadow_agreement")
        agree = f"{s:.3f} vs {a:.3f}" if a is not None and s is not None else "-"
        parts.append(f"held-back labels {fig['labelled']}, agreement {agree}")
    m = fig.get("margins")
    if m:
        parts.append(
            f"margins: alerts +{m['alert_rel']:.0%}+{m['alert_abs']}"
            f" (windows +{m.get('flag_abs', 0)}),"
            f" agreement -{m['agree_margin']}, labels >= {m['min_labels']}"
        )
    return "; ".join(parts) or human(fig)


@model_app.command("list")
def list_models(
    config: Path | None = CONFIG_OPTION, state_dir: Path | None = _STATE, as_json: bool = _JSON
) -> None:
    """Every registered model, oldest first; the active one is marked with '*'.

    Under each model, its lifecycle decisions (promoted, rejected, rolled back,
    superseded) with the figures that decided them: would-be alerts of the candidate
    against the running model, agreement with held-back labels, the margins.
    """
    state = state_dir_of(config, state_dir, as_json)
    if not (state / "models.sqlite").is_file():  # nothing registered: read, do not create
        if as_json:
            typer.echo("[]")
        else:
            typer.echo("no models registered; add one with `edgeagent model add FILE`")
        return
    reg = _registry(config, state_dir, as_json, readonly=True)
    active = reg.active()
    decisions = reg.decisions()
    rows = [
        r.as_dict()
        | {
            "active": active is not None and r.version == active.version,
            "decisions": decisions.get(r.version, []),
        }
        for r in reg.list()
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no models registered; add one with `edgeagent model add FILE`")
    for r in rows:
        when = iso(r["created"])
        flags = ("*" if r["active"] else " ") + ("S" if r["signed"] else "-")
        flags += "R" if r["rejected"] else " "
        typer.echo(f"{flags} {r['label']:14} {when}  {r['source']}")
        for d in r["decisions"]:
            typer.echo(f"     {d['kind']} {iso(d['ts'])}: {d['detail']}")
            typer.echo(f"       {figures_line(d['figures'])}")


@model_app.command("show")
def show(
    ref: str = typer.Argument("active", help="Version, label, hash prefix or 'active'."),
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Details of one model: hash, signature, shapes, classes, training info, recent events."""
    reg = _registry(config, state_dir, as_json, readonly=True)
    try:
        rec = reg.get(ref)
        meta = read_meta(parse_model(reg.load_bytes(rec)))
    except EdgeAgentError as exc:
        raise fail(exc, as_json) from exc
    doc = rec.as_dict() | {
        "features": len(meta.feature_names),
        "classes": list(meta.classes),
        "hidden": meta.hidden,
        "latent": meta.latent,
        "thresholds": meta.thresholds,
        "events": [e for e in reg.events(200) if e["version"] == rec.version][:10],
    }
    shown = {k: iso(v) if k == "created" else v for k, v in doc.items()}
    lines = [f"{k:12} {human(v)}" for k, v in shown.items() if k not in ("events", "info")]
    lines += [f"info.{k:7} {human(v)}" for k, v in rec.info.items()]
    lines += [f"event        {iso(e['ts'])} {e['kind']}: {e['detail']}" for e in doc["events"]]
    _emit(doc, as_json, "\n".join(lines))


_FILE = typer.Argument(..., help="ONNX model file.")
_SIG = typer.Option(None, help="Detached 64-byte Ed25519 signature file.")


@model_app.command("add")
def add(
    path: Path = _FILE,
    signature: Path | None = _SIG,
    trusted: list[Path] = _TRUST,
    activate: bool = typer.Option(False, "--activate", help="Make it active right away."),
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Validate and register a model file (refused if corrupt, mis-shaped or badly signed)."""
    reg = _registry(config, state_dir, as_json, trusted)
    try:
        sig = signature.read_bytes() if signature else None
        rec = reg.add(path.read_bytes(), source=f"file:{path}", signature=sig)
        if activate:
            rec = reg.activate(rec.version, "cli add --activate")
    except (EdgeAgentError, OSError) as exc:
        raise fail(exc, as_json) from exc
    _emit(rec.as_dict(), as_json, f"added {rec.label}" + (" (active)" if activate else ""))


@model_app.command("activate")
def activate_cmd(
    ref: str = typer.Argument(..., help="Version, label or hash prefix."),
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Make a registered model active (hash re-checked first)."""
    reg = _registry(config, state_dir, as_json)
    try:
        rec = reg.activate(ref, "cli activate")
    except EdgeAgentError as exc:
        raise fail(exc, as_json) from exc
    _emit(rec.as_dict(), as_json, f"active: {rec.label}")


@model_app.command("rollback")
def rollback(
    reason: str = typer.Option("manual", help="Recorded in the registry's event log."),
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Reject the active model and return to the last good one before it."""
    reg = _registry(config, state_dir, as_json)
    try:
        rec = reg.rollback(reason)
    except EdgeAgentError as exc:
        raise fail(exc, as_json) from exc
    _emit(rec.as_dict(), as_json, f"rolled back; active: {rec.label}")


@model_app.command("verify")
def verify(
    ref: str = typer.Argument("active", help="Version, label, hash prefix, 'active' or 'all'."),
    trusted: list[Path] = _TRUST,
    config: Path | None = CONFIG_OPTION,
    state_dir: Path | None = _STATE,
    as_json: bool = _JSON,
) -> None:
    """Re-check hash, ONNX validity and signature; exit 1 if any model fails."""
    reg = _registry(config, state_dir, as_json, trusted, readonly=True)
    try:
        refs: list[str | int] = [r.version for r in reg.list()] if ref == "all" else [ref]
        results = [reg.verify(r) for r in refs]
    except EdgeAgentError as exc:
        raise fail(exc, as_json) from exc
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
