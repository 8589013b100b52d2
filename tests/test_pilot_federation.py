"""In-process federation: aggregation modes, attacks, reputation, head calibration, DP."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from edgeagent.fl import robust
from edgeagent.fl.aggregate import ClientUpdate, weighted_fedavg
from edgeagent.model.meta import unflatten
from edgelab.attacks import AttackConfig, choose_malicious
from edgelab.head_calibration import class_moments, robust_moments
from edgelab.pilot.config import MODES, PilotConfig
from edgelab.pilot.evaluate import evaluate_model
from edgelab.pilot.federation import (
    Reputation,
    _calibration_round,
    aggregate,
    refit_head,
    run_federation,
)
from edgelab.pilot.simulate import make_meta
from edgelab.pilot.train import train_arrays
from tests.pilot_support import N_F, blob_patient, blob_test, updates


def test_aggregate_modes_match_the_fl_rules() -> None:
    nodes, deltas, counts = updates()
    ref = weighted_fedavg(
        [ClientUpdate(a, d, c) for a, d, c in zip(nodes, deltas, counts, strict=True)]
    )
    kw = {"assumed_malicious": 0.25}
    np.testing.assert_allclose(aggregate("fedavg", nodes, deltas, counts, **kw), ref)
    np.testing.assert_allclose(
        aggregate("median", nodes, deltas, counts, **kw), np.median(np.stack(deltas), axis=0)
    )
    for mode in MODES:
        out = aggregate(mode, nodes, deltas, counts, **kw, clip=1.0, n_cap=1000)
        assert out.shape == (5,) and np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        aggregate("mean_of_means", nodes, deltas, counts, **kw)


def test_secure_grouped_median_equals_plaintext_median_of_group_means() -> None:
    """Real in-memory SecAgg+ rounds per group; the decoded result matches plaintext."""
    nodes, deltas, counts = updates(n=8)
    nonce = bytes(range(16))
    got = aggregate(
        "secure_grouped_median",
        nodes,
        deltas,
        counts,
        assumed_malicious=0.25,
        group_size=2,
        clip=1.0,
        n_cap=1000,
        nonce=nonce,
    )
    by = dict(zip(nodes, zip(deltas, counts, strict=True), strict=True))
    means = []
    for g in robust.partition_groups(nodes, 2, nonce):
        w = np.array([by[b][1] for b in g], float)
        means.append(sum(w[i] * by[b][0] for i, b in enumerate(g)) / w.sum())
    np.testing.assert_allclose(got, np.median(np.stack(means), axis=0), atol=1e-4)


def test_robust_modes_resist_a_boosted_update_that_fedavg_follows() -> None:
    nodes, deltas, counts = updates(n=10)
    honest_mean = np.mean(np.stack(deltas), axis=0)
    deltas[3] = -50.0 * deltas[3]
    kw = {"assumed_malicious": 0.2, "clip": 0.2, "n_cap": 1000, "group_size": 2}
    plain_err = np.linalg.norm(aggregate("fedavg", nodes, deltas, counts, **kw) - honest_mean)
    for mode in MODES[1:]:
        err = np.linalg.norm(aggregate(mode, nodes, deltas, counts, **kw) - honest_mean)
        assert err < plain_err / 5, mode


def test_federation_learns_and_a_sign_flip_hurts_fedavg_more_than_median() -> None:
    rng = np.random.default_rng(1)
    cfg = PilotConfig(hubs=8, rounds=6, local_epochs=2, processes=1, seed=0)
    hubs = [blob_patient(i, 200, rng, 4.0) for i in range(cfg.hubs)]
    test = [blob_test(rng, 4.0)]
    meta = make_meta(cfg, np.zeros(N_F, np.float32), np.ones(N_F, np.float32))
    clean = run_federation(cfg, meta, hubs)
    acc_clean = evaluate_model(meta, clean.w, test, personal=False)["accuracy"]
    assert acc_clean > 0.9
    attack = AttackConfig("sign_flip", fraction=0.25, scale=8.0)
    acc = {
        mode: evaluate_model(
            meta, run_federation(cfg, meta, hubs, mode=mode, attack=attack).w, test, False
        )["accuracy"]
        for mode in ("fedavg", "median", "reputation")
    }
    assert acc["median"] > acc_clean - 0.05
    assert acc["reputation"] > acc_clean - 0.05
    assert acc["fedavg"] < acc["median"] - 0.1


def test_reputation_mode_remembers_scores_and_its_verdict_limits_the_calibration_round() -> None:
    nodes, deltas, counts = updates(n=6)
    deltas[5] = -deltas[5]
    kw = {"assumed_malicious": 0.2, "clip": 1.0, "n_cap": 1000}
    memory = Reputation()
    first = aggregate("reputation", nodes, deltas, counts, **kw, reputation=memory)
    want, kept, scores = robust.reputation_filter(np.stack(deltas))
    np.testing.assert_allclose(first, want)
    assert memory.scores == dict(zip(nodes, scores.tolist(), strict=True))
    assert memory.scores[nodes[5]] < 0 and memory.kept == {nodes[i] for i in kept}
    assert nodes[5] not in memory.kept
    second = aggregate("reputation", nodes, deltas, counts, **kw, reputation=memory)
    np.testing.assert_allclose(second, robust.reputation_filter(np.stack(deltas), scores)[0])
    # the CCVR round takes the moments of the trusted hubs only
    rng = np.random.default_rng(6)
    cfg = PilotConfig(hubs=6, rounds=1, local_epochs=1, processes=1, seed=0)
    hubs = [blob_patient(i, 120, rng, 4.0) for i in range(cfg.hubs)]
    meta = make_meta(cfg, np.zeros(N_F, np.float32), np.ones(N_F, np.float32))
    w = run_federation(dataclasses.replace(cfg, head_calibration=False), meta, hubs).w
    ones = np.ones(N_F, np.float32)
    sets = {d.id: train_arrays(d, ones * 0, ones, False) for d in hubs}
    trusted = {d.id for d in hubs[:4]}
    nonce = bytes(16)
    some = _calibration_round(cfg, meta, w, sets, "reputation", None, set(), nonce, trusted)
    only = {k: v for k, v in sets.items() if k in trusted}
    np.testing.assert_array_equal(
        some, _calibration_round(cfg, meta, w, only, "reputation", None, set(), nonce, trusted)
    )
    assert not np.array_equal(
        some, _calibration_round(cfg, meta, w, sets, "reputation", None, set(), nonce)
    )
    # hubs the rule judged get the count cap only; without a verdict the outlier test runs
    parts = [class_moments(meta.spec, w, t.z, t.m, t.y, t.zp) for t in only.values()]
    np.testing.assert_array_equal(some, refit_head(cfg, meta, w, robust_moments(parts, k_mad=None)))
    np.testing.assert_array_equal(
        _calibration_round(cfg, meta, w, only, "reputation", None, set(), nonce),
        refit_head(cfg, meta, w, robust_moments(parts)),
    )


def test_a_reputation_run_hands_the_calibration_round_the_hubs_it_trusts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import edgelab.pilot.federation as pilot_mod

    seen: list[set[str] | None] = []
    real = pilot_mod._calibration_round

    def spy(*args: Any) -> np.ndarray:
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(pilot_mod, "_calibration_round", spy)
    rng = np.random.default_rng(7)
    cfg = PilotConfig(hubs=6, rounds=3, local_epochs=1, processes=1, seed=0)
    hubs = [blob_patient(i, 120, rng, 4.0) for i in range(cfg.hubs)]
    meta = make_meta(cfg, np.zeros(N_F, np.float32), np.ones(N_F, np.float32))
    attack = AttackConfig("sign_flip", fraction=0.34)
    bad = set(choose_malicious([d.id for d in hubs], attack.fraction, cfg.seed))
    run_federation(cfg, meta, hubs, mode="reputation", attack=attack)
    run_federation(cfg, meta, hubs, mode="median", attack=attack)
    assert len(bad) == 2 and seen == [{d.id for d in hubs} - bad, None]


def test_federation_ends_with_a_head_calibration_round_that_changes_only_the_head() -> None:
    """CCVR re-fits the head's output layer, in clean and attacked runs; DP runs skip it."""
    rng = np.random.default_rng(4)
    cfg = PilotConfig(hubs=6, rounds=3, local_epochs=1, processes=1, seed=0)
    hubs = [blob_patient(i, 120, rng, 4.0) for i in range(cfg.hubs)]
    meta = make_meta(cfg, np.zeros(N_F, np.float32), np.ones(N_F, np.float32))
    plain = run_federation(dataclasses.replace(cfg, head_calibration=False), meta, hubs).w
    calibrated = run_federation(cfg, meta, hubs).w
    p, q = unflatten(meta.spec, plain), unflatten(meta.spec, calibrated)
    for name in ("W1", "b1", "We", "be", "Wd", "bd"):
        np.testing.assert_array_equal(p[name], q[name])
    assert not np.array_equal(p["W2"], q["W2"])
    # the DP row skips the round (the accountant covers the updates only)
    dp_cfg = dataclasses.replace(cfg, dp_noise_multiplier=1.0)
    np.testing.assert_array_equal(
        run_federation(dp_cfg, meta, hubs, dp=True).w,
        run_federation(dataclasses.replace(dp_cfg, head_calibration=False), meta, hubs, dp=True).w,
    )
    riding = AttackConfig("free_riding", fraction=0.34)
    ridden = run_federation(cfg, meta, hubs, attack=riding).w
    unridden = run_federation(
        dataclasses.replace(cfg, head_calibration=False), meta, hubs, attack=riding
    ).w
    r, u = unflatten(meta.spec, ridden), unflatten(meta.spec, unridden)
    np.testing.assert_array_equal(r["W1"], u["W1"])
    assert not np.array_equal(r["W2"], u["W2"])


def test_dp_federation_reports_epsilon() -> None:
    rng = np.random.default_rng(2)
    cfg = PilotConfig(hubs=4, rounds=3, local_epochs=1, processes=1, dp_noise_multiplier=1.0)
    hubs = [blob_patient(i, 60, rng, 4.0) for i in range(cfg.hubs)]
    meta = make_meta(cfg, np.zeros(N_F, np.float32), np.ones(N_F, np.float32))
    res = run_federation(cfg, meta, hubs, dp=True)
    assert res.epsilon is not None and 0 < res.epsilon < float("inf")
    more = run_federation(
        PilotConfig(hubs=4, rounds=6, local_epochs=1, processes=1), meta, hubs, dp=True
    )
    assert more.epsilon is not None and more.epsilon > res.epsilon
