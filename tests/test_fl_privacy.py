"""Clipping, noise scaling, the dp-accounting wrapper and adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeagent.federation.accountant import DpAccountant
from edgeagent.fl.privacy import (
    AdaptiveClip,
    add_gaussian_noise,
    adjusted_noise_multiplier,
    clip_indicator,
    distributed_std,
    fedavg_payload,
    gaussian_std,
    l2_clip,
    payload_bound,
    sensitivity,
)


def test_l2_clip_scales_only_long_vectors() -> None:
    v = np.array([3.0, 4.0])
    clipped, norm = l2_clip(v, 1.0)
    assert norm == 5.0 and np.linalg.norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped, v / 5)
    short, _ = l2_clip(v, 10.0)
    np.testing.assert_array_equal(short, v)
    with pytest.raises(ValueError):
        l2_clip(np.array([np.nan]), 1.0)
    with pytest.raises(ValueError):
        l2_clip(v, 0.0)


def test_payload_caps_n_and_respects_bound() -> None:
    p = fedavg_payload(np.array([30.0, 40.0]), n_k=5000, clip=2.0, n_cap=100)
    np.testing.assert_allclose(p, [100 * 1.2, 100 * 1.6, 100])
    assert np.abs(p).max() <= payload_bound(2.0, 100)
    # the payload's norm never exceeds the stated sensitivity
    assert np.linalg.norm(p) <= sensitivity(2.0, 100) + 1e-9
    with pytest.raises(ValueError):
        fedavg_payload(np.zeros(2), 0, 1.0, 10)


def test_noise_scaling() -> None:
    assert gaussian_std(1.5, 1.0, 10) == pytest.approx(1.5 * 10 * math.sqrt(2))
    assert distributed_std(6.0, 9) == pytest.approx(2.0)
    rng = np.random.default_rng(1)
    noisy = add_gaussian_noise(np.zeros(50000), 2.0, rng)
    assert noisy.std() == pytest.approx(2.0, rel=0.02)
    np.testing.assert_array_equal(add_gaussian_noise(np.ones(3), 0.0), np.ones(3))


def test_accountant_matches_field_notes_and_grows() -> None:
    rdp_acc = DpAccountant(target_delta=1e-5)
    assert rdp_acc.epsilon() == 0.0
    rdp_acc.step(1.0, 0.1, rounds=100)
    assert rdp_acc.epsilon() == pytest.approx(7.90, abs=0.01)
    pld_acc = DpAccountant(target_delta=1e-5, method="pld")
    pld_acc.step(1.0, 0.1, rounds=100)
    assert pld_acc.epsilon() == pytest.approx(7.05, abs=0.02)
    eps = []
    acc = DpAccountant(target_delta=1e-5)
    for _ in range(3):
        acc.step(2.0, 0.2)
        eps.append(acc.epsilon())
    assert eps[0] < eps[1] < eps[2] and acc.rounds == 3
    acc.step(4.0, 0.2)  # a different setting composes as its own event
    assert acc.epsilon() > eps[2]
    with pytest.raises(ValueError):
        acc.step(0.0, 0.1)
    with pytest.raises(ValueError):
        DpAccountant(target_delta=1e-5, method="magic")


def test_adaptive_clip_tracks_target_quantile() -> None:
    rng = np.random.default_rng(3)
    ada = AdaptiveClip(clip=0.05, target_quantile=0.5, lr=0.3)
    for _ in range(200):
        norms = rng.lognormal(0.0, 0.3, 200)  # median 1.0
        bits = sum(clip_indicator(n, ada.clip) for n in norms)
        ada.update(bits, len(norms), rng)
    assert ada.clip == pytest.approx(1.0, rel=0.15)
    noisy = AdaptiveClip(clip=1.0, indicator_std=5.0)
    before = noisy.clip
    noisy.update(50, 100, np.random.default_rng(0))
    assert noisy.clip != before


def test_adjusted_noise_multiplier() -> None:
    z = adjusted_noise_multiplier(1.0, 10.0)
    assert z > 1.0 and (z**-2 + (2 * 10.0) ** -2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        adjusted_noise_multiplier(1.0, 0.4)
