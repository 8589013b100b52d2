"""Detector: scoring, hysteresis, de-duplication, faults vs clinical, hot swap, bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgeagent.errors import ModelError
from edgeagent.model.graph import ModelMeta, build_model, init_params, to_bytes
from edgeagent.pipeline.alerts import AlertStore, MemoryAlertSink
from edgeagent.pipeline.detect import Detector, DetectorConfig
from tests.plugins.model import SYN_FEATURES, SYN_MODALITY, SynWorld


def _det(model: bytes, sink=None, **cfg) -> Detector:  # type: ignore[no-untyped-def]
    return Detector(
        model,
        "v1-test",
        sink if sink is not None else MemoryAlertSink(),
        DetectorConfig(**cfg),
        feature_names=SYN_FEATURES,
        featurize=lambda w: w,
        modality_of=SYN_MODALITY,
    )


def _run(det: Detector, world: SynWorld, patient: int, plan: list[tuple[str, int]], t0=0.0):  # type: ignore[no-untyped-def]
    out = []
    t = t0
    for kind, n in plan:
        for x in world.rows(patient, kind, n, seed=int(t)):
            out.append((kind, det.process_features(f"p{patient}", t, t + 10.0, x)))
            t += 2.0
    return out


def test_one_alert_per_episode_with_kind_modality_and_model(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    sink = MemoryAlertSink()
    det = _det(syn_model, sink)
    plan = [("normal", 60), ("tachycardia", 15), ("normal", 30), ("fall", 10), ("normal", 30)]
    res = _run(det, syn_world, 30, plan)
    clinical = [a for a in sink.list() if a.category == "clinical"]
    # de-duplicated: exactly one alert overlaps each injected episode, not one per window
    for kind in ("tachycardia", "fall"):
        spans = [d for k, d in res if k == kind]
        t0, t1 = spans[0].start, spans[-1].start + 2.0
        hits = [a for a in clinical if a.start < t1 and a.end > t0]
        assert [a.kind for a in hits] == [kind]
    assert len(clinical) <= 4  # the rest are rare single-window false alarms at most
    tachy = next(a for a in clinical if a.kind == "tachycardia")
    assert tachy.modality == "ecg" and tachy.model == "v1-test" and tachy.patient == "p30"
    fall = next(a for a in clinical if a.kind == "fall")
    assert fall.modality == "acc"
    # the episode spans the anomalous windows (hysteresis extends it)
    first = next(d for k, d in res if k == "tachycardia")
    assert tachy.start <= first.start + 2.0
    assert tachy.end - tachy.start >= 20.0
    assert tachy.closed
    assert all(not d.fault for _, d in res)


def test_sensor_faults_raise_fault_alerts_not_clinical(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    sink = MemoryAlertSink()
    det = _det(syn_model, sink)
    res = _run(det, syn_world, 31, [("normal", 60), ("sensor_fault", 12), ("normal", 10)])
    faults = [a for a in sink.list() if a.category == "sensor_fault"]
    assert len(faults) == 1 and faults[0].kind == "sensor_fault"
    during = [d for k, d in res if k == "sensor_fault"]
    assert all(d.fault for d in during[1:])
    assert not any(d.clinical_active for d in during)


def test_hysteresis_holds_episode_through_a_dip_and_cooldown_dedups(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    sink = MemoryAlertSink()
    det = _det(syn_model, sink, k_off=3, cooldown_s=30.0)
    _run(
        det, syn_world, 32, [("normal", 60), ("tachycardia", 6), ("normal", 1), ("tachycardia", 6)]
    )
    _run(det, syn_world, 32, [("normal", 8), ("tachycardia", 6), ("normal", 10)], t0=200.0)
    clinical = [a for a in sink.list() if a.category == "clinical"]
    assert len(clinical) == 1  # one dip window and one short gap within cooldown: same alert


def test_no_data_window_is_reported_not_alerted(syn_model: bytes) -> None:
    det = _det(syn_model)
    d = det.process_features("p", 0, 10, np.full(len(SYN_FEATURES), np.nan, np.float32))
    assert d.status == "no_data" and not d.opened
    with pytest.raises(ModelError, match="feature vector has 3"):
        det.process_features("p", 0, 10, np.zeros(3, np.float32))


def test_missing_modality_degrades_gracefully(syn_model: bytes, syn_world: SynWorld) -> None:
    """ECG-only windows (acc/temp/env NaN) are still scored and tachycardia still detected."""
    sink = MemoryAlertSink()
    det = _det(syn_model, sink)
    t = 0.0
    for kind, n in [("normal", 60), ("tachycardia", 10), ("normal", 5)]:
        for x in syn_world.rows(33, kind, n):
            x[3:] = np.nan
            d = det.process_features("p33", t, t + 10, x)
            assert d.status == "ok" and np.isfinite(d.score)
            t += 2
    assert [a.kind for a in sink.list() if a.category == "clinical"] == ["tachycardia"]


def test_personal_threshold_and_calibration_follow_patient(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    det = _det(syn_model)
    offset = np.zeros(len(SYN_FEATURES), np.float32)
    offset[0] = 25.0  # resting HR far above the population
    offset[5] = 1.0
    t = 0.0
    for x in syn_world.rows(34, "normal", 120, offset=offset):
        det.process_features("odd", t, t + 10, x)
        t += 2
    cal = det.calibration("odd")
    assert cal.warmed_up
    assert abs(cal.mu[0, 0] - syn_world.baseline(34)[0] - 25.0) < 3.0
    # a new patient starts from the population calibration
    fresh = det.calibration("new")
    np.testing.assert_allclose(fresh.mu[0], det.meta.pop_mu)


def test_alert_store_is_durable_and_queryable(
    tmp_state: Path, syn_model: bytes, syn_world: SynWorld
) -> None:
    store = AlertStore(tmp_state)
    det = _det(syn_model, store)
    _run(det, syn_world, 35, [("normal", 50), ("fever", 10), ("normal", 10)])
    store.close()
    again = AlertStore(tmp_state)
    rows = again.list(patient="p35", category="clinical")
    assert [a.kind for a in rows] == ["fever"]
    assert rows[0].closed and rows[0].model == "v1-test" and rows[0].modality == "temp"
    assert len(again.list(unsent=True)) == again.count()
    again.mark_sent(rows[0].id)
    assert rows[0].id not in [a.id for a in again.list(unsent=True)]


def test_hot_swap_keeps_old_model_on_bad_input_and_drops_no_window(
    syn_model: bytes, syn_model_other: bytes, syn_world: SynWorld
) -> None:
    det = _det(syn_model)
    with pytest.raises(ModelError):
        det.swap(syn_model[:200], "broken")
    other = ModelMeta(
        tuple(f"g{i}" for i in range(5)), ("normal", "a"), [0.0] * 5, [1.0] * 5, hidden=4, latent=2
    )
    with pytest.raises(ModelError, match="expects 5 features"):
        det.swap(to_bytes(build_model(other, init_params(other.spec))), "wrong-shape")
    assert det.model_label == "v1-test" and det.counters["swap_refused"] == 2

    rows = syn_world.rows(36, "normal", 400)
    seen: list[str] = []
    stop = threading.Event()

    def feed() -> None:
        for i, x in enumerate(rows):
            seen.append(det.process_features("p36", 2.0 * i, 2.0 * i + 10, x).model)
        stop.set()

    th = threading.Thread(target=feed)
    th.start()
    n = 0
    while not stop.is_set():
        det.swap(syn_model_other if n % 2 == 0 else syn_model, f"v{n + 2}")
        n += 1
    th.join()
    assert len(seen) == len(rows)  # every window scored across the swaps
    assert n >= 1 and det.counters["swaps"] == n


def test_configured_thresholds_override_the_model_s(syn_model: bytes, syn_world: SynWorld) -> None:
    """``[detection] thresholds`` reach the decision: a clinical floor of 1.0 silences alerts."""
    plan = [("normal", 60), ("tachycardia", 15), ("normal", 10)]
    base = MemoryAlertSink()
    _run(_det(syn_model, base), syn_world, 31, plan)
    assert any(a.category == "clinical" for a in base.list())
    muted = MemoryAlertSink()
    det = _det(syn_model, muted, thresholds={"clinical": 1.0})
    assert det.calibration("p31").thresholds.clinical == 1.0
    _run(det, syn_world, 31, plan)
    assert not [a for a in muted.list() if a.category == "clinical"]


def test_config_validation() -> None:
    with pytest.raises(ModelError):
        DetectorConfig(intra_op_threads=0)
    with pytest.raises(ModelError):
        DetectorConfig(off_ratio=0.0)


def test_a_class_whose_modality_is_absent_is_never_the_answer(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    """Fever rows with the temperature stream missing: the head may not say "fever"."""
    sink = MemoryAlertSink()
    det = _det(syn_model, sink)
    _run(det, syn_world, 31, [("normal", 60)])
    temp = [i for i, n in enumerate(SYN_FEATURES) if SYN_MODALITY[n] == "temp"]
    rows = syn_world.rows(31, "fever", 40)
    cal = det.calibration("p31")
    no_temp = rows.copy()
    no_temp[:, temp] = np.nan
    # The model itself still puts mass on fever without temperature ...
    raw, _ = det.score(no_temp, cal.mu, cal.sigma)
    assert raw[:, det.meta.classes.index("fever")].max() > 0.01
    # ... the detector never answers it, and scores only go down.
    clinical = [i for i, c in enumerate(det.meta.classes) if c not in ("normal", "sensor_fault")]
    for i, x in enumerate(no_temp):
        d = det.process_features("p31", 200.0 + 2.0 * i, 210.0 + 2.0 * i, x)
        assert d.kind != "fever"
        assert d.score <= float(raw[i, clinical].sum()) + 1e-6
    assert not [a for a in sink.list() if a.kind == "fever"]
    # With temperature present the same model does call fever (the mask, not the model, acts).
    d = det.process_features("p31", 400.0, 410.0, rows[0])
    assert d.kind == "fever" and d.score > 0.5
