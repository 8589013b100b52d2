"""``edgeagent evaluate RECORDING_DIR``: replay a recording through windows and the detector.

Reports accuracy, precision, recall, F1, AUROC, per-kind recall and detection
delay against the recording's labels.csv (definitions in docs/model.md).
Works on any recording in the documented format, with any subset of streams
at any rate. ``--model`` takes an ONNX file or a registry reference (with
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


_RECORDING = typer.Argument(..., help="Recording directory (docs/recording-format.md).")
_MODEL = typer.Option(None, help="ONNX file, or registry ref with --state-dir.")
_STATE = typer.Option(None, "--state-dir", help="Registry to take --model from.")


@app.command()
def evaluate(
    recording: Path = _RECORDING,
    model: str | None = _MODEL,
    state_dir: Path | None = _STATE,
    window_s: float = typer.Option(10.0, help="Window length, seconds."),
    hop_s: float = typer.Option(2.0, help="Window hop, seconds."),
    global_only: bool = typer.Option(
        False, "--global-only", help="No personal calibration (population normalisation)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score the detector on a labelled recording."""
    from edgeagent.evaluate import evaluate_recording

    try:
        data, label = _load_model(model, state_dir)
        out = evaluate_recording(
            recording, data, label, window_s=window_s, hop_s=hop_s, personalise=not global_only
        )
    except (EdgeAgentError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(out))
        return

    def f(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    typer.echo(f"recording {out['recording']}  streams {','.join(out['streams'])}  model {label}")
    typer.echo(
        f"windows {out['windows_scored']} (pos {out['windows_positive']}, "
        f"neg {out['windows_negative']}, excluded {out['windows_excluded']})"
    )
    for k in ("accuracy", "precision", "recall", "f1", "auroc", "false_alarms_per_hour"):
        typer.echo(f"  {k:22} {f(out[k])}")
    d = out["detection_delay_s"]
    typer.echo(f"  detection delay (s)    median {f(d['median'])}  p90 {f(d['p90'])}")
    typer.echo(f"  sensor-fault recall    {f(out['fault_recall'])}")
    for kind, v in out["per_kind"].items():
        typer.echo(f"  {kind:28} recall {f(v['recall'])} ({v['detected']}/{v['events']})")
