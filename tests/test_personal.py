"""Personal calibration: bounded adaptation, robustness, persistence, and the benefit it brings."""

from __future__ import annotations

import numpy as np

from edgeagent.pipeline.alerts import MemoryAlertSink
from edgeagent.pipeline.detect import Detector, DetectorConfig
from edgeagent.pipeline.personal import (
    MAX_THRESHOLD,
    PERSISTENCE_CLIP,
    PRIOR_WINDOWS,
    THRESHOLD_MARGIN,
    WARMUP_WINDOWS,
    PersonalCalibration,
    Thresholds,
    blend,
    calibrate,
    persistence_sums,
    persistence_weights,
    personal_threshold,
    robust_stats,
)
from tests.plugins.model import SYN_FEATURES, SYN_MODALITY, SynWorld

POP_MU = np.array([70.0, 36.5], np.float32)
POP_SD = np.array([8.0, 0.3], np.float32)
TH = Thresholds(0.5, 0.5, 4.0)


def test_new_patient_starts_at_population_and_converges_within_warmup() -> None:
    cal = PersonalCalibration("p", POP_MU, POP_SD, TH)
    np.testing.assert_allclose(cal.mu[0], POP_MU)
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(95, 2, 200), rng.normal(37.2, 0.05, 200)].astype(np.float32)
    for i, row in enumerate(x):
        cal.observe(row)
        if i + 1 == WARMUP_WINDOWS:
            w = WARMUP_WINDOWS / (WARMUP_WINDOWS + PRIOR_WINDOWS)
            assert abs(cal.mu[0, 0] - 95) < (1 - w) * 25 + 1.5  # bounded: mostly personal
            assert cal.warmed_up
    assert abs(cal.mu[0, 0] - 95) < 1.0 and abs(cal.mu[0, 1] - 37.2) < 0.05
    assert cal.sigma[0, 1] >= 0.15 * POP_SD[1] - 1e-6  # spread floor holds


def test_robust_to_a_minority_of_anomalous_windows_and_nan() -> None:
    rng = np.random.default_rng(1)
    x = np.c_[rng.normal(60, 2, 100), rng.normal(36.4, 0.05, 100)]
    x[:20, 0] = 160.0  # 20 % tachycardia contamination
    x[20:30, 1] = np.nan
    med, mad, cnt = robust_stats(x)
    assert abs(med[0] - 60) < 2.5 and mad[0] < 6
    assert cnt.tolist() == [100, 90]
    mu, sd = blend(
        POP_MU, POP_SD, np.array([np.nan, 36.0]), np.array([np.nan, 0.0]), np.array([0, 50])
    )
    assert mu[0] == POP_MU[0] and sd[0] == POP_SD[0]  # no data: population
    assert sd[1] > 0  # zero spread is floored


