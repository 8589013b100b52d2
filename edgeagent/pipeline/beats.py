"""Beat-level ECG analysis relative to the patient's own normal beat, and signal quality.

Why this module exists: a model trained on simulated windows learned the
simulator's absolute numbers (R amplitude in uV, QRS width, ST level), and a
real lead differs in polarity, gain, wander and morphology. What transfers
between patients is *relative*: how a beat's shape differs from the same
patient's dominant beat, how early it comes against the local rhythm, whether
a pause follows. So every quantity here is a ratio or a correlation, and the
dominant-beat template is learned per patient on the box (``BeatTracker``),
never sent anywhere.

Pure numpy (filters from ``pipeline.dsp``) except ``BeatTracker``, which
keeps a patient's template and recent RR history between calls (a few kB per
patient). ECG in microvolts, rates in Hz.

References: beat matching/definitions after ANSI/AAMI EC57; prematurity and
compensatory pause as in the classic Holter ectopy criteria (a beat earlier
than ~80-85 % of the local mean RR, followed by a pause); the signal-quality
index combines the kurtosis SQI and detector-agreement SQI of Li, Mark &
Clifford, Physiol. Meas. 29(1), 2008 ("bSQI", "kSQI") with flatline/clip and
out-of-band power checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgeagent.pipeline import dsp, ecg

#: Beats are resampled onto this grid so templates compare across sampling rates.
GRID_HZ = 250.0
#: Span of a beat around its R peak, seconds: P wave through the end of the T wave.
SPAN_S = (-0.24, 0.40)
#: Where the QRS (the part ventricular ectopy changes most) sits in that span.
QRS_S = (-0.08, 0.10)
#: PR baseline, for per-beat baseline removal (wander cancels beat by beat).
PR_S = (-0.10, -0.06)
#: Low-pass before cutting beats: wave shape, not sample noise.
LOWPASS_HZ = 35.0
#: Local rhythm: the mean of up to this many preceding normal RR intervals.
LOCAL_RR_BEATS = 8
#: A beat earlier than this fraction of the local mean RR is premature.
PREMATURE_RATIO = 0.85
#: ... and a following RR above this fraction of the local mean is a compensatory pause.
PAUSE_RATIO = 1.10
#: Normalised morphology distance above which a beat's shape is "not the dominant beat"
#: (record 100's normal beats: 99th percentile 0.55, 99.9th 0.68; its PVC 3.7).
MORPH_ABNORMAL = 0.8
#: Template update: exponential weight of a new normal beat (~1/alpha beats of memory).
TEMPLATE_ALPHA = 0.05
#: Beats the tracker needs before its template is trusted.
TEMPLATE_MIN_BEATS = 8
#: Beat score above which a beat is reported as abnormal.
BEAT_ABNORMAL_SCORE = 1.0
#: Signal quality below this gates ECG clinical decisions into "signal quality"
#: (real records: every window of MIT-BIH 100, PTB s0010_re and the simulator's
#: patients scores >= 0.9; the muscle-noise bursts of CinC a103l score 0-0.88).
SQI_MIN = 0.8


@dataclass(frozen=True)
class BeatSet:
    """Beats of one contiguous segment, polarity- and gain-normalised, on the GRID_HZ grid."""

    peaks: np.ndarray  # R-peak sample indices into the segment (int64)
    waves: np.ndarray  # (n, L) beats, baseline removed, divided by the gain
    polarity: float  # +1 or -1: sign applied so the dominant QRS deflection is positive
    gain_uv: float  # median dominant-deflection amplitude, uV (what the waves were divided by)


@dataclass(frozen=True)
class BeatFeatures:
    """Per-beat measures against a template and the local rhythm (arrays of length n)."""

    corr: np.ndarray  # Pearson r of the QRS with the template's
    dist: np.ndarray  # ||beat - template|| / ||template|| over the QRS (gain-free)
    width_ratio: np.ndarray  # QRS width / template QRS width
    prematurity: np.ndarray  # RR before / local mean RR (NaN for the first beat)
    pause: np.ndarray  # RR after / local mean RR (NaN for the last beat)
    score: np.ndarray  # combined anomaly score (0 = like the dominant beat, on time)
    label: np.ndarray  # "N" normal, "S" premature narrow, "V" abnormal shape (str array)


@dataclass(frozen=True)
class SignalQuality:
    """Signal-quality indices of one ECG segment and their combination ``sqi`` (0..1)."""

    sqi: float
    kurtosis: float
    detector_agreement: float  # F1 of two independent QRS detectors (bSQI)
    qrs_power_ratio: float  # power 5-15 Hz / power 1-40 Hz
    hf_ratio: float  # power above 40 Hz / total
    flatline_frac: float
    clip_frac: float


def _grid_offsets() -> np.ndarray:
    return np.arange(round(SPAN_S[0] * GRID_HZ), round(SPAN_S[1] * GRID_HZ) + 1) / GRID_HZ


_GRID_T = _grid_offsets()
_QRS = (QRS_S[0] <= _GRID_T) & (QRS_S[1] >= _GRID_T)
_PR = (PR_S[0] <= _GRID_T) & (PR_S[1] >= _GRID_T)


def cut_beats(x: np.ndarray, fs: float, peaks: np.ndarray) -> BeatSet:
    """Cut, baseline-correct, polarity- and gain-normalise the beats at ``peaks``.

    Polarity is decided once per segment by the median beat (a lead placed
    upside down flips every beat, not some), and the gain is the median
    amplitude of the dominant QRS deflection, so a beat's waveform reads in
    units of "this patient's normal R wave". Beats whose span leaves the
    segment are dropped (their peaks too).
    """
    x = np.asarray(x, np.float64)
    peaks = np.asarray(peaks, np.int64)
    b, a = ecg._low(round(fs, 3), LOWPASS_HZ)
    if x.shape[0] > dsp.padlen(b, a):
        x = dsp.filtfilt(b, a, x, fs)
    t = np.arange(x.shape[0]) / fs
    lo, hi = SPAN_S
    end = float(t[-1]) if t.shape[0] else -1.0
    peaks = peaks[(peaks / fs + lo >= 0) & (peaks / fs + hi <= end)]
    if peaks.shape[0] == 0:
        return BeatSet(peaks, np.empty((0, _GRID_T.shape[0])), 1.0, math.nan)
    tq = peaks[:, None] / fs + _GRID_T[None, :]
    waves = np.interp(tq.ravel(), t, x).reshape(tq.shape)
    waves -= np.median(waves[:, _PR], axis=1, keepdims=True)
    med = np.median(waves, axis=0)
    qrs = med[_QRS]
    polarity = 1.0 if qrs.max() >= -qrs.min() else -1.0
    waves *= polarity
    gain = float(np.median(np.max(waves[:, _QRS], axis=1) - np.min(waves[:, _QRS], axis=1)))
    if not gain >= ecg.FLAT_PTP_UV:  # no QRS worth the name: nothing to normalise by
        return BeatSet(peaks, waves, polarity, math.nan)
    return BeatSet(peaks, waves / gain, polarity, gain)


def qrs_width(waves: np.ndarray) -> np.ndarray:
    """QRS width (s) per beat: the span where the slope exceeds 20 % of the beat's steepest."""
    w = np.atleast_2d(waves)[:, _QRS]
    d = np.abs(np.diff(w, axis=1))
    steep = d >= 0.2 * np.maximum(d.max(axis=1, keepdims=True), 1e-12)
    first = np.argmax(steep, axis=1)
    last = d.shape[1] - 1 - np.argmax(steep[:, ::-1], axis=1)
    return (last - first + 1) / GRID_HZ


