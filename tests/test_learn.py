"""Local learner: learns the normal model, refuses poison, n_k/delta contract, never blocks."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeagent.model.graph import get_params, read_meta, set_params, to_bytes
from edgeagent.model.meta import ModelMeta
from edgeagent.model.nn import ae_param_mask, forward, head_param_mask, standardise
from edgeagent.pipeline.alerts import MemoryAlertSink
from edgeagent.pipeline.detect import Detector, ValidatedWindow
from edgeagent.pipeline.learn import LearnerConfig, LocalLearner
from tests.plugins.model import SYN_FEATURES, SYN_MODALITY, SynWorld


def _setup(model: bytes) -> tuple[onnx.ModelProto, LocalLearner]:
    proto = onnx.load_from_string(model)
    return proto, LocalLearner(read_meta(proto).spec, get_params(proto), LearnerConfig(lr=3e-3))


def _recon(spec, w, x, mu, sigma) -> float:  # type: ignore[no-untyped-def]
    z, m = standardise(x, mu, sigma)
    return float(forward(spec, w, z, m)[1].mean())


def test_learning_reduces_reconstruction_error_on_patient_normal(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    proto, learner = _setup(syn_model)
    spec = read_meta(proto).spec
    x = syn_world.rows(40, "normal", 400)
    mu = np.median(x, 0)[None]
    sigma = (x.std(0) + 1e-3)[None]
    # This patient's normal has structure the population lacked: features move together.
    z = (x - mu) / sigma
    for j in (1, 3, 4, 7):
        x[:, j] = (mu[0, j] + sigma[0, j] * (0.9 * z[:, 0] + 0.1 * z[:, j])).astype(np.float32)
    before = _recon(spec, learner.params(), x[300:], mu, sigma)
    for _ in range(6):  # a few hours of windows, replayed
        for row in x[:300]:
            learner.offer(row, mu, sigma, normal_ok=True)
        while learner.pending:
            learner.step(4)
    after = _recon(spec, learner.params(), x[300:], mu, sigma)
    assert after < 0.8 * before
    assert learner.n_k == learner.counters["trained"] > 1500


def test_delta_contract_and_head_untouched(syn_model: bytes, syn_world: SynWorld) -> None:
    proto, learner = _setup(syn_model)
    spec = read_meta(proto).spec
    w0 = get_params(proto)
    assert learner.n_k == 0 and not learner.delta().any()
    x = syn_world.rows(41, "normal", 64)
    for row in x:
        learner.offer(row, np.median(x, 0)[None], x.std(0)[None], True)
    learner.step(10)
    d = learner.delta()
    assert d.dtype == np.float32 and d.shape == w0.shape
    np.testing.assert_allclose(learner.params(), w0 + d, atol=1e-6)
    mask = ae_param_mask(spec)
    assert np.abs(d[mask == 0]).max() == 0.0  # classifier head is not trained on the box
    assert np.abs(d[mask == 1]).max() > 0
    # the local weights load into the same graph (hot-swappable)
    local = set_params(proto, learner.params())
    assert to_bytes(local) != syn_model
    opt, steps = learner.opt, learner.opt.t
    learner.reset_global(learner.params())
    assert learner.n_k == 0 and not learner.delta().any()
    # a new round keeps the optimiser's moments (a fresh Adam takes sign-sized first steps)
    assert learner.opt is opt and opt.t == steps > 0


def test_anomalies_and_faults_do_not_poison_normal_model(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    """Driven by the detector: anomalous windows are not offered as normal, outliers are dropped."""
    _proto, learner = _setup(syn_model)
    det = Detector(
        syn_model,
        "v1",
        MemoryAlertSink(),
        feature_names=SYN_FEATURES,
        featurize=lambda w: w,
        modality_of=SYN_MODALITY,
        on_scored=learner.offer,
    )
    t = 0.0
    for kind, n in [("normal", 80), ("fever", 40), ("sensor_fault", 40), ("normal", 20)]:
        for x in syn_world.rows(42, kind, n):
            det.process_features("p42", t, t + 10, x)
            t += 2
    c = learner.counters
    assert c["offered"] == 180
    assert c["rejected_not_normal"] >= 80  # warm-up + the 80 anomalous/faulty windows
    # direct poisoning attempt: anomalous rows offered as "normal" are caught by the outlier guard
    while learner.pending:
        learner.step(4)
    cal = det.calibration("p42")
    for x in syn_world.rows(42, "fall", 32):
        learner.offer(x * 1.0, cal.mu, cal.sigma, normal_ok=True)
    learner.step(4)
    assert learner.counters["rejected_outlier"] >= 24


def test_offer_never_blocks_and_queue_is_bounded(syn_model: bytes, syn_world: SynWorld) -> None:
    proto, _ = _setup(syn_model)
    learner = LocalLearner(read_meta(proto).spec, get_params(proto), LearnerConfig(queue_max=50))
    x = syn_world.rows(43, "normal", 200)
    mu, sigma = np.median(x, 0)[None], x.std(0)[None]
    t0 = time.perf_counter()
    for row in x:
        learner.offer(row, mu, sigma, True)
    per_offer = (time.perf_counter() - t0) / len(x)
    assert learner.pending == 50 and learner.counters["dropped_full"] == 150
    assert per_offer < 1e-3
    learner.start()
    try:
        deadline = time.monotonic() + 5.0
        while learner.pending >= learner.config.batch and time.monotonic() < deadline:
            time.sleep(0.01)
        assert learner.counters["trained"] > 0
    finally:
        learner.stop()


def test_learner_takes_windows_again_after_a_worse_global_model(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    """A global model with a higher error floor (DP noise) must not lock the learner out.

    The outlier guard compares a batch's reconstruction errors with the recent
    accepted ones; kept across ``reset_global`` those belong to the old weights,
    and every window of the new model is an "outlier" for ever (n_k stuck at 0).
    """
    proto, learner = _setup(syn_model)
    x = syn_world.rows(43, "normal", 160)
    mu, sigma = np.median(x, 0)[None], (x.std(0) + 1e-3)[None]
    for row in x[:64]:
        learner.offer(row, mu, sigma, normal_ok=True)
    while learner.pending:
        learner.step(4)
    assert learner.n_k > 0
    w = get_params(proto)
    noisy = w + np.random.default_rng(0).normal(0, float(np.abs(w).mean()), w.shape)
    learner.reset_global(noisy.astype(np.float32))
    rejected = learner.counters["rejected_outlier"]
    for row in x[64:]:
        learner.offer(row, mu, sigma, normal_ok=True)
    while learner.pending:
        learner.step(4)
    assert learner.n_k >= 48, (learner.n_k, learner.counters)
    assert learner.counters["rejected_outlier"] - rejected < 48


# -- clinician-labelled windows (offer_labelled) ---------------------------------------------
def _labelled_setup(model: bytes, **cfg: Any) -> tuple[onnx.ModelProto, LocalLearner, ModelMeta]:
    proto = onnx.load_from_string(model)
    meta = read_meta(proto)
    lr = LocalLearner(
        meta.spec,
        get_params(proto),
        LearnerConfig(lr=3e-3, **cfg),
        pop=(meta.pop_mu, meta.pop_sigma),
    )
    return proto, lr, meta


def _patient(
    world: SynWorld, p: int, kind: str, n: int, label: str | None = None
) -> list[ValidatedWindow]:
    """``n`` windows of ``kind`` from patient ``p``, labelled ``label`` (default: ``kind``)."""
    normal = world.rows(p, "normal", 60, seed=3)
    mu, sigma = normal.mean(0)[None], (normal.std(0) + 1e-3)[None]
    rows = world.rows(p, kind, n, seed=4)
    return [ValidatedWindow(x, mu, sigma, label or kind) for x in rows]


def _log_p_normal(meta: ModelMeta, w: np.ndarray, ws: list[ValidatedWindow]) -> float:
    """Mean log p(normal) the head gives windows ``ws`` under weights ``w``."""
    x = np.stack([v.x for v in ws])
    z, m = standardise(x, ws[0].mu, ws[0].sigma)
    zp, _ = standardise(x, np.asarray(meta.pop_mu)[None], np.asarray(meta.pop_sigma)[None])
    return float(np.log(forward(meta.spec, w, z, m, zp)[0][:, 0] + 1e-12).mean())


def test_dismissed_alerts_train_the_head_and_only_the_head(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    """A dismissed alert's windows ("normal") move the head towards normal on such windows;
    the autoencoder's coordinates stay where they were, and the trained groups say so."""
    _proto, lr, meta = _labelled_setup(syn_model)
    false_alarms = _patient(syn_world, 44, "fever", 40, label="normal")
    before = _log_p_normal(meta, lr.params(), false_alarms[20:])
    for v in false_alarms[:20]:
        assert lr.offer_labelled(v)
    while lr.pending:
        lr.step(8)
    d = lr.delta()
    assert np.abs(d[head_param_mask(meta.spec) == 1]).max() > 0
    assert np.abs(d[ae_param_mask(meta.spec) == 1]).max() == 0.0
    assert lr.trained_groups() == frozenset({"head"})
    np.testing.assert_array_equal(lr.trained_mask(), head_param_mask(meta.spec))
    # unseen windows of the same kind of false alarm now look more normal to the head
    assert _log_p_normal(meta, lr.params(), false_alarms[20:]) > before + 1.0