def test_robust_stats_equal_numpy_nanmedian_bit_for_bit() -> None:
    """The fast column median must not change a single calibration number."""
    import warnings

    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 3, 7, 40, 200):
        x = rng.normal(size=(n, 30)).astype(np.float32)
        x[rng.random(x.shape) < 0.2] = np.nan
        x[:, 3] = np.nan  # a column with no value at all
        if n:
            x[0, 5] = np.inf
        med, mad, cnt = robust_stats(x)
        ref = np.where(np.isfinite(x), x.astype(np.float64), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanmedian(ref, axis=0)
            want_mad = 1.4826 * np.nanmedian(np.abs(ref - want), axis=0)
        assert np.array_equal(med, want, equal_nan=True)
        assert np.array_equal(mad, want_mad, equal_nan=True)
        assert np.array_equal(cnt, np.isfinite(x).sum(axis=0))


def test_personal_threshold_rises_for_a_noisy_patient_never_falls_below_global() -> None:
    cal = PersonalCalibration("p", POP_MU, POP_SD, TH)
    rng = np.random.default_rng(2)
    for _ in range(100):
        cal.observe(
            rng.normal(POP_MU, POP_SD).astype(np.float32), score=float(rng.uniform(0.3, 0.6))
        )
    assert cal.thresholds.clinical > TH.clinical
    quiet = PersonalCalibration("q", POP_MU, POP_SD, TH)
    for _ in range(100):
        quiet.observe(rng.normal(POP_MU, POP_SD).astype(np.float32), score=0.01)
    assert quiet.thresholds.clinical == TH.clinical


def test_personal_threshold_is_q99_plus_margin_between_floor_and_ceiling() -> None:
    rng = np.random.default_rng(4)
    assert personal_threshold(rng.uniform(0.6, 0.8, 19), 0.5) == 0.5  # too few scores
    s = rng.uniform(0.2, 0.7, 200)
    assert personal_threshold(s, 0.5) == np.quantile(s, 0.99) + THRESHOLD_MARGIN
    assert personal_threshold(s * 0.1, 0.5) == 0.5  # never below the floor
    assert personal_threshold(s + 0.5, 0.5) == MAX_THRESHOLD  # never above the ceiling


def _fleet(rng: np.random.Generator, n: int = 40) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patients' (calibration rows, later rows) for three features (population 0 +- 1):

    0, a trait: the later baseline is the calibration one; 1, a context: the
    calibration period catches one state, unrelated to the later baseline;
    2, never moves from the population median.
    """
    out = []
    for _ in range(n):
        trait, state, later_state = rng.normal(0, 1, 3)
        cal = np.c_[trait + rng.normal(0, 0.1, 60), state + rng.normal(0, 0.1, 60), np.zeros(60)]
        later = np.c_[trait + rng.normal(0, 0.1, 300), later_state + rng.normal(0, 0.1, 300)]
        out.append((cal, np.c_[later, np.zeros(300)]))
    return out


def test_persistence_weights_keep_a_trait_and_drop_what_the_calibration_cannot_predict() -> None:
    mu, sd = np.zeros(3), np.ones(3)
    sums = [persistence_sums(cal, later, mu, sd) for cal, later in _fleet(np.random.default_rng(5))]
    w = persistence_weights(sum(s[0] for s in sums), sum(s[1] for s in sums))
    assert w[0] > 0.95 and w[1] < 0.35 and w[2] == 0.0, w
    # an anti-correlated feature is clipped to 0, never a negative weight
    assert persistence_weights(np.array([-5.0]), np.array([5.0]))[0] == 0.0
    # one box adds at most PERSISTENCE_CLIP**2 per feature, however far its medians sit
    cr, cc = persistence_sums(np.full((30, 3), 1e6), np.full((30, 3), -1e6), mu, sd)
    assert np.all(cc == PERSISTENCE_CLIP**2) and np.all(cr == -(PERSISTENCE_CLIP**2))
    # a feature a box never saw (all NaN) adds nothing
    cal = np.full((30, 3), 2.0)
    cal[:, 1] = np.nan
    cr, cc = persistence_sums(cal, np.full((50, 3), 2.0), mu, sd)
    assert cr[1] == cc[1] == 0.0 and cc[0] == 4.0


def test_calibrate_weights_move_the_location_only_that_share_of_the_way() -> None:
    x = np.c_[np.full(100, 90.0), np.full(100, 37.1)].astype(np.float32)
    full_mu, full_sd = calibrate(x, POP_MU, POP_SD, spread=False)
    mu, sd = calibrate(x, POP_MU, POP_SD, spread=False, weights=np.array([0.0, 0.5]))
    assert mu[0] == POP_MU[0]
    assert mu[1] == np.float32(POP_MU[1] + 0.5 * (full_mu[1] - POP_MU[1]))
    np.testing.assert_array_equal(sd, full_sd)
    same, _ = calibrate(x, POP_MU, POP_SD, spread=False, weights=np.ones(2))
    np.testing.assert_array_equal(same, full_mu)


def test_state_roundtrip_restores_calibration() -> None:
    cal = PersonalCalibration("p", POP_MU, POP_SD, TH)
    rng = np.random.default_rng(3)
    for _ in range(50):
        cal.observe(rng.normal([80, 36.9], [3, 0.1]).astype(np.float32), score=0.05)
    again = PersonalCalibration("p", POP_MU, POP_SD, TH)
    again.load_dict(cal.to_dict())
    np.testing.assert_allclose(again.mu, cal.mu)
    np.testing.assert_allclose(again.sigma, cal.sigma)
    assert again.accepted == cal.accepted


def test_personalisation_beats_global_on_unusual_baseline(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    """Same model, same windows: personal calibration cuts false alarms on an unusual patient."""
    offset = np.zeros(len(SYN_FEATURES), np.float32)
    offset[0] = 22.0  # resting HR far above the population
    offset[5] = 1.0  # and a warm skin patch
    plan = [("normal", 80), ("tachycardia", 10), ("normal", 60), ("fall", 8), ("normal", 60)]
    results = {}
    for personalise in (True, False):
        det = Detector(
            syn_model,
            "v1",
            MemoryAlertSink(),
            DetectorConfig(personalise=personalise),
            feature_names=SYN_FEATURES,
            featurize=lambda w: w,
            modality_of=SYN_MODALITY,
        )
        t, fp, tp = 0.0, 0, 0
        for kind, n in plan:
            for x in syn_world.rows(44, kind, n, offset=offset):
                d = det.process_features("odd", t, t + 10, x)
                if t > 120:  # after warm-up
                    fp += int(kind == "normal" and d.clinical_active)
                    tp += int(kind != "normal" and d.clinical_active)
                t += 2
        results[personalise] = (fp, tp)
    assert results[True][0] < results[False][0] / 2, results
    assert results[True][1] >= 12, results  # the real events are still caught