def beat_features(
    waves: np.ndarray,
    template: np.ndarray,
    rr_before: np.ndarray,
    rr_ref: np.ndarray,
    rr_after: np.ndarray,
) -> BeatFeatures:
    """Morphology against ``template`` and timing against ``rr_ref`` for each beat.

    ``rr_before[i]`` is the interval ending at beat i, ``rr_after[i]`` the
    one starting there, ``rr_ref[i]`` the local normal RR (all seconds; NaN
    where unknown). The score adds the morphology distance (in units of
    ``MORPH_ABNORMAL``) to the prematurity deficit (in units of
    1 - ``PREMATURE_RATIO``), so either one alone at its threshold scores 1.
    """
    waves = np.atleast_2d(np.asarray(waves, np.float64))
    tq = np.asarray(template, np.float64)[_QRS]
    bq = waves[:, _QRS]
    bc = bq - bq.mean(axis=1, keepdims=True)
    tc = tq - tq.mean()
    den = np.sqrt((bc * bc).sum(axis=1) * float((tc * tc).sum()))
    corr = np.divide(bc @ tc, den, out=np.zeros(bq.shape[0]), where=den > 0)
    tn = float(np.linalg.norm(tq))
    dist = np.linalg.norm(bq - tq[None, :], axis=1) / max(tn, 1e-12)
    tw = float(qrs_width(template[None, :])[0])
    width_ratio = qrs_width(waves) / max(tw, 1.0 / GRID_HZ)
    with np.errstate(invalid="ignore", divide="ignore"):
        prem = np.asarray(rr_before, np.float64) / np.asarray(rr_ref, np.float64)
        pause = np.asarray(rr_after, np.float64) / np.asarray(rr_ref, np.float64)
    early = np.where(np.isfinite(prem), np.maximum(0.0, 1.0 - prem), 0.0)
    score = dist / MORPH_ABNORMAL + early / (1.0 - PREMATURE_RATIO)
    label = np.full(bq.shape[0], "N", dtype="<U1")
    label[np.isfinite(prem) & (prem < PREMATURE_RATIO)] = "S"
    label[(dist > MORPH_ABNORMAL) | (width_ratio > 1.5)] = "V"
    return BeatFeatures(corr, dist, width_ratio, prem, pause, score, label)


