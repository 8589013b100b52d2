"""ECG maths: R-peak detection, heart-rate variability, beat morphology, signal quality.

Pure functions over numpy arrays (microvolts, a sampling rate in Hz); no I/O.
Everything here must work for the rates wearables really use (Polar-style
130 Hz chest straps up to 500 Hz textile front-ends) and on short windows
(10 s by default), and must be cheap enough to run for 50 patients every
2 seconds on a quarter of one core. So: zero-phase IIR filters and a peak finder
(``pipeline.dsp``, numpy only, checked against SciPy), and one Python loop over
*candidate peaks* (tens per window) for the adaptive threshold -- never a loop over samples.

Why not neurokit2/biosppy/pandas: they pull in large dependency trees (pandas,
matplotlib, numba in some versions) for a few dozen lines of DSP, are hard to
vendor on an aarch64 hub, and their defaults (cleaning, resampling) change
between releases, which would silently move features the federated model was
trained on. The algorithms below are the textbook ones, cited per function.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edgeagent.pipeline import dsp

# Pan & Tompkins 1985 (IEEE TBME 32(3):230-236): QRS energy sits in 5-15 Hz.
QRS_BAND_HZ = (5.0, 15.0)
# Integration window ~ the widest normal QRS.
INTEGRATION_S = 0.150
# No two beats closer than this (physiological refractory period).
REFRACTORY_S = 0.200
# A candidate this soon after a beat, with under half its slope, is a T wave.
T_WAVE_WINDOW_S = 0.360
# Search back for a missed beat when an RR exceeds this multiple of the mean.
SEARCHBACK_FACTOR = 1.66
# Where the R peak is looked for around the integrated-energy peak.
R_SEARCH_S = 0.075
MIN_FS_HZ = 100.0  # below this the QRS band is too close to Nyquist to trust
# Successive-difference entropy bin width: sinus rhythm varies by a few tens
# of ms beat to beat, AF by hundreds, so 25 ms bins separate the two.
SD_ENTROPY_BIN_S = 0.025
# A beat is ectopic when its QRS correlates poorly with the window's median
# beat, or it comes early (premature) and is followed by a compensatory pause.
ECTOPIC_CORR = 0.80
PREMATURE_RATIO = 0.85
COMPENSATORY_RATIO = 1.10
# Beat morphology offsets from the R peak, seconds (Goldberger's Clinical
# Electrocardiography: PR segment ends ~50 ms before R; ST measured 80-120 ms
# after R, i.e. J point + 40-80 ms at normal QRS widths).
PR_SEGMENT_S = (-0.090, -0.050)
ST_SEGMENT_S = (0.080, 0.120)
QRS_REGION_S = (-0.100, 0.120)
MORPHOLOGY_LOWPASS_HZ = 40.0
BEAT_SPAN_S = (-0.200, 0.400)
# Signal quality.
FLAT_SEGMENT_S = 0.2
FLAT_PTP_UV = 10.0  # peak-to-peak below this over 0.2 s: no cardiac signal
HF_NOISE_HZ = 40.0  # above the QRS band: muscle (EMG) and electrode noise
LF_WANDER_HZ = 0.7  # below the slowest heart rate: baseline wander, motion


@dataclass(frozen=True)
class HRV:
    """Time-domain heart-rate variability of one RR series (Task Force 1996 definitions)."""

    n_beats: int
    hr_bpm: float
    sdnn_ms: float
    rmssd_ms: float
    pnn50: float  # fraction (0..1) of successive differences > 50 ms
    cv: float  # SDNN / mean RR: scale-free irregularity
    nrmssd: float  # RMSSD / mean RR (AF detectors use this, e.g. Dash 2009)
    sd_entropy: float  # Shannon entropy (bits) of successive differences in 25 ms bins
    premature_frac: float  # beats early by >15 % and followed by a pause


@dataclass(frozen=True)
class Morphology:
    """Median-beat statistics of one ECG segment (amplitudes relative to the PR baseline)."""

    n_beats: int
    r_amp_uv: float
    qrs_width_ms: float
    st_level_uv: float
    template_corr: float  # mean Pearson r of each beat's QRS with the median beat
    low_corr_frac: float  # beats with r < ECTOPIC_CORR


@dataclass(frozen=True)
class Quality:
    """Signal-quality indices: what tells a lead-off or clipped ECG from a clinical event."""

    flatline_frac: float
    clip_frac: float
    hf_noise_ratio: float
    lf_ratio: float
    kurtosis: float


@lru_cache(maxsize=32)
def _band(fs: float, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    return dsp.butter(2, (low, high), "bandpass", fs)


@lru_cache(maxsize=32)
def _low(fs: float, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    return dsp.butter(2, min(cutoff, 0.45 * fs), "lowpass", fs)


def _kurtosis(x: np.ndarray) -> float:
    """Biased excess (Fisher) kurtosis: ``scipy.stats.kurtosis(x)`` without its call overhead."""
    d = x - x.mean()
    d2 = d * d
    m2 = float(d2.mean())
    return float((d2 * d2).mean()) / (m2 * m2) - 3.0 if m2 > 0 else math.nan


def _check_fs(fs: float) -> None:
    if not (math.isfinite(fs) and fs >= MIN_FS_HZ):
        raise ValueError(f"ECG sampling rate {fs!r} Hz is not supported (need >= {MIN_FS_HZ} Hz)")


def qrs_energy(x: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Pan-Tompkins front end: band-pass, derivative, squaring, moving integration.

    Returns ``(band-passed signal, integrated energy)``, both aligned with ``x``
    (zero-phase filter and centred kernels, so peaks need no delay correction).
    """
    _check_fs(fs)
    b, a = _band(round(fs, 3), *QRS_BAND_HZ)
    bp = dsp.filtfilt(b, a, np.asarray(x, dtype=np.float64) - float(np.mean(x)), fs)
    # Five-point derivative (Pan & Tompkins eq. 4), centred.
    d = np.convolve(bp, np.array([1.0, 2.0, 0.0, -2.0, -1.0]) * (fs / 8.0), mode="same")
    w = max(1, round(INTEGRATION_S * fs))
    mwi = np.convolve(d * d, np.full(w, 1.0 / w), mode="same")
    return bp, mwi


