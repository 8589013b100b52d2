"""Detection quality against labels: pure metrics plus the recording replay driver.

Why both live here: ``edgeagent evaluate``, the baseline build, the tests and
the pilot evaluation must score the same way, so the definitions are written
once. The metrics are pure functions of (window spans, scores, decisions,
labels); only ``evaluate_recording`` touches the disk (through
``edgeagent.recording``).

Definitions (docs/model.md has the reasoning):

* A window is *positive* when it overlaps a clinical label by at least
  ``min(POS_OVERLAP_S, half the label)``; *negative* when it overlaps no
  label at all; otherwise (a sliver of overlap, or a sensor-fault label) it
  is left out of the window-level clinical metrics.
* The window-level prediction is "a clinical alert episode is open after this
  window"; AUROC uses the clinical score.
* Per-kind recall is per labelled event: an event counts as detected when a
  window overlapping it (or ending within one window length after it) has a
  clinical episode open. Detection delay is that window's end minus the
  event's start, i.e. the time from onset until the data that raised the
  alert had arrived.
* Sensor faults are scored the same way with ``fault_active``.
* Alert time, false alarms per started alert-hour outside labels, event
  recall and the beat-level figures are ``edgeagent.metrics``' definitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.metrics import (
    alert_spans,
    auroc,
    beat_classification,
    beat_detection,
    beat_scores,
    event_recall,
    false_alarms,
    match_beats,
    time_in_alert,
    total_s,
)

#: Overlap that makes a window positive (seconds), capped at half the label.
POS_OVERLAP_S = 3.0
FAULT_KINDS = ("lead_off", "motion_artifact", "saturation", "sensor_fault")


@dataclass(frozen=True)
class ScoredWindow:
    """The part of a ``Detection`` the metrics need."""

    start: float
    end: float
    score: float
    clinical_active: bool
    fault_active: bool
    status: str = "ok"


def binary_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (precision/recall 0 when undefined) and the counts."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(pred).astype(bool)
    tp = int((y & pred).sum())
    fp = int((~y & pred).sum())
    fn = int((y & ~pred).sum())
    tn = int((~y & ~pred).sum())
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def window_labels(
    spans: Sequence[tuple[float, float]],
    labels: Iterable[tuple[float, float, str]],
    fault_kinds: Sequence[str] = FAULT_KINDS,
) -> tuple[np.ndarray, list[str]]:
    """Per window: 1 positive, 0 negative, -1 excluded; and its clinical kind ("" if none)."""
    labels = list(labels)
    y = np.zeros(len(spans), np.int8)
    kinds = [""] * len(spans)
    for i, (w0, w1) in enumerate(spans):
        best = 0.0
        excluded = False
        for s, e, k in labels:
            ov = _overlap(w0, w1, s, e)
            if ov <= 0 and not (s == e and w0 <= s < w1):
                continue
            if k in fault_kinds:
                excluded = True
                continue
            need = min(POS_OVERLAP_S, 0.5 * (e - s))
            if ov >= need and ov > best:
                best, kinds[i] = ov, k
            elif ov < need:
                excluded = True
        y[i] = 1 if best > 0 else (-1 if excluded else 0)
    return y, kinds


def score_windows(
    windows: Sequence[ScoredWindow],
    labels: Iterable[tuple[float, float, str]],
    window_s: float,
    duration_s: float | None = None,
    fault_kinds: Sequence[str] = FAULT_KINDS,
    hop_s: float | None = None,
    end_s: float | None = None,
) -> dict[str, Any]:
    """Every window- and alert-level metric ``edgeagent evaluate`` reports.

    ``hop_s`` (default: the median spacing of the window ends) is how long a
    decision holds, never past ``end_s`` (the recording's last sample;
    default: the first window's start plus ``duration_s``); ``window_s`` is
    also the grace after a label's end within which an alert still belongs to it.
    """
    labels = sorted(labels)
    ws = [w for w in windows if w.status == "ok"]
    spans = [(w.start, w.end) for w in ws]
    y, _ = window_labels(spans, labels, fault_kinds)
    keep = y >= 0
    score = np.asarray([w.score for w in ws], np.float64)
    pred = np.asarray([w.clinical_active for w in ws], bool)
    out: dict[str, Any] = {}
    if keep.any():
        out.update(binary_metrics(y[keep] == 1, pred[keep]))
    else:
        out.update(binary_metrics(np.zeros(0, bool), np.zeros(0, bool)))
    out["auroc"] = auroc(y[keep] == 1, score[keep]) if keep.any() else float("nan")
    out["windows"] = len(windows)
    out["windows_scored"] = len(ws)
    out["windows_positive"] = int((y == 1).sum())
    out["windows_negative"] = int((y == 0).sum())
    out["windows_excluded"] = int((y < 0).sum())

    starts = np.asarray([w.start for w in ws])
    ends = np.asarray([w.end for w in ws])
    clin = pred
    fault = np.asarray([w.fault_active for w in ws], bool)
    per_kind: dict[str, dict[str, Any]] = {}
    delays: list[float] = []
    fault_events = fault_hits = 0
    fault_as_clinical = 0
    for s, e, k in labels:
        is_fault = k in fault_kinds
        # Windows that saw the event (overlap) or ended within one window after it.
        sel = (ends > s) & (starts < e + window_s) if len(ws) else np.zeros(0, bool)
        active = fault if is_fault else clin
        hit_idx = np.flatnonzero(sel & active)
        detected = hit_idx.size > 0
        if is_fault:
            fault_events += 1
            fault_hits += int(detected)
            fault_as_clinical += int(np.any(sel & clin & (starts >= s) & (ends <= e + window_s)))
            kind = "sensor_fault:" + k
        else:
            kind = k
        d = per_kind.setdefault(kind, {"events": 0, "detected": 0, "delays": []})
        d["events"] += 1
        if detected:
            d["detected"] += 1
            delay = max(0.0, float(ends[hit_idx[0]] - s))
            d["delays"].append(delay)
            if not is_fault:
                delays.append(delay)
    out["per_kind"] = {
        k: {
            "events": v["events"],
            "detected": v["detected"],
            "recall": v["detected"] / v["events"] if v["events"] else float("nan"),
            "median_delay_s": float(np.median(v["delays"])) if v["delays"] else None,
        }
        for k, v in sorted(per_kind.items())
    }
    out["detection_delay_s"] = {
        "median": float(np.median(delays)) if delays else None,
        "p90": float(np.quantile(delays, 0.9)) if delays else None,
        "mean": float(np.mean(delays)) if delays else None,
    }
    out["fault_recall"] = fault_hits / fault_events if fault_events else None
    out["faults_raised_clinical"] = fault_as_clinical
    if duration_s is None and ws:
        duration_s = float(ends.max() - starts.min())
    hours = (duration_s or 0.0) / 3600.0
    # Episodes = rising edges of clinical_active; an onset on a labelled-negative window.
    edges = np.flatnonzero(clin & ~np.r_[False, clin[:-1]]) if len(ws) else np.zeros(0, int)
    false_eps = int(sum(1 for i in edges if y[i] == 0))
    out["clinical_episodes"] = len(edges)
    out["false_alarm_onsets_per_hour"] = false_eps / hours if hours > 0 else None
    if hop_s is None:
        hop_s = float(np.median(np.diff(np.sort(ends)))) if len(ws) > 1 else window_s
    hop_s = hop_s if hop_s > 0 else window_s
    until = None
    if len(ws):
        last = end_s if end_s is not None else float(starts.min()) + (duration_s or 0.0)
        until = min(float(ends.max()) + hop_s, max(last, float(ends.max())))
    spans = alert_spans(ends, clin, hop_s, until=until)
    fa = false_alarms(spans, labels, duration_s or 0.0, window_s, fault_kinds)
    ev = event_recall(spans, labels, window_s, fault_kinds)
    out["alert_spans"] = len(spans)
    out["alert_s"] = total_s(spans)
    out["time_in_alert"] = time_in_alert(spans, duration_s or 0.0)
    out["false_alarms"] = fa["false_alarms"]
    out["alert_s_outside_labels"] = fa["alert_s_outside_labels"]
    out["false_alarms_per_hour"] = fa["false_alarms_per_hour"] if hours > 0 else None
    out["events"] = ev["events"]
    out["events_detected"] = ev["detected"]
    out["event_recall"] = ev["recall"]
    return out


def detect_beats(t: np.ndarray, uv: np.ndarray, fs: float) -> np.ndarray:
    """Beat times (s) the pipeline's QRS detector finds, segment by contiguous segment."""
    from edgeagent.pipeline.ecg import contiguous_segments, detect_r_peaks

    out = [t[sl][detect_r_peaks(uv[sl], fs)] for sl in contiguous_segments(t, fs)]
    return np.concatenate(out) if out else np.zeros(0)


#: Below this QRS sensitivity against the annotations, the annotations are
#: probably not this signal's (another record, another time base).
ANNOTATION_AGREEMENT_MIN = 0.5


def tracked_beat_scores(ref_t: np.ndarray, events: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Each reference beat's score and flag from the box's beat tracker (``BeatTracker.events``).

    The tracker scores every beat against the patient's own template and rhythm
    (``pipeline.beats``); a reference beat takes the score of the tracked beat
    matched to it within 150 ms (NaN when none is) and is flagged when that beat
    was labelled anything but N. This, not the window score, is how alerts name
    beats, so it is what the beat-level figures report.
    """
    bt = np.asarray([e.t for e in events], np.float64)
    score = np.full(ref_t.shape[0], np.nan)
    flag = np.zeros(ref_t.shape[0], bool)
    if bt.size:
        mr, mt = match_beats(ref_t, bt)
        score[mr] = np.asarray([events[i].score for i in mt], np.float64)
        flag[mr] = np.asarray([events[i].label != "N" for i in mt], bool)
    return score, flag


def score_beats(
    ref_t: np.ndarray,
    ref_aami: np.ndarray,
    detected_t: np.ndarray,
    windows: Sequence[ScoredWindow],
    events: Sequence[Any] = (),
) -> dict[str, Any]:
    """Beat-level figures: QRS detection (EC57) and abnormal-beat scoring.

    ``abnormal`` scores each reference beat by the box's beat tracker (``events``,
    see :func:`tracked_beat_scores`); ``abnormal_by_window`` by the highest clinical
    score of the windows containing it, flagged when one of them had a clinical
    alert open (a window score cannot single out one premature beat among ten
    normal ones, which is why both are reported).
    """
    ws = [w for w in windows if w.status == "ok"]
    starts = np.asarray([w.start for w in ws], np.float64)
    ends = np.asarray([w.end for w in ws], np.float64)
    sc = beat_scores(ref_t, starts, ends, [w.score for w in ws])
    act = beat_scores(ref_t, starts, ends, [float(w.clinical_active) for w in ws])
    out: dict[str, Any] = dict(beat_detection(ref_t, detected_t))
    out["by_class"] = {c: int((ref_aami == c).sum()) for c in ("N", "S", "V", "F", "Q")}
    by_window = beat_classification(ref_aami, sc, flagged=np.nan_to_num(act) >= 0.5)
    out["abnormal_by_window"] = by_window
    if len(events):
        score, flag = tracked_beat_scores(ref_t, events)
        out["abnormal"] = beat_classification(ref_aami, score, flagged=flag)
    else:
        out["abnormal"] = by_window
    return out


def _clean(o: Any) -> Any:
    """JSON-safe copy: NaN -> None."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, np.floating | np.integer):
        return _clean(o.item())
    return o


def evaluate_recording(
    path: Path | str,
    model_bytes: bytes,
    model_label: str = "file",
    window_s: float = 10.0,
    hop_s: float = 2.0,
    personalise: bool = True,
    lead: str | None = None,
    annotations: str | None = None,
    span_s: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Replay a recording through windows and the detector; return the metrics.

    ``path`` is a recording directory, a WFDB record or an EDF file
    (``edgeagent.sources.records``); ``lead`` / ``annotations`` choose the
    record's ECG lead and annotator. ``span_s`` keeps only ``[start, end)``
    seconds from the recording's start (a quick look at a long record). Works
    with any subset of streams at any rate (missing modalities are masked and
    named in ``warnings``). Raises ``RecordingError`` for an unreadable
    recording and ``ModelError`` for an unusable model.
    """
    import time

    from edgeagent.pipeline.alerts import MemoryAlertSink
    from edgeagent.pipeline.detect import MODALITY_STREAMS, Detector, DetectorConfig
    from edgeagent.pipeline.windows import Windower
    from edgeagent.sources.records import open_recording
    from edgeagent.streams import Stream

    t_start = time.perf_counter()
    rec = open_recording(path, lead=lead, annotations=annotations)
    if span_s is not None:
        rec = _cut(rec, span_s)
    patient = Path(path).name
    sink = MemoryAlertSink()
    det = Detector(model_bytes, model_label, sink, DetectorConfig(personalise=personalise))
    win = Windower(window_s, hop_s, patient=patient)
    scored: list[ScoredWindow] = []

    def run(ws: Iterable[Any]) -> None:
        for w in ws:
            d = det.process(w)
            scored.append(
                ScoredWindow(d.start, d.end, d.score, d.clinical_active, d.fault_active, d.status)
            )

    for block in rec.blocks():
        win.push(block)
        run(win.pop_ready())
    run(win.flush())
    labels = [(float(s), float(e), str(k)) for s, e, k in rec.labels]
    out = score_windows(
        scored, labels, window_s, duration_s=float(rec.duration), hop_s=hop_s, end_s=rec.end
    )
    warnings: list[str] = []
    rejected = dict(getattr(rec, "rejected", {}))
    for name, why in sorted(rejected.items()):
        warnings.append(
            f"{name}: {sum(why.values())} rows dropped ("
            + ", ".join(f"{k} {v}" for k, v in sorted(why.items()))
            + ")"
        )
    missing = [m for m, ss in MODALITY_STREAMS.items() if not set(ss) & set(rec.streams)]
    if missing:
        warnings.append(
            f"no {', '.join(missing)} data: those modalities are masked, "
            "their classes rest on the other streams alone"
        )
    if rec.beats is not None and len(rec.beats) and Stream.ECG in rec.streams:
        t, v = rec.data[Stream.ECG]
        detected = detect_beats(t, v[:, 0].astype(np.float64), rec.rate(Stream.ECG))
        tracker = det.trackers.get(patient)
        events = tracker.events if tracker is not None else ()
        beats = score_beats(rec.beats.t, rec.beats.aami, detected, scored, events)
        if beats["reference"] >= 20 and beats["sensitivity"] < ANNOTATION_AGREEMENT_MIN:
            warnings.append(
                f"beat annotations disagree with the signal: only {beats['sensitivity']:.0%} of "
                "annotated beats have a detected QRS within 150 ms (annotations of another "
                "record, another lead's time base, or a very noisy lead?)"
            )
        out["beats"] = beats
        out["beat_sensitivity"] = beats["sensitivity"]
        out["beat_positive_predictivity"] = beats["positive_predictivity"]
        out["beat_auroc"] = beats["abnormal"]["auroc"]
    else:
        out["beats"] = None
        out["beat_sensitivity"] = out["beat_positive_predictivity"] = out["beat_auroc"] = None
    out["recording"] = str(path)
    out["format"] = rec.meta.get("format", "csv")
    out["lead"] = rec.meta.get("lead")
    out["streams"] = sorted(str(s) for s in rec.streams)
    out["missing_modalities"] = missing
    out["duration_s"] = float(rec.duration)
    out["model"] = model_label
    out["alerts"] = len(sink.alerts)
    out["rejected_rows"] = rejected
    out["labels"] = len(labels)
    out["notes"] = list(rec.notes)
    out["warnings"] = warnings
    out["runtime_s"] = time.perf_counter() - t_start
    return _clean(out)


def _cut(rec: Any, span_s: tuple[float, float]) -> Any:
    """The part of ``rec`` within ``span_s`` seconds of its start (labels and beats clipped)."""
    from dataclasses import replace

    a, b = rec.start + span_s[0], rec.start + span_s[1]
    if not b > a:
        raise ValueError(f"empty span {span_s!r}")
    data = {}
    for s, (t, v) in rec.data.items():
        i0, i1 = np.searchsorted(t, [a, b], side="left")
        data[s] = (t[i0:i1], v[i0:i1])
    labels = [(max(s, a), min(e, b), k) for s, e, k in rec.labels if e >= a and s < b]
    beats = rec.beats
    if beats is not None:
        keep = (beats.t >= a) & (beats.t < b)
        beats = type(beats)(beats.t[keep], beats.symbol[keep], beats.aami[keep])
    return replace(rec, data=data, labels=labels, beats=beats)
