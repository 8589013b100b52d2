"""Which classes a window can show, and the beats an alert names: pure rules, no I/O.

Why apart from the detector: these rules are what made the simulator-trained
head usable on real ECG (docs/clinical-evidence.md), and each is a small
judgement of its own that tests and readers should see whole: a class needs
the modality it is seen through, an ectopy class needs abnormal beats, a rate
class needs a rate unusual for the patient. The detector applies them to the
model's probabilities (``Detector._mask_classes``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from edgeagent.pipeline import beats

#: The modality a clinical class can only be seen through; a class whose modality is
#: absent from a window (or, for ECG, of too poor quality) cannot be that window's
#: answer. A model may override this with ``info["class_modality"]``.
CLASS_MODALITY: dict[str, str] = {
    "tachycardia": "ecg",
    "bradycardia": "ecg",
    "af": "ecg",
    "pvc": "ecg",
    "st_change": "ecg",
    "fall": "acc",
    "fever": "temp",
    "hypothermia": "temp",
}
#: Classes that describe ectopic beats, and how many beats of abnormal (ventricular)
#: shape a window must hold before the class may be its answer: an isolated early
#: beat is normal for most people, and atrial premature beats, however close
#: together (record 100 has pairs within 10 s), are not PVCs; the simulator's
#: bigeminy/trigeminy puts 2-4 ventricular beats in every 10 s window.
ECTOPY_MIN_BEATS: dict[str, int] = {"pvc": 2}
#: Rate classes judge the rate against the patient's own normal: after warm-up
#: they need the heart rate this many personal spreads away from the patient's
#: median (an ICU patient resting at 127 bpm is not in a new tachycardia) ...
RATE_Z = 2.0
#: ... unless it is beyond these absolute limits (bpm), which always count.
RATE_LIMITS_BPM = (40.0, 150.0)
RATE_SIGN: dict[str, float] = {"tachycardia": 1.0, "bradycardia": -1.0}
#: Poor ECG quality in any of the patient's last this many windows (the current
#: one included) keeps the ECG classes unavailable: noise comes in bursts, and
#: with 10 s windows at a 2 s hop a window shares data with the 4 before it, so
#: it holds part of any burst they saw even when its own index reads well.
SQI_HOLD_WINDOWS = 5


def unavailable_classes(
    classes: Sequence[str],
    class_modality: Sequence[str],
    absent: Collection[str],
    abnormal_beats: int | None,
    hr_bpm: float,
    hr_z: float | None,
) -> list[int]:
    """Indices of the classes a window cannot show.

    A class cannot be shown when its modality (``class_modality``, per class,
    "" for none) is in ``absent`` (missing, or for ECG unusable or not yet
    calibrated); an ectopy class when the window holds fewer abnormal beats
    than ``ECTOPY_MIN_BEATS`` asks (``abnormal_beats`` None: not known, not
    applied); a rate class when ``hr_z`` (the heart rate in the patient's own
    spreads; None before the calibration is personal) is under ``RATE_Z`` in
    the class's direction and the rate is inside ``RATE_LIMITS_BPM``.
    """
    drop = [i for i, m in enumerate(class_modality) if m and m in absent]
    if abnormal_beats is not None:
        for c, n in ECTOPY_MIN_BEATS.items():
            if c in classes and abnormal_beats < n:
                drop.append(list(classes).index(c))
    if hr_z is not None and np.isfinite(hr_z) and np.isfinite(hr_bpm):
        lo, hi = RATE_LIMITS_BPM
        for c, sign in RATE_SIGN.items():
            extreme = hr_bpm >= hi if sign > 0 else hr_bpm <= lo
            if c in classes and sign * hr_z < RATE_Z and not extreme:
                drop.append(list(classes).index(c))
    return sorted(set(drop))


def move_to_normal(p: np.ndarray, drop: Sequence[int]) -> np.ndarray:
    """``p`` with the mass of the ``drop`` classes moved to class 0 ("normal").

    To normal, not spread over the other classes: renormalising would inflate
    the remaining clinical classes (a missing thermometer must not make
    tachycardia likelier), so clinical scores only ever go down.
    """
    if not len(drop):
        return p
    q = np.asarray(p, np.float32).copy()
    idx = list(drop)
    q[0] += float(q[idx].sum())  # class 0 is "normal" (ModelSpec enforces it)
    q[idx] = 0.0
    return q


def beat_detail(tracker: beats.BeatTracker, start: float, end: float) -> dict[str, Any]:
    """The abnormal beats a tracker scored in ``[start, end]``, for an alert's ``detail``."""
    evs = [e for e in tracker.events if start <= e.t <= end and e.label != "N"]
    out: dict[str, Any] = {
        "window": [start, end],
        "beats": [{"t": round(e.t, 3), "label": e.label, "score": round(e.score, 2)} for e in evs],
    }
    text = beats.describe(evs)
    if text:
        out["text"] = text
    return out
