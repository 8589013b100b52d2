"""firmware_sim.physiology: determinism, continuity, realism, and every episode kind visible.

The checkers below look at the *signals* (not at the simulator's internals),
the way a detector would, so a label that claims an event the data does not
show fails here.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.physiology import (
    ACC_RANGE_MG,
    ALL_KINDS,
    ANOMALY_KINDS,
    ECG_RAIL_UV,
    FAULT_KINDS,
    FEVER_THRESHOLD_C,
    HYPOTHERMIA_THRESHOLD_C,
    Chunk,
    Generator,
    Label,
    SimConfig,
    make_patient,
    simulate,
)

QUIET = SimConfig(anomaly_rate_per_hour=0.0, fault_rate_per_hour=0.0)


def _in(t: np.ndarray, a: float, b: float) -> np.ndarray:
    return (t >= a) & (t <= b)


def _beats(c: Chunk) -> tuple[np.ndarray, np.ndarray]:
    t, v = c.streams["rr"]
    return t, v[:, 0].astype(np.float64)


# --------------------------------------------------------------------------- profiles


def test_make_patient_is_deterministic_and_patients_differ() -> None:
    assert make_patient(3, seed=11) == make_patient(3, seed=11)
    pats = [make_patient(i, seed=11) for i in range(8)]
    assert len({p.seed for p in pats}) == 8
    assert len({p.patient_id for p in pats}) == 8
    hrs = np.array([p.baseline_hr for p in pats])
    temps = np.array([p.baseline_temp for p in pats])
    assert hrs.std() > 2.0 and temps.std() > 0.05
    assert len({p.activity_weights for p in pats}) == 8
    assert make_patient(3, seed=12) != make_patient(3, seed=11)
    with pytest.raises(ValueError):
        make_patient(-1)


def test_simulation_is_deterministic_from_the_seed() -> None:
    p = make_patient(1, seed=5)
    a, b = simulate(p, 90.0), simulate(p, 90.0)
    for name in a.streams:
        np.testing.assert_array_equal(a.streams[name][0], b.streams[name][0])
        np.testing.assert_array_equal(a.streams[name][1], b.streams[name][1])
    assert a.labels == b.labels
    other = simulate(make_patient(2, seed=5), 90.0)
    assert not np.allclose(a.streams["ecg"][1], other.streams["ecg"][1])


def test_patients_are_non_iid() -> None:
    """Different patients at rest have clearly different heart rates and ECG amplitude."""
    stats = []
    for i in range(4):
        p = make_patient(i, seed=2)
        c = simulate(p, 120.0, QUIET)
        stats.append((np.median(c.streams["hr"][1]), np.percentile(c.streams["ecg"][1], 99.9)))
    arr = np.array(stats)
    assert np.ptp(arr[:, 0]) > 5.0
    assert np.ptp(arr[:, 1]) > 100.0


@pytest.mark.parametrize(
    "splits",
    [
        [0.1] * 7 + [3.3, 0.0, 50.0, 36.0],
        [1.0] * 90,
        [0.004] * 10 + [89.96],
        [45.0, 45.0],
    ],
)
def test_advance_calls_join_exactly(splits: list[float]) -> None:
    p = make_patient(4, seed=9)
    cfg = SimConfig(
        episodes=(Label(20.0, 40.0, "pvc"), Label(45.0, 70.0, "fall"), Label(75.0, 85.0, "af"))
    )
    whole = Generator(p, cfg).advance(90.0)
    g = Generator(p, cfg)
    parts = [g.advance(s) for s in splits]
    assert g.now == pytest.approx(90.0)
    for name, (t, v) in whole.streams.items():
        tt = np.concatenate([q.streams[name][0] for q in parts])
        vv = np.concatenate([q.streams[name][1] for q in parts])
        np.testing.assert_array_equal(tt, t, err_msg=name)
        np.testing.assert_array_equal(vv, v, err_msg=name)


@settings(max_examples=15, deadline=None)
@given(
    splits=st.lists(st.floats(min_value=0.0, max_value=12.0), min_size=1, max_size=8),
    index=st.integers(min_value=0, max_value=50),
)
def test_any_chunking_reproduces_one_call(splits: list[float], index: int) -> None:
    p = make_patient(index, seed=21)
    cfg = SimConfig(anomaly_rate_per_hour=120.0, fault_rate_per_hour=60.0)
    g = Generator(p, cfg)
    parts = [g.advance(s) for s in splits]
    whole = Generator(p, cfg).advance(g.now)
    for name, (t, v) in whole.streams.items():
        np.testing.assert_array_equal(np.concatenate([q.streams[name][0] for q in parts]), t)
        np.testing.assert_array_equal(np.concatenate([q.streams[name][1] for q in parts]), v)


def test_continuity_no_phase_jump_at_chunk_boundaries() -> None:
    p = make_patient(0)
    g = Generator(p, QUIET)
    a = g.advance(7.3)
    b = g.advance(7.3)
    t = np.concatenate([a.streams["ecg"][0], b.streams["ecg"][0]])
    np.testing.assert_allclose(np.diff(t), 1 / 250.0, rtol=1e-9)
    rr_t = np.concatenate([a.streams["rr"][0], b.streams["rr"][0]])
    rr = np.concatenate([a.streams["rr"][1][:, 0], b.streams["rr"][1][:, 0]])
    # Each RR equals the spacing between consecutive beats, across the boundary too.
    np.testing.assert_allclose(np.diff(rr_t), rr[1:], atol=1e-5)


def test_start_offset_and_sample_grid() -> None:
    g = Generator(make_patient(0), QUIET, start=1000.0)
    c = g.advance(2.0)
    t = c.streams["ecg"][0]
    assert t[0] == pytest.approx(1000.0) and t[-1] < 1002.0
    np.testing.assert_allclose(t * 250.0, np.round(t * 250.0), atol=1e-6)
    assert c.start == 1000.0 and c.end == 1002.0


# --------------------------------------------------------------------------- realism


def test_streams_shapes_units_and_ranges() -> None:
    p = make_patient(2, seed=3)
    c = simulate(p, 60.0, QUIET)
    expect = {"ecg": (15000, 1), "acc": (3000, 3), "skin_temp": (60, 1), "env": (12, 2)}
    for name, shape in expect.items():
        t, v = c.streams[name]
        assert v.shape == shape, name
        assert t.dtype == np.float64 and v.dtype == np.float32
        assert np.all(np.diff(t) > 0)
    ecg = c.streams["ecg"][1][:, 0]
    assert 700 < np.percentile(ecg, 99.9) < 2000  # R peaks ~ 900-1500 uV plus wander
    assert np.abs(ecg).max() < ECG_RAIL_UV
    acc = c.streams["acc"][1]
    assert 800 < np.median(np.linalg.norm(acc, axis=1)) < 1300  # gravity
    assert np.abs(acc).max() < ACC_RANGE_MG
    temp = c.streams["skin_temp"][1][:, 0]
    assert temp.min() > 35.0 and temp.max() < 37.8
    env = c.streams["env"][1]
    assert 15 < env[:, 0].mean() < 30 and 20 < env[:, 1].mean() < 70
    hr = c.streams["hr"][1][:, 0]
    assert hr.min() > 40 and hr.max() < 190


@pytest.mark.parametrize("ecg_hz", [130.0, 250.0, 500.0])
def test_r_peaks_sit_at_the_beats(ecg_hz: float) -> None:
    """Every reported beat has an R peak (the ECG maximum) within 10 ms of it."""
    p = make_patient(1)
    c = simulate(p, 30.0, SimConfig(ecg_hz=ecg_hz, anomaly_rate_per_hour=0, fault_rate_per_hour=0))
    t, v = c.streams["ecg"]
    beats, _ = _beats(c)
    assert len(beats) > 15
    for b in beats[1:-1]:
        m = _in(t, b - 0.1, b + 0.1)
        peak_t = t[m][np.argmax(v[m, 0])]
        assert abs(peak_t - b) <= 0.01 + 1.0 / ecg_hz
        assert 0.5 * p.ecg_r_uv < v[m, 0].max() < 1.6 * p.ecg_r_uv


def test_hrv_has_respiratory_and_lf_modulation() -> None:
    p = make_patient(5)
    c = simulate(p, 300.0, QUIET)
    _, rr = _beats(c)
    sdnn = rr.std()
    assert 0.005 < sdnn < 0.2
    # Successive differences are not white noise: RR is autocorrelated (modulation).
    x = rr - rr.mean()
    assert np.corrcoef(x[:-1], x[1:])[0, 1] > 0.3


def test_hr_stream_agrees_with_rr() -> None:
    c = simulate(make_patient(6), 120.0, QUIET)
    bt, rr = _beats(c)
    ht, hr = c.streams["hr"]
    for tk, h in zip(ht[10:], hr[10:, 0], strict=True):
        last = rr[bt <= tk][-4:]
        assert h == pytest.approx(60.0 / last.mean(), rel=1e-3)


def test_activity_drives_accelerometer_and_heart_rate() -> None:
    """Across patients and hours, walking/running epochs move more and beat faster than rest."""
    p = make_patient(7, seed=1)
    g = Generator(p, SimConfig(ecg_hz=50.0, anomaly_rate_per_hour=0, fault_rate_per_hour=0))
    c = g.advance(3 * 3600.0)
    t, acc = c.streams["acc"]
    ht, hr = c.streams["hr"]
    moving, resting = [], []
    for k in range(0, 3 * 3600 - 60, 60):
        state = g.activity_at(k + 30.0)
        m = _in(t, k + 20, k + 40)
        dyn = np.linalg.norm(acc[m] - acc[m].mean(axis=0), axis=1).std()
        h = hr[_in(ht, k + 20, k + 40), 0].mean()
        (moving if state in ("walk", "run") else resting).append((dyn, h))
    assert moving and resting
    mv, rs = np.array(moving), np.array(resting)
    assert np.median(mv[:, 0]) > 5 * np.median(rs[:, 0])
    assert np.median(mv[:, 1]) > np.median(rs[:, 1]) + 5


def test_nights_are_mostly_asleep_lying_down() -> None:
    p = make_patient(3, seed=8)
    night_start = ((25.0 - p.start_hour) % 24.0) * 3600.0  # 01:00 local
    g = Generator(p, QUIET, start=night_start)
    states = [g.activity_at(night_start + k * 60.0) for k in range(300)]  # 01:00-06:00
    assert states.count("sleep") > 0.6 * len(states)
    k = next(i for i in range(len(states) - 2) if states[i : i + 3] == ["sleep"] * 3)
    c = Generator(p, QUIET, start=night_start).advance(k * 60.0 + 120.0)
    t, acc = c.streams["acc"]
    m = _in(t, night_start + k * 60.0 + 30.0, night_start + k * 60.0 + 90.0)
    assert abs(acc[m, 1].mean()) < 300.0  # gravity not along the upright axis
    assert acc[m].std(axis=0).max() < 20.0


def test_one_hour_of_ecg_is_fast() -> None:
    p = make_patient(0)
    t0 = time.perf_counter()
    c = simulate(p, 3600.0)
    took = time.perf_counter() - t0
    assert len(c.streams["ecg"][0]) == 900_000
    assert took < 4.0, f"1 h of 250 Hz simulation took {took:.2f} s"


# --------------------------------------------------------------------------- episode checkers


def _check_tachycardia(c: Chunk, lab: Label) -> None:
    bt, rr = _beats(c)
    m = _in(bt, lab.start + 1.0, lab.end)
    assert m.sum() >= 10
    assert (60.0 / rr[m]).min() > 100.0


def _check_bradycardia(c: Chunk, lab: Label) -> None:
    bt, rr = _beats(c)
    m = _in(bt, lab.start + 1.5, lab.end)
    assert m.sum() >= 8
    assert (60.0 / rr[m]).max() < 55.0


def _rmssd_ratio(rr: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.diff(rr) ** 2)) / rr.mean())


def _check_af(c: Chunk, lab: Label) -> None:
    bt, rr = _beats(c)
    m = _in(bt, lab.start + 0.5, lab.end)
    assert m.sum() >= 20
    assert _rmssd_ratio(rr[m]) > 0.12
    out = _unlabelled(c, bt)
    if out.sum() > 20:
        assert _rmssd_ratio(rr[out]) < 0.08  # sinus rhythm elsewhere is regular


def _premature_beats(bt: np.ndarray, rr: np.ndarray) -> np.ndarray:
    """Beats with a short RR followed by a compensatory long one (PVC pattern)."""
    i = np.arange(1, len(rr) - 1)
    hit = (rr[i] < 0.8 * rr[i - 1]) & (rr[i + 1] > 1.2 * rr[i - 1])
    return bt[i[hit]]


def _check_pvc(c: Chunk, lab: Label) -> None:
    bt, rr = _beats(c)
    pvcs = _premature_beats(bt, rr)
    inside = pvcs[_in(pvcs, lab.start, lab.end)]
    assert len(inside) >= max(3, int((lab.end - lab.start) / 20))
    # The premature beats have wide QRS complexes (> 100 ms above half amplitude... of |ECG|).
    t, v = c.streams["ecg"]
    b = inside[0]
    m = _in(t, b - 0.15, b + 0.15)
    seg = v[m, 0] - np.median(v[m, 0])
    width = (np.abs(seg) > 0.3 * np.abs(seg).max()).sum() / c_rate(t)
    assert width > 0.06


def c_rate(t: np.ndarray) -> float:
    return float(1.0 / np.median(np.diff(t)))


def _st_level(c: Chunk, a: float, b: float) -> float:
    t, v = c.streams["ecg"]
    bt, _ = _beats(c)
    diffs = []
    for beat in bt[_in(bt, a, b)]:
        st = v[_in(t, beat + 0.09, beat + 0.11), 0].mean()
        pr = v[_in(t, beat - 0.07, beat - 0.05), 0].mean()
        diffs.append(st - pr)
    return float(np.median(diffs))


def _check_st_change(c: Chunk, lab: Label) -> None:
    inside = _st_level(c, lab.start, lab.end)
    before = _st_level(c, lab.start - 30, lab.start - 6)
    assert abs(inside - before) > 100.0


def _check_fall(c: Chunk, lab: Label) -> None:
    t, acc = c.streams["acc"]
    mag = np.linalg.norm(acc, axis=1)
    assert mag[_in(t, lab.start, lab.start + 1.0)].max() > 2500.0  # impact
    still = _in(t, lab.start + 1.5, lab.end)
    assert (lab.end - lab.start) >= 20.0
    assert acc[still].std(axis=0).max() < 10.0  # lying still
    before = _in(t, lab.start - 5, lab.start - 0.5)
    g0 = acc[before].mean(axis=0) if before.any() else np.zeros(3)
    if g0[1] > 700.0:
        # Upright before (y up): the gravity direction moved by more than 45 degrees.
        g1 = acc[still].mean(axis=0)
        cos = g0 @ g1 / np.linalg.norm(g0) / np.linalg.norm(g1)
        assert cos < np.cos(np.radians(45))


def _near(t: np.ndarray, lab: Label, width: float = 120.0) -> np.ndarray:
    """Samples just outside the label, within its ramps (no other episode can be there)."""
    return _in(t, lab.start - width, lab.start - 1.0) | _in(t, lab.end + 1.0, lab.end + width)


def _check_fever(c: Chunk, lab: Label) -> None:
    t, v = c.streams["skin_temp"]
    assert v[_in(t, lab.start, lab.end), 0].min() >= FEVER_THRESHOLD_C
    assert v[_in(t, lab.start, lab.end), 0].max() > FEVER_THRESHOLD_C + 0.4
    assert v[_near(t, lab), 0].max() < FEVER_THRESHOLD_C


def _check_hypothermia(c: Chunk, lab: Label) -> None:
    t, v = c.streams["skin_temp"]
    assert v[_in(t, lab.start, lab.end), 0].max() <= HYPOTHERMIA_THRESHOLD_C
    assert v[_in(t, lab.start, lab.end), 0].min() < HYPOTHERMIA_THRESHOLD_C - 0.3
    assert v[_near(t, lab), 0].min() > HYPOTHERMIA_THRESHOLD_C
    # Cold exposure: the ambient temperature drops too (context for a detector).
    te, env = c.streams["env"]
    assert env[_in(te, lab.start, lab.end), 0].mean() < 12.0


def _check_lead_off(c: Chunk, lab: Label) -> None:
    t, v = c.streams["ecg"]
    seg = v[_in(t, lab.start, lab.end), 0]
    assert len(seg) > 100 and np.ptp(seg) == 0.0  # flatline
    bt, _ = _beats(c)
    assert not _in(bt, lab.start, lab.end).any()  # the device sees no beats
    ht, _ = c.streams["hr"]
    assert not _in(ht, lab.start, lab.end).any()


def _unlabelled(c: Chunk, t: np.ndarray) -> np.ndarray:
    m = np.ones(len(t), dtype=bool)
    for lab in c.labels:
        m &= ~_in(t, lab.start - 5.0, lab.end + 5.0)
    return m


def _check_motion_artifact(c: Chunk, lab: Label) -> None:
    t, v = c.streams["ecg"]
    inside = v[_in(t, lab.start, lab.end), 0].std()
    clean = v[_unlabelled(c, t), 0]
    n = len(clean) // 2500 * 2500
    typical = np.median(clean[:n].reshape(-1, 2500).std(axis=1))  # per 10 s window
    assert inside > 2.0 * typical
    assert np.abs(v[_in(t, lab.start, lab.end), 0]).max() < ECG_RAIL_UV  # not saturation


def _check_saturation(c: Chunk, lab: Label) -> None:
    t, v = c.streams["ecg"]
    seg = v[_in(t, lab.start, lab.end), 0]
    assert np.mean(np.abs(seg) >= ECG_RAIL_UV) > 0.9  # pinned at the ADC rail
    assert not (np.abs(v[_unlabelled(c, t), 0]) >= ECG_RAIL_UV).any()


CHECKERS: dict[str, Callable[[Chunk, Label], None]] = {
    "tachycardia": _check_tachycardia,
    "bradycardia": _check_bradycardia,
    "af": _check_af,
    "pvc": _check_pvc,
    "st_change": _check_st_change,
    "fall": _check_fall,
    "fever": _check_fever,
    "hypothermia": _check_hypothermia,
    "lead_off": _check_lead_off,
    "motion_artifact": _check_motion_artifact,
    "saturation": _check_saturation,
}


def test_every_kind_has_a_checker() -> None:
    assert set(CHECKERS) == set(ALL_KINDS) == set(ANOMALY_KINDS) | set(FAULT_KINDS)
    assert not set(ANOMALY_KINDS) & set(FAULT_KINDS)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_scripted_episode_is_visible_in_its_interval(kind: str) -> None:
    slow = kind in ("fever", "hypothermia")
    start, end = (600.0, 1000.0) if slow else (60.0, 110.0)
    total = 1600.0 if slow else 150.0
    cfg = SimConfig(episodes=(Label(start, end, kind),))
    c = simulate(make_patient(8, seed=4), total, cfg)
    assert c.labels == [Label(start, end, kind)]
    assert c.labels[0].is_fault == (kind in FAULT_KINDS)
    CHECKERS[kind](c, c.labels[0])


def test_random_schedule_labels_are_realistic_and_visible() -> None:
    """A long, busy session: every label is non-overlapping, sized sensibly and visible."""
    p = make_patient(9, seed=6)
    cfg = SimConfig(anomaly_rate_per_hour=20.0, fault_rate_per_hour=8.0)
    c = simulate(p, 4 * 3600.0, cfg)
    labels = c.labels
    kinds = {lab.kind for lab in labels}
    assert len(labels) >= 15 and len(kinds) >= 7
    for a, b in itertools.pairwise(labels):
        assert a.end < b.start
    for lab in labels:
        dur = lab.end - lab.start
        if lab.kind in ("fever", "hypothermia"):
            assert 300.0 <= dur <= 900.0
        else:
            assert 20.0 <= dur <= 121.0
        if lab.end > 4 * 3600.0 - 1 or lab.start < 35.0:
            continue  # cut by the session edges
        CHECKERS[lab.kind](c, lab)


@pytest.mark.parametrize("kinds", [("tachycardia", "fall"), ("lead_off",), ("fever",)])
def test_kinds_restrict_the_schedule(kinds: tuple[str, ...]) -> None:
    cfg = SimConfig(anomaly_rate_per_hour=30.0, fault_rate_per_hour=30.0, kinds=kinds)
    c = simulate(make_patient(1), 3600.0, cfg)
    assert c.labels
    assert {lab.kind for lab in c.labels} <= set(kinds)


def test_zero_rates_mean_no_episodes() -> None:
    assert simulate(make_patient(1), 1800.0, QUIET).labels == []


def test_rate_scales_episode_count() -> None:
    # Short kinds only, so occupancy does not cap the count.
    kinds = ("tachycardia", "pvc", "lead_off")
    lo = simulate(
        make_patient(2),
        7200.0,
        SimConfig(ecg_hz=50.0, kinds=kinds, anomaly_rate_per_hour=3, fault_rate_per_hour=1),
    )
    hi = simulate(
        make_patient(2),
        7200.0,
        SimConfig(ecg_hz=50.0, kinds=kinds, anomaly_rate_per_hour=24, fault_rate_per_hour=8),
    )
    assert len(hi.labels) > 3 * max(len(lo.labels), 1)


def test_chunk_labels_repeat_spanning_episodes_unclipped() -> None:
    cfg = SimConfig(episodes=(Label(8.0, 40.0, "tachycardia"),))
    g = Generator(make_patient(0), cfg)
    first, second, third = g.advance(20.0), g.advance(20.5), g.advance(20.0)
    assert first.labels == second.labels == [Label(8.0, 40.0, "tachycardia")]
    assert third.labels == []


@pytest.mark.parametrize(
    "cfg",
    [
        SimConfig(ecg_hz=0.0),
        SimConfig(acc_hz=float("nan")),
        SimConfig(anomaly_rate_per_hour=-1.0),
        SimConfig(kinds=("sneezing",)),
        SimConfig(episodes=(Label(10.0, 5.0, "af"),)),
        SimConfig(episodes=(Label(0.0, 50.0, "af"), Label(40.0, 60.0, "pvc"))),
        SimConfig(episodes=(Label(0.0, 50.0, "hiccups"),)),
    ],
)
def test_bad_config_is_rejected_clearly(cfg: SimConfig) -> None:
    with pytest.raises(ValueError, match=r"SimConfig|episode"):
        Generator(make_patient(0), cfg)


def test_bad_advance_arguments() -> None:
    g = Generator(make_patient(0), QUIET)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            g.advance(bad)
    assert all(len(t) == 0 for t, _ in g.advance(0.0).streams.values())
