"""``edgeagent import SRC OUT_DIR``: turn a WFDB record or EDF file into a recording directory.

Once converted, a record replays through every tool that reads the project's
own format (``firmware-sim replay``, the pilot's readers, a spreadsheet),
and its reference annotations travel with it: rhythm episodes in
``labels.csv``, beats with their AAMI class in ``beats.csv``
(docs/recording-format.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeagent.cli import app
from edgeagent.errors import EdgeAgentError

_SRC = typer.Argument(..., help="WFDB record (with or without .hea), EDF file or CSV dir.")
_OUT = typer.Argument(..., help="Recording directory to write.")


@app.command("import")
def import_recording(
    src: Path = _SRC,
    out_dir: Path = _OUT,
    lead: str | None = typer.Option(None, "--lead", help="ECG lead (default MLII, II)."),
    annotations: str | None = typer.Option(
        None, "--annotations", help="WFDB annotator extension (default atr if present; none: skip)."
    ),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty OUT_DIR."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Convert a WFDB record or EDF file into a recording directory (ecg.csv, labels, beats)."""
    from edgeagent.sources.records import open_recording, write_recording

    try:
        rec = open_recording(src, lead=lead, annotations=annotations)
        written = write_recording(rec, out_dir, force=force)
    except (EdgeAgentError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for n in rec.notes:
        typer.echo(f"note: {n}", err=True)
    summary = {
        "source": str(src),
        "out_dir": str(out_dir),
        "format": rec.meta.get("format"),
        "lead": rec.meta.get("lead"),
        "rate_hz": rec.meta.get("rate_hz"),
        "duration_s": rec.duration,
        "files": written,
        "beats": rec.beats.counts() if rec.beats is not None else None,
        "labels": sorted({k for _, _, k in rec.labels}),
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"wrote {out_dir} from {src} ({summary['format']}, lead {summary['lead']}, "
        f"{summary['rate_hz']} Hz, {rec.duration:.1f} s)"
    )
    for name, n in written.items():
        typer.echo(f"  {name:12} {n:>9} rows")
    if summary["beats"]:
        typer.echo(
            "  beats by AAMI class: " + ", ".join(f"{c} {n}" for c, n in summary["beats"].items())
        )
