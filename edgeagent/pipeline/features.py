"""One fixed-length float32 feature vector per window: what the detector and learner see.

The vector layout (``FEATURE_NAMES``) is part of the federated contract: every
box and the aggregator train one model on it, so names and order only ever
grow at the end, never change. ``MODALITY_OF`` says which sensor each feature
comes from so the model can mask whole modalities.

NaN policy: a feature is NaN when its modality is absent from the window or
when the data present cannot support it (e.g. fewer than three beats for
RMSSD). Nothing is imputed here; imputing is the model's decision, and the
explicit mask (``modality_mask``) tells "absent" from "present but
uncomputable". Heart rate falls back to the device's own HR/RR streams (BLE
Heart Rate profile) when ECG is absent or unusable; ``hr_from_device`` says
which source was used.

Signal-quality features sit beside the clinical ones on purpose: a lead-off
flattens the ECG and a saturated front end clips it, and both would otherwise
look like asystole or a huge ST change. The model (and the tests) rely on the
quality features moving for faults and the clinical ones moving for events.

Pure numpy; no I/O. ECG maths lives in ``edgeagent.pipeline.ecg``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from edgeagent.pipeline import beats, ecg
from edgeagent.pipeline.windows import Window
from edgeagent.streams import Stream

MODALITIES: tuple[str, ...] = ("ecg", "acc", "temp", "env")

# Streams that feed each modality; "ecg" includes device-reported HR and RR.
MODALITY_STREAMS: dict[str, frozenset[Stream]] = {
    "ecg": frozenset({Stream.ECG, Stream.HR, Stream.RR}),
    "acc": frozenset({Stream.ACC}),
    "temp": frozenset({Stream.SKIN_TEMP}),
    "env": frozenset({Stream.ENV}),
}

_ECG_FEATURES: tuple[str, ...] = (
    "ecg_coverage",
    "hr_bpm",
    "hr_from_device",  # 1.0 when HR/HRV come from the device's HR/RR, 0.0 from our ECG
    "rr_sdnn_ms",
    "rr_rmssd_ms",
    "rr_pnn50",
    "rr_cv",
    "rr_nrmssd",
    "rr_sd_entropy",
    "rr_premature_frac",
    "ecg_r_amp_uv",
    "ecg_qrs_width_ms",
    "ecg_st_level_uv",
    "ecg_template_corr",
    "ecg_ectopic_frac",
    "ecg_flatline_frac",
    "ecg_clip_frac",
    "ecg_hf_noise_ratio",
    "ecg_lf_ratio",
    "ecg_kurtosis",
)
# Gain- and polarity-free ECG features (``pipeline.beats``), appended to keep the order.
_BEAT_FEATURES: tuple[str, ...] = (
    "ecg_sqi",
    "ecg_st_rel",
    "ecg_beat_abnormal_frac",
    "ecg_beat_morph_dist_max",
    "ecg_beat_prematurity_min",
)
_ACC_FEATURES: tuple[str, ...] = (
    "acc_coverage",
    "acc_mag_mean_g",
    "acc_mag_std_g",
    "acc_enmo_g",  # Euclidean norm minus one g, floored at 0: activity level
    "acc_jerk_g_per_s",
    "acc_peak_g",
    "acc_freefall_frac",
    "acc_still_after_peak_g",
    "acc_incline_deg",
    "acc_tilt_change_deg",
)
_TEMP_FEATURES: tuple[str, ...] = (
    "temp_coverage",
    "skin_temp_c",
    "skin_temp_slope_c_per_min",
    "skin_temp_std_c",
)
_ENV_FEATURES: tuple[str, ...] = (
    "env_coverage",
    "env_temp_c",
    "env_humidity_pct",
)

FEATURE_NAMES: tuple[str, ...] = (
    _ECG_FEATURES + _ACC_FEATURES + _TEMP_FEATURES + _ENV_FEATURES + _BEAT_FEATURES
)
MODALITY_OF: dict[str, str] = {
    **dict.fromkeys(_ECG_FEATURES, "ecg"),
    **dict.fromkeys(_BEAT_FEATURES, "ecg"),
    **dict.fromkeys(_ACC_FEATURES, "acc"),
    **dict.fromkeys(_TEMP_FEATURES, "temp"),
    **dict.fromkeys(_ENV_FEATURES, "env"),
}
N_FEATURES = len(FEATURE_NAMES)
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

# Accelerometer constants.
_MG_PER_G = 1000.0
FREEFALL_G = 0.5  # |a| under half a g: the body is falling
STILL_AFTER_S = (0.5, 2.5)  # after the impact peak, where stillness is measured
POSTURE_S = 2.0  # gravity direction = mean vector over the first/last 2 s
# Fewer beats than this in a window: HRV from the ECG is not trusted.
MIN_BEATS = 3


def modality_mask(window: Window) -> dict[str, bool]:
    """Which modalities have any data in the window (the model's input mask)."""
    return {m: bool(window.present & streams) for m, streams in MODALITY_STREAMS.items()}


def modality_mask_array(window: Window) -> np.ndarray:
    """``modality_mask`` expanded per feature: a bool array aligned with FEATURE_NAMES."""
    mask = modality_mask(window)
    return np.array([mask[MODALITY_OF[n]] for n in FEATURE_NAMES], dtype=bool)


def extract(window: Window) -> np.ndarray:
    """Feature vector of one window: float32, ``len(FEATURE_NAMES)``, NaN where unknown."""
    out = np.full(N_FEATURES, np.nan, dtype=np.float64)
    _ecg_features(window, out)
    _acc_features(window, out)
    _temp_features(window, out)
    _env_features(window, out)
    return out.astype(np.float32)


def extract_batch(windows: Sequence[Window]) -> np.ndarray:
    """Feature matrix ``(len(windows), N_FEATURES)`` float32, one row per window."""
    if not windows:
        return np.empty((0, N_FEATURES), dtype=np.float32)
    return np.stack([extract(w) for w in windows])


def as_dict(vector: np.ndarray) -> dict[str, float]:
    """Name -> value view of a feature vector, for logs, alerts and tests."""
    if vector.shape != (N_FEATURES,):
        raise ValueError(f"expected a vector of {N_FEATURES} features, got shape {vector.shape}")
    return {n: float(v) for n, v in zip(FEATURE_NAMES, vector, strict=True)}


# -- per modality ---------------------------------------------------------------


def _set(out: np.ndarray, **values: float) -> None:
    for k, v in values.items():
        out[_INDEX[k]] = v


def _rate(window: Window, stream: Stream, t: np.ndarray) -> float:
    fs = window.rates.get(stream, math.nan)
    if not math.isfinite(fs) and t.shape[0] > 1:
        d = float(np.median(np.diff(t)))
        fs = 1.0 / d if d > 0 else math.nan
    return fs


def _ecg_features(window: Window, out: np.ndarray) -> None:
    hrv: ecg.HRV | None = None
    if Stream.ECG in window.data:
        t, v = window.data[Stream.ECG]
        x = v[:, 0].astype(np.float64)
        fs = _rate(window, Stream.ECG, t)
        _set(out, ecg_coverage=window.coverage.get(Stream.ECG, math.nan))
        if math.isfinite(fs) and fs >= ecg.MIN_FS_HZ:
            hrv = _ecg_signal_features(t, x, fs, out)
    if hrv is not None and hrv.n_beats >= MIN_BEATS:
        _set_hrv(out, hrv, from_device=False)
        return
    if Stream.RR in window.data:
        rr = window.data[Stream.RR][1][:, 0].astype(np.float64)
        dev = ecg.hrv(rr)
        if dev.n_beats >= 2:
            _set_hrv(out, dev, from_device=True)
            return
    if Stream.HR in window.data:
        bpm = window.data[Stream.HR][1][:, 0].astype(np.float64)
        bpm = bpm[(bpm > 0) & (bpm < 400)]
        if bpm.shape[0]:
            _set(out, hr_bpm=float(np.mean(bpm)), hr_from_device=1.0)
            return
    if hrv is not None and hrv.n_beats > 0:
        _set_hrv(out, hrv, from_device=False)


def _set_hrv(out: np.ndarray, h: ecg.HRV, *, from_device: bool) -> None:
    _set(
        out,
        hr_bpm=h.hr_bpm,
        hr_from_device=1.0 if from_device else 0.0,
        rr_sdnn_ms=h.sdnn_ms,
        rr_rmssd_ms=h.rmssd_ms,
        rr_pnn50=h.pnn50,
        rr_cv=h.cv,
        rr_nrmssd=h.nrmssd,
        rr_sd_entropy=h.sd_entropy,
        rr_premature_frac=h.premature_frac,
    )


def _ecg_signal_features(t: np.ndarray, x: np.ndarray, fs: float, out: np.ndarray) -> ecg.HRV:
    """Beats, morphology and quality over the window's contiguous ECG segments."""
    segments = ecg.contiguous_segments(t, fs)
    rr_parts: list[np.ndarray] = []
    morphs: list[ecg.Morphology] = []
    beat_parts: list[beats.BeatFeatures] = []
    st_rel: list[tuple[float, int]] = []
    sqi: list[tuple[float, int]] = []
    qual: dict[int, ecg.Quality] = {}
    for i, seg in enumerate(segments):
        xs = x[seg]
        peaks = ecg.detect_r_peaks(xs, fs)
        qual[i] = ecg.quality(xs, fs)
        sqi.append((beats.signal_quality(xs, fs, peaks, qual[i]).sqi, xs.shape[0]))
        if peaks.shape[0] >= 2:
            rr_parts.append(np.diff(t[seg][peaks]))
        if peaks.shape[0]:
            bs, bf = beats.segment_beats(xs, fs, peaks)
            beat_parts.append(bf)
            # Morphology on the lead turned so its dominant QRS deflection is
            # positive: an electrode placed the other way round reads the same.
            m = ecg.morphology(bs.polarity * xs, fs, peaks)
            morphs.append(m)
            if m.n_beats and math.isfinite(bs.gain_uv):
                st_rel.append((m.st_level_uv / bs.gain_uv, m.n_beats))
    if sqi:
        _set(out, ecg_sqi=_wavg(sqi))
    if st_rel:
        _set(out, ecg_st_rel=_wavg(st_rel))
    scored = [b for b in beat_parts if b.score.shape[0]]
    if scored:
        lab = np.concatenate([b.label for b in scored])
        prem = np.concatenate([b.prematurity for b in scored])
        prem_min = float(np.nanmin(prem)) if np.isfinite(prem).any() else math.nan
        _set(
            out,
            ecg_beat_abnormal_frac=float(np.mean(lab != "N")),
            ecg_beat_morph_dist_max=float(np.max(np.concatenate([b.dist for b in scored]))),
            ecg_beat_prematurity_min=prem_min,
        )
    if segments:
        i = max(range(len(segments)), key=lambda k: segments[k].stop - segments[k].start)
        q = qual[i]
    else:
        q = ecg.quality(x, fs)
    _set(
        out,
        ecg_flatline_frac=q.flatline_frac,
        ecg_clip_frac=q.clip_frac,
        ecg_hf_noise_ratio=q.hf_noise_ratio,
        ecg_lf_ratio=q.lf_ratio,
        ecg_kurtosis=q.kurtosis,
    )
    morphs = [m for m in morphs if m.n_beats]
    if morphs:
        w = np.array([m.n_beats for m in morphs], dtype=np.float64)

        def avg(field: str) -> float:
            return float(np.average([getattr(m, field) for m in morphs], weights=w))

        _set(
            out,
            ecg_r_amp_uv=avg("r_amp_uv"),
            ecg_qrs_width_ms=avg("qrs_width_ms"),
            ecg_st_level_uv=avg("st_level_uv"),
            ecg_template_corr=avg("template_corr"),
            ecg_ectopic_frac=avg("low_corr_frac"),
        )
    rr = np.concatenate(rr_parts) if rr_parts else np.empty(0)
    # n_beats counts beats, which is intervals + 1 per segment, not overall.
    return dataclasses.replace(ecg.hrv(rr), n_beats=int(rr.shape[0]) + len(rr_parts))


def _wavg(pairs: list[tuple[float, int]]) -> float:
    """Mean of values weighted by their counts (samples or beats per segment)."""
    v = np.array([p[0] for p in pairs], np.float64)
    w = np.array([p[1] for p in pairs], np.float64)
    return float(np.average(v, weights=w))


def _acc_features(window: Window, out: np.ndarray) -> None:
    if Stream.ACC not in window.data:
        return
    t, v = window.data[Stream.ACC]
    g = v.astype(np.float64) / _MG_PER_G
    mag = np.sqrt((g * g).sum(axis=1))
    n = mag.shape[0]
    _set(
        out,
        acc_coverage=window.coverage.get(Stream.ACC, math.nan),
        acc_mag_mean_g=float(mag.mean()),
        acc_mag_std_g=float(mag.std()),
        acc_enmo_g=float(np.maximum(mag - 1.0, 0.0).mean()),
        acc_freefall_frac=float(np.mean(mag < FREEFALL_G)),
    )
    ip = int(np.argmax(mag))
    _set(out, acc_peak_g=float(mag[ip]))
    if n >= 2:
        dt = np.diff(t)
        ok = dt > 0
        jerk = np.sqrt((np.diff(g, axis=0) ** 2).sum(axis=1))[ok] / dt[ok]
        _set(out, acc_jerk_g_per_s=float(jerk.mean()) if jerk.shape[0] else math.nan)
    a, b = np.searchsorted(t, (t[ip] + STILL_AFTER_S[0], t[ip] + STILL_AFTER_S[1]))
    after = mag[a:b]
    # Impact near the window's end: the next (overlapping) window sees the
    # aftermath; until then fall back to the window's own variability.
    _set(out, acc_still_after_peak_g=float(after.std()) if after.shape[0] >= 3 else mag.std())
    mean_vec = g.mean(axis=0)
    _set(out, acc_incline_deg=_angle(mean_vec, np.array([0.0, 0.0, 1.0])))
    head = g[: int(np.searchsorted(t, t[0] + POSTURE_S))].mean(axis=0)
    tail = g[int(np.searchsorted(t, t[-1] - POSTURE_S)) :].mean(axis=0)
    _set(out, acc_tilt_change_deg=_angle(head, tail))


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return math.nan
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b) / (na * nb)))))


def _temp_features(window: Window, out: np.ndarray) -> None:
    if Stream.SKIN_TEMP not in window.data:
        return
    t, v = window.data[Stream.SKIN_TEMP]
    c = v[:, 0].astype(np.float64)
    _set(
        out,
        temp_coverage=window.coverage.get(Stream.SKIN_TEMP, math.nan),
        skin_temp_c=float(c.mean()),
        skin_temp_std_c=float(c.std()),
    )
    if t.shape[0] >= 2 and float(np.ptp(t)) > 0:
        slope = float(np.polyfit(t - t[0], c, 1)[0])
        _set(out, skin_temp_slope_c_per_min=60.0 * slope)


def _env_features(window: Window, out: np.ndarray) -> None:
    if Stream.ENV not in window.data:
        return
    _, v = window.data[Stream.ENV]
    _set(
        out,
        env_coverage=window.coverage.get(Stream.ENV, math.nan),
        env_temp_c=float(v[:, 0].astype(np.float64).mean()),
        env_humidity_pct=float(v[:, 1].astype(np.float64).mean()),
    )