def test_without_labels_the_ae_only_path_is_unchanged(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    """No labelled window: the same weights, n_k and groups as a learner that never heard
    of labels (the head untouched, ``trained_groups`` == {"ae"})."""
    proto, lr, meta = _labelled_setup(syn_model)
    plain = LocalLearner(meta.spec, get_params(proto), LearnerConfig(lr=3e-3))
    x = syn_world.rows(45, "normal", 64)
    mu, sigma = np.median(x, 0)[None], (x.std(0) + 1e-3)[None]
    for row in x:
        lr.offer(row, mu, sigma, True)
        plain.offer(row, mu, sigma, True)
    while lr.pending:
        lr.step(4)
    while plain.pending:
        plain.step(4)
    np.testing.assert_array_equal(lr.params(), plain.params())
    assert lr.n_k == plain.n_k == 64
    assert lr.trained_groups() == frozenset({"ae"})
    assert not lr.delta()[head_param_mask(meta.spec) == 1].any()


def test_labelled_budget_per_round_and_n_k_counts_each_window_once(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    _proto, lr, _meta = _labelled_setup(syn_model, label_budget=10, label_epochs=5)
    ws = _patient(syn_world, 46, "tachycardia", 25)
    took = [lr.offer_labelled(v) for v in ws]
    assert took == [True] * 10 + [False] * 15  # the budget, then refusals
    assert lr.counters["labelled_over_budget"] == 15
    x = syn_world.rows(46, "normal", 32)
    for row in x:
        lr.offer(row, np.median(x, 0)[None], (x.std(0) + 1e-3)[None], True)
    while lr.pending:
        lr.step(4)
    # 10 labelled windows replayed 5 times each, counted once; plus 32 normal windows
    assert lr.counters["labelled_trained"] == 10
    # a batch holds each due window once: passes = windows x epochs, in batches of label_batch
    assert lr.counters["head_steps"] == math.ceil(10 / lr.config.label_batch) * 5
    assert lr.n_k == 32 + 10
    assert lr.trained_groups() == frozenset({"ae", "head"})
    assert lr.round_summary()["labelled_new"] == 10
    # a new round: the budget opens again, the pool is kept and replayed (counted once more)
    lr.reset_global(lr.params())
    assert lr.n_k == 0 and lr.trained_groups() == frozenset()
    assert lr.offer_labelled(ws[20])
    while lr.pending:
        lr.step(4)
    assert lr.n_k == 11 and lr.labelled == 11


def test_refuses_unknown_labels_bad_windows_and_missing_population(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    proto, lr, meta = _labelled_setup(syn_model)
    v = _patient(syn_world, 47, "fall", 1)[0]
    assert not lr.offer_labelled(ValidatedWindow(v.x, v.mu, v.sigma, "asystole"))
    assert not lr.offer_labelled(ValidatedWindow(v.x, v.mu, v.sigma, ""))
    assert not lr.offer_labelled(ValidatedWindow(v.x[:3], v.mu, v.sigma, "fall"))
    nan = np.full_like(v.x, np.nan)
    assert not lr.offer_labelled(ValidatedWindow(nan, v.mu, v.sigma, "fall"))
    c = lr.counters
    assert c["labelled_unknown_class"] == 2 and c["labelled_bad_window"] == 2
    assert lr.labelled == 0 and lr.pending == 0 and not lr.delta().any()
    no_pop = LocalLearner(meta.spec, get_params(proto))
    assert not no_pop.offer_labelled(v)
    assert no_pop.counters["labelled_no_population"] == 1
    assert lr.offer_labelled(v)  # and the good one is taken


def test_labelled_offers_from_threads_are_not_lost(syn_model: bytes, syn_world: SynWorld) -> None:
    """Verdicts from several threads while the training thread runs: every accepted window
    is in the pool and trained, the counters add up, nothing is lost or counted twice."""
    _proto, lr, _meta = _labelled_setup(syn_model, label_budget=400, label_pool=400)
    per_thread = 60
    sets = [_patient(syn_world, 50 + i, kind, per_thread) for i, kind in enumerate(
        ("normal", "fever", "fall", "tachycardia")
    )]  # fmt: skip
    x = syn_world.rows(49, "normal", 200)
    mu, sigma = np.median(x, 0)[None], (x.std(0) + 1e-3)[None]
    lr.start()
    try:
        threads = [
            threading.Thread(target=lambda s=s: [lr.offer_labelled(v) for v in s]) for s in sets
        ]
        threads.append(threading.Thread(target=lambda: [lr.offer(r, mu, sigma, True) for r in x]))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 30.0
        while lr._label_passes_due() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        lr.stop()
    c = lr.counters
    assert c["labelled_accepted"] == 4 * per_thread == lr.labelled
    assert c["labelled_offered"] == 4 * per_thread
    assert c["labelled_trained"] == 4 * per_thread  # every window trained (exactly once)
    assert lr.n_k == c["trained"] + c["labelled_trained"]


def test_labelled_pool_survives_a_restart(
    syn_model: bytes, syn_world: SynWorld, tmp_path: Path
) -> None:
    from edgeagent.daemon.detection import LearnerComponent
    from edgeagent.daemon.health import Liveness

    _proto, lr, _meta = _labelled_setup(syn_model)
    for v in _patient(syn_world, 55, "fever", 6):
        lr.offer_labelled(v)
    comp = LearnerComponent(lr, Liveness(), tmp_path / "learner_state.npz", "sha")
    comp.save()
    _p2, fresh, _m = _labelled_setup(syn_model)
    comp2 = LearnerComponent(fresh, Liveness(), tmp_path / "learner_state.npz", "other-sha")
    assert not comp2.restore()  # another model: w_local is not restored ...
    assert fresh.labelled == 6 and comp2.labelled_restored == 6  # ... but the labels are
    assert comp2.status()["learner"]["labelled"] == 6


def test_a_lasting_change_in_the_signal_does_not_lock_the_learner_out(
    syn_model: bytes, syn_world: SynWorld
) -> None:
    """After a reset the guard's reference starts from the first windows it sees; if the
    patient's signal then changes for good (higher error on every window), the guard
    must follow it rather than reject every later window."""
    proto, learner = _setup(syn_model)
    x = syn_world.rows(44, "normal", 288)
    mu, sigma = np.median(x, 0)[None], (x.std(0) + 1e-3)[None]
    learner.reset_global(get_params(proto))
    for row in x[:32]:
        learner.offer(row, mu, sigma, normal_ok=True)
    learner.step(8)
    shifted = x[32:] + 6.0 * sigma  # every later window several sigmas off, for good
    spec, w = learner.spec, learner.params()
    before = _recon(spec, w, x[:32], mu, sigma)
    assert _recon(spec, w, shifted, mu, sigma) > 4 * before  # the guard's factor
    trained = learner.counters["trained"]
    for row in shifted:
        learner.offer(row, mu, sigma, normal_ok=True)
        learner.step(1)
    assert learner.counters["trained"] - trained >= 64, learner.counters
