"""Pilot building blocks: aggregation modes, attacked federations, the delay proxy, the table."""

from __future__ import annotations

import dataclasses
import itertools
import socket
import threading
import time
from typing import Any

import numpy as np
import pytest

from edgeagent.fl import robust
from edgeagent.fl.aggregate import ClientUpdate, weighted_fedavg
from edgeagent.model.meta import unflatten
from edgeagent.pipeline import features
from edgelab.attacks import AttackConfig, choose_malicious
from edgelab.head_calibration import class_moments, robust_moments
from edgelab.pilot import (
    MODES,
    Calibration,
    DelayProxy,
    HeldOutSet,
    PatientData,
    PilotConfig,
    Reputation,
    _calibration_round,
    _shares,
    aggregate,
    cohort_summary,
    decode_window,
    encode_window,
    evaluate_model,
    fleet_persistence,
    latency_windows,
    make_meta,
    refit_head,
    render_markdown,
    run_federation,
    schedule,
    seed_spread,
    targets,
    train_arrays,
)

N_F = len(features.FEATURE_NAMES)


def test_schedule_is_deterministic_and_well_formed() -> None:
    kinds = ("tachycardia", "fever", "lead_off")
    a = schedule(1800.0, kinds, seed=3)
    assert a == schedule(1800.0, kinds, seed=3)
    assert a != schedule(1800.0, kinds, seed=4)
    assert len(a) >= 5
    assert {lb.kind for lb in a} == set(kinds)
    for prev, nxt in itertools.pairwise(a):
        assert prev.end < nxt.start  # episodes never overlap
    assert all(0 < lb.start < lb.end < 1800.0 for lb in a)


