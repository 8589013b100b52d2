"""Attack transforms: each one does what its paper says, and the defences it targets react."""

from __future__ import annotations

import numpy as np
import pytest

from edgeagent.fl import robust
from edgeagent.fl.aggregate import ClientUpdate, weighted_fedavg
from edgelab.attacks import (
    ATTACKS,
    AttackConfig,
    MaliciousUpdates,
    alie_z,
    attack_update,
    boost,
    choose_malicious,
    free_ride,
    little_is_enough,
    poison_labels,
    sign_flip,
)

TRUE = np.array([1.0, -2.0, 0.5, 3.0])


def honest(n: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return TRUE + rng.normal(0.0, 0.2, size=(n, TRUE.size))


def test_sign_flip_and_boost() -> None:
    d = np.array([1.0, -2.0, 0.0], np.float32)
    np.testing.assert_array_equal(sign_flip(d), -d)
    np.testing.assert_array_equal(sign_flip(d, 3.0), -3.0 * d)
    np.testing.assert_array_equal(boost(d, 10.0), 10.0 * d)
    assert sign_flip(d).dtype == np.float32
    with pytest.raises(ValueError):
        sign_flip(d, 0.0)
    with pytest.raises(ValueError):
        boost(d, -1.0)


def test_alie_z_matches_baruch_table() -> None:
    # n = 50, m = 12 (24%): s = 26 - 12 = 14, z = Phi^-1(36/50) ~ 0.583 (Baruch et al. 2019).
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
    # More attackers need to recruit fewer honest boxes: z grows with m.
    assert alie_z(20, 2) < alie_z(20, 4) < alie_z(20, 8)
    with pytest.raises(ValueError):
        alie_z(10, 0)
    with pytest.raises(ValueError):
        alie_z(10, 10)


def test_little_is_enough_is_mean_minus_z_std_and_slips_past_median() -> None:
    x = honest()
    m = 4
    z = alie_z(x.shape[0] + m, m)
    bad = little_is_enough(x, x.shape[0] + m, m)
    np.testing.assert_allclose(bad, x.mean(0) - z * x.std(0), rtol=1e-5)
    # Within one std of the mean in every coordinate: no coordinate looks like an outlier ...
    assert np.all(np.abs(bad - x.mean(0)) <= 1.01 * x.std(0) * max(1.0, z))
    # ... yet the median of everything moves towards it, every coordinate the same way.
    stacked = np.vstack([x, np.tile(bad, (m, 1))])
    shift = robust.coordinate_median(stacked) - robust.coordinate_median(x)
    assert np.all(shift < 0)
    # Krum, which looks for rows far from the crowd, still picks the attackers' rows.
    _, chosen = robust.multi_krum(stacked, f=m)
    assert set(range(x.shape[0], x.shape[0] + m)) <= set(chosen.tolist())
    with pytest.raises(ValueError):
        little_is_enough(np.array([1.0, np.nan])[None, :], 5, 1)


def test_free_riding_dilutes_weighted_fedavg_but_not_median() -> None:
    x = honest(8)
    ups = [ClientUpdate(f"h{i}", x[i], 100) for i in range(8)]
    zero, n = free_ride(x[0], 100, 10.0)
    assert n == 1000 and not zero.any()
    ups += [ClientUpdate(f"f{i}", zero, n) for i in range(2)]
    diluted = weighted_fedavg(ups)
    # 2000 of 2800 claimed samples belong to boxes that did nothing.
    np.testing.assert_allclose(diluted, x.mean(0) * 800 / 2800, rtol=1e-6)
    med = robust.coordinate_median(np.vstack([x, np.zeros((2, TRUE.size))]))
    assert np.linalg.norm(med - TRUE) < np.linalg.norm(diluted - TRUE) / 3
    with pytest.raises(ValueError):
        free_ride(x[0], 100, 0.5)


def test_poison_labels_turns_chosen_classes_into_normal() -> None:
    y = np.array([0, 1, 2, 9, -1, 3, 1])
    out = poison_labels(y, [1, 2, 3])
    np.testing.assert_array_equal(out, [0, 0, 0, 9, -1, 0, 0])
    np.testing.assert_array_equal(y, [0, 1, 2, 9, -1, 3, 1])  # input untouched
    with pytest.raises(ValueError):
        poison_labels(y[None, :], [1])


def test_choose_malicious_is_deterministic_and_sized() -> None:
    nodes = [f"hub-{i:02d}" for i in range(10)]
    a = choose_malicious(nodes, 0.2, seed=1)
    assert len(a) == 2 and set(a) <= set(nodes)
    assert choose_malicious(list(reversed(nodes)), 0.2, seed=1) == a
    assert len(choose_malicious(nodes, 0.3, seed=1)) == 3
    assert choose_malicious(nodes, 0.0) == ()
    picks = {choose_malicious(nodes, 0.2, seed=s) for s in range(10)}
    assert len(picks) > 1  # the seed matters
    with pytest.raises(ValueError):
        choose_malicious(nodes, 0.5)


def test_attack_config_validates() -> None:
    for a in ATTACKS:
        AttackConfig(a)
    with pytest.raises(ValueError, match="unknown attack"):
        AttackConfig("gradient_ascent")
    with pytest.raises(ValueError):
        AttackConfig("sign_flip", fraction=0.6)
    with pytest.raises(ValueError):
        AttackConfig("free_riding", inflate=0.5)
    assert AttackConfig("label_poisoning").poisons_data
    assert AttackConfig("scaling").poisons_data
    assert not AttackConfig("sign_flip").poisons_data


def test_attack_update_dispatch() -> None:
    d = np.array([1.0, 2.0], np.float32)
    out, n = attack_update(AttackConfig("sign_flip", scale=2.0), d, 7)
    np.testing.assert_array_equal(out, [-2.0, -4.0])
    assert n == 7
    out, n = attack_update(AttackConfig("scaling", boost=5.0), d, 7)
    np.testing.assert_array_equal(out, [5.0, 10.0])
    out, n = attack_update(AttackConfig("free_riding", inflate=3.0), d, 7)
    assert n == 21 and not out.any()
    out, n = attack_update(AttackConfig("label_poisoning"), d, 7)
    np.testing.assert_array_equal(out, d)
    with pytest.raises(ValueError, match="benign"):
        attack_update(AttackConfig("little_is_enough"), d, 7)
    rows = np.array([[1.0, 2.0], [3.0, 2.0]])
    out, _ = attack_update(AttackConfig("little_is_enough", z=1.0), d, 7, rows, 4, 1)
    np.testing.assert_allclose(out, [1.0, 2.0])


class _Learner:
    """Stands in for LocalLearner's face (n_k, delta, reset_global): plain data, no library."""

    def __init__(self) -> None:
        self.n_k = 40
        self.w = np.zeros(3, np.float32)

    def delta(self) -> np.ndarray:
        return np.array([0.5, -0.5, 1.0], np.float32)

    def reset_global(self, w_global: np.ndarray) -> None:
        self.w = np.asarray(w_global, np.float32).copy()


def test_malicious_updates_wraps_a_learner() -> None:
    inner = _Learner()
    bad = MaliciousUpdates(inner, AttackConfig("free_riding", inflate=5.0))
    assert bad.n_k == 200
    assert not bad.delta().any()
    bad.reset_global(np.ones(3))
    np.testing.assert_array_equal(inner.w, np.ones(3))
    flip = MaliciousUpdates(inner, AttackConfig("sign_flip"))
    np.testing.assert_array_equal(flip.delta(), -inner.delta())
    alie = MaliciousUpdates(inner, AttackConfig("little_is_enough", z=0.5))
    with pytest.raises(ValueError):
        alie.delta()
    alie.benign_hint = (np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]), 3, 1)
    np.testing.assert_allclose(alie.delta(), [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="training data"):
        MaliciousUpdates(inner, AttackConfig("label_poisoning"))
