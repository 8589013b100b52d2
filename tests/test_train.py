"""Restricted softmax (label-skewed federated training) and trait-only personal calibration."""

from __future__ import annotations

import numpy as np

from edgeagent.model.meta import ModelSpec, init_params, unflatten
from edgeagent.model.nn import forward, head_loss_grad
from edgeagent.pipeline import features
from edgeagent.pipeline.personal import TRAIT_FEATURES, calibrate, trait_mask
from edgelab.train import fit

SPEC = ModelSpec(n_features=6, classes=("normal", "a", "b", "c"), hidden=8, latent=3)


def _rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(0.0, 1.0, (n, SPEC.n_features)).astype(np.float32)
    return z, np.ones_like(z)


def test_restricted_softmax_leaves_absent_classes_untouched_and_matches_present_only_ce() -> None:
    rng = np.random.default_rng(0)
    w = init_params(SPEC, 0)
    z, m = _rows(32, rng)
    y = rng.choice([0, 2], size=32)
    present = np.array([True, False, True, False])
    loss, g = head_loss_grad(SPEC, w, z, m, y, classes=present)
    gp = unflatten(SPEC, g)
    assert np.all(gp["W2"][:, ~present] == 0) and np.all(gp["b2"][~present] == 0)
    assert np.any(gp["W2"][:, present] != 0)
    # Same loss as a softmax computed over the present classes only.
    probs, _ = forward(SPEC, w, z, m)
    p = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
    cols = {0: 0, 2: 1}
    ref = -np.mean(np.log(p[np.arange(32), [cols[int(c)] for c in y]]))
    assert abs(loss - ref) < 1e-4
    full, _ = head_loss_grad(SPEC, w, z, m, y)
    assert full > loss  # the unrestricted loss also pays for the absent classes


def test_label_skewed_boxes_keep_each_others_classes_only_when_restricted() -> None:
    """Two boxes, each with normal + one class: the average keeps both only if restricted."""
    rng = np.random.default_rng(1)

    def box(cls: int) -> tuple[np.ndarray, np.ndarray]:
        z, _ = _rows(300, rng)
        y = np.where(rng.random(300) < 0.5, cls, 0)
        z[y == cls, cls] += 3.0  # class k lives in feature k
        return z, y

    boxes = [box(1), box(2)]
    zt, _ = _rows(400, rng)
    yt = rng.choice([0, 1, 2], size=400)
    for k in (1, 2):
        zt[yt == k, k] += 3.0
    acc = {}
    for restrict in (False, True):
        w = init_params(SPEC, 0)
        for r in range(8):
            ws = [
                fit(
                    SPEC,
                    z,
                    np.ones_like(z),
                    y,
                    epochs=5,
                    seed=r,
                    flat=w,
                    input_dropout=0.0,
                    restrict_classes=restrict,
                )[0]
                for z, y in boxes
            ]
            w = np.mean(ws, axis=0).astype(np.float32)
        probs, _ = forward(SPEC, w, zt, np.ones_like(zt))
        pred = probs[:, :3].argmax(axis=1)
        acc[restrict] = [float(np.mean(pred[yt == k] == k)) for k in (0, 1, 2)]
    # Unrestricted, each box unlearns the other's class; restricted, both survive the average.
    for k in (1, 2):
        assert acc[True][k] > acc[False][k] + 0.3, (k, acc)
    assert min(acc[True]) > 0.4 and acc[True][0] > 0.8, acc


def test_trait_only_location_only_calibration() -> None:
    names = features.FEATURE_NAMES
    mask = trait_mask(names)
    assert mask.sum() == len(TRAIT_FEATURES) and set(TRAIT_FEATURES) <= set(names)
    assert not mask[names.index("acc_mag_std_g")] and mask[names.index("hr_bpm")]
    rng = np.random.default_rng(2)
    pop_mu = np.zeros(len(names), np.float32)
    pop_sd = np.ones(len(names), np.float32)
    x = (5.0 + 0.01 * rng.normal(size=(100, len(names)))).astype(np.float32)
    mu, sd = calibrate(x, pop_mu, pop_sd)  # the detector's default: every feature, spread too
    assert np.all(mu > 4.0) and np.all(sd < 0.2)
    mu, sd = calibrate(x, pop_mu, pop_sd, mask=mask, spread=False)
    assert np.all(mu[mask] > 4.0) and np.all(mu[~mask] == 0.0)
    np.testing.assert_array_equal(sd, pop_sd)


def test_fit_continues_a_given_optimiser() -> None:
    """A federated box keeps its Adam between rounds: moments and step count carry over."""
    import pytest

    from edgeagent.model.nn import Adam

    rng = np.random.default_rng(1)
    z, m = _rows(64, rng)
    y = rng.choice([0, 1, 2, 3], size=64)
    w0 = init_params(SPEC, 0)
    kw = dict(batch=64, lr=1e-2, input_dropout=0.0)
    opt = Adam(w0.size, lr=1e-2)
    w1, _ = fit(SPEC, z, m, y, epochs=1, seed=3, flat=w0, opt=opt, **kw)
    assert opt.t == 1  # one batch of 64
    w2, _ = fit(SPEC, z, m, y, epochs=1, seed=4, flat=w1, opt=opt, **kw)
    assert opt.t == 2
    # a fresh optimiser for the second call takes a different (bias-corrected, sign-sized) step
    w2_fresh, _ = fit(SPEC, z, m, y, epochs=1, seed=4, flat=w1, **kw)
    assert not np.allclose(w2, w2_fresh)
    with pytest.raises(ValueError, match="optimiser state"):
        fit(SPEC, z, m, y, epochs=1, flat=w0, opt=Adam(3), **kw)
