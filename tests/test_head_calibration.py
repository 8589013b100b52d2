"""CCVR head calibration: additive moments; a head re-fitted across classes no trainer shared."""

from __future__ import annotations

import numpy as np
import pytest

from edgeagent.errors import ModelError
from edgeagent.model.meta import ModelSpec, init_params, unflatten
from edgeagent.model.nn import forward, hidden
from edgelab.head_calibration import (
    ClassMoments,
    calibrate_head,
    class_moments,
    robust_moments,
    sample_counts,
)
from edgelab.train import fit

SPEC = ModelSpec(n_features=6, classes=("normal", "a", "b", "c"), hidden=16, latent=3)
CENTRES = np.array([[0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0], [0, 3, 0, 0, 0, 0]], np.float32)


def _data(n: int, classes: list[int], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    y = rng.choice(classes, size=n)
    z = (CENTRES[y] + rng.normal(0.0, 0.7, (n, SPEC.n_features))).astype(np.float32)
    return z, np.ones_like(z), y


def test_moments_of_parts_sum_to_the_moments_of_the_whole() -> None:
    """What a secure sum of the hubs' moments gives equals the pooled data's moments."""
    rng = np.random.default_rng(1)
    w = init_params(SPEC, 1)
    z, m, y = _data(300, [0, 1, 2], rng)
    whole = class_moments(SPEC, w, z, m, y)
    parts = class_moments(SPEC, w, z[:120], m[:120], y[:120]) + class_moments(
        SPEC, w, z[120:], m[120:], y[120:]
    )
    for a, b in ((whole.n, parts.n), (whole.s1, parts.s1), (whole.s2, parts.s2)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    h = hidden(SPEC, w, z, m).astype(np.float64)
    np.testing.assert_allclose(whole.s1[1], h[y == 1].sum(axis=0), rtol=1e-9)
    assert whole.n.tolist() == [float((y == c).sum()) for c in range(4)]
    assert whole.n[3] == 0 and not whole.s1[3].any()  # class c never seen
    lie = parts.scaled(counts=10.0, sums=0.0)
    assert lie.n[0] == 10 * parts.n[0] and not lie.s1.any() and not lie.s2.any()


def test_calibration_refits_the_head_across_classes_no_trainer_held_together() -> None:
    """Two label-skewed trainers with restricted softmax: the average misjudges "a" vs "b";
    re-fitting the head on pooled moments repairs it and touches nothing else."""
    rng = np.random.default_rng(2)
    w0 = init_params(SPEC, 2)
    hubs = [_data(400, [0, 1], rng), _data(400, [0, 2], rng)]
    ws = [
        fit(SPEC, z, m, y, epochs=15, batch=32, seed=i, flat=w0, restrict_classes=True)[0]
        for i, (z, m, y) in enumerate(hubs)
    ]
    w = np.mean(ws, axis=0).astype(np.float32)
    moments = ClassMoments.zeros(SPEC)
    for z, m, y in hubs:
        moments = moments + class_moments(SPEC, w, z, m, y)
    wc = calibrate_head(SPEC, w, moments, seed=0)

    zt, mt, yt = _data(600, [0, 1, 2], np.random.default_rng(3))

    def accuracy(flat: np.ndarray) -> float:
        probs, _ = forward(SPEC, flat, zt, mt)
        return float(np.mean(probs.argmax(axis=1) == yt))

    before, after = accuracy(w), accuracy(wc)
    assert after > before + 0.05, (before, after)
    assert after > 0.9
    p, q = unflatten(SPEC, w), unflatten(SPEC, wc)
    for name in ("W1", "b1", "We", "be", "Wd", "bd"):
        np.testing.assert_array_equal(p[name], q[name])
    # class "c" was held by no trainer: its weights are left as they were
    np.testing.assert_array_equal(p["W2"][:, 3], q["W2"][:, 3])
    assert p["b2"][3] == q["b2"][3]
    np.testing.assert_array_equal(calibrate_head(SPEC, w, moments, seed=0), wc)


def test_sample_counts_split_the_virtual_features_by_prior() -> None:
    n = np.array([8000.0, 1500.0, 500.0, 3.0])
    counts = sample_counts(n, 100, "counts")
    assert counts.tolist() == [320, 60, 20, 1]  # proportional, a rare class keeps one
    assert sample_counts(n, 100, "balanced").tolist() == [100] * 4


def test_count_prior_calls_the_common_class_where_classes_overlap() -> None:
    """Why the pilot samples by counts: with a majority class that overlaps a rarer one,
    equal shares hand the overlap to the rare class and cost accuracy on data drawn as the
    fleet's is; the fleet's own frequencies keep it (and balanced shares keep more recall)."""
    rng = np.random.default_rng(4)
    w = init_params(SPEC, 4)

    def draw(n: int) -> tuple[np.ndarray, ...]:
        y = (rng.random(n) < 0.2).astype(int)  # 80 % normal, 20 % class "a"
        z = (CENTRES[y] * 0.3 + rng.normal(0.0, 0.7, (n, SPEC.n_features))).astype(np.float32)
        return z, np.ones_like(z), y

    z, m, y = draw(3000)
    moments = class_moments(SPEC, w, z, m, y)
    zt, mt, yt = draw(3000)
    preds = {
        prior: forward(SPEC, calibrate_head(SPEC, w, moments, prior=prior), zt, mt)[0].argmax(1)
        for prior in ("counts", "balanced")
    }
    acc = {k: float(np.mean(p == yt)) for k, p in preds.items()}
    recall = {k: float(np.mean(p[yt == 1] == 1)) for k, p in preds.items()}
    assert acc["counts"] > acc["balanced"] + 0.05, acc
    assert recall["balanced"] > recall["counts"], recall
    with pytest.raises(ValueError, match="unknown prior 'flat'; choose one of counts, balanced"):
        calibrate_head(SPEC, w, moments, prior="flat")


def test_robust_moments_drop_a_lying_box_and_cap_inflated_counts() -> None:
    rng = np.random.default_rng(5)
    w = init_params(SPEC, 5)
    honest = []
    for _ in range(8):
        z, m, y = _data(200, [0, 1, 2], rng)
        honest.append(class_moments(SPEC, w, z, m, y))
    total = sum(honest, ClassMoments.zeros(SPEC))
    # Honest boxes of similar size: (almost) the plain sum.
    plain = robust_moments(honest)
    np.testing.assert_allclose(
        plain.s1[0] / plain.n[0], total.s1[0] / total.n[0], rtol=0.02, atol=1e-3
    )
    # A box relabelling its anomalies as normal, another claiming 10x its rows of class a.
    z, m, y = _data(200, [0, 1, 2], rng)
    liar = class_moments(SPEC, w, z, m, np.zeros_like(y))
    z, m, y = _data(200, [0, 1, 2], rng)
    booster = class_moments(SPEC, w, z, m, y).scaled(counts=10.0, sums=10.0)
    got = robust_moments([*honest, liar, booster])
    normal_mean = total.s1[0] / total.n[0]
    assert np.linalg.norm(got.s1[0] / got.n[0] - normal_mean) < 0.2 * np.linalg.norm(
        (total + liar).s1[0] / (total + liar).n[0] - normal_mean
    )
    cap = float(np.median([p.n[1] for p in [*honest, liar, booster] if p.n[1] >= 2]))
    assert got.n[1] <= total.n[1] + cap + 1e-9  # the booster counts as one median box
    # k_mad=None (boxes already judged one by one): every mean stays, counts are still capped
    capped = robust_moments([*honest, liar, booster], k_mad=None)
    assert capped.n[0] > got.n[0]  # the liar's normal rows are in
    assert capped.n[1] <= total.n[1] + cap + 1e-9
    with pytest.raises(ValueError, match="no moments"):
        robust_moments([])


def test_calibration_without_any_class_returns_the_model_unchanged() -> None:
    w = init_params(SPEC, 0)
    out = calibrate_head(SPEC, w, ClassMoments.zeros(SPEC))
    np.testing.assert_array_equal(out, w)
    assert out is not w


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_moments_refuse_a_model_with_non_finite_weights(bad: float) -> None:
    w = init_params(SPEC, 0)
    w[0] = bad
    z, m, y = _data(10, [0], np.random.default_rng(0))
    with pytest.raises(ModelError, match="NaN or infinity"):
        class_moments(SPEC, w, z, m, y)
