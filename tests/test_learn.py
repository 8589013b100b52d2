"""Local learner: learns the normal model, refuses poison, n_k/delta contract, never blocks."""

from __future__ import annotations

import time

import numpy as np
import onnx

from edgeagent.model.graph import get_params, read_meta, set_params, to_bytes
from edgeagent.model.nn import ae_param_mask, forward, standardise
from edgeagent.pipeline.alerts import MemoryAlertSink
from edgeagent.pipeline.detect import Detector
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