def detect_r_peaks(x: np.ndarray, fs: float) -> np.ndarray:
    """Return sample indices of R peaks in one contiguous ECG segment (int64, ascending).

    Pan-Tompkins-like: energy candidates at least REFRACTORY_S apart, an
    adaptive signal/noise threshold updated per candidate, T-wave rejection by
    slope, and a search-back at half threshold when an RR is 1.66x too long.
    Segments shorter than 1 s, or flat, give no peaks.
    """
    _check_fs(fs)
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < fs or not np.isfinite(x).all() or np.ptp(x) == 0:
        return np.empty(0, dtype=np.int64)
    bp, mwi = qrs_energy(x, fs)
    refractory = max(1, round(REFRACTORY_S * fs))
    cand = dsp.find_peaks(mwi, distance=refractory)
    if cand.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    heights = mwi[cand]
    slope = np.abs(np.gradient(bp))
    # Steepest slope near each candidate, for the T-wave test.
    half = max(1, round(INTEGRATION_S * fs / 2))
    around = np.clip(cand[:, None] + np.arange(-half, half + 1)[None, :], 0, n - 1)
    cmax = slope[around].max(axis=1)
    learn = mwi[: max(1, round(2.0 * fs))]
    spk = float(np.max(learn)) / 3.0
    npk = float(np.mean(learn)) / 2.0
    t_wave = round(T_WAVE_WINDOW_S * fs)
    beats: list[int] = []  # indices into cand
    thresholds = np.empty(cand.shape[0])
    for i in range(cand.shape[0]):
        thr = npk + 0.25 * (spk - npk)
        thresholds[i] = thr
        h = heights[i]
        if h > thr:
            if beats and cand[i] - cand[beats[-1]] < t_wave and cmax[i] < 0.5 * cmax[beats[-1]]:
                npk = 0.125 * h + 0.875 * npk
                continue
            beats.append(i)
            spk = 0.125 * h + 0.875 * spk
        else:
            npk = 0.125 * h + 0.875 * npk
    beats = _search_back(cand, heights, thresholds, beats, t_wave, refractory)
    if not beats:
        return np.empty(0, dtype=np.int64)
    # R peak: largest band-passed deflection near the energy peak.
    w = max(1, round(R_SEARCH_S * fs))
    centres = cand[np.asarray(beats)]
    offs = np.arange(-w, w + 1)
    idx = np.clip(centres[:, None] + offs[None, :], 0, n - 1)
    r = idx[np.arange(idx.shape[0]), np.argmax(np.abs(bp[idx]), axis=1)]
    r = np.unique(r)
    if r.shape[0] > 1:  # two energy peaks may share one R after refinement
        keep = np.concatenate(([True], np.diff(r) >= refractory))
        r = r[keep]
    return r.astype(np.int64)


