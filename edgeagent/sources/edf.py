"""Read an EDF / EDF+ (or BDF) file as a ``Recording``: one ECG lead plus EDF+ annotations.

``pyedflib`` (EDFlib underneath) parses the header and converts digital
samples to physical values with the header's per-signal calibration; this
module picks the lead (``ecg_record.choose_lead``), scales its physical
dimension to µV and turns EDF+ annotations into the agent's vocabulary:

* a text that is a beat symbol (``N``, ``V``, ``A`` ...) -> a beat;
* a rhythm note ``(AFIB`` ... -> an episode kind (``edgeagent.annotations``),
  lasting its EDF+ duration when it has one, else until the next rhythm note;
* a text that is already a project kind (``af``, ``lead_off`` ...) with a
  duration -> that label as it is.

A file EDFlib refuses (bad header, wrong sizes) is refused naming the file
and EDFlib's reason. ``pyedflib`` is part of the ``formats`` extra.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.annotations import Beats, aami_class, rhythm_code, rhythm_kind, rhythm_labels
from edgeagent.errors import RecordingError
from edgeagent.recording import Recording
from edgeagent.sources.ecg_record import check_rate, choose_lead, ecg_recording, uv_per_unit

#: Episode kinds an EDF+ annotation may name directly (the simulator's vocabulary).
PROJECT_KINDS = frozenset(
    {
        "tachycardia", "bradycardia", "af", "pvc", "st_change", "fall", "fever",
        "hypothermia", "lead_off", "motion_artifact", "saturation",
    }
)  # fmt: skip
EDF_SUFFIXES = (".edf", ".bdf", ".rec")
_MAGIC = (b"0       ", b"\xffBIOSEMI")


def is_edf(path: str | Path) -> bool:
    """True for a file whose name or first 8 bytes say EDF/BDF."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() in EDF_SUFFIXES:
        return True
    try:
        with open(p, "rb") as fh:
            return fh.read(8) in _MAGIC
    except OSError:
        return False


def _pyedflib() -> Any:
    try:
        import pyedflib
    except ImportError:
        raise RecordingError(
            "pyedflib",
            "reading EDF files needs the 'pyedflib' package: pip install 'edgeagent[formats]'",
        ) from None
    return pyedflib


@contextlib.contextmanager
def _c_stdout_captured() -> Iterator[list[str]]:
    """Hold what C code prints on stdout while open, and give it back as text.

    EDFlib prints some header problems (``filesize ... != ...``) with printf;
    on our stdout they would corrupt a ``--json`` answer, in the error they
    tell the user what is wrong.
    """
    said: list[str] = []
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(1)
        os.dup2(tmp.fileno(), 1)
        try:
            yield said
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            said.append(" ".join(tmp.read().decode("utf-8", "replace").split()))


def read_edf(path: str | Path, lead: str | None = None) -> Recording:
    """Read the EDF/EDF+/BDF file at ``path`` (one lead; annotations when EDF+)."""
    p = Path(path)
    if not p.is_file():
        raise RecordingError(str(p), "no such file")
    pyedflib = _pyedflib()
    try:
        with _c_stdout_captured() as said:
            reader = pyedflib.EdfReader(str(p))
    except Exception as exc:  # EDFlib reports every header problem as OSError
        detail = f" ({said[-1]})" if said and said[-1] else ""
        raise RecordingError(str(p), f"not a readable EDF/BDF file: {exc}{detail}") from None
    try:
        return _read(reader, p, lead)
    finally:
        reader.close()


def _read(reader: Any, p: Path, lead: str | None) -> Recording:
    names = [str(n) for n in reader.getSignalLabels()]
    if not names:
        raise RecordingError(str(p), "the file holds no signals")
    units = [str(reader.getPhysicalDimension(i)) for i in range(len(names))]
    ch = choose_lead(names, units, lead, str(p))
    scale = uv_per_unit(units[ch], str(p), names[ch])
    fs = float(reader.getSampleFrequency(ch))
    notes = check_rate(fs, str(p))
    try:
        x = np.asarray(reader.readSignal(ch), np.float64) * scale
    except Exception as exc:
        raise RecordingError(str(p), f"cannot read signal {names[ch]!r}: {exc}") from None
    end_s = x.size / fs
    beats, labels = _annotations(reader, end_s)
    meta = {
        "format": "edf",
        "units": units[ch],
        "signals": names,
        "start": str(reader.getStartdatetime()),
    }
    return ecg_recording(
        p, fs, x, labels=labels, beats=beats, notes=notes, lead=names[ch], meta=meta
    )


def _annotations(reader: Any, end_s: float) -> tuple[Beats | None, list[tuple[float, float, str]]]:
    onsets, durations, texts = reader.readAnnotations()
    if len(onsets) == 0:
        return None, []
    beat_t: list[float] = []
    beat_sym: list[str] = []
    change_t: list[float] = []
    change_note: list[str] = []
    labels: list[tuple[float, float, str]] = []
    for t0, dur, text in zip(np.asarray(onsets, float).tolist(), durations, texts, strict=True):
        s = str(text).strip()
        d = float(dur) if dur is not None and float(dur) > 0 else 0.0
        if aami_class(s) is not None:
            beat_t.append(t0)
            beat_sym.append(s)
        elif (code := rhythm_code(s)) is not None:
            if d > 0:
                kind = rhythm_kind(code)
                if kind is not None:
                    labels.append((t0, min(t0 + d, end_s), kind))
            else:
                change_t.append(t0)
                change_note.append(s)
        elif s.lower() in PROJECT_KINDS and d > 0:
            labels.append((t0, min(t0 + d, end_s), s.lower()))
    labels.extend(rhythm_labels(change_t, change_note, end_s))
    beats = Beats.from_symbols(beat_t, beat_sym) if beat_t else None
    return beats, sorted(labels)
