"""One entry point for recordings on disk: a CSV directory, a WFDB record or an EDF file.

``edgeagent evaluate`` and ``edgeagent import`` take whatever a user has:
the project's recording directory (docs/recording-format.md), a PhysioNet
WFDB record named with or without ``.hea``, or an EDF/EDF+/BDF file. The
kind is told from the path itself (a directory, a ``.hea`` beside it, EDF
magic bytes), never from a flag the user might get wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeagent.errors import RecordingError
from edgeagent.recording import Recording, read_recording
from edgeagent.sources.edf import is_edf, read_edf
from edgeagent.sources.wfdb_record import read_wfdb, record_base


def recording_kind(path: str | os.PathLike[str]) -> str:
    """``"csv"``, ``"wfdb"`` or ``"edf"`` for ``path``; RecordingError when it is none."""
    p = Path(path)
    if p.is_dir():
        return "csv"
    if record_base(p) is not None:
        return "wfdb"
    if is_edf(p):
        return "edf"
    if p.exists():
        raise RecordingError(
            str(p),
            "not a recording: expected a CSV recording directory, a WFDB record (.hea) "
            "or an EDF/BDF file",
        )
    raise RecordingError(str(p), "no such recording (directory, WFDB record or EDF file)")


def open_recording(
    path: str | os.PathLike[str], lead: str | None = None, annotations: str | None = None
) -> Recording:
    """Load ``path`` as a ``Recording`` whatever its format.

    ``lead`` picks the ECG signal of a WFDB or EDF record (default MLII / II);
    ``annotations`` names the WFDB annotator (default ``atr`` when present,
    ``none`` for no annotations). A CSV directory has one ECG stream and its
    own ``labels.csv`` / ``beats.csv``: the two options do not apply and a
    note says so when given.
    """
    kind = recording_kind(path)
    if kind == "wfdb":
        return read_wfdb(path, lead, annotations)
    if kind == "edf":
        rec = read_edf(path, lead)
        if annotations not in (None, "", "none"):
            rec.notes.append(f"{Path(path).name}: --annotations applies to WFDB records only")
        return rec
    rec = read_recording(path)
    if lead or annotations not in (None, "", "none"):
        rec.notes.append(f"{Path(path).name}: --lead/--annotations apply to WFDB and EDF records")
    return rec