def _search_back(
    cand: np.ndarray,
    heights: np.ndarray,
    thresholds: np.ndarray,
    beats: list[int],
    t_wave: int,
    refractory: int,
) -> list[int]:
    """Add the strongest half-threshold candidate inside RRs that are too long."""
    if len(beats) < 2:
        return beats
    pos = cand[np.asarray(beats)]
    rr_mean = float(np.mean(np.diff(pos)))
    out = list(beats)
    for a, b in itertools.pairwise(beats):
        if cand[b] - cand[a] <= SEARCHBACK_FACTOR * rr_mean:
            continue
        inner = np.arange(a + 1, b)
        if inner.shape[0] == 0:
            continue
        ok = heights[inner] > 0.5 * thresholds[inner]
        ok &= (cand[inner] - cand[a] >= t_wave) & (cand[b] - cand[inner] >= refractory)
        if ok.any():
            pick = inner[ok][np.argmax(heights[inner[ok]])]
            out.append(int(pick))
    return sorted(out)


def hrv(rr_s: np.ndarray) -> HRV:
    """Time-domain HRV of an RR series in seconds; NaN fields when too few beats.

    Needs 2 intervals for HR/SDNN and 3 for the successive-difference
    measures; ectopic beats are *not* removed first, because their presence
    is itself what the PVC and AF features must show.
    """
    rr = np.asarray(rr_s, dtype=np.float64)
    rr = rr[np.isfinite(rr) & (rr > 0)]
    nan = math.nan
    if rr.shape[0] < 2:
        hr = 60.0 / float(rr[0]) if rr.shape[0] == 1 else nan
        return HRV(int(rr.shape[0]), hr, nan, nan, nan, nan, nan, nan, nan)
    mean = float(np.mean(rr))
    sdnn = float(np.std(rr, ddof=1))
    sd = np.diff(rr)
    if sd.shape[0] >= 2:
        rmssd = float(np.sqrt(np.mean(sd * sd)))
        pnn50 = float(np.mean(np.abs(sd) > 0.050))
        bins = np.rint(sd / SD_ENTROPY_BIN_S).astype(np.int64)  # bins centred on 0, +-25 ms, ...
        _, counts = np.unique(bins, return_counts=True)
        p = counts / counts.sum()
        entropy = float(-(p * np.log2(p)).sum())
    else:
        rmssd = pnn50 = entropy = nan
    med = float(np.median(rr))
    premature = (rr[:-1] < PREMATURE_RATIO * med) & (rr[1:] > COMPENSATORY_RATIO * med)
    return HRV(
        n_beats=int(rr.shape[0]) + 1,
        hr_bpm=60.0 / mean,
        sdnn_ms=1000.0 * sdnn,
        rmssd_ms=1000.0 * rmssd,
        pnn50=pnn50,
        cv=sdnn / mean,
        nrmssd=rmssd / mean,
        sd_entropy=entropy,
        premature_frac=float(np.count_nonzero(premature)) / rr.shape[0],
    )


def _offsets(span: tuple[float, float], fs: float) -> np.ndarray:
    return np.arange(round(span[0] * fs), round(span[1] * fs) + 1)


def morphology(x: np.ndarray, fs: float, peaks: np.ndarray) -> Morphology:
    """Median-beat morphology of one contiguous segment, all beats at once.

    Beats are cut as an index matrix (beats x offsets), each referenced to its
    own PR-segment median so baseline wander cancels beat by beat. QRS width
    is the span where the beat's slope exceeds 20 % of its steepest slope.
    """
    _check_fs(fs)
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] > 3 * 2 * 3:
        # 40 Hz low-pass: slopes and levels of the waves, not of sample noise;
        # without it QRS width would grow with the sampling rate.
        x = dsp.filtfilt(*_low(round(fs, 3), MORPHOLOGY_LOWPASS_HZ), x, fs)
    peaks = np.asarray(peaks, dtype=np.int64)
    offs = _offsets(BEAT_SPAN_S, fs)
    ok = (peaks + offs[0] >= 0) & (peaks + offs[-1] < x.shape[0])
    peaks = peaks[ok]
    nan = math.nan
    if peaks.shape[0] == 0:
        return Morphology(0, nan, nan, nan, nan, nan)
    beats = x[peaks[:, None] + offs[None, :]]
    zero = -int(offs[0])

    def cols(span: tuple[float, float]) -> slice:
        return slice(zero + round(span[0] * fs), zero + round(span[1] * fs) + 1)

    pr = np.median(beats[:, cols(PR_SEGMENT_S)], axis=1)
    beats -= pr[:, None]
    r_amp = beats[:, zero]
    st = beats[:, cols(ST_SEGMENT_S)].mean(axis=1)
    qrs = beats[:, cols(QRS_REGION_S)]
    d = np.abs(np.diff(qrs, axis=1))
    steep = d >= 0.2 * d.max(axis=1, keepdims=True)
    first = np.argmax(steep, axis=1)
    last = d.shape[1] - 1 - np.argmax(steep[:, ::-1], axis=1)
    width_ms = (last - first + 1) * 1000.0 / fs
    template = np.median(qrs, axis=0)
    qc = qrs - qrs.mean(axis=1, keepdims=True)
    tc = template - template.mean()
    denom = np.sqrt((qc * qc).sum(axis=1) * float((tc * tc).sum()))
    corr = np.divide(qc @ tc, denom, out=np.zeros(qc.shape[0]), where=denom > 0)
    return Morphology(
        n_beats=int(peaks.shape[0]),
        r_amp_uv=float(np.median(r_amp)),
        qrs_width_ms=float(np.median(width_ms)),
        st_level_uv=float(np.median(st)),
        template_corr=float(np.mean(corr)),
        low_corr_frac=float(np.mean(corr < ECTOPIC_CORR)),
    )


