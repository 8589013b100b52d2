"""The CI pilot: every table row produced end to end, real broker for latency, bounded in time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edgeagent.errors import BrokerError
from edgeagent.ops.config import AggregatorSection
from edgeagent.pipeline.personal import TRAIT_FEATURES
from edgelab.broker import find_mosquitto
from edgelab.pilot.config import MODALITIES, PilotConfig
from edgelab.pilot.runner import run_pilot

METRICS = ("accuracy", "balanced_accuracy", "f1", "precision", "recall", "auroc")


def _check_metrics(m: dict, n_eval: int) -> None:
    for k in METRICS:
        assert m[k] is not None and 0.0 <= m[k] <= 1.0, (k, m)
    n = m["tp"] + m["fp"] + m["fn"] + m["tn"]
    assert n == n_eval  # every row is scored on the same test windows
    assert m["accuracy"] == pytest.approx((m["tp"] + m["tn"]) / n)


@pytest.mark.timeout(180)
def test_small_pilot_table_is_complete_and_consistent(tmp_path: Path) -> None:
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.skip(str(exc))
    cfg = PilotConfig.small()
    t0 = time.perf_counter()
    r = run_pilot(cfg, tmp_path)
    took = time.perf_counter() - t0
    assert took < 90.0, f"CI pilot took {took:.0f} s"

    for name in (
        "pilot.json",
        "pilot.md",
        "accuracy.png",
        "attacks.png",
        "latency.png",
        "modality.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "pilot.json").read_text()) == r
    md = (tmp_path / "pilot.md").read_text()

    n_eval = sum(t["positive"] + t["negative"] for t in r["data"]["test_patients"])
    assert n_eval > 50
    acc = r["accuracy"]
    for row in (
        "centralised",
        "federated",
        "federated_personalised",
        "centralised_personalised",
        "centralised_refit",
    ):
        _check_metrics(acc[row], n_eval)
    for row, e in acc["seed_spread"].items():
        assert e["train_seeds"] == [cfg.seed + k for k in range(cfg.seeds)]
        assert len(e["accuracy"]) == cfg.seeds and e["accuracy"][0] == acc[row]["accuracy"]
        assert min(e["accuracy"]) <= e["accuracy_mean"] <= max(e["accuracy"])
    # the personalised rows' weights (one per trait feature) and per-patient thresholds
    pers = r["personalisation"]
    assert set(pers["persistence_weights"]) == set(TRAIT_FEATURES)
    assert all(0.0 <= v <= 1.0 for v in pers["persistence_weights"].values())
    th = acc["federated_personalised"]["thresholds"]
    assert len(th) == cfg.test_patients and all(cfg.threshold <= v <= 0.9 for v in th)
    assert "Personalisation (the two personalised rows):" in md
    raised = sum(v > cfg.threshold for v in th)
    assert f"for {raised} of {len(th)} test patients" in md
    # the headline rows are rerun on other cohorts; the accuracy targets use their mean
    co = acc["cohorts"]
    assert co["data_seeds"] == [cfg.seed + 100 * k for k in range(cfg.cohorts)]
    assert co["per_cohort"][str(cfg.seed)] == acc["seed_spread"]
    for spread in co["per_cohort"].values():
        assert set(spread) == {
            "centralised",
            "centralised_refit",
            "federated",
            "federated_personalised",
        }
        assert all(len(e["accuracy"]) == cfg.seeds for e in spread.values())
    for row, mean in co["accuracy_mean"].items():
        per = [c[row]["accuracy_mean"] for c in co["per_cohort"].values()]
        assert mean == pytest.approx(float(np.mean(per)))
    within = r["targets"]["federated_within_2pt_of_centralised"]
    gap = co["accuracy_mean"]["federated"] - co["accuracy_mean"]["centralised"]
    assert within["value"] == pytest.approx(gap) and within["met"] == (gap >= -0.02)
    control = co["accuracy_mean"]["federated"] - co["accuracy_mean"]["centralised_refit"]
    assert within["value_vs_refit_control"] == pytest.approx(control)
    assert within["met_vs_refit_control"] == (control >= -0.02)
    assert set(within["value_per_cohort"]) == {str(s) for s in co["data_seeds"]}
    assert "| mean |" in md and "Over cohorts" in md
    lo = acc["local_only"]
    assert lo["accuracy_min"] <= lo["accuracy"] <= lo["accuracy_max"]

    att = r["attacks"]
    assert set(att["clean_accuracy"]) == set(cfg.modes)
    assert att["clean_accuracy"]["fedavg"] == acc["federated"]["accuracy"]
    assert set(att["runs"]) == {f"{f:g}" for f in cfg.fractions}
    for key, row in att["runs"].items():
        k = round(float(key) * cfg.hubs)
        assert len(row["malicious_hubs"]) == k
        _check_metrics(row["centralised_poisoned_data"], n_eval)
        _check_metrics(row["honest_hubs_only"], n_eval)
        for a in cfg.attacks:
            assert set(row[a]) == set(cfg.modes)
            for mode in cfg.modes:
                _check_metrics(row[a][mode], n_eval)
                assert f"| {a} | {float(key) * 100:.0f}% |" in md
    b = r["best_robust_at_20pct"]
    assert b["best_robust_mode"] in cfg.modes and b["best_robust_mode"] != "fedavg"
    honest = att["runs"]["0.2"]["honest_hubs_only"]["accuracy"]
    assert b["honest_only_loss"] == pytest.approx(att["clean_accuracy"]["fedavg"] - honest)
    assert b["best_robust_worst_loss"] == min(
        v for m, v in b["worst_loss_vs_clean_fedavg"].items() if m != "fedavg"
    )
    # the chosen mode and the ideal defence rerun over the training seeds, judged on the mean
    o = b["over_seeds"]
    assert o["mode"] == b["best_robust_mode"] and len(o["train_seeds"]) == cfg.seeds
    assert o["clean_fedavg"] == acc["seed_spread"]["federated"]["accuracy"]
    assert o["worst_attack_accuracy"][0] == pytest.approx(
        att["clean_accuracy"]["fedavg"] - b["best_robust_worst_loss"]
    )
    per = o["accuracy_per_attack"]
    assert set(per) == set(cfg.attacks) and all(len(v) == cfg.seeds for v in per.values())
    for k, a in enumerate(o["worst_attack"]):
        assert o["worst_attack_accuracy"][k] == per[a][k] == min(v[k] for v in per.values())
    clean, worst = np.array(o["clean_fedavg"]), np.array(o["worst_attack_accuracy"])
    assert o["worst_loss_mean"] == pytest.approx(float(np.mean(clean - worst)))
    t = r["targets"]["best_robust_loss_at_20pct_le_3pt"]
    assert t["value"] == o["worst_loss_mean"] and t["met"] == (t["value"] <= 0.03)
    assert t["honest_only_loss"] == o["honest_only_loss_mean"]
    assert f"| {o['mode']}, worst attack |" in md

    mod = r["modality"]
    assert set(mod["retrain_drop"]) == set(MODALITIES) == set(mod["permutation_drop"])
    for shares in mod["share_pct"].values():
        if shares is not None:
            assert sum(shares.values()) == pytest.approx(100.0)
            assert all(v >= 0 for v in shares.values())

    pr = r["privacy"]
    assert pr["epsilon"] is not None and pr["epsilon"] > 0
    _check_metrics(pr["federated_dp"], n_eval)

    (delay,) = cfg.latency_delays_ms
    lat = r["latency"][f"{delay:g}"]
    for path in ("edge", "central", "edge_on_box_decision"):
        assert lat[path]["n"] == cfg.latency_windows
        assert lat[path]["p50"] <= lat[path]["p95"] <= lat[path]["p99"]
    assert lat["lost"] == {"edge": 0, "central": 0}
    assert lat["edge"]["p50"] >= delay  # one delayed hop
    assert lat["central"]["p50"] >= 2 * delay  # raw up, alert back
    assert lat["edge_on_box_decision"]["p99"] < lat["edge"]["p50"]

    band = r["bandwidth"]
    # The pilot's own model, one field element of the shipped update_bits per parameter
    # at least, per round.
    assert band["model_parameters"] > 100
    bits = AggregatorSection().update_bits
    assert band["update_bytes_per_round"] >= bits // 8 * band["model_parameters"]
    assert band["raw_bytes_per_h"] > 0 and set(band["profiles"]) == {"default", "pilot"}
    for name, p in band["profiles"].items():
        parts = p["alerts_bytes_per_h"] + p["updates_bytes_per_h"] + p["status_bytes_per_h"]
        assert abs(p["total_bytes_per_h"] - parts) <= 1
        ratio = p["total_bytes_per_h"] / band["raw_bytes_per_h"]
        assert p["ratio_to_raw"] == pytest.approx(ratio, rel=1e-3)
        assert f"| {name} | {p['status_interval_s']:.0f} s |" in md
    assert "## Bandwidth leaving a box" in md

    assert set(r["targets"]) == {
        "fed_personalised_ge_centralised",
        "federated_within_2pt_of_centralised",
        "best_robust_loss_at_20pct_le_3pt",
        "edge_p99_le_tenth_of_central_at_50ms",
    }
    assert r["config"]["seed"] == cfg.seed and r["paper"]["accuracy_federated"] == 0.92
