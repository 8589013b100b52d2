"""Summaries of the runs: modality shares, targets over seeds and cohorts, and their table."""

from __future__ import annotations

import numpy as np
import pytest

from edgelab.pilot.config import PAPER, PilotConfig
from edgelab.pilot.report import render_markdown
from edgelab.pilot.summary import cohort_summary, seed_spread, shares, targets


def test_shares_normalise_to_100_and_ignore_harmful_removals() -> None:
    s = shares({"ecg": 0.3, "acc": 0.1, "temp": -0.05, "env": 0.0})
    assert s is not None
    assert sum(s.values()) == pytest.approx(100.0)
    assert s["ecg"] == pytest.approx(75.0) and s["temp"] == 0.0
    assert shares({"ecg": 0.0, "acc": -0.1}) is None


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
        "paper": PAPER,
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