def _updates(
    n: int = 8, dim: int = 5, seed: int = 0
) -> tuple[list[str], list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    nodes = [f"hub-{i}" for i in range(n)]
    deltas = [0.05 + rng.normal(0, 0.01, dim) for _ in nodes]
    counts = [int(c) for c in rng.integers(50, 150, n)]
    return nodes, deltas, counts


def test_aggregate_modes_match_the_fl_rules() -> None:
    nodes, deltas, counts = _updates()
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
    nodes, deltas, counts = _updates(n=8)
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
    nodes, deltas, counts = _updates(n=10)
    honest_mean = np.mean(np.stack(deltas), axis=0)
    deltas[3] = -50.0 * deltas[3]
    kw = {"assumed_malicious": 0.2, "clip": 0.2, "n_cap": 1000, "group_size": 2}
    plain_err = np.linalg.norm(aggregate("fedavg", nodes, deltas, counts, **kw) - honest_mean)
    for mode in MODES[1:]:
        err = np.linalg.norm(aggregate(mode, nodes, deltas, counts, **kw) - honest_mean)
        assert err < plain_err / 5, mode


def _blob_patient(i: int, n: int, rng: np.random.Generator, shift: float) -> PatientData:
    """A synthetic patient: class 1 (tachycardia) windows have a shifted heart rate."""
    x = rng.normal(0.0, 1.0, (n, N_F)).astype(np.float32)
    y = (rng.random(n) < 0.4).astype(np.int64)
    hr = features.FEATURE_NAMES.index("hr_bpm")
    x[y == 1, hr] += shift
    spans = np.stack([np.arange(n) * 10.0, np.arange(n) * 10.0 + 10.0], axis=1)
    return PatientData(f"p{i}", x, spans, [], y, ("tachycardia",))


def _blob_test(rng: np.random.Generator, shift: float) -> HeldOutSet:
    d = _blob_patient(99, 400, rng, shift)
    return HeldOutSet("t", d.x[:50], d.x[50:], d.spans[50:], [], d.y[50:].astype(np.int8))


def test_federation_learns_and_a_sign_flip_hurts_fedavg_more_than_median() -> None:
    rng = np.random.default_rng(1)
    cfg = PilotConfig(hubs=8, rounds=6, local_epochs=2, processes=1, seed=0)
    hubs = [_blob_patient(i, 200, rng, 4.0) for i in range(cfg.hubs)]
    test = [_blob_test(rng, 4.0)]
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


def test_fleet_persistence_learns_which_baselines_a_calibration_period_pins() -> None:
    rng = np.random.default_rng(6)
    hr = features.FEATURE_NAMES.index("hr_bpm")
    temp = features.FEATURE_NAMES.index("skin_temp_c")
    hubs = []
    for i in range(12):
        d = _blob_patient(i, 300, rng, 0.0)
        d.x[:, temp] += rng.normal(0, 2)  # a trait: the whole recording sits there
        d.x[:90, hr] += rng.normal(0, 2)  # the calibration period (30 %) alone
        hubs.append(d)
    w = fleet_persistence(hubs, 0.3, np.zeros(N_F), np.ones(N_F))
    assert w[temp] > 0.9 and w[hr] < 0.2, (w[temp], w[hr])
    assert np.all((w >= 0) & (w <= 1))
    cfg = PilotConfig()
    assert Calibration.of(cfg, w).weights == tuple(float(v) for v in w)
    assert Calibration.of(dataclasses.replace(cfg, personal_persistence=False), w).weights is None
    assert (
        Calibration.of(cfg).threshold
        and not Calibration.of(dataclasses.replace(cfg, personal_threshold=False)).threshold
    )


def test_personal_threshold_rises_with_the_scores_of_a_patients_own_normal_windows() -> None:
    rng = np.random.default_rng(7)
    cfg = PilotConfig(hubs=4, rounds=6, local_epochs=2, processes=1, seed=0)
    hubs = [_blob_patient(i, 200, rng, 4.0) for i in range(cfg.hubs)]
    meta = make_meta(cfg, np.zeros(N_F, np.float32), np.ones(N_F, np.float32))
    w = run_federation(cfg, meta, hubs).w
    d = _blob_patient(99, 400, rng, 4.0)
    normal = d.x[:100][d.y[:100] == 0]  # a calibration period's normal windows
    quiet = HeldOutSet("q", normal, d.x[100:], d.spans[100:], [], d.y[100:].astype(np.int8))
    hot = dataclasses.replace(quiet, id="h", x_cal=normal.copy())
    hot.x_cal[:, features.FEATURE_NAMES.index("hr_bpm")] += 4.0  # looks like the anomaly
    tests = [quiet, hot]
    rule = Calibration(traits_only=False, weights=(0.0,) * N_F, threshold=True)
    got = evaluate_model(meta, w, tests, True, rule=rule)
    assert cfg.threshold <= got["thresholds"][0] < got["thresholds"][1] <= 0.9
    plain = evaluate_model(meta, w, tests, True, rule=dataclasses.replace(rule, threshold=False))
    assert plain["thresholds"] == [cfg.threshold] * 2
    assert got["tp"] + got["fp"] < plain["tp"] + plain["fp"]  # fewer windows called clinical
    assert "thresholds" not in evaluate_model(meta, w, tests, False, rule=rule)


def test_reputation_mode_remembers_scores_and_its_verdict_limits_the_calibration_round() -> None:
    nodes, deltas, counts = _updates(n=6)
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
    hubs = [_blob_patient(i, 120, rng, 4.0) for i in range(cfg.hubs)]
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
    import edgelab.pilot as pilot_mod

    seen: list[set[str] | None] = []
    real = pilot_mod._calibration_round

    def spy(*args: Any) -> np.ndarray:
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(pilot_mod, "_calibration_round", spy)
    rng = np.random.default_rng(7)
    cfg = PilotConfig(hubs=6, rounds=3, local_epochs=1, processes=1, seed=0)
    hubs = [_blob_patient(i, 120, rng, 4.0) for i in range(cfg.hubs)]
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
    hubs = [_blob_patient(i, 120, rng, 4.0) for i in range(cfg.hubs)]
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
    hubs = [_blob_patient(i, 60, rng, 4.0) for i in range(cfg.hubs)]
    meta = make_meta(cfg, np.zeros(N_F, np.float32), np.ones(N_F, np.float32))
    res = run_federation(cfg, meta, hubs, dp=True)
    assert res.epsilon is not None and 0 < res.epsilon < float("inf")
    more = run_federation(
        PilotConfig(hubs=4, rounds=6, local_epochs=1, processes=1), meta, hubs, dp=True
    )
    assert more.epsilon is not None and more.epsilon > res.epsilon


def test_raw_window_round_trip_gives_the_same_features() -> None:
    w = latency_windows(seed=0, n=2)[1]
    back = decode_window(encode_window(w))
    assert back.start == w.start and back.end == w.end and back.present == w.present
    np.testing.assert_array_equal(features.extract(back), features.extract(w))


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        c, _ = srv.accept()
        with c:
            while data := c.recv(4096):
                c.sendall(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, t


def test_delay_proxy_adds_the_delay_each_way() -> None:
    srv, t = _echo_server()
    proxy = DelayProxy(srv.getsockname(), 0.05)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
            rtts = []
            for i in range(5):
                t0 = time.perf_counter()
                c.sendall(b"ping%d" % i)
                got = b""
                while len(got) < 5:
                    got += c.recv(64)
                rtts.append(time.perf_counter() - t0)
                assert got == b"ping%d" % i
        assert min(rtts) >= 0.1  # 50 ms up + 50 ms back
        assert np.median(rtts) < 0.2
    finally:
        proxy.close()
        srv.close()
        t.join(timeout=2)


def test_shares_normalise_to_100_and_ignore_harmful_removals() -> None:
    s = _shares({"ecg": 0.3, "acc": 0.1, "temp": -0.05, "env": 0.0})
    assert s is not None
    assert sum(s.values()) == pytest.approx(100.0)
    assert s["ecg"] == pytest.approx(75.0) and s["temp"] == 0.0
    assert _shares({"ecg": 0.0, "acc": -0.1}) is None


def _fake_results() -> dict:
    m = {
        "accuracy": 0.9,
        "balanced_accuracy": 0.9,
        "f1": 0.8,
        "auroc": 0.95,
        "precision": 0.8,
        "recall": 0.8,
    }
    cfg = PilotConfig(attacks=("sign_flip",), modes=("fedavg", "median"), fractions=(0.2,)).__dict__
    pct = {"p50": 1.0, "p95": 2.0, "p99": 3.0, "n": 10, "mean": 1.0}
    return {
        "config": cfg,
        "paper": __import__("edgelab.pilot", fromlist=["PAPER"]).PAPER,
        "accuracy": {
            "local_only": m,
            "centralised": m,
            "federated": {**m, "accuracy": 0.87},
            "federated_personalised": {**m, "accuracy": 0.91},
            "centralised_personalised": m,
            "centralised_refit": {**m, "accuracy": 0.92},
        },
        "attacks": {
            "clean_accuracy": {"fedavg": 0.87, "median": 0.86},
            "centralised_clean": 0.9,
            "runs": {
                "0.2": {
                    "centralised_poisoned_data": m,
                    "sign_flip": {"fedavg": {"accuracy": 0.6}, "median": {"accuracy": 0.85}},
                }
            },
        },
        "best_robust_at_20pct": {
            "best_robust_mode": "median",
            "best_robust_worst_loss": 0.02,
            "fedavg_worst_loss": 0.27,
        },
        "latency": {
            "50": {
                "edge_on_box_decision": {**pct, "p99": 4.0},
                "edge": {**pct, "p99": 55.0},
                "central": {**pct, "p99": 110.0},
                "lost": {"edge": 0, "central": 0},
            }
        },
        "modality": {
            "share_pct": {
                k: {"ecg": 40.0, "acc": 30.0, "temp": 20.0, "env": 10.0}
                for k in (
                    "retrain_accuracy",
                    "retrain_f1",
                    "permutation_accuracy",
                    "permutation_f1",
                )
            }
        },
        "privacy": {
            "noise_multiplier": 0.3,
            "clip": 0.1,
            "n_cap": 2000,
            "rounds": 15,
            "sampling_rate": 1.0,
            "epsilon": 12.0,
            "delta": 1e-5,
            "federated_dp": m,
        },
    }


def test_targets_judge_the_measured_values() -> None:
    r = _fake_results()
    t = targets(r)
    assert t["fed_personalised_ge_centralised"]["met"]
    assert not t["federated_within_2pt_of_centralised"]["met"]  # 0.87 vs 0.90
    # met against the plain centralised model, not against the re-fitted control (0.92)
    pers = t["fed_personalised_ge_centralised"]
    assert pers["value_vs_refit_control"] == pytest.approx(-0.01)
    assert not pers["met_vs_refit_control"]
    assert t["best_robust_loss_at_20pct_le_3pt"]["met"]
    lat = t["edge_p99_le_tenth_of_central_at_50ms"]
    assert lat["met"] and lat["value"] == pytest.approx(4.0 / 110.0)
    assert not lat["alert_delivered_met"] and lat["alert_delivered_ratio"] == pytest.approx(0.5)
    r["targets"] = t
    md = render_markdown(r)
    assert "| federated (FedAvg, n_k-weighted) | 87.0 |" in md
    assert "NOT met" in md and "median" in md
    assert "| centralised + head re-fit (control) | 92.0 |" in md
    assert "re-fitted the same way (control): -0.010 -> NOT met" in md


def test_targets_use_the_mean_over_training_seeds() -> None:
    """One lucky seed must not meet a target the other seeds miss."""
    r = _fake_results()
    r["accuracy"]["federated"]["accuracy"] = 0.89  # seed 0: within 2 points of 0.90
    by = {
        row: {"metrics": {"accuracy": a, "f1": 0.8, "auroc": 0.9}}
        for row, a in (
            ("centralised", 0.90),
            ("centralised@1", 0.88),
            ("centralised_refit", 0.92),
            ("centralised_refit@1", 0.86),
            ("federated", 0.89),
            ("federated@1", 0.79),
            ("federated_personalised", 0.91),
            ("federated_personalised@1", 0.90),
        )
    }
    cfg = PilotConfig(seeds=2)
    r["accuracy"]["seed_spread"] = seed_spread(by, cfg)
    fed = r["accuracy"]["seed_spread"]["federated"]
    assert fed["train_seeds"] == [0, 1] and fed["accuracy_mean"] == pytest.approx(0.84)
    assert fed["accuracy_sd"] == pytest.approx(np.std([0.89, 0.79], ddof=1))
    r["best_robust_at_20pct"]["honest_only_loss"] = 0.05
    t = targets(r)
    within = t["federated_within_2pt_of_centralised"]
    assert not within["met"] and within["value"] == pytest.approx(0.84 - 0.89)
    assert within["value_main_seed"] == pytest.approx(-0.01)
    assert t["fed_personalised_ge_centralised"]["value"] == pytest.approx(0.905 - 0.89)
    assert t["best_robust_loss_at_20pct_le_3pt"]["honest_only_loss"] == 0.05
    r["targets"] = t
    md = render_markdown(r)
    assert "| federated | 89.0 | 79.0 | 84.0 | 7.1 |" in md
    assert "seed 0: -0.010" in md and "honest hubs only: 0.050" in md


def test_targets_use_the_mean_over_cohorts() -> None:
    """A gap met on the main cohort only is not met: the targets average the cohorts."""
    r = _fake_results()

    def spread(seed: int, cen: float, fed: float, per: float) -> dict:
        accs = {
            "centralised": cen,
            "centralised_refit": cen + 0.01,
            "federated": fed,
            "federated_personalised": per,
        }
        by = {row: {"metrics": {"accuracy": a, "f1": 0.8, "auroc": 0.9}} for row, a in accs.items()}
        return seed_spread(by, PilotConfig(seed=seed, seeds=1))

    main = spread(0, 0.90, 0.89, 0.91)
    r["accuracy"]["seed_spread"] = main
    r["accuracy"]["federated"]["accuracy"] = 0.89
    summary = cohort_summary(main, {"100": spread(100, 0.84, 0.76, 0.80)}, seed=0)
    assert summary["data_seeds"] == [0, 100]
    assert summary["accuracy_mean"]["federated"] == pytest.approx(0.825)
    r["accuracy"]["cohorts"] = summary
    t = targets(r)
    within = t["federated_within_2pt_of_centralised"]
    assert not within["met"] and within["value"] == pytest.approx(0.825 - 0.87)
    assert within["value_main_cohort"] == pytest.approx(-0.01)
    assert within["value_per_cohort"]["100"] == pytest.approx(-0.08)
    pers = t["fed_personalised_ge_centralised"]
    assert not pers["met"] and pers["value"] == pytest.approx(0.855 - 0.87)
    assert pers["value_per_cohort"] == {"0": pytest.approx(0.01), "100": pytest.approx(-0.04)}
    r["targets"] = t
    md = render_markdown(r)
    assert "| 100 | 84.0 | 76.0 | 80.0 | -8.0 | -4.0 | 85.0 | -9.0 |" in md
    assert "| mean | 87.0 | 82.5 | 85.5 | -4.5 | -1.5 | 88.0 | -5.5 |" in md
    assert within["value_vs_refit_control"] == pytest.approx(0.825 - 0.88)
    assert "per cohort 0: -0.010, 100: -0.080" in md


def test_cli_refuses_a_bad_setting_before_running() -> None:
    from typer.testing import CliRunner

    from edgeagent.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["pilot", "--hubs", "2", "--no-latency"])
    assert res.exit_code == 2
    assert "hubs must be >= 4" in res.output
    res = CliRunner().invoke(app, ["pilot", "--help"])
    assert res.exit_code == 0 and "--rounds" in res.output


def test_config_validation_names_the_setting() -> None:
    PilotConfig().validate()
    PilotConfig.small().validate()
    for bad, match in (
        ({"fractions": (0.6,)}, "fraction"),
        ({"attacks": ("gradient_ascent",)}, "unknown attack"),
        ({"modes": ("mean_of_means",)}, "unknown mode"),
        ({"group_size": 11}, "group_size"),
        ({"latency_delays_ms": (-1.0,)}, "latency_delays_ms"),
        ({"cohorts": 0}, "cohorts must be >= 1"),
        ({"seeds": 100}, "seeds must be in 1..99"),
    ):
        with pytest.raises(ValueError, match=match):
            PilotConfig(**bad).validate()
