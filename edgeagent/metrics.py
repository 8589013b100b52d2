"""Beat- and alert-level scoring that a detector cannot game: pure functions, no I/O.

Window accuracy alone rewards a detector that is always on (every window of
an arrhythmia record "contains" something) and a false-alarm rate that counts
alert *onsets* forgives an alert that never closes. These functions score
what a clinician lives with instead:

* **Beats** (ANSI/AAMI EC57, as WFDB's ``bxb`` does it): a detected beat
  matches a reference beat when they are at most ``BEAT_MATCH_TOL_S`` (150 ms)
  apart, one-to-one, closest pairs first. Sensitivity = matched / reference,
  positive predictivity = matched / detected.
* **Beat classes**: AUROC of a per-beat anomaly score for the abnormal AAMI
  classes (S, V, F) against normal beats (N); unclassifiable beats (Q) are
  left out. Optional sensitivity / positive predictivity of a per-beat flag.
* **Alert time**: the detector's decision after each window holds until the
  next decision (at most ``hold_s``); the union of the time a clinical alert
  is open gives *alert spans*.
* **False alarms**: every alert span minus the time covered by clinical
  labels (each label extended by ``grace_s`` after its end, the allowance for
  an alert that the window length makes late) leaves *outside pieces*. Each
  contiguous outside piece counts ``ceil(length / 1 h)`` false alarms: a
  10-second spurious alert is one, an alert that runs 5 hours outside any
  label is five, an alert inside a label is none. Sensor-fault labels do not
  cover: a clinical alert raised on a lead-off is a false alarm.
  ``false_alarms_per_hour`` divides by the monitored duration.
* **Event recall**: a clinical label is detected when an alert span overlaps
  it or starts within ``grace_s`` after it ends.

docs/model.md ("Evaluation") carries the same definitions for users.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: EC57 beat-matching window (seconds), either side.
BEAT_MATCH_TOL_S = 0.150
#: AAMI EC57 beat classes: normal, supraventricular ectopic, ventricular
#: ectopic, fusion, unclassifiable.
AAMI_CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
#: Classes that count as abnormal beats for beat-level AUROC.
ABNORMAL_CLASSES: tuple[str, ...] = ("S", "V", "F")
#: One false alarm per started hour of a contiguous outside-label alert piece.
ALARM_HOUR_S = 3600.0
#: Outside pieces shorter than this are rounding, not alerts (seconds).
_EPS_S = 1e-6

Span = tuple[float, float]
Label = tuple[float, float, str]


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties averaged.

    NaN when only one class is present (undefined, not 0.5).
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------- beats


def match_beats(
    ref_t: Sequence[float] | np.ndarray,
    test_t: Sequence[float] | np.ndarray,
    tol_s: float = BEAT_MATCH_TOL_S,
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of detected to reference beat times within ``tol_s`` (inclusive).

    Closest pairs are matched first, so a detection between two reference
    beats goes to the nearer one and no beat is used twice. Returns the
    matched indices into ``ref_t`` and ``test_t`` (equal length, sorted by the
    reference index). Inputs need not be sorted.
    """
    ref = np.asarray(ref_t, np.float64).ravel()
    test = np.asarray(test_t, np.float64).ravel()
    if not (math.isfinite(tol_s) and tol_s >= 0):
        raise ValueError(f"tol_s must be a finite number >= 0, got {tol_s!r}")
    if ref.size == 0 or test.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t_order = np.argsort(test, kind="stable")
    ts = test[t_order]
    lo = np.searchsorted(ts, ref - tol_s - 1e-12, side="left")
    hi = np.searchsorted(ts, ref + tol_s + 1e-12, side="right")
    counts = np.maximum(hi - lo, 0)
    if counts.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ri = np.repeat(np.arange(ref.size), counts)
    offs = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    tj = np.repeat(lo, counts) + offs
    dt = np.abs(ts[tj] - ref[ri])
    keep = dt <= tol_s + 1e-12
    ri, tj, dt = ri[keep], tj[keep], dt[keep]
    order = np.lexsort((tj, ri, dt))
    used_r = np.zeros(ref.size, bool)
    used_t = np.zeros(ts.size, bool)
    pr: list[int] = []
    pt: list[int] = []
    for k in order.tolist():
        r, t = int(ri[k]), int(tj[k])
        if used_r[r] or used_t[t]:
            continue
        used_r[r] = used_t[t] = True
        pr.append(r)
        pt.append(int(t_order[t]))
    a = np.asarray(pr, np.int64)
    b = np.asarray(pt, np.int64)
    by_ref = np.argsort(a, kind="stable")
    return a[by_ref], b[by_ref]


