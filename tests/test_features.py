"""Feature vector: layout, NaN policy, device HR fallback, and that every simulated
anomaly and fault moves the features meant to reveal it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.pipeline import features as F
from edgeagent.pipeline.windows import Window, Windower
from edgeagent.streams import Gap, SampleBlock, Stream
from tests.pipeline_synth import beat_times, synth_ecg


def _window(data: dict[Stream, tuple[np.ndarray, np.ndarray]], start: float = 0.0) -> Window:
    """Run series through a real Windower and return the window starting at ``start``."""
    w = Windower()
    for s, (t, v) in data.items():
        w.push(SampleBlock("dev", s, np.asarray(t, np.float64), np.asarray(v, np.float32)))
    return {x.start: x for x in w.flush()}[start]


def _ecg(duration: float = 12.0, fs: float = 250.0, rr: float = 0.8, **kw: float) -> tuple:
    truth = beat_times(np.full(int(duration / rr) + 2, rr), first=0.3)
    t, x = synth_ecg(truth[truth < duration - 0.3], duration, fs, **kw)
    return t, x[:, None]


def _acc(duration: float = 12.0, hz: float = 50.0) -> tuple:
    t = np.arange(int(duration * hz)) / hz
    g = np.tile([0.0, 0.0, 1000.0], (t.shape[0], 1))
    g += np.random.default_rng(0).normal(0, 5, g.shape)
    return t, g


def _temp(duration: float = 12.0, slope_per_min: float = 0.0) -> tuple:
    t = np.arange(int(duration)) + 0.5
    return t, (36.5 + slope_per_min * t / 60.0)[:, None]


def _env(duration: float = 12.0) -> tuple:
    t = np.arange(0.0, duration, 5.0) + 1.0
    return t, np.tile([21.5, 40.0], (t.shape[0], 1))


def test_layout_is_stable_and_complete() -> None:
    names = F.FEATURE_NAMES
    assert len(names) == len(set(names)) == F.N_FEATURES
    assert set(F.MODALITY_OF) == set(names)
    assert set(F.MODALITY_OF.values()) == set(F.MODALITIES)
    # Features of one modality are contiguous and share its name prefix rule.
    for n in names:
        assert n.split("_")[0] in {"ecg", "hr", "rr", "acc", "temp", "skin", "env"}, n


def test_full_window_gives_finite_float32_vector() -> None:
    x = _window(
        {Stream.ECG: _ecg(), Stream.ACC: _acc(), Stream.SKIN_TEMP: _temp(), Stream.ENV: _env()}
    )
    v = F.extract(x)
    assert v.dtype == np.float32 and v.shape == (F.N_FEATURES,)
    bad = [n for n, val in F.as_dict(v).items() if not math.isfinite(val)]
    assert bad == []
    d = F.as_dict(v)
    assert d["hr_bpm"] == pytest.approx(75.0, abs=1.0) and d["hr_from_device"] == 0.0
    assert d["rr_sdnn_ms"] < 5.0 and d["ecg_coverage"] == 1.0
    assert d["acc_mag_mean_g"] == pytest.approx(1.0, abs=0.01) and d["acc_incline_deg"] < 2.0
    assert d["env_temp_c"] == pytest.approx(21.5) and d["env_humidity_pct"] == pytest.approx(40.0)
    assert F.modality_mask(x) == dict.fromkeys(F.MODALITIES, True)


def test_missing_modalities_are_nan_and_masked() -> None:
    x = _window({Stream.ACC: _acc()})
    v = F.extract(x)
    mask = F.modality_mask_array(x)
    assert F.modality_mask(x) == {"ecg": False, "acc": True, "temp": False, "env": False}
    assert np.isfinite(v[mask]).all()
    assert np.isnan(v[~mask]).all()
    assert mask.sum() == sum(1 for n in F.FEATURE_NAMES if F.MODALITY_OF[n] == "acc")


def test_hr_falls_back_to_device_rr_then_hr() -> None:
    rr_t = np.cumsum(np.full(15, 0.75)) + 0.2
    x = _window({Stream.RR: (rr_t, np.full((15, 1), 0.75)), Stream.ACC: _acc()})
    d = F.as_dict(F.extract(x))
    assert d["hr_bpm"] == pytest.approx(80.0) and d["hr_from_device"] == 1.0
    assert d["rr_rmssd_ms"] == pytest.approx(0.0, abs=1e-3)
    assert math.isnan(d["ecg_qrs_width_ms"]) and math.isnan(d["ecg_coverage"])
    assert F.modality_mask(x)["ecg"]

    hr_t = np.arange(12.0) + 0.1
    y = _window({Stream.HR: (hr_t, np.full((12, 1), 66.0))})
    d = F.as_dict(F.extract(y))
    assert d["hr_bpm"] == pytest.approx(66.0) and d["hr_from_device"] == 1.0
    assert math.isnan(d["rr_sdnn_ms"])


def test_dead_ecg_lead_uses_device_rr_and_reports_flatline() -> None:
    t = np.arange(3000) / 250.0
    rr_t = np.cumsum(np.full(15, 0.8)) + 0.1
    x = _window({Stream.ECG: (t, np.zeros((3000, 1))), Stream.RR: (rr_t, np.full((15, 1), 0.8))})
    d = F.as_dict(F.extract(x))
    assert d["ecg_flatline_frac"] == 1.0 and d["ecg_clip_frac"] == 0.0
    assert d["hr_bpm"] == pytest.approx(75.0) and d["hr_from_device"] == 1.0


def test_ecg_hole_does_not_invent_an_rr_interval() -> None:
    t, x = _ecg(rr=0.8)
    keep = (t < 4.0) | (t >= 6.5)
    win = _window({Stream.ECG: (t[keep], x[keep])})
    assert win.coverage[Stream.ECG] == pytest.approx(0.75)
    assert any(g.reason == "hole" for g in win.gaps)
    d = F.as_dict(F.extract(win))
    assert d["hr_bpm"] == pytest.approx(75.0, abs=1.0)
    assert d["rr_sdnn_ms"] < 5.0 and d["rr_premature_frac"] == 0.0


@pytest.mark.parametrize("fs", [130.0, 250.0, 500.0])
def test_ecg_features_at_wearable_rates(fs: float) -> None:
    d = F.as_dict(F.extract(_window({Stream.ECG: _ecg(fs=fs, rr=0.6)})))
    assert d["hr_bpm"] == pytest.approx(100.0, abs=1.5)
    assert 50.0 <= d["ecg_qrs_width_ms"] <= 110.0
    assert d["ecg_template_corr"] > 0.95


def test_ecg_below_supported_rate_gives_nan_not_error() -> None:
    t = np.arange(600) / 50.0
    d = F.as_dict(F.extract(_window({Stream.ECG: (t, np.sin(t)[:, None] * 500)})))
    assert d["ecg_coverage"] == 1.0 and math.isnan(d["hr_bpm"]) and math.isnan(d["ecg_kurtosis"])


def test_fall_moves_impact_posture_and_stillness() -> None:
    t, g = _acc()
    impact = (t >= 5.0) & (t < 5.1)
    g[(t >= 4.6) & (t < 5.0)] *= 0.1  # free fall
    g[impact] = [0.0, 3500.0, 0.0]
    lying = t >= 5.1
    noise = np.random.default_rng(1).normal(0, 2, (int(lying.sum()), 3))
    g[lying] = np.array([1000.0, 0.0, 0.0]) + noise
    base = F.as_dict(F.extract(_window({Stream.ACC: _acc()})))
    fall = F.as_dict(F.extract(_window({Stream.ACC: (t, g)})))
    assert fall["acc_peak_g"] > 3.0 > base["acc_peak_g"]
    assert fall["acc_freefall_frac"] > 0.03 and base["acc_freefall_frac"] == 0.0
    assert fall["acc_tilt_change_deg"] == pytest.approx(90.0, abs=5.0)
    assert fall["acc_still_after_peak_g"] < 0.01
    assert fall["acc_jerk_g_per_s"] > base["acc_jerk_g_per_s"]


def test_temperature_slope_per_minute() -> None:
    d = F.as_dict(F.extract(_window({Stream.SKIN_TEMP: _temp(slope_per_min=0.6)})))
    assert d["skin_temp_slope_c_per_min"] == pytest.approx(0.6, rel=1e-3)
    assert d["skin_temp_c"] == pytest.approx(36.5 + 0.6 * 5.0 / 60.0, abs=1e-3)


def test_batch_and_dict_helpers() -> None:
    assert F.extract_batch([]).shape == (0, F.N_FEATURES)
    x = _window({Stream.ACC: _acc()})
    m = F.extract_batch([x, x])
    assert m.shape == (2, F.N_FEATURES) and m.dtype == np.float32
    np.testing.assert_array_equal(m[0], F.extract(x))
    with pytest.raises(ValueError, match="features"):
        F.as_dict(np.zeros(3))


def test_window_with_gaps_only_still_extracts() -> None:
    w = Windower()
    w.push(SampleBlock("d", Stream.SKIN_TEMP, np.array([0.5, 11.5]), np.full((2, 1), 36.0)))
    w.push_gap(Gap("d", None, 0.6, 11.4, "link lost"))
    (x, *_) = w.flush()
    v = F.extract(x)
    assert F.as_dict(v)["skin_temp_c"] == pytest.approx(36.0)


@settings(max_examples=40, deadline=None)
@given(
    fs=st.sampled_from([50.0, 100.0, 130.0, 250.0, 500.0]),
    n=st.integers(0, 3000),
    kind=st.sampled_from(["noise", "constant", "zeros", "spikes", "huge"]),
    acc_n=st.integers(0, 600),
    rr=st.lists(st.floats(1e-3, 5.0), max_size=20),
)
def test_any_window_content_gives_a_vector_without_inf(
    fs: float, n: int, kind: str, acc_n: int, rr: list[float]
) -> None:
    rng = np.random.default_rng(n)
    t = np.arange(n) / fs
    x = {
        "noise": rng.normal(0, 50, n),
        "constant": np.full(n, 7.0),
        "zeros": np.zeros(n),
        "spikes": (np.arange(n) % 97 == 0) * 3000.0,
        "huge": rng.normal(0, 1e7, n),
    }[kind]
    data: dict[Stream, tuple[np.ndarray, np.ndarray]] = {Stream.SKIN_TEMP: _temp()}
    if n:
        data[Stream.ECG] = (t, x[:, None])
    if acc_n:
        data[Stream.ACC] = (np.arange(acc_n) / 50.0, rng.normal(0, 2000, (acc_n, 3)))
    if rr:
        data[Stream.RR] = (np.cumsum(rr) * 0.1 + 0.01, np.asarray(rr)[:, None])
    v = F.extract(_window(data))
    assert v.shape == (F.N_FEATURES,) and v.dtype == np.float32
    assert not np.isinf(v).any()
    mask = F.modality_mask_array(_window(data))
    assert np.isnan(v[~mask]).all()


# -- the simulator's anomalies and faults ------------------------------------------------

physiology = pytest.importorskip("firmware_sim.physiology")

# kind -> (feature, test on (episode values, baseline values)); thresholds are
# deliberately far from the baseline spread seen across patients.
EXPECT = {
    "tachycardia": ("hr_bpm", lambda e, b: np.median(e) > np.max(b) + 25),
    "bradycardia": ("hr_bpm", lambda e, b: np.median(e) < np.min(b) - 8),
    "af": ("rr_nrmssd", lambda e, b: np.median(e) > 3 * np.max(b)),
    "pvc": ("ecg_ectopic_frac", lambda e, b: np.median(e) > np.max(b) + 0.1),
    "st_change": ("ecg_st_level_uv", lambda e, b: abs(np.median(e)) > np.max(np.abs(b)) + 100),
    "fall": ("acc_peak_g", lambda e, b: np.max(e) > np.max(b) + 1.5),
    "fever": ("skin_temp_c", lambda e, b: np.median(e) > np.max(b) + 1.0),
    "hypothermia": ("skin_temp_c", lambda e, b: np.median(e) < np.min(b) - 1.0),
    "lead_off": ("ecg_flatline_frac", lambda e, b: np.median(e) > 0.9 and np.max(b) < 0.1),
    "motion_artifact": ("ecg_kurtosis", lambda e, b: np.median(e) < 0.5 * np.min(b)),
    "saturation": ("ecg_clip_frac", lambda e, b: np.median(e) > 0.5 and np.max(b) < 0.05),
}


def _sim_windows(kind: str | None, start: float, end: float, t0: float, patient: int) -> np.ndarray:
    label = physiology.Label(start, end, kind) if kind else None
    cfg = physiology.SimConfig(
        episodes=(label,) if label else (), anomaly_rate_per_hour=0.0, fault_rate_per_hour=0.0
    )
    gen = physiology.Generator(physiology.make_patient(patient), cfg, start=t0)
    chunk = gen.advance(end + 2.0 - t0)
    w = Windower(patient=f"p{patient}")
    out: list[Window] = []
    for a in np.arange(t0, end + 2.0, 5.0):
        for name in ("ecg", "acc", "skin_temp", "env"):
            t, v = chunk.streams[name]
            i0, i1 = np.searchsorted(t, (a, a + 5.0))
            w.push(SampleBlock("sim", Stream(name), t[i0:i1], v[i0:i1]))
        out += w.pop_ready()
    out += w.flush()
    if kind == "fall":  # the impact is a moment: windows that contain it
        inside = [x for x in out if x.start <= start + 0.5 < x.end]
    else:
        inside = [x for x in out if x.start >= start and x.end <= end]
    assert inside
    return F.extract_batch(inside)


def test_expectations_cover_every_simulated_kind() -> None:
    assert set(EXPECT) == set(physiology.ANOMALY_KINDS) | set(physiology.FAULT_KINDS)


@pytest.mark.parametrize("kind", sorted(EXPECT))
@pytest.mark.parametrize("patient", [0, 3])
def test_each_simulated_kind_moves_its_feature(kind: str, patient: int) -> None:
    if kind in ("fever", "hypothermia"):
        start, end, t0 = 600.0, 700.0, 590.0  # slow ramps: start just before the episode
    else:
        start, end, t0 = 30.0, 60.0, 0.0
    name, ok = EXPECT[kind]
    i = F.FEATURE_NAMES.index(name)
    episode = _sim_windows(kind, start, end, t0, patient)[:, i]
    baseline = _sim_windows(None, start, end, t0, patient)[:, i]
    assert np.isfinite(baseline).all()
    assert ok(episode, baseline), (name, episode, baseline)
