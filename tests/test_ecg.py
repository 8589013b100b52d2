"""R-peak detection, HRV, morphology and signal quality on signals with known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeagent.pipeline import dsp, ecg
from tests.pipeline_synth import WAVES, beat_times, match_beats, synth_ecg


def _rr(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "sinus":
        return 0.85 + 0.05 * np.sin(np.arange(n) / 3.0) + rng.normal(0, 0.02, n)
    if kind == "brady":
        return 1.45 + rng.normal(0, 0.02, n)
    if kind == "tachy":
        return 0.40 + rng.normal(0, 0.008, n)
    if kind == "af":
        return rng.uniform(0.35, 1.1, n)
    raise AssertionError(kind)


@pytest.mark.parametrize("fs", [130.0, 250.0, 500.0])
@pytest.mark.parametrize("kind", ["sinus", "brady", "tachy", "af"])
def test_r_peaks_sensitivity_and_ppv(fs: float, kind: str) -> None:
    rng = np.random.default_rng(int(fs) + len(kind))
    truth = beat_times(_rr(kind, 120, rng))
    t, x = synth_ecg(truth, truth[-1] + 0.6, fs, noise_uv=25.0, wander_uv=150.0, seed=int(fs))
    peaks = ecg.detect_r_peaks(x, fs)
    tp, _ = match_beats(t[peaks], truth, tol_s=0.05)
    sensitivity = tp / truth.shape[0]
    ppv = tp / max(1, peaks.shape[0])
    assert sensitivity >= 0.98, (sensitivity, ppv)
    assert ppv >= 0.98, (sensitivity, ppv)
    assert np.all(np.diff(peaks) > 0)


def test_r_peak_timing_is_accurate_at_250hz() -> None:
    truth = beat_times(np.full(40, 0.9))
    t, x = synth_ecg(truth, truth[-1] + 0.6, 250.0, noise_uv=5.0)
    peaks = ecg.detect_r_peaks(x, 250.0)
    assert peaks.shape[0] == truth.shape[0]
    assert np.max(np.abs(t[peaks] - truth)) <= 2 / 250.0


def test_r_peaks_of_inverted_lead_are_found() -> None:
    truth = beat_times(np.full(20, 0.8))
    t, x = synth_ecg(truth, truth[-1] + 0.6, 250.0)
    peaks = ecg.detect_r_peaks(-x, 250.0)
    tp, fp = match_beats(t[peaks], truth)
    assert tp == truth.shape[0] and fp == 0


def test_detector_rejects_t_waves_of_tall_t_morphology() -> None:
    tall_t = (*WAVES[:4], (0.28, 700.0, 0.040))
    truth = beat_times(np.full(40, 0.9))
    t, x = synth_ecg(truth, truth[-1] + 0.6, 250.0, waves=tall_t)
    peaks = ecg.detect_r_peaks(x, 250.0)
    tp, fp = match_beats(t[peaks], truth)
    assert tp >= 39 and fp == 0


@pytest.mark.parametrize(
    "x",
    [np.zeros(2500), np.full(2500, 123.0), np.zeros(10), np.array([np.nan] * 2500)],
    ids=["zeros", "constant", "short", "nan"],
)
def test_detector_gives_no_beats_on_unusable_input(x: np.ndarray) -> None:
    assert ecg.detect_r_peaks(x, 250.0).shape == (0,)


def test_unsupported_rate_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="sampling rate"):
        ecg.detect_r_peaks(np.zeros(1000), 50.0)


def test_hrv_on_known_alternating_series() -> None:
    rr = np.array([0.8, 0.9] * 10)
    h = ecg.hrv(rr)
    assert h.n_beats == 21
    assert h.hr_bpm == pytest.approx(60.0 / 0.85)
    assert h.sdnn_ms == pytest.approx(1000 * np.std(rr, ddof=1))
    assert h.rmssd_ms == pytest.approx(100.0)
    assert h.pnn50 == pytest.approx(1.0)
    assert h.cv == pytest.approx(np.std(rr, ddof=1) / 0.85)
    assert h.nrmssd == pytest.approx(0.1 / 0.85)
    # 19 successive differences: ten of +100 ms, nine of -100 ms, two bins.
    p = np.array([10, 9]) / 19
    assert h.sd_entropy == pytest.approx(float(-(p * np.log2(p)).sum()))


def test_hrv_on_constant_series() -> None:
    h = ecg.hrv(np.full(12, 1.0))
    assert h.hr_bpm == pytest.approx(60.0)
    assert h.sdnn_ms == 0 and h.rmssd_ms == 0 and h.pnn50 == 0
    assert h.sd_entropy == 0 and h.premature_frac == 0


def test_hrv_pnn50_counts_only_differences_over_50ms() -> None:
    rr = np.array([1.0, 1.04, 1.0, 1.06, 1.0])  # |diff| = 40, 40, 60, 60 ms
    assert ecg.hrv(rr).pnn50 == pytest.approx(0.5)


def test_hrv_with_too_few_beats_is_nan_not_error() -> None:
    assert math.isnan(ecg.hrv(np.empty(0)).hr_bpm)
    one = ecg.hrv(np.array([0.5]))
    assert one.hr_bpm == pytest.approx(120.0) and math.isnan(one.sdnn_ms)
    two = ecg.hrv(np.array([0.5, 0.6, np.nan, -1.0]))  # invalid values ignored
    assert two.n_beats == 3 and math.isnan(two.rmssd_ms)


def test_irregularity_separates_af_from_sinus() -> None:
    rng = np.random.default_rng(3)
    sinus = [ecg.hrv(_rr("sinus", 15, rng)) for _ in range(20)]
    af = [ecg.hrv(_rr("af", 15, rng)) for _ in range(20)]
    assert max(h.sd_entropy for h in sinus) < min(h.sd_entropy for h in af)
    assert max(h.nrmssd for h in sinus) < min(h.nrmssd for h in af)


def test_premature_beats_with_compensatory_pause() -> None:
    rr = np.full(20, 1.0)
    rr[[5, 12]] = 0.6
    rr[[6, 13]] = 1.4
    assert ecg.hrv(rr).premature_frac == pytest.approx(2 / 20)


def _morph(fs: float = 250.0, **kw: float) -> ecg.Morphology:
    truth = beat_times(np.full(12, 0.9))
    _, x = synth_ecg(truth, truth[-1] + 0.6, fs, **kw)
    return ecg.morphology(x, fs, ecg.detect_r_peaks(x, fs))


@pytest.mark.parametrize("fs", [130.0, 250.0, 500.0])
def test_qrs_width_tracks_wide_complexes_at_any_rate(fs: float) -> None:
    normal = _morph(fs)
    wide = _morph(fs, qrs_scale=2.0)
    assert 60 <= normal.qrs_width_ms <= 100
    assert wide.qrs_width_ms > normal.qrs_width_ms + 50


@pytest.mark.parametrize("st", [-150.0, 0.0, 200.0])
def test_st_level_follows_st_shift(st: float) -> None:
    m = _morph(st_uv=st, wander_uv=200.0)
    assert m.st_level_uv == pytest.approx(st, abs=30.0)
    assert m.r_amp_uv == pytest.approx(1100.0, rel=0.1)


def test_ectopic_beats_lower_template_correlation() -> None:
    fs = 250.0
    truth = beat_times(np.full(20, 0.9))
    t, x = synth_ecg(truth, truth[-1] + 0.6, fs)
    # Replace 4 beats by wide, inverted ventricular-like complexes.
    for b in truth[[3, 8, 13, 17]]:
        sel = np.abs(t - b) < 0.15
        tt = t[sel] - b
        x[sel] = -900 * np.exp(-0.5 * (tt / 0.03) ** 2) + 300 * np.exp(
            -0.5 * ((tt - 0.06) / 0.02) ** 2
        )
    peaks = ecg.detect_r_peaks(x, fs)
    m = ecg.morphology(x, fs, peaks)
    assert m.low_corr_frac == pytest.approx(4 / 20, abs=0.06)
    clean = _morph(fs)
    assert clean.low_corr_frac == 0 and clean.template_corr > 0.95
    assert m.template_corr < clean.template_corr


def test_morphology_without_beats_is_nan() -> None:
    m = ecg.morphology(np.zeros(2500), 250.0, np.empty(0, dtype=np.int64))
    assert m.n_beats == 0 and math.isnan(m.qrs_width_ms)


def test_quality_indices_tell_faults_from_clean_ecg() -> None:
    fs = 250.0
    truth = beat_times(np.full(12, 0.85))
    _, x = synth_ecg(truth, 10.0, fs)
    clean = ecg.quality(x, fs)
    assert clean.flatline_frac == 0 and clean.clip_frac < 0.01
    assert clean.kurtosis > 4 and clean.hf_noise_ratio < 0.05

    flat = ecg.quality(np.random.default_rng(0).normal(0, 1.0, x.shape), fs)
    assert flat.flatline_frac > 0.9

    clipped = ecg.quality(np.clip(x * 3, -800, 800), fs)
    assert clipped.clip_frac > 0.05

    noisy = x + np.random.default_rng(1).normal(0, 300, x.shape)
    nq = ecg.quality(noisy, fs)
    assert nq.hf_noise_ratio > 5 * clean.hf_noise_ratio and nq.kurtosis < clean.kurtosis

    t = np.arange(x.shape[0]) / fs
    wander = ecg.quality(x + 3000 * np.sin(2 * np.pi * 0.3 * t), fs)
    assert wander.lf_ratio > 2 * clean.lf_ratio


def test_contiguous_segments_split_at_holes() -> None:
    fs = 250.0
    t = np.concatenate(
        (np.arange(0, 3, 1 / fs), np.arange(5, 9, 1 / fs), np.arange(9.5, 10, 1 / fs))
    )
    segs = ecg.contiguous_segments(t, fs)
    assert [(round(t[s.start], 3), round(t[s.stop - 1], 3)) for s in segs] == [
        (0.0, 2.996),
        (5.0, 8.996),
    ]
    assert ecg.contiguous_segments(np.empty(0), fs) == []


@pytest.mark.parametrize("fs", [130.0, 250.0])
@pytest.mark.parametrize("kind", [None, "af", "pvc", "tachycardia"])
def test_r_peaks_on_simulator_ecg_match_its_beats(fs: float, kind: str | None) -> None:
    """The device side's own beat times (its RR stream) are the truth here."""
    phys = pytest.importorskip("firmware_sim.physiology")
    episodes = (phys.Label(10.0, 55.0, kind),) if kind else ()
    cfg = phys.SimConfig(
        ecg_hz=fs, episodes=episodes, anomaly_rate_per_hour=0.0, fault_rate_per_hour=0.0
    )
    chunk = phys.simulate(phys.make_patient(1), 60.0, cfg)
    t, x = chunk.streams["ecg"]
    truth = chunk.streams["rr"][0]
    truth = truth[(truth > 0.3) & (truth < 59.7)]
    found = t[ecg.detect_r_peaks(x[:, 0], fs)]
    found = found[(found > 0.3) & (found < 59.7)]
    tp, _ = match_beats(found, truth, tol_s=0.05)
    assert tp / truth.shape[0] >= 0.98 and tp / found.shape[0] >= 0.98


