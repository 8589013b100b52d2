"""The pilot's unit of work: one training + evaluation job, run in a worker process.

Jobs are small dicts and the shared state (patients, model meta) is handed to
forked workers once, so the same job gives the same result in any worker.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from edgeagent.model.meta import ModelMeta, init_params
from edgelab.attacks import AttackConfig, choose_malicious, poison_labels
from edgelab.head_calibration import class_moments
from edgelab.pilot.config import SEED_ROWS, PilotConfig
from edgelab.pilot.evaluate import HeldOutSet, evaluate_model, short_metrics, split_test
from edgelab.pilot.federation import refit_head, run_federation
from edgelab.pilot.parallel import STATE
from edgelab.pilot.simulate import PatientData, make_dataset, make_meta, population_calibration
from edgelab.pilot.train import Calibration, concat, fleet_persistence, local_fit, train_arrays


def run_task(job: dict[str, Any]) -> dict[str, Any]:
    """One training + evaluation, run in a worker (all inputs come from ``STATE``)."""
    t0 = time.perf_counter()
    cfg: PilotConfig = STATE["cfg"]
    if "train_seed" in job:  # same patients, other initial weights and batch order
        cfg = dataclasses.replace(cfg, seed=job["train_seed"])
    meta: ModelMeta = STATE["meta"]
    hubs: list[PatientData] = STATE["hubs"]
    tests: list[HeldOutSet] = STATE["tests"]
    pop_mu = np.asarray(meta.pop_mu, np.float32)
    pop_sigma = np.asarray(meta.pop_sigma, np.float32)
    kind = job["kind"]
    personal = bool(job.get("personal", False))
    drop = job.get("drop")
    budget = cfg.rounds * cfg.local_epochs
    extra: dict[str, Any] = {}
    w0 = init_params(meta.spec, cfg.seed)
    ids = [d.id for d in hubs]
    rule = Calibration.of(cfg, STATE.get("persistence"))

    def malicious(fraction: float) -> list[str]:
        return list(choose_malicious(ids, fraction, cfg.seed))

    if kind == "local":
        d = hubs[job["hub"]]
        ts = train_arrays(d, pop_mu, pop_sigma, personal, rule=rule)
        w = local_fit(cfg, meta, ts, w0, budget, cfg.seed)
    elif kind == "central":
        bad = set()
        if job.get("fraction"):
            bad = set(malicious(job["fraction"]))
        clinical = list(range(1, len(meta.classes) - 1))
        sets = [
            train_arrays(
                d,
                pop_mu,
                pop_sigma,
                personal,
                drop,
                poison_labels(d.y, clinical) if d.id in bad else None,
                rule,
            )
            for d in hubs
        ]
        pooled = concat(sets)
        w = local_fit(cfg, meta, pooled, w0, budget, cfg.seed)
        if job.get("refit"):
            moments = class_moments(meta.spec, w, pooled.z, pooled.m, pooled.y, pooled.zp)
            w = refit_head(cfg, meta, w, moments)
        extra["poisoned_hubs"] = sorted(bad)
    elif kind == "fed":
        attack = None
        if job.get("attack"):
            attack = AttackConfig(
                job["attack"],
                job["fraction"],
                scale=cfg.sign_flip_scale,
                boost=cfg.scaling_boost,
                inflate=cfg.free_ride_inflate,
            )
            extra["malicious"] = malicious(attack.fraction)
        if job.get("honest_only"):
            # The ideal defence: the malicious hubs' updates (and their data) never arrive.
            bad = set(malicious(job["honest_only"]))
            hubs = [d for d in hubs if d.id not in bad]
            extra["excluded"] = sorted(bad)
        res = run_federation(
            cfg,
            meta,
            hubs,
            mode=job.get("mode", "fedavg"),
            personal=personal,
            attack=attack,
            drop=drop,
            dp=bool(job.get("dp")),
            rule=rule,
        )
        w = res.w
        extra["clip"] = res.clip
        extra["epsilon"] = res.epsilon
        extra["final_update_norm"] = res.rounds[-1]["update_norm"] if res.rounds else None
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    metrics = short_metrics(evaluate_model(meta, w, tests, personal, drop=drop, rule=rule))
    out = {"job": job, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 3), **extra}
    if job.get("keep_weights"):
        out["w"] = w
    return out


def prepare(cfg: PilotConfig) -> dict[str, Any]:
    """The task runner's state for ``cfg.seed``'s cohort: hubs, test patients, model meta."""
    hubs, test_data = make_dataset(cfg)
    pop_mu, pop_sigma = population_calibration(hubs)
    meta = make_meta(cfg, pop_mu, pop_sigma)
    tests = [split_test(d, cfg.calibration_frac) for d in test_data]
    persistence = fleet_persistence(hubs, cfg.calibration_frac, pop_mu, pop_sigma)
    return {"cfg": cfg, "meta": meta, "hubs": hubs, "tests": tests, "persistence": persistence}


def seed_jobs(cfg: PilotConfig, first: int) -> list[dict[str, Any]]:
    """The headline rows' jobs for training seeds ``first..seeds-1`` of ``cfg.seed``'s cohort.

    Named as ``seed_spread`` reads them: seed 0 is ``row``, seed k is ``row@k``.
    """
    return [
        {**job, "train_seed": cfg.seed + k, "row": row if k == 0 else f"{row}@{k}"}
        for k in range(first, cfg.seeds)
        for row, job in SEED_ROWS.items()
    ]
