"""Device-side reader of clinical record files (WFDB, EDF/EDF+) for replay.

A simulated wearable can replay a real patient: ``firmware-sim replay``
(serial), ``serve-ble --recording`` and ``serve --recording`` (BLE, serial
port, pty) take a PhysioNet WFDB record or an EDF file besides a recording
directory. The device only needs the ECG lead in µV and, for the ledger,
the rhythm episodes; it reads them with ``wfdb`` / ``pyedflib`` directly.
This is deliberately its own small reader, not the agent's
(``edgeagent.sources``): the simulator never imports the agent, so a reader
bug on either side shows up as a disagreement in the round-trip tests.

A real strap samples at its own rate (a Polar H10's ECG at 130 Hz), so
``resample`` brings a record to the rate of the link that carries it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from firmware_sim.physiology import Chunk, Label

#: Header unit -> µV.
_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
#: Leads tried in order when none is named.
_PREFERRED = ("mlii", "ii", "ml2", "ecg", "ekg", "i", "v1", "v2", "v5", "mcl1", "v")
#: Rhythm notes -> the simulator's episode kinds (None: not an episode).
_RHYTHM = {
    "N": None, "P": None, "AFIB": "af", "AFL": "af", "VT": "tachycardia",
    "VFL": "tachycardia", "VF": "tachycardia", "SVTA": "tachycardia",
    "SBR": "bradycardia", "BII": "bradycardia", "IVR": "bradycardia", "B": "pvc", "T": "pvc",
}  # fmt: skip
_EDF_MAGIC = (b"0       ", b"\xffBIOSEMI")


class RecordFileError(ValueError):
    """A record file cannot be replayed; the message names the file and the problem."""


def record_kind(path: str | Path) -> str | None:
    """``"wfdb"`` or ``"edf"`` when ``path`` names such a record, else None (e.g. a directory)."""
    p = Path(path)
    if p.is_dir():
        return None
    if p.suffix.lower() == ".hea" or Path(str(p) + ".hea").is_file():
        return "wfdb"
    if p.suffix.lower() in (".dat", ".mat", ".atr") and p.with_suffix(".hea").is_file():
        return "wfdb"
    if p.is_file():
        if p.suffix.lower() in (".edf", ".bdf"):
            return "edf"
        with open(p, "rb") as fh:
            if fh.read(8) in _EDF_MAGIC:
                return "edf"
    return None


def _pick(names: list[str], units: list[str], lead: str | None, src: str) -> int:
    low = [n.strip().lower() for n in names]
    if lead:
        if lead.strip().lower() in low:
            return low.index(lead.strip().lower())
        raise RecordFileError(f"{src}: no lead {lead!r}; the record has {names}")
    for pref in _PREFERRED:
        if pref in low and units[low.index(pref)].strip().lower() in _UV:
            return low.index(pref)
    for i, u in enumerate(units):
        if u.strip().lower() in _UV:
            return i
    raise RecordFileError(f"{src}: no ECG signal in volts among {names}")


def _rhythms(times: list[float], notes: list[str], end: float) -> list[Label]:
    changes = []
    for t, n in zip(times, notes, strict=True):
        s = n.replace("\x00", "").strip()
        if s.startswith("(") and len(s) > 1:
            changes.append((t, s[1:].upper()))
    out = []
    for i, (t, code) in enumerate(changes):
        stop = changes[i + 1][0] if i + 1 < len(changes) else end
        kind = _RHYTHM.get(code, "rhythm_" + code.lower())
        if kind is not None and stop > t:
            out.append(Label(t, stop, kind))
    return out


def _chunk(uv: np.ndarray, fs: float, labels: list[Label]) -> Chunk:
    ok = np.isfinite(uv)
    t = np.arange(uv.size, dtype=np.float64)[ok] / fs
    v = uv[ok].astype(np.float32)[:, None]
    end = uv.size / fs
    return Chunk(streams={"ecg": (t, v)}, labels=labels, start=0.0, end=end)


def _read_wfdb(path: Path, lead: str | None) -> Chunk:
    try:
        import wfdb
    except ImportError:
        raise RecordFileError(
            "reading WFDB needs 'wfdb': pip install 'edgeagent[formats]'"
        ) from None
    base = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat", ".mat", ".atr") else path
    try:
        h = wfdb.rdheader(str(base))
        ch = _pick(list(h.sig_name), list(h.units), lead, f"{base}.hea")
        spf = int((h.samps_per_frame[ch] if h.samps_per_frame else 1) or 1)
        rec = wfdb.rdrecord(str(base), channels=[ch], smooth_frames=spf == 1)
    except RecordFileError:
        raise
    except Exception as exc:  # wfdb's own errors are bare ValueError / OSError / IndexError
        raise RecordFileError(
            f"{base}: cannot read WFDB record: {type(exc).__name__}: {exc}"
        ) from None
    fs = float(h.fs) * spf
    raw = rec.p_signal[:, 0] if spf == 1 else rec.e_p_signal[0]
    uv = np.asarray(raw, np.float64) * _UV.get(h.units[ch].strip().lower(), 1e3)
    labels: list[Label] = []
    if Path(f"{base}.atr").is_file():
        times, notes = _rhythm_notes(Path(f"{base}.atr").read_bytes())
        labels = _rhythms([t / float(h.fs) for t in times], notes, uv.size / fs)
    return _chunk(uv, fs, labels)


def _rhythm_notes(data: bytes) -> tuple[list[int], list[str]]:
    """Sample and note of every annotation with a note, from MIT-format bytes.

    Written here from the format (WFDB annot(5): 16-bit words, 6-bit code,
    10-bit time step; 59 SKIP + 32-bit step; 60-62 one-word fields; 63 AUX
    with its text), not with ``wfdb.rdann``, which loops forever on some
    damaged files; a damaged tail simply ends the list.
    """
    t, times, notes, i = 0, [], [], 0
    n = len(data) // 2
    while i < n:
        w = data[2 * i] | (data[2 * i + 1] << 8)
        code, step = w >> 10, w & 0x3FF
        if w == 0:
            break
        if code == 59:
            if i + 2 >= n:
                break
            b = data[2 * i + 2 : 2 * i + 6]
            v = (b[0] << 16) | (b[1] << 24) | b[2] | (b[3] << 8)
            t += v - (1 << 32) if v >= 1 << 31 else v
            i += 3
        elif code in (60, 61, 62):
            i += 1
        elif code == 63:
            text = data[2 * i + 2 : 2 * i + 2 + step].split(b"\x00", 1)[0]
            if times:
                notes[-1] = text.decode("latin-1")
            i += 1 + (step + 1) // 2
        else:
            t += step
            times.append(t)
            notes.append("")
            i += 1
    return times, notes


def _read_edf(path: Path, lead: str | None) -> Chunk:
    try:
        import pyedflib
    except ImportError:
        raise RecordFileError(
            "reading EDF needs 'pyedflib': pip install 'edgeagent[formats]'"
        ) from None
    try:
        r: Any = pyedflib.EdfReader(str(path))
    except Exception as exc:
        raise RecordFileError(f"{path}: not a readable EDF file: {exc}") from None
    try:
        names = list(r.getSignalLabels())
        units = [r.getPhysicalDimension(i) for i in range(len(names))]
        ch = _pick(names, units, lead, str(path))
        fs = float(r.getSampleFrequency(ch))
        uv = np.asarray(r.readSignal(ch), np.float64) * _UV.get(units[ch].strip().lower(), 1.0)
        on, _, texts = r.readAnnotations()
        labels = _rhythms([float(x) for x in on], [str(x) for x in texts], uv.size / fs)
    finally:
        r.close()
    return _chunk(uv, fs, labels)


def read_record(path: str | Path, lead: str | None = None) -> Chunk:
    """The ECG lead (µV, t from 0 at the record's rate) and rhythm labels of a record file."""
    p = Path(path)
    kind = record_kind(p)
    if kind == "wfdb":
        return _read_wfdb(p, lead)
    if kind == "edf":
        return _read_edf(p, lead)
    raise RecordFileError(f"{p}: not a WFDB record (.hea) or EDF file")


def resample(t: np.ndarray, v: np.ndarray, hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Samples at ``k / hz`` over the span of ``t``: averaged over one output period, then
    linearly interpolated (a box-car anti-alias filter, enough for ECG into 130 Hz)."""
    t = np.asarray(t, np.float64)
    if t.size < 2:
        return t, np.asarray(v, np.float32)
    fs_in = 1.0 / float(np.median(np.diff(t)))
    vals = np.asarray(v, np.float64).reshape(t.size, -1)
    if fs_in > hz:
        w = max(1, round(fs_in / hz))
        kern = np.full(w, 1.0 / w)
        pad = np.pad(vals, ((w // 2, w - 1 - w // 2), (0, 0)), mode="edge")
        vals = np.column_stack(
            [np.convolve(pad[:, j], kern, mode="valid") for j in range(vals.shape[1])]
        )
    grid = np.arange(math.ceil(t[0] * hz - 1e-9), math.floor(t[-1] * hz + 1e-9) + 1) / hz
    out = np.column_stack([np.interp(grid, t, vals[:, j]) for j in range(vals.shape[1])])
    return grid, out.astype(np.float32)