@pytest.mark.parametrize("fs", [130.0, 250.0, 500.0])
@pytest.mark.parametrize("n", [40, 1300, 5000])
def test_numpy_filters_and_kurtosis_equal_scipy(fs: float, n: int) -> None:
    """The alert path's filters and kurtosis give SciPy's numbers to rounding."""
    from scipy import signal, stats

    x = np.random.default_rng(int(fs) + n).normal(size=n).cumsum()
    designs = (("bandpass", ecg.QRS_BAND_HZ, ecg._band(fs, *ecg.QRS_BAND_HZ)),
               ("lowpass", min(ecg.MORPHOLOGY_LOWPASS_HZ, 0.45 * fs),
                ecg._low(fs, ecg.MORPHOLOGY_LOWPASS_HZ)))  # fmt: skip
    for btype, cut, (b, a) in designs:
        sos = signal.butter(2, cut, btype=btype, fs=fs, output="sos")
        scale = float(np.max(np.abs(x)))
        np.testing.assert_allclose(dsp.filtfilt(b, a, x, fs), signal.sosfiltfilt(sos, x), 0,
                                   1e-9 * scale)  # fmt: skip
    assert ecg._kurtosis(x) == pytest.approx(float(stats.kurtosis(x)), rel=1e-12)
    with pytest.raises(ValueError, match="padlen"):
        dsp.filtfilt(*ecg._band(fs, *ecg.QRS_BAND_HZ), x[:10], fs)
