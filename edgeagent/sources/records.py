"""One entry point for recordings on disk: a CSV directory, a WFDB record or an EDF file.

``edgeagent evaluate`` and ``edgeagent import`` take whatever a user has:
the project's recording directory (docs/recording-format.md), a PhysioNet
WFDB record named with or without ``.hea``, or an EDF/EDF+/BDF file. The
kind is told from the path itself (a directory, a ``.hea`` beside it, EDF
magic bytes), never from a flag the user might get wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgeagent.annotations import BEATS_FILE, write_beats
from edgeagent.errors import RecordingError
from edgeagent.recording import LABELS_FILE, Recording, read_recording
from edgeagent.sources.edf import is_edf, read_edf
from edgeagent.sources.wfdb_record import read_wfdb, record_base
from edgeagent.streams import CHANNELS


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


#: Decimal places per stream column when writing (the sensors' resolution, no more).
_DECIMALS = {"ecg": 3, "acc": 1, "skin_temp": 3, "env": 3, "hr": 2, "rr": 4}
META_FILE = "meta.json"


def write_recording(
    rec: Recording, out_dir: str | os.PathLike[str], *, force: bool = False
) -> dict:
    """Write ``rec`` as a recording directory: one CSV per stream, labels, beats, meta.

    Refuses an existing non-empty ``out_dir`` unless ``force`` (an import must
    not mix two records' files). Returns what was written (rows per file).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RecordingError(str(out), "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RecordingError(str(out), "directory is not empty (pass --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for stream in rec.streams:
        t, v = rec.data[stream]
        cols = ",".join(("t", *CHANNELS[stream]))
        fmt = ["%.9f"] + [f"%.{_DECIMALS.get(stream.value, 4)}f"] * v.shape[1]
        arr = np.column_stack([t, v.astype(np.float64)])
        np.savetxt(
            out / f"{stream.value}.csv", arr, fmt=fmt, delimiter=",", header=cols, comments=""
        )
        written[f"{stream.value}.csv"] = len(t)
    with open(out / LABELS_FILE, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("start,end,kind\n")
        for s, e, k in rec.labels:
            fh.write(f"{s:.3f},{e:.3f},{k}\n")
    written[LABELS_FILE] = len(rec.labels)
    if rec.beats is not None:
        write_beats(out / BEATS_FILE, rec.beats)
        written[BEATS_FILE] = len(rec.beats)
    meta = {**rec.meta, "source": str(rec.path), "notes": list(rec.notes)}
    meta["rejected"] = rec.rejected
    with open(out / META_FILE, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    return written
