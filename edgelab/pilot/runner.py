"""``run_pilot``: every experiment of the pilot, from simulated patients to the results dict.

The one place that orders the experiments and joins their outputs; each
experiment's code lives in its own module.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.evaluate import _clean
from edgeagent.pipeline import features
from edgeagent.pipeline.personal import trait_mask
from edgelab import bandwidth as bw
from edgelab.pilot.config import COHORT_STRIDE, MODALITIES, PAPER, PilotConfig
from edgelab.pilot.evaluate import evaluate_model, model_bytes
from edgelab.pilot.latency import measure_latency
from edgelab.pilot.parallel import pmap
from edgelab.pilot.report import write_outputs
from edgelab.pilot.summary import (
    best_robust,
    budget,
    cohort_summary,
    modality_drop,
    nan_sub,
    robust_over_seeds,
    seed_spread,
    shares,
    targets,
)
from edgelab.pilot.tasks import prepare, run_task, seed_jobs

#: Seconds between progress lines while a batch of training runs is under way.
PROGRESS_EVERY_S = 10.0


def progress_lines(
    log: Callable[[str], None], what: str, every_s: float = PROGRESS_EVERY_S
) -> Callable[[int, int], None]:
    """A ``pmap`` progress callback logging ``what: done/total`` at most every ``every_s``.

    Why: the training batches run for minutes with nothing else to say; a line
    every few seconds shows the run is alive and how far it is, without one
    line per job.
    """
    t0 = last = time.perf_counter()

    def tick(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done >= total or now - last < every_s:  # the caller logs the end
            return
        last = now
        log(f"{what}: {done}/{total} done ({now - t0:.0f} s)")

    return tick


def other_cohorts(
    cfg: PilotConfig, log: Callable[[str], None] = lambda s: None
) -> dict[str, dict[str, Any]]:
    """The headline rows over every training seed on cohorts 1..cohorts-1 (by data seed).

    Why: the main cohort's 20 hubs and test patients are one draw of patients,
    and which patients a cohort holds moved the federated-vs-centralised gap
    by more than the targets' margins (docs/pilot.md); a target met on one
    cohort is not a property of the method.
    """
    out: dict[str, dict[str, Any]] = {}
    for k in range(1, cfg.cohorts):
        ck = dataclasses.replace(cfg, seed=cfg.seed + COHORT_STRIDE * k)
        t0 = time.perf_counter()
        state = prepare(ck)
        jobs = seed_jobs(ck, first=0)
        done = pmap(run_task, jobs, cfg.processes, state, progress_lines(log, f"cohort {ck.seed}"))
        out[str(ck.seed)] = seed_spread({d["job"]["row"]: d for d in done}, ck)
        log(f"cohort {ck.seed}: {len(done)} headline runs in {time.perf_counter() - t0:.1f} s")
    return out


def run_pilot(
    cfg: PilotConfig,
    out: Path | None = None,
    *,
    latency: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run every experiment and write ``pilot.json``, ``pilot.md`` and plots into ``out``."""
    cfg.validate()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    state = prepare(cfg)
    hubs, tests, meta = state["hubs"], state["tests"], state["meta"]
    timings["simulate_s"] = time.perf_counter() - t_start
    log(f"simulated {len(hubs)} hubs + {len(tests)} test patients in {timings['simulate_s']:.1f} s")

    jobs: list[dict[str, Any]] = []
    for h in range(cfg.hubs):
        jobs.append({"kind": "local", "hub": h, "row": "local_only"})
    jobs.append({"kind": "central", "row": "centralised"})
    jobs.append({"kind": "central", "personal": True, "row": "centralised_personalised"})
    jobs.append({"kind": "central", "refit": True, "row": "centralised_refit"})
    jobs.append({"kind": "fed", "row": "federated", "keep_weights": True})
    jobs.append(
        {"kind": "fed", "personal": True, "row": "federated_personalised", "keep_weights": True}
    )
    jobs.append({"kind": "fed", "dp": True, "row": "federated_dp"})
    jobs += seed_jobs(cfg, first=1)  # seed 0's headline rows are the main table's jobs above
    for mode in cfg.modes:
        if mode != "fedavg":
            jobs.append({"kind": "fed", "mode": mode, "row": f"clean:{mode}"})
    for frac in cfg.fractions:
        jobs.append({"kind": "central", "fraction": frac, "row": f"attack:central:{frac}"})
        jobs.append({"kind": "fed", "honest_only": frac, "row": f"attack:honest_only:{frac}"})
        for attack in cfg.attacks:
            for mode in cfg.modes:
                jobs.append(
                    {
                        "kind": "fed",
                        "attack": attack,
                        "fraction": frac,
                        "mode": mode,
                        "row": f"attack:{attack}:{mode}:{frac}",
                    }
                )
    for mod in MODALITIES:
        jobs.append({"kind": "fed", "drop": mod, "row": f"drop:{mod}"})
    t0 = time.perf_counter()
    done = pmap(run_task, jobs, cfg.processes, state, progress_lines(log, "training runs"))
    timings["train_eval_s"] = time.perf_counter() - t0
    log(f"{len(jobs)} training runs in {timings['train_eval_s']:.1f} s")
    by = {d["job"]["row"]: d for d in done if d["job"]["row"] != "local_only"}
    local = [d for d in done if d["job"]["row"] == "local_only"]

    # Main table.
    def mean_metrics(ms: list[dict[str, Any]]) -> dict[str, Any]:
        keys = ("accuracy", "balanced_accuracy", "f1", "precision", "recall", "auroc")
        out_m: dict[str, Any] = {}
        for k in keys:
            v = [m[k] for m in ms if m.get(k) is not None and np.isfinite(m[k])]
            out_m[k] = float(np.mean(v)) if v else None
            out_m[k + "_min"] = float(np.min(v)) if v else None
            out_m[k + "_max"] = float(np.max(v)) if v else None
        return out_m

    accuracy = {
        "local_only": mean_metrics([d["metrics"] for d in local]),
        "centralised": by["centralised"]["metrics"],
        "federated": by["federated"]["metrics"],
        "federated_personalised": by["federated_personalised"]["metrics"],
        "centralised_personalised": by["centralised_personalised"]["metrics"],
        "centralised_refit": by["centralised_refit"]["metrics"],
    }

    accuracy["seed_spread"] = seed_spread(by, cfg)
    names = np.asarray(features.FEATURE_NAMES)
    mask = trait_mask(names) if cfg.personal_traits_only else np.ones(len(names), bool)
    weights = zip(names[mask], state["persistence"][mask], strict=True)
    # (the thresholds are in the personalised rows' metrics, the switches in the config)
    personalisation = {
        # the main cohort's, learnt from its hubs' recordings (fleet_persistence)
        "persistence_weights": (
            {str(n): float(v) for n, v in weights} if cfg.personal_persistence else None
        ),
    }
    t0 = time.perf_counter()
    accuracy["cohorts"] = cohort_summary(accuracy["seed_spread"], other_cohorts(cfg, log), cfg.seed)
    timings["cohorts_s"] = time.perf_counter() - t0

    # Attacks.
    clean_acc = {"fedavg": by["federated"]["metrics"]["accuracy"]}
    for mode in cfg.modes:
        if mode != "fedavg":
            clean_acc[mode] = by[f"clean:{mode}"]["metrics"]["accuracy"]
    attacks: dict[str, Any] = {
        "clean_accuracy": clean_acc,
        "centralised_clean": accuracy["centralised"]["accuracy"],
        "runs": {},
    }
    for frac in cfg.fractions:
        key = f"{frac:g}"
        row: dict[str, Any] = {"centralised_poisoned_data": by[f"attack:central:{frac}"]["metrics"]}
        row["malicious_hubs"] = by[f"attack:central:{frac}"].get("poisoned_hubs", [])
        row["honest_hubs_only"] = by[f"attack:honest_only:{frac}"]["metrics"]
        for attack in cfg.attacks:
            row[attack] = {
                mode: by[f"attack:{attack}:{mode}:{frac}"]["metrics"] for mode in cfg.modes
            }
        attacks["runs"][key] = row
    best20 = best_robust(attacks, cfg, 0.2)
    if best20 and best20["best_robust_mode"] and cfg.seeds > 1:
        # The attack grid is one seed; the mode it picks (and the ideal defence) is rerun
        # with the other training seeds so the 20 % target is judged on a mean, like the
        # accuracy targets (the clean FedAvg per seed is the seed-spread run).
        t0 = time.perf_counter()
        extra_jobs = []
        frac = best20["fraction"]
        for k in range(1, cfg.seeds):
            common = {"kind": "fed", "train_seed": cfg.seed + k, "fraction": frac}
            extra_jobs.append({**common, "honest_only": frac, "row": f"seed20:honest_only@{k}"})
            for attack in cfg.attacks:
                extra_jobs.append(
                    {
                        **common,
                        "attack": attack,
                        "mode": best20["best_robust_mode"],
                        "row": f"seed20:{attack}@{k}",
                    }
                )
        more = pmap(
            run_task, extra_jobs, cfg.processes, state, progress_lines(log, "robust-mode reruns")
        )
        timings["robust_seeds_s"] = time.perf_counter() - t0
        log(f"{len(extra_jobs)} robust-mode reruns over seeds in {timings['robust_seeds_s']:.1f} s")
        done += more
        by.update({d["job"]["row"]: d for d in more})
        best20["over_seeds"] = robust_over_seeds(by, attacks, best20, cfg)

    # Modality contribution.
    fed = by["federated"]
    full = fed["metrics"]
    drops = {m: modality_drop(full, by[f"drop:{m}"]["metrics"]) for m in MODALITIES}
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xBEEF]))
    perm: dict[str, dict[str, float]] = {}
    for m in MODALITIES:
        accs, f1s, aucs = [], [], []
        for _ in range(cfg.permutation_repeats):
            pm = evaluate_model(meta, fed["w"], tests, False, permute=m, rng=rng)
            accs.append(pm["accuracy"])
            f1s.append(pm["f1"])
            aucs.append(pm["auroc"])
        perm[m] = {
            "accuracy": full["accuracy"] - float(np.mean(accs)),
            "f1": full["f1"] - float(np.mean(f1s)),
            "auroc": nan_sub(full["auroc"], float(np.nanmean(aucs))),
        }
    modality = {
        "retrain_drop": drops,
        "permutation_drop": perm,
        "share_pct": {
            "retrain_accuracy": shares({m: drops[m]["accuracy"] for m in MODALITIES}),
            "retrain_f1": shares({m: drops[m]["f1"] for m in MODALITIES}),
            "permutation_accuracy": shares({m: perm[m]["accuracy"] for m in MODALITIES}),
            "permutation_f1": shares({m: perm[m]["f1"] for m in MODALITIES}),
        },
    }

    privacy = {
        "federated_dp": by["federated_dp"]["metrics"],
        "noise_multiplier": cfg.dp_noise_multiplier,
        "clip": by["federated_dp"].get("clip"),
        "n_cap": cfg.n_cap,
        "rounds": cfg.rounds,
        "sampling_rate": 1.0,
        "delta": cfg.dp_delta,
        "epsilon": by["federated_dp"].get("epsilon"),
        "accountant": "dp_accounting RDP, Poisson-subsampled Gaussian, user-level (hub per round)",
        "non_dp_rows_epsilon": None,
    }

    lat: dict[str, Any] = {}
    if latency:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="pilot-lat-") as tmp:
            lat = measure_latency(
                cfg, model_bytes(meta, by["federated_personalised"]["w"]), Path(tmp)
            )
        timings["latency_s"] = time.perf_counter() - t0
        log(f"latency measured in {timings['latency_s']:.1f} s")
    t0 = time.perf_counter()
    band = bw.measure(
        int(by["federated"]["w"].size), min(cfg.hubs, 10), cfg.seed, bw.operating_profiles()
    )
    band["target_ratio"] = bw.TARGET_RATIO
    timings["bandwidth_s"] = time.perf_counter() - t0
    log(f"bandwidth accounted in {timings['bandwidth_s']:.1f} s")
    timings["total_s"] = time.perf_counter() - t_start

    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "data": {
            "hubs": [
                {
                    "id": d.id,
                    "windows": len(d.x),
                    "kinds": list(d.kinds),
                    "positives": int(((d.y > 0) & (d.y < len(meta.classes) - 1)).sum()),
                }
                for d in hubs
            ],
            "test_patients": [
                {
                    "id": t.id,
                    "eval_windows": len(t.x),
                    "positive": int((t.wy == 1).sum()),
                    "negative": int((t.wy == 0).sum()),
                }
                for t in tests
            ],
        },
        "budget": budget(cfg, hubs),
        "accuracy": accuracy,
        "personalisation": personalisation,
        "attacks": attacks,
        "best_robust_at_20pct": best20,
        "modality": modality,
        "privacy": privacy,
        "latency": lat,
        "bandwidth": band,
        "timings": timings,
        "task_seconds": {
            d["job"]["row"]: d["seconds"] for d in done if d["job"]["row"] != "local_only"
        },
        "paper": PAPER,
    }
    results["targets"] = targets(results)
    results = _clean(results)
    if out is not None:
        write_outputs(results, Path(out))
    return results
