"""``edgeagent evaluate RECORDING``: replay a recording through windows and the detector.

Reports accuracy, precision, recall, F1, AUROC, per-kind recall and detection
delay against the recording's labels, and the figures that an always-on
detector cannot game: time in alert, false alarms per started alert-hour
outside labels, event recall, and beat-level sensitivity, positive
predictivity and AUROC where beats are annotated (definitions in
docs/model.md). RECORDING is a recording directory, a WFDB record (with or
without ``.hea``) or an EDF file, with any subset of streams at any rate.
``--model`` takes an ONNX file or a registry reference (with
``--state-dir``); without it the baseline model shipped with the package is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeagent.cli import app
from edgeagent.errors import EdgeAgentError, InstallError


def _load_model(model: str | None, state_dir: Path | None) -> tuple[bytes, str]:
    if model is None and state_dir is None:
        from edgeagent.ops.install import BASELINE_MODEL, shipped_file

        try:
            return shipped_file(BASELINE_MODEL).read_bytes(), "baseline"
        except InstallError as exc:
            raise EdgeAgentError(f"no --model given and no shipped baseline: {exc}") from exc
    if model is not None and Path(model).is_file():
        return Path(model).read_bytes(), Path(model).name
    if state_dir is None:
        raise EdgeAgentError(f"--model {model!r} is not a file; pass --state-dir to use a registry")
    from edgeagent.model.registry import ModelRegistry

    reg = ModelRegistry(state_dir)
    rec = reg.get(model or "active")
    return reg.load_bytes(rec), rec.label


_RECORDING = typer.Argument(
    ..., help="Recording directory, WFDB record or EDF file (docs/recording-format.md)."
)
_LEAD = typer.Option(None, "--lead", help="ECG lead of a WFDB/EDF record (default MLII, II).")
_ANN = typer.Option(
    None, "--annotations", help="WFDB annotator extension (default atr if present; none: skip)."
)
_SPAN = typer.Option(
    None, "--span", help="Only START:END seconds from the recording's start, e.g. 0:300."
)
_MODEL = typer.Option(
    None, help="ONNX file, or registry ref (default: the active model with -c or --state-dir)."
)
_STATE = typer.Option(
    None, "--state-dir", help="Registry to take --model from (default: the config's state_dir)."
)
_CONFIG = typer.Option(
    None,
    "--config",
    "-c",
    help="A box's config: its registry (agent.state_dir) and its windows (length_s, hop_s). "
    "Default: $EDGEAGENT_CONFIG; without either, the shipped baseline and 10 s / 2 s windows.",
    show_default=False,
)


@app.command()
def evaluate(
    recording: Path = _RECORDING,
    model: str | None = _MODEL,
    state_dir: Path | None = _STATE,
    config: Path | None = _CONFIG,
    window_s: float | None = typer.Option(
        None, help="Window length, seconds (default: the config's, else 10).", show_default=False
    ),
    hop_s: float | None = typer.Option(
        None, help="Window hop, seconds (default: the config's, else 2).", show_default=False
    ),
    global_only: bool = typer.Option(
        False, "--global-only", help="No personal calibration (population normalisation)."
    ),
    lead: str | None = _LEAD,
    annotations: str | None = _ANN,
    span: str | None = _SPAN,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score the detector on a labelled recording, WFDB record or EDF file."""
    from edgeagent.cli.config import explicit_config_path, load_or_exit
    from edgeagent.evaluate import evaluate_recording

    # an evaluation runs on a laptop as often as on a box: only a config the user named
    named = explicit_config_path(config)
    cfg = load_or_exit(named, as_json) if named is not None else None
    if cfg is not None:
        state_dir = state_dir or cfg.agent.state_dir
    window_s = window_s or (cfg.windows.length_s if cfg is not None else 10.0)
    hop_s = hop_s or (cfg.windows.hop_s if cfg is not None else 2.0)
    try:
        span_s = _parse_span(span)
        data, label = _load_model(model, state_dir)
        out = evaluate_recording(
            recording,
            data,
            label,
            window_s=window_s,
            hop_s=hop_s,
            personalise=not global_only,
            lead=lead,
            annotations=annotations,
            span_s=span_s,
        )
    except (EdgeAgentError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for w in out["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    if as_json:
        typer.echo(json.dumps(out))
        return

    def f(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lead_txt = f"  lead {out['lead']}" if out.get("lead") else ""
    typer.echo(
        f"recording {out['recording']} ({out['format']}{lead_txt})  "
        f"streams {','.join(out['streams'])}  model {label}  {out['duration_s']:.0f} s"
    )
    typer.echo(
        f"windows {out['windows_scored']} (pos {out['windows_positive']}, "
        f"neg {out['windows_negative']}, excluded {out['windows_excluded']})"
    )
    for k in ("accuracy", "precision", "recall", "f1", "auroc"):
        typer.echo(f"  {k:22} {f(out[k])}")
    typer.echo(f"  time in alert          {f(out['time_in_alert'])} ({out['alert_s']:.0f} s)")
    typer.echo(
        f"  false alarms / hour    {f(out['false_alarms_per_hour'])} ({out['false_alarms']} "
        f"over {out['alert_s_outside_labels']:.0f} s of alert outside labels)"
    )
    typer.echo(
        f"  event recall           {f(out['event_recall'])} "
        f"({out['events_detected']}/{out['events']})"
    )
    d = out["detection_delay_s"]
    typer.echo(f"  detection delay (s)    median {f(d['median'])}  p90 {f(d['p90'])}")
    typer.echo(f"  sensor-fault recall    {f(out['fault_recall'])}")
    for kind, v in out["per_kind"].items():
        typer.echo(f"  {kind:28} recall {f(v['recall'])} ({v['detected']}/{v['events']})")
    b = out["beats"]
    if b is not None:
        by = ", ".join(f"{c} {n}" for c, n in b["by_class"].items() if n)
        typer.echo(f"beats {b['reference']} annotated ({by}), {b['detected']} detected")
        typer.echo(f"  QRS sensitivity        {f(b['sensitivity'])}")
        typer.echo(f"  QRS positive pred.     {f(b['positive_predictivity'])}")
        a = b["abnormal"]
        typer.echo(
            f"  abnormal-beat AUROC    {f(a['auroc'])} ({a['positives']} S/V/F vs "
            f"{a['negatives']} N)"
        )
    for w in out["warnings"]:
        typer.echo(f"warning: {w}")
    for n in out["notes"]:
        typer.echo(f"note: {n}")
    typer.echo(f"({out['runtime_s']:.1f} s)")


def _parse_span(span: str | None) -> tuple[float, float] | None:
    if span is None:
        return None
    try:
        a, b = (float(x) for x in span.split(":"))
    except ValueError:
        raise EdgeAgentError(
            f"--span {span!r}: expected START:END in seconds, e.g. 0:300"
        ) from None
    if not b > a >= 0:
        raise EdgeAgentError(f"--span {span!r}: need 0 <= START < END")
    return a, b