def quality(x: np.ndarray, fs: float) -> Quality:
    """Signal-quality indices of one ECG segment.

    * flatline_frac: share of 0.2 s pieces with under 10 uV peak-to-peak
      (lead off, electrode dried out);
    * clip_frac: share of samples pinned at the segment's min or max
      (front-end saturation; a clean ECG has one or two samples there);
      pinning at exactly 0 is not counted, as zeros mean "no input";
    * hf_noise_ratio / lf_ratio: spectral power above 40 Hz / below 0.7 Hz
      over total power above 0.05 Hz (muscle noise; motion and wander);
    * kurtosis: excess kurtosis; a clean ECG is peaky (>> 3), noise is ~0.
    """
    _check_fs(fs)
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    nan = math.nan
    if n < 4:
        return Quality(nan, nan, nan, nan, nan)
    seg = max(2, round(FLAT_SEGMENT_S * fs))
    m = n // seg
    if m:
        pieces = x[: m * seg].reshape(m, seg)
        flat = float(np.mean(np.ptp(pieces, axis=1) < FLAT_PTP_UV))
    else:
        flat = float(np.ptp(x) < FLAT_PTP_UV)
    lo, hi = float(x.min()), float(x.max())
    rng = hi - lo
    if rng > 0:
        tol = 1e-6 * rng
        at_lo = int(np.count_nonzero(x <= lo + tol)) if lo != 0 else 0
        at_hi = int(np.count_nonzero(x >= hi - tol)) if hi != 0 else 0
        # A single extreme sample is just the tallest R peak, not clipping.
        clip = ((at_lo if at_lo > 2 else 0) + (at_hi if at_hi > 2 else 0)) / n
    else:
        # Pinned at a non-zero value is a rail; exact zeros are "no input"
        # (lead off, zero-filled frames), which flatline_frac reports.
        clip = 1.0 if lo != 0 else 0.0
    spec = np.abs(np.fft.rfft(x - x.mean())) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    total = float(spec[freqs > 0.05].sum())
    if total > 0:
        hf = float(spec[freqs > HF_NOISE_HZ].sum()) / total
        lf = float(spec[(freqs > 0.05) & (freqs < LF_WANDER_HZ)].sum()) / total
    else:
        hf = lf = 0.0  # no power at all: no noise either (flatline says why)
    # A constant signal has no peaks: report it like noise (0), not as NaN, so
    # a present-but-dead lead still yields a complete quality vector.
    kurt = _kurtosis(x) if rng > 0 else 0.0
    return Quality(flat, clip, hf, lf, kurt)


def contiguous_segments(t: np.ndarray, fs: float, min_len_s: float = 2.0) -> list[slice]:
    """Split a timestamp array at holes (> 1.5 sample periods) into usable segments.

    Filtering or counting RR across a hole would invent beats; each segment
    is analysed on its own and segments shorter than ``min_len_s`` are skipped.
    """
    if t.shape[0] == 0:
        return []
    breaks = np.flatnonzero(np.diff(t) > 1.5 / fs) + 1
    bounds = np.concatenate(([0], breaks, [t.shape[0]]))
    min_n = max(2, round(min_len_s * fs))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b - a >= min_n]