def beat_detection(
    ref_t: Sequence[float] | np.ndarray,
    test_t: Sequence[float] | np.ndarray,
    tol_s: float = BEAT_MATCH_TOL_S,
) -> dict[str, Any]:
    """EC57 QRS detection figures: tp, fn, fp, sensitivity, positive predictivity.

    Sensitivity is NaN without reference beats, positive predictivity NaN
    without detections (undefined, not 0 or 1).
    """
    ref = np.asarray(ref_t, np.float64).ravel()
    test = np.asarray(test_t, np.float64).ravel()
    mr, _ = match_beats(ref, test, tol_s)
    tp = int(mr.size)
    return {
        "reference": int(ref.size),
        "detected": int(test.size),
        "tp": tp,
        "fn": int(ref.size) - tp,
        "fp": int(test.size) - tp,
        "sensitivity": _ratio(tp, int(ref.size)),
        "positive_predictivity": _ratio(tp, int(test.size)),
    }


def beat_scores(
    beat_t: Sequence[float] | np.ndarray,
    win_start: Sequence[float] | np.ndarray,
    win_end: Sequence[float] | np.ndarray,
    win_score: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Per beat, the highest score of the windows that contain it (NaN where none does).

    This lets a window-level detector be scored beat by beat: a beat is as
    suspicious as the most suspicious window that saw it.
    """
    bt = np.asarray(beat_t, np.float64).ravel()
    w0 = np.asarray(win_start, np.float64).ravel()
    w1 = np.asarray(win_end, np.float64).ravel()
    ws = np.asarray(win_score, np.float64).ravel()
    if not (w0.size == w1.size == ws.size):
        raise ValueError("win_start, win_end and win_score must have the same length")
    out = np.full(bt.size, np.nan)
    if bt.size == 0 or w0.size == 0:
        return out
    order = np.argsort(bt, kind="stable")
    sb = bt[order]
    best = np.full(bt.size, -np.inf)
    for a, b, s in zip(w0.tolist(), w1.tolist(), ws.tolist(), strict=True):
        if not math.isfinite(s):
            continue
        i0, i1 = np.searchsorted(sb, [a, b], side="left")
        if i1 > i0:
            np.maximum(best[i0:i1], s, out=best[i0:i1])
    seen = np.isfinite(best)
    out[order[seen]] = best[seen]
    return out


def beat_classification(
    aami: Sequence[str] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    flagged: Sequence[bool] | np.ndarray | None = None,
    positive: Sequence[str] = ABNORMAL_CLASSES,
    negative: Sequence[str] = ("N",),
) -> dict[str, Any]:
    """Abnormal-beat scoring: AUROC of ``scores`` (positive classes vs negative).

    Beats whose class is in neither set (Q by default) or whose score is NaN
    are left out and counted in ``beats_unscored``. With ``flagged`` (a
    per-beat decision) also the sensitivity and positive predictivity of the
    flag for abnormal beats.
    """
    cls = np.asarray(aami).astype(str).ravel()
    sc = np.asarray(scores, np.float64).ravel()
    if cls.size != sc.size:
        raise ValueError(f"{cls.size} classes but {sc.size} scores")
    pos = np.isin(cls, list(positive))
    neg = np.isin(cls, list(negative))
    use = (pos | neg) & np.isfinite(sc)
    out: dict[str, Any] = {
        "positives": int((pos & use).sum()),
        "negatives": int((neg & use).sum()),
        "beats_unscored": int((~use).sum()),
        "auroc": auroc(pos[use], sc[use]) if use.any() else float("nan"),
    }
    if flagged is not None:
        fl = np.asarray(flagged, bool).ravel()
        if fl.size != cls.size:
            raise ValueError(f"{cls.size} classes but {fl.size} flags")
        m = pos | neg
        tp = int((fl & pos).sum())
        out["sensitivity"] = _ratio(tp, int(pos.sum()))
        out["positive_predictivity"] = _ratio(tp, int((fl & m).sum()))
    return out


# --------------------------------------------------------------------------- spans


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Union of intervals, sorted, touching ones joined; empty ones dropped."""
    out: list[list[float]] = []
    for a, b in sorted((float(a), float(b)) for a, b in spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def alert_spans(
    ends: Sequence[float] | np.ndarray,
    active: Sequence[bool] | np.ndarray,
    hold_s: float,
    until: float | None = None,
) -> list[Span]:
    """Time during which an alert is open, from per-window decisions.

    The decision taken at window end ``ends[i]`` holds until the next
    decision, but at most ``hold_s`` (a gap in the windows is not alert time
    by default); nothing extends past ``until`` when given. Returns merged
    ``(start, end)`` spans.
    """
    e = np.asarray(ends, np.float64).ravel()
    act = np.asarray(active, bool).ravel()
    if e.size != act.size:
        raise ValueError(f"{e.size} window ends but {act.size} decisions")
    if not (math.isfinite(hold_s) and hold_s > 0):
        raise ValueError(f"hold_s must be > 0, got {hold_s!r}")
    order = np.argsort(e, kind="stable")
    e, act = e[order], act[order]
    nxt = np.r_[e[1:], np.inf] if e.size else e
    stop = np.minimum(nxt, e + hold_s)
    if until is not None:
        stop = np.minimum(stop, until)
    return _merge(zip(e[act].tolist(), stop[act].tolist(), strict=True))


def total_s(spans: Iterable[Span]) -> float:
    """Seconds covered by the union of ``spans``."""
    return float(sum(b - a for a, b in _merge(spans)))


def time_in_alert(spans: Iterable[Span], duration_s: float) -> float:
    """Fraction of ``duration_s`` spent with an alert open (NaN for a zero duration)."""
    if not duration_s > 0:
        return float("nan")
    return min(1.0, total_s(spans) / duration_s)


def _subtract(span: Span, cover: list[Span]) -> list[Span]:
    """``span`` minus the (merged, sorted) ``cover``: the pieces left, in order."""
    a, b = span
    pieces: list[Span] = []
    cur = a
    for c0, c1 in cover:
        if c1 <= cur:
            continue
        if c0 >= b:
            break
        if c0 > cur:
            pieces.append((cur, min(c0, b)))
        cur = max(cur, c1)
        if cur >= b:
            break
    if cur < b:
        pieces.append((cur, b))
    return [(p0, p1) for p0, p1 in pieces if p1 - p0 > _EPS_S]


def _clinical_cover(
    labels: Iterable[Label], grace_s: float, fault_kinds: Sequence[str]
) -> list[Span]:
    return _merge((s, e + grace_s) for s, e, k in labels if k not in fault_kinds)


def false_alarms(
    spans: Iterable[Span],
    labels: Iterable[Label],
    duration_s: float,
    grace_s: float = 0.0,
    fault_kinds: Sequence[str] = (),
    hour_s: float = ALARM_HOUR_S,
) -> dict[str, Any]:
    """False alarms counted per started alert-hour outside clinical labels (module docstring).

    Returns ``false_alarms`` (count), ``alert_s_outside_labels``,
    ``outside_pieces`` and ``false_alarms_per_hour`` (count per monitored
    hour; NaN for a zero duration).
    """
    cover = _clinical_cover(labels, grace_s, fault_kinds)
    pieces = [p for sp in _merge(spans) for p in _subtract(sp, cover)]
    count = sum(math.ceil((p1 - p0) / hour_s - 1e-9) for p0, p1 in pieces)
    hours = duration_s / 3600.0 if duration_s > 0 else 0.0
    return {
        "false_alarms": int(count),
        "alert_s_outside_labels": float(sum(p1 - p0 for p0, p1 in pieces)),
        "outside_pieces": len(pieces),
        "false_alarms_per_hour": count / hours if hours > 0 else float("nan"),
    }


def event_recall(
    spans: Iterable[Span],
    labels: Iterable[Label],
    grace_s: float = 0.0,
    fault_kinds: Sequence[str] = (),
) -> dict[str, Any]:
    """Clinical events with an alert span overlapping ``[start, end + grace_s]``.

    Fault labels are not events here. Returns ``events``, ``detected`` and
    ``recall`` (NaN without events).
    """
    merged = _merge(spans)
    starts = np.asarray([a for a, _ in merged])
    stops = np.asarray([b for _, b in merged])
    events = detected = 0
    for s, e, k in labels:
        if k in fault_kinds:
            continue
        events += 1
        hi = e + grace_s
        # A zero-length label (an instant) is hit by a span that contains it.
        hit = (starts <= hi) & (stops > s) if merged else np.zeros(0, bool)
        detected += int(bool(np.any(hit)))
    return {"events": events, "detected": detected, "recall": _ratio(detected, events)}
