"""What the WFDB and EDF readers share: lead choice, units to µV, flat and clipped spans.

A clinical record carries several signals in the units its header states
(mV mostly, sometimes µV or V) at 125-1000 Hz; the agent has one ECG stream
in µV. The rules here decide which signal becomes that stream and how its
values are scaled, and they look for the two ways a real lead fails that a
reader can see for sure: a flat line (electrode off, the amplifier holding
one value) and samples stuck at the converter's limits (saturation). Those
become ``lead_off`` / ``saturation`` labels, so evaluation leaves them out of
the clinical figures and scores the detector's sensor-fault recall on them,
and a note says so: a documented degradation rather than a refusal.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgeagent.annotations import Beats
from edgeagent.errors import RecordingError
from edgeagent.recording import Recording
from edgeagent.streams import Stream

#: Below this the QRS band (5-15 Hz and its harmonics) is too close to Nyquist
#: (the pipeline's own floor, ``pipeline.ecg.MIN_FS_HZ``).
MIN_RATE_HZ = 100.0
#: Rates above this work but are outside what the project has checked.
CHECKED_MAX_RATE_HZ = 1000.0

#: Header unit (lower case) -> µV per unit.
UV_PER_UNIT: dict[str, float] = {
    "uv": 1.0, "µv": 1.0, "μv": 1.0, "microvolt": 1.0, "microvolts": 1.0,
    "mv": 1e3, "millivolt": 1e3, "millivolts": 1e3,
    "v": 1e6, "volt": 1e6, "volts": 1e6,
    "nv": 1e-3,
}  # fmt: skip

#: Leads tried in order when none is named: the monitoring leads first.
PREFERRED_LEADS: tuple[str, ...] = (
    "mlii", "ii", "ml2", "ecg", "ecg ii", "ecg1", "ekg", "i", "v1", "v2", "v5", "mcl1", "v", "iii",
    "avr", "avl", "avf", "v3", "v4", "v6",
)  # fmt: skip

#: A run of identical values at least this long is a flat line (lead off).
FLAT_MIN_S = 2.0
#: Samples at the signal's extreme value for at least this long are clipped.
CLIP_MIN_S = 0.04
#: Clipped runs closer than this are one saturation span.
CLIP_JOIN_S = 1.0


def _norm_lead(name: str) -> str:
    return " ".join(name.replace("\x00", "").strip().lower().split())


def choose_lead(names: list[str], units: list[str], wanted: str | None, source: str) -> int:
    """Index of the ECG signal to read: ``wanted`` (name, any case, or an index) or the default.

    The default is the first of ``PREFERRED_LEADS`` present, else the first
    signal in voltage units. Refuses with the list of leads when the named
    one does not exist or no signal is in volts.
    """
    listing = ", ".join(f"{n!r} ({u})" for n, u in zip(names, units, strict=True))
    if wanted is not None and wanted.strip():
        w = _norm_lead(wanted)
        hits = [i for i, n in enumerate(names) if _norm_lead(n) == w]
        if hits:
            return hits[0]
        if w.isdigit() and int(w) < len(names):
            return int(w)
        raise RecordingError(source, f"no lead {wanted!r}; the record has {listing}")
    normed = [_norm_lead(n) for n in names]
    for pref in PREFERRED_LEADS:
        if pref in normed and units[normed.index(pref)].strip().lower() in UV_PER_UNIT:
            return normed.index(pref)
    for i, u in enumerate(units):
        if u.strip().lower() in UV_PER_UNIT:
            return i
    raise RecordingError(source, f"no ECG signal in volts (name one with --lead): {listing}")


def uv_per_unit(unit: str, source: str, lead: str) -> float:
    """µV per header unit; refuses a unit that is not a voltage (mmHg, NU ...)."""
    u = unit.strip().lower()
    if u not in UV_PER_UNIT:
        raise RecordingError(
            source, f"lead {lead!r} is in {unit!r}, not a voltage (uV, mV, V): not an ECG signal"
        )
    return UV_PER_UNIT[u]


def check_rate(fs: float, source: str) -> list[str]:
    """Refuse rates the ECG front end cannot use; note rates beyond the checked range."""
    if not (math.isfinite(fs) and fs >= MIN_RATE_HZ):
        raise RecordingError(
            source,
            f"sampling rate {fs!r} Hz is below {MIN_RATE_HZ:g} Hz: too low for QRS detection",
        )
    if fs > CHECKED_MAX_RATE_HZ:
        return [f"{Path(source).name}: {fs:g} Hz is above the checked {CHECKED_MAX_RATE_HZ:g} Hz"]
    return []


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop indices of the True runs of ``mask``."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def signal_faults(x: np.ndarray, fs: float) -> list[tuple[float, float, str]]:
    """``lead_off`` spans (flat for >= ``FLAT_MIN_S``) and ``saturation`` spans (clipped).

    Clipped: a run of at least ``CLIP_MIN_S`` at the signal's own highest or
    lowest value. A real QRS peak never holds its exact extreme that long;
    a converter or amplifier at its rail does, whatever level the rail is at
    (headers' stated limits are often wider than the amplifier's). Times are
    seconds from the first sample.
    """
    x = np.asarray(x, np.float64)
    out: list[tuple[float, float, str]] = []
    if x.size < 2:
        return out
    same = np.r_[False, np.diff(x) == 0]
    starts, stops = _runs(same)
    # A run of k equal differences spans k + 1 samples, starting one earlier.
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        if (b - a + 1) / fs >= FLAT_MIN_S:
            out.append(((a - 1) / fs, (b - 1) / fs, "lead_off"))
    fin = x[np.isfinite(x)]
    if fin.size == 0 or np.ptp(fin) == 0:
        return out
    stuck = (x >= float(fin.max())) | (x <= float(fin.min()))
    min_n = max(2, math.ceil(CLIP_MIN_S * fs))
    clips: list[list[float]] = []
    s_idx, e_idx = _runs(stuck)
    for a, b in zip(s_idx.tolist(), e_idx.tolist(), strict=True):
        if b - a < min_n:
            continue
        t0, t1 = a / fs, b / fs
        flat_inside = any(f0 <= t0 and t1 <= f1 for f0, f1, _ in out)
        if flat_inside:
            continue
        if clips and t0 - clips[-1][1] <= CLIP_JOIN_S:
            clips[-1][1] = t1
        else:
            clips.append([t0, t1])
    out.extend((a, b, "saturation") for a, b in clips)
    return sorted(out)


def ecg_recording(
    path: Path,
    fs: float,
    uv: np.ndarray,
    *,
    labels: list[tuple[float, float, str]],
    beats: Beats | None,
    notes: list[str],
    lead: str,
    meta: dict[str, object],
) -> Recording:
    """Build the ``Recording`` of one ECG lead sampled at ``fs`` from t = 0.

    Invalid samples (NaN, the formats' "no value" code) are dropped and
    counted as ``rejected['ecg']['invalid_sample']``; flat and clipped spans
    are added to the labels (see the module docstring).
    """
    uv = np.asarray(uv, np.float64)
    t = np.arange(uv.size, dtype=np.float64) / fs
    faults = signal_faults(uv, fs)
    notes = list(notes)
    if faults:
        secs: dict[str, float] = {}
        for a, b, k in faults:
            secs[k] = secs.get(k, 0.0) + (b - a)
        what = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(secs.items()))
        notes.append(f"{path.name}: lead {lead!r}: {what} labelled as sensor fault")
        if uv.size and secs.get("lead_off", 0.0) >= 0.99 * uv.size / fs:
            notes.append(f"{path.name}: lead {lead!r} is a flat line over the whole record")
    ok = np.isfinite(uv)
    rejected: dict[str, dict[str, int]] = {}
    if not ok.all():
        rejected["ecg"] = {"invalid_sample": int((~ok).sum())}
        notes.append(f"{path.name}: {int((~ok).sum())} invalid samples in lead {lead!r} dropped")
    t, v = np.ascontiguousarray(t[ok]), np.ascontiguousarray(uv[ok].astype(np.float32)[:, None])
    t.flags.writeable = False
    v.flags.writeable = False
    all_labels = sorted([*labels, *faults])
    return Recording(
        path=path,
        data={Stream.ECG: (t, v)},
        labels=all_labels,
        rejected=rejected,
        notes=notes,
        beats=beats,
        meta={**meta, "lead": lead, "rate_hz": fs},
    )