def segment_beats(x: np.ndarray, fs: float, peaks: np.ndarray) -> tuple[BeatSet, BeatFeatures]:
    """Beats of one window scored against the window's own median beat (no state).

    The median of a window's beats is its dominant beat as long as ectopics
    are a minority; ``BeatTracker`` covers the rest with a template learned
    over minutes.
    """
    bs = cut_beats(x, fs, peaks)
    n = bs.peaks.shape[0]
    if n == 0 or not math.isfinite(bs.gain_uv):
        e = np.empty(0)
        return bs, BeatFeatures(e, e, e, e, e, e, np.empty(0, "<U1"))
    tpl = np.median(bs.waves, axis=0)
    rr_b, rr_a, ref = _rr_context(bs.peaks / fs)
    return bs, beat_features(bs.waves, tpl, rr_b, ref, rr_a)


def _rr_context(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rr = np.diff(t)
    rr_b = np.concatenate(([np.nan], rr))
    rr_a = np.concatenate((rr, [np.nan]))
    med = float(np.median(rr)) if rr.shape[0] else math.nan
    # Within one window the local reference is the median RR: robust to a
    # minority of early beats in either direction.
    return rr_b, rr_a, np.full(t.shape[0], med)


# -- signal quality ------------------------------------------------------------


def _second_detector(x: np.ndarray, fs: float) -> np.ndarray:
    """A deliberately different QRS detector for the agreement SQI.

    Peaks of the absolute 8-20 Hz band-passed slope above 35 % of its 98th
    percentile, 250 ms apart: no adaptive thresholds, no search-back, so on a
    clean ECG it agrees with Pan-Tompkins and on noise it does not.
    """
    b, a = ecg._band(round(fs, 3), 8.0, min(20.0, 0.45 * fs))
    y = np.abs(np.gradient(dsp.filtfilt(b, a, x - x.mean(), fs)))
    thr = 0.35 * float(np.percentile(y, 98))
    if not thr > 0:
        return np.empty(0, np.int64)
    # Zeroing what lies under the threshold first is SciPy's ``height`` filter
    # applied before its ``distance`` rule.
    p = dsp.find_peaks(np.where(y >= thr, y, 0.0), distance=max(1, round(0.25 * fs)))
    return p.astype(np.int64)


def _agreement(a: np.ndarray, b: np.ndarray, tol: int) -> float:
    if a.shape[0] == 0 and b.shape[0] == 0:
        return 0.0
    if a.shape[0] == 0 or b.shape[0] == 0:
        return 0.0
    j = np.searchsorted(b, a)
    d = np.minimum(
        np.abs(a - b[np.clip(j - 1, 0, b.shape[0] - 1)]),
        np.abs(a - b[np.clip(j, 0, b.shape[0] - 1)]),
    )
    matched = int(np.count_nonzero(d <= tol))
    return 2.0 * matched / (a.shape[0] + b.shape[0])


def signal_quality(
    x: np.ndarray,
    fs: float,
    peaks: np.ndarray | None = None,
    quality: ecg.Quality | None = None,
) -> SignalQuality:
    """How far one segment can be trusted for clinical ECG decisions, 0 (noise) to 1 (clean).

    The combination is a minimum of per-index scores, because any one failure
    (lead off, clipping, muscle noise, no recognisable QRS) is enough to make
    "asystole" or "VT" unsafe to call:

    * agreement of two different QRS detectors (bSQI) below 0.6-0.9;
    * power above 40 Hz (muscle noise) above 5-15 % of the total; a
      ventricular rhythm has little there, which keeps a real VT from
      reading as noise;
    * flatline and clip fractions;
    * kurtosis of the signal less its 0.6 s moving mean (a clean ECG is peaky: >5 at rest,
      ~3 at 150 bpm with motion; broadband noise ~0) and the share of
      1-40 Hz power in the QRS band: both low means no QRS stands out, unless
      the two detectors agree on nearly every beat (>= 95 %), which a small
      QRS under tall T waves does (PTB s0010_re, lead II) and noise does not.

    Thresholds were set on the simulator's running patients (must stay
    clean), record 100, s0010_re and 03700181 (real, clean) and the false VT
    alarm v102s (muscle noise, must read as noise). ``peaks`` and ``quality``
    (``ecg.quality`` of the same ``x``) save recomputing what the caller has.
    """
    x = np.asarray(x, np.float64)
    q = ecg.quality(x, fs) if quality is None else quality
    nan = math.nan
    if x.shape[0] < fs or not np.isfinite(x).all() or np.ptp(x) == 0:
        return SignalQuality(0.0, nan, 0.0, nan, q.hf_noise_ratio, 1.0, q.clip_frac)
    p1 = ecg.detect_r_peaks(x, fs) if peaks is None else np.asarray(peaks, np.int64)
    p2 = _second_detector(x, fs)
    agree = _agreement(p1, p2, max(1, round(0.15 * fs)))
    spec = np.abs(np.fft.rfft(x - x.mean())) ** 2
    f = np.fft.rfftfreq(x.shape[0], 1.0 / fs)
    band = float(spec[(f >= 5.0) & (f <= 15.0)].sum())
    wide = float(spec[(f >= 1.0) & (f <= 40.0)].sum())
    qrs_ratio = band / wide if wide > 0 else 0.0
    kurt = ecg._kurtosis(_detrend(x, fs))
    kurt = kurt if math.isfinite(kurt) else 0.0
    agreed = _ramp(agree, 0.95, 1.0)
    scores = (
        _ramp(agree, 0.6, 0.9),
        max(_ramp(kurt, 0.5, 2.0), agreed),
        max(_ramp(qrs_ratio, 0.10, 0.20), agreed),
        _ramp(1.0 - q.hf_noise_ratio, 0.85, 0.95),
        1.0 - _ramp(q.flatline_frac, 0.05, 0.25),
        1.0 - _ramp(q.clip_frac, 0.005, 0.05),
    )
    return SignalQuality(
        float(min(scores)), kurt, agree, qrs_ratio, q.hf_noise_ratio, q.flatline_frac, q.clip_frac
    )


def _detrend(x: np.ndarray, fs: float, span_s: float = 0.6) -> np.ndarray:
    """``x`` minus its centred moving mean over ``span_s``: baseline wander out, QRS kept.

    A running sum, O(n): a 0.5 Hz IIR high-pass done by impulse response
    (``dsp``) cost more than the QRS detector itself at 1000 Hz.
    """
    w = max(1, round(span_s * fs)) | 1
    h = w // 2
    ext = np.concatenate((np.full(h, x[0]), x, np.full(h, x[-1])))
    c = np.concatenate(([0.0], np.cumsum(ext)))
    return x - (c[w:] - c[:-w]) / w


def _ramp(v: float, lo: float, hi: float) -> float:
    """0 at or below ``lo``, 1 at or above ``hi``, linear between (NaN counts as 0)."""
    if not math.isfinite(v):
        return 0.0
    return float(min(1.0, max(0.0, (v - lo) / (hi - lo))))


# -- the patient's own normal beat ------------------------------------------------


@dataclass
class BeatEvent:
    """One beat the tracker has scored: what an alert names."""

    t: float  # R-peak time, agent clock (s)
    label: str  # "N", "S" (premature, normal shape) or "V" (abnormal shape)
    score: float
    prematurity: float
    pause: float
    dist: float


@dataclass
class BeatTracker:
    """A patient's dominant-beat template and rhythm, learned on the box and kept current.

    ``update(t, x, fs)`` takes one contiguous ECG segment (e.g. a window) on
    the agent clock; beats already seen in an earlier, overlapping segment
    are skipped by time, so feeding overlapping windows scores each beat once.
    The template is the running average of beats judged normal (on time, shape
    close to the template), seeded by the median of the first beats; the RR
    reference is the mean of the last normal intervals. State is about
    ``2 * 160`` floats.
    """

    template: np.ndarray | None = None
    n_template: int = 0
    last_t: float = -math.inf
    last_rr_t: float = math.nan
    normal_rr: list[float] = field(default_factory=list)
    pending: list[tuple[int, float]] = field(default_factory=list)
    events: list[BeatEvent] = field(default_factory=list)
    max_events: int = 4096

    @property
    def ready(self) -> bool:
        return self.template is not None and self.n_template >= TEMPLATE_MIN_BEATS

    def update(
        self, t: np.ndarray, x: np.ndarray, fs: float, learn: bool = True
    ) -> list[BeatEvent]:
        """Score the new beats of a segment; returns their events (also kept in ``events``).

        ``learn=False`` (a segment of poor signal quality) scores the beats
        without letting them into the template or the RR reference.
        """
        t = np.asarray(t, np.float64)
        peaks = ecg.detect_r_peaks(x, fs)
        bs = cut_beats(x, fs, peaks)
        if bs.peaks.shape[0] == 0 or not math.isfinite(bs.gain_uv):
            return []
        tb = t[bs.peaks]
        # A beat within 150 ms of one already scored is that beat again.
        new = tb > self.last_t + 0.15
        if self.template is None:
            if not learn:
                return []  # never seed the template from a poor strip
            self.template = np.median(bs.waves, axis=0)
            self.n_template = 0
        out: list[BeatEvent] = []
        prev_t = self.last_t
        idx = np.flatnonzero(new)
        for i in idx:
            rr_b = tb[i] - prev_t if math.isfinite(prev_t) and tb[i] - prev_t < 3.0 else math.nan
            ref = float(np.mean(self.normal_rr[-LOCAL_RR_BEATS:])) if self.normal_rr else math.nan
            rr_a = tb[i + 1] - tb[i] if i + 1 < tb.shape[0] else math.nan
            f = beat_features(
                bs.waves[i : i + 1],
                self.template,
                np.array([rr_b]),
                np.array([ref]),
                np.array([rr_a]),
            )
            ev = BeatEvent(
                float(tb[i]),
                str(f.label[0]),
                float(f.score[0]),
                float(f.prematurity[0]),
                float(f.pause[0]),
                float(f.dist[0]),
            )
            out.append(ev)
            normal_shape = f.dist[0] <= MORPH_ABNORMAL
            on_time = not (math.isfinite(f.prematurity[0]) and f.prematurity[0] < PREMATURE_RATIO)
            if learn and math.isfinite(rr_b) and on_time and normal_shape:
                self.normal_rr.append(float(rr_b))
                del self.normal_rr[:-LOCAL_RR_BEATS]
            if learn and normal_shape and on_time:
                a = max(TEMPLATE_ALPHA, 1.0 / (self.n_template + 1))
                self.template = (1 - a) * self.template + a * bs.waves[i]
                self.n_template += 1
            prev_t = float(tb[i])
        if idx.shape[0]:
            self.last_t = float(tb[idx[-1]])
        self.events.extend(out)
        del self.events[: -self.max_events]
        return out


def describe(events: list[BeatEvent], clock: float = 0.0) -> str:
    """Human text naming the abnormal beats, e.g. "3 ventricular beats at 12:03:04".

    ``clock`` is added to each beat time to get a wall-clock epoch (0 = the
    times are already epoch seconds); the time printed is the first such beat's (UTC).
    """
    import time as _time

    parts = []
    for lab, name in (("V", "ventricular"), ("S", "premature supraventricular")):
        sel = [e for e in events if e.label == lab]
        if sel:
            ts = _time.strftime("%H:%M:%S", _time.gmtime(sel[0].t + clock))
            noun = "beat" if len(sel) == 1 else "beats"
            parts.append(f"{len(sel)} {name} {noun} at {ts}")
    return "; ".join(parts)
