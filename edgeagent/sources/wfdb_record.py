"""Read a PhysioNet WFDB record (``.hea`` + signal file + optional ``.atr``) as a ``Recording``.

The ``wfdb`` package does the decoding (every signal format, ``.mat``
signal files, annotation files); this module decides what the agent needs
from it and refuses what it cannot trust, naming the file:

* the header must parse and name a signal file that exists; a signal file
  shorter than the header promises (a copy cut short) is read as far as it
  goes, with a note (``truncated``), not refused;
* one lead becomes the ECG stream (``--lead``; default MLII / II, see
  ``ecg_record.choose_lead``), scaled from the header's units to µV;
* beat annotations become ``Recording.beats`` (AAMI classes), rhythm
  annotations ``(AFIB`` ... become labels (``edgeagent.annotations``); the
  annotation file is parsed by ``wfdb_annotations`` (``wfdb.rdann`` can hang
  on a damaged one); an annotation file that runs past the end of the
  signal belongs to another record and is refused.

``wfdb`` pulls pandas, scipy and matplotlib along, so it is an optional
dependency (the ``formats`` extra); without it the error says how to install it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.annotations import Beats, rhythm_labels
from edgeagent.errors import RecordingError
from edgeagent.recording import Recording
from edgeagent.sources.ecg_record import check_rate, choose_lead, ecg_recording, uv_per_unit
from edgeagent.sources.wfdb_annotations import parse_annotations

#: Bits per sample of the fixed-width WFDB signal formats (FLAC ones, 5xx, vary).
_BITS: dict[str, float] = {
    "8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16,
    "212": 12, "310": 32 / 3, "311": 32 / 3,
}  # fmt: skip
_SIGNAL_SUFFIXES = (".hea", ".dat", ".mat", ".atr", ".xyz")
#: Annotations may overrun the signal by this much (rounding in converters).
_ANN_SLACK_S = 1.0


def _wfdb() -> Any:
    try:
        import wfdb
    except ImportError:
        raise RecordingError(
            "wfdb",
            "reading WFDB records needs the 'wfdb' package: pip install 'edgeagent[formats]'",
        ) from None
    return wfdb


def record_base(path: str | Path) -> Path | None:
    """The record path without extension when ``path`` names a WFDB record, else None.

    Accepts ``.../100``, ``.../100.hea`` and a sibling file such as ``.../100.dat``.
    """
    p = Path(path)
    if p.suffix.lower() == ".hea":
        return p.with_suffix("")
    if Path(str(p) + ".hea").is_file():
        return p
    if p.suffix.lower() in _SIGNAL_SUFFIXES and p.with_suffix(".hea").is_file():
        return p.with_suffix("")
    return None


def _frame_bits(header: Any, ch: int) -> float | None:
    """Bits per frame of the signal file holding channel ``ch`` (None for FLAC formats)."""
    fname = header.file_name[ch]
    sigs = [i for i in range(header.n_sig) if header.file_name[i] == fname]
    if any(str(header.fmt[i]) not in _BITS for i in sigs):
        return None
    spf = header.samps_per_frame or [1] * header.n_sig
    return float(sum(_BITS[str(header.fmt[i])] * (spf[i] or 1) for i in sigs))


def _frames_available(base: Path, header: Any, ch: int) -> int | None:
    """Whole frames the signal file of channel ``ch`` holds (None when not computable).

    A ``.mat`` signal file also holds a MATLAB header of its own length, so
    its count is an upper bound; ``read_wfdb`` refuses a short one outright.
    """
    bits = _frame_bits(header, ch)
    if bits is None:
        return None
    offset = (header.byte_offset[ch] if header.byte_offset else 0) or 0
    size = (base.parent / header.file_name[ch]).stat().st_size - offset
    return max(0, math.floor(size * 8 / bits))


def read_wfdb(
    path: str | Path, lead: str | None = None, annotations: str | None = None
) -> Recording:
    """Read record ``path`` (with or without ``.hea``); ``annotations`` is the annotator
    extension (``None``: ``atr`` when present; ``""`` or ``"none"``: no annotations)."""
    base = record_base(path)
    hea = Path(str(base) + ".hea") if base is not None else Path(path)
    if base is None or not hea.is_file():
        raise RecordingError(str(path), "no WFDB header (.hea) for this record")
    wfdb = _wfdb()
    try:
        header = wfdb.rdheader(str(base))
    except Exception as exc:  # wfdb raises bare ValueError/IndexError on a bad header
        raise RecordingError(str(hea), f"bad WFDB header: {type(exc).__name__}: {exc}") from None
    if getattr(header, "n_seg", None) is not None:
        raise RecordingError(str(hea), "multi-segment WFDB records are not supported")
    if not header.n_sig or not header.sig_name:
        raise RecordingError(str(hea), "the header lists no signals")
    described = {len(x or []) for x in (header.sig_name, header.file_name, header.fmt)}
    if described != {header.n_sig}:
        raise RecordingError(
            str(hea),
            f"bad WFDB header: says {header.n_sig} signals but describes {sorted(described)}",
        )
    # WFDB's default unit is mV; a damaged header may leave names or units empty.
    units = [str(u) if u else "mV" for u in (header.units or [None] * header.n_sig)]
    names = [str(n) if n is not None else f"signal {i}" for i, n in enumerate(header.sig_name)]
    ch = choose_lead(names, units, lead, str(hea))
    name = names[ch]
    scale = uv_per_unit(units[ch], str(hea), name)
    # A lead may hold several samples per frame: its own rate is a multiple of the frame rate.
    spf = int((header.samps_per_frame[ch] if header.samps_per_frame else 1) or 1)
    frame_fs = float(header.fs)
    fs = frame_fs * spf
    notes = check_rate(fs, str(hea))
    sig_file = base.parent / header.file_name[ch]
    if not sig_file.is_file():
        raise RecordingError(str(sig_file), f"signal file named by {hea.name} is missing")
    sig_len = int(header.sig_len or 0)
    have = _frames_available(base, header, ch)
    sampto = sig_len
    if have is not None and have < sig_len and sig_file.suffix.lower() == ".mat":
        raise RecordingError(
            str(sig_file),
            f"truncated: holds at most {have} of the {sig_len} frames {hea.name} promises "
            "(a .mat signal file cannot be read in part)",
        )
    if have is not None and have < sig_len:
        if have == 0:
            raise RecordingError(str(sig_file), f"empty: {hea.name} promises {sig_len} samples")
        sampto = have
        notes.append(
            f"{sig_file.name}: truncated: holds {have} of the {sig_len} frames {hea.name} "
            f"promises ({have / frame_fs:.1f} of {sig_len / frame_fs:.1f} s); "
            "read as far as it goes"
        )
    try:
        rec = wfdb.rdrecord(
            str(base), channels=[ch], sampto=sampto or None, return_res=64, smooth_frames=spf == 1
        )
    except Exception as exc:
        raise RecordingError(
            str(sig_file), f"cannot read signal: {type(exc).__name__}: {exc}"
        ) from None
    raw = rec.p_signal[:, 0] if spf == 1 else rec.e_p_signal[0]
    x = np.asarray(raw, np.float64) * scale
    end_s = x.size / fs
    beats: Beats | None = None
    labels: list[tuple[float, float, str]] = []
    ann_ext = "atr" if annotations is None else annotations.strip().lstrip(".")
    if ann_ext and ann_ext.lower() != "none":
        ann_file = Path(f"{base}.{ann_ext}")
        if ann_file.is_file():
            beats, labels, ann_notes = _read_annotations(base, ann_ext, frame_fs, sig_len, end_s)
            notes.extend(ann_notes)
        elif annotations is not None:
            raise RecordingError(str(ann_file), "annotation file not found")
        else:
            notes.append(f"{base.name}: no .{ann_ext} annotations: beats and rhythms unlabelled")
    meta = {
        "format": "wfdb",
        "record": base.name,
        "units": units[ch],
        "gain": float(header.adc_gain[ch]) if header.adc_gain else None,
        "samples_per_frame": spf,
        "signals": names,
        "comments": list(header.comments or []),
    }
    return ecg_recording(
        Path(path), fs, x, labels=labels, beats=beats, notes=notes, lead=name, meta=meta
    )


def _read_annotations(
    base: Path, ext: str, fs: float, sig_len: int, end_s: float
) -> tuple[Beats, list[tuple[float, float, str]], list[str]]:
    """Beats and rhythm labels of ``<base>.<ext>`` (parsed here, not by ``wfdb.rdann``:
    see ``wfdb_annotations``). ``fs`` is the record's frame rate, unless the file
    states its own time resolution."""
    ann_file = Path(f"{base}.{ext}")
    try:
        ann = parse_annotations(ann_file.read_bytes())
    except OSError as exc:
        raise RecordingError(str(ann_file), f"cannot read: {exc.strerror or exc}") from None
    if ann.problems and not ann.sample.size:
        raise RecordingError(str(ann_file), "bad annotation file: " + "; ".join(ann.problems))
    notes = [f"{ann_file.name}: {p}" for p in ann.problems]
    samples, symbols, aux = ann.sample, ann.symbol, ann.aux
    if ann.fs is not None and abs(ann.fs - fs) > 1e-6 * fs:
        notes.append(f"{ann_file.name}: time resolution {ann.fs:g} Hz (record {fs:g} Hz)")
        samples = samples * (fs / ann.fs)
    if samples.size and samples.max() > sig_len + _ANN_SLACK_S * fs:
        raise RecordingError(
            str(ann_file),
            f"annotations run to {samples.max() / fs:.1f} s but the record is "
            f"{sig_len / fs:.1f} s long: an annotation file of another record?",
        )
    t = samples / fs
    inside = t < end_s
    if not inside.all():
        notes.append(
            f"{ann_file.name}: {int((~inside).sum())} annotations past the readable signal dropped"
        )
    t = t[inside]
    symbols = [s for s, k in zip(symbols, inside.tolist(), strict=True) if k]
    aux = [a for a, k in zip(aux, inside.tolist(), strict=True) if k]
    beats = Beats.from_symbols(t, symbols)
    labels = rhythm_labels(t, aux, end_s)
    others = sorted({k for _, _, k in labels if k.startswith("rhythm_")})
    if others:
        notes.append(f"{ann_file.name}: rhythms without a project kind kept as {others}")
    return beats, labels, notes
