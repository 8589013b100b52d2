"""Field learning on a simulated ward: clinicians' verdicts train the head, rounds combine it.

Each run plays ``edgelab.ward``: boxes serving simulated patients raise alerts
with the shipped baseline, a simulated nurse acknowledges a share of them
(``--error-rate`` of the verdicts wrong), every invited box trains with the
real ``LocalLearner`` (``offer`` for normal windows, ``offer_labelled`` for the
acknowledged alerts' windows) and the rounds combine the updates with the
real ``edgeagent.fl`` functions (clip, n_k cap, Gaussian noise on the
announced coordinates, FedAvg from the summed payloads). Every figure is
measured on the patients' later, unseen windows (never trained on by any box).

Main grid: fleets of 20, 100 and 1,000 boxes x feedback rates 1 %, 10 %, 50 %;
the federated loop with DP (noise multiplier ``--z``) and without, against
the references: no federation (a box runs the baseline: without a round its
local learning never reaches the model it runs), the centralised model (every
training window of every patient with its true label, ``edgelab.train.fit``
from the baseline), a box promoting its own locally trained model (fleets of
at most 100), and the baseline with its clinical threshold floor raised (what
a threshold move alone buys, to tell learning from a shift of the operating
point).

DP sweep: fleets of 100, 1,000 and 10,000 boxes, at most ``--per-round`` boxes
per round (Poisson sampling at ``per_round / fleet``; that rate is what the
``DpAccountant`` is given), z in ``--zs``: ε after the rounds at δ = 1e-5 and
the accuracy, false alarms and recall against the same loop without noise.

Stated limits: one seed; a bank of ``--bank`` simulated patients shared by the
fleet's boxes (each from its own point in the recording); the detector's
evidence gates (rate, ectopy, signal quality) are not applied (see
``edgelab.ward``); the first run simulates the bank (~2 min for 16 patient-hours,
cached under ~/.cache/edgelab).

Run: python bench/field_learning.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgelab import ward as W

KEYS = ("accuracy", "recall", "event_recall", "false_alarms_per_hour")


def epsilon_unsampled(z: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` full Gaussian releases (q = 1): what the aggregator as built
    accounts, since it claims no amplification by sampling (``accountant.SAMPLING_RATE``)."""
    from edgeagent.federation.accountant import DpAccountant

    acc = DpAccountant(delta)
    acc.step(z, 1.0, rounds)
    return acc.epsilon()


def _final(run: W.WardRun) -> dict[str, Any]:
    last = run.rounds[-1]
    out = {k: last[k] for k in KEYS}
    if run.epsilon is not None:
        out["epsilon"] = run.epsilon
        out["epsilon_per_round"] = [r.get("epsilon") for r in run.rounds[1:]]
        z, rounds = run.config["noise_multiplier"], run.config["rounds"]
        out["epsilon_q1"] = epsilon_unsampled(z, rounds, run.config["delta"])
    out["per_round"] = [{k: r[k] for k in ("round", *KEYS) if k in r} for r in run.rounds]
    out["alerts"] = run.config.get("alerts")
    out["acked"] = run.config.get("acked")
    return out


def _cut(ref: dict[str, Any], got: dict[str, Any]) -> float:
    return W.reduction(ref["false_alarms_per_hour"], got["false_alarms_per_hour"])


def threshold_sweep(ward: W.Ward, floors: tuple[float, ...]) -> list[dict[str, Any]]:
    """The baseline at raised clinical threshold floors (all patients weighted equally)."""
    out = []
    keep = W.CLINICAL_FLOOR
    try:
        for f in floors:
            W.CLINICAL_FLOOR = f
            out.append({"floor": f, **ward.evaluate_shared(ward.w0, [1.0] * len(ward.patients))})
    finally:
        W.CLINICAL_FLOOR = keep
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--fleets", type=int, nargs="+", default=[20, 100, 1000])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.10, 0.50])
    ap.add_argument("--sweep-fleets", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--zs", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--z", type=float, default=1.0, help="noise multiplier of the main grid")
    ap.add_argument("--eps-target", type=float, default=8.0, help="the issue's ε target")
    ap.add_argument("--per-round", type=int, default=200, help="most boxes invited per round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--bank", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--error-rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "field_learning.json"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.fleets, args.rates, args.sweep_fleets, args.zs = [6], [0.5], [6, 40], [1.0]
        args.rounds, args.bank, args.minutes, args.per_round = 2, 2, 15.0, 20
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's convergence chatter
    t0 = time.monotonic()
    ward = W.make_ward(args.bank, args.minutes, processes=args.processes)
    t_bank = time.monotonic() - t0
    base_cfg = W.WardConfig(rounds=args.rounds, error_rate=args.error_rate, seed=args.seed)
    if args.quick:
        base_cfg = replace(base_cfg, round_windows=120)
    everyone = [1.0] * len(ward.patients)
    baseline = ward.evaluate_shared(ward.w0, everyone)
    central = ward.evaluate_shared(ward.centralised(epochs=1, seed=args.seed), everyone)
    sweep_floors = (0.7, 0.8, 0.9, 0.95)
    doc: dict[str, Any] = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "settings": {
            "bank_patients": len(ward.patients),
            "minutes_per_patient": args.minutes,
            "unseen_share": 1 - base_cfg.train_frac,
            "rounds": args.rounds,
            "round_windows": base_cfg.round_windows,
            "error_rate": args.error_rate,
            "main_grid_z": args.z,
            "per_round_max": args.per_round,
            "delta": base_cfg.delta,
            "clip": base_cfg.clip,
            "n_cap": base_cfg.n_cap,
            "groups": list(base_cfg.groups),
            "seed": args.seed,
            "sampling": "Poisson, rate = min(1, per_round / fleet); the rate given to DpAccountant",
            "no_federation": "a box runs the baseline (its local learning is never activated "
            "without a round)",
            "quick": args.quick,
        },
        "references": {
            "baseline_no_federation": baseline,
            "centralised_all_labels": central,
            "baseline_threshold_floor": threshold_sweep(ward, sweep_floors),
        },
        "grid": [],
        "dp_sweep": [],
    }
    print(
        f"bank: {len(ward.patients)} patients x {args.minutes:.0f} min ({t_bank:.0f} s); "
        f"baseline FA/h {baseline['false_alarms_per_hour']:.2f} recall {baseline['recall']:.3f} "
        f"event recall {baseline['event_recall']:.3f} acc {baseline['accuracy']:.3f}"
    )
    hdr = (
        f"{'boxes':>6} {'fb':>5} {'variant':<16} {'acc':>6} {'FA/h':>6} {'cut':>6} "
        f"{'recall':>6} {'ev.rec':>6} {'eps':>8}"
    )
    print(hdr)
    print("-" * len(hdr))

    def row(n: int, fb: float, name: str, m: dict[str, Any], ref: dict[str, Any]) -> None:
        eps = m.get("epsilon")
        print(
            f"{n:>6} {fb:>5.2f} {name:<16} {m['accuracy']:>6.3f} "
            f"{m['false_alarms_per_hour']:>6.2f} {100 * _cut(ref, m):>5.1f}% "
            f"{m['recall']:>6.3f} {m['event_recall']:>6.3f} "
            f"{'-' if eps is None else f'{eps:.2f}':>8}"
        )

    for n in args.fleets:
        per = min(n, args.per_round)
        sample = 0 if per >= n else per
        for fb in args.rates:
            cfg = replace(base_cfg, boxes=n, feedback=fb, sample=sample)
            t = time.monotonic()
            plain = _final(ward.run(cfg, eval_every=max(1, args.rounds // 4)))
            dp = _final(
                ward.run(replace(cfg, noise_multiplier=args.z), eval_every=max(1, args.rounds // 4))
            )
            # no federation: every box runs the baseline; round 0 of the run is exactly that,
            # weighted by how many of this fleet's boxes serve each patient
            nofed = {k: plain["per_round"][0][k] for k in KEYS}
            entry: dict[str, Any] = {
                "boxes": n,
                "no_federation": nofed,
                "feedback": fb,
                "boxes_per_round": per,
                "sampling_rate": cfg.sampling_rate,
                "federated_no_dp": plain,
                "federated_dp": {**dp, "noise_multiplier": args.z},
            }
            if n <= 100:
                entry["local_promoted"] = _final(ward.run(cfg, federated=False, eval_every=1000))
            entry["seconds"] = round(time.monotonic() - t, 1)
            for name in ("federated_no_dp", "federated_dp", "local_promoted"):
                if name in entry:
                    m = entry[name]
                    m["fa_cut_vs_no_federation"] = _cut(nofed, m)
                    m["recall_not_worse"] = m["recall"] >= nofed["recall"]
                    m["event_recall_not_worse"] = m["event_recall"] >= nofed["event_recall"]
                    row(n, fb, name, m, nofed)
            row(n, fb, "no_federation", nofed, nofed)
            doc["grid"].append(entry)
    print()
    print(f"{'DP sweep':<10} at most {args.per_round} boxes per round, feedback 10 %")
    hdr2 = (
        f"{'boxes':>6} {'q':>6} {'z':>5} {'eps':>8} {'eps q=1':>8} {'acc':>6} {'d.acc':>7} "
        f"{'FA/h':>6} {'recall':>6} {'ev.rec':>6}"
    )
    print(hdr2)
    print("-" * len(hdr2))
    for n in args.sweep_fleets:
        per = min(n, args.per_round)
        cfg = replace(base_cfg, boxes=n, feedback=0.10 if not args.quick else 0.5)
        cfg = replace(cfg, sample=0 if per >= n else per)
        ref = _final(ward.run(cfg, eval_every=1000))
        doc["dp_sweep"].append(
            {
                "boxes": n,
                "boxes_per_round": per,
                "sampling_rate": cfg.sampling_rate,
                "z": 0.0,
                "rounds": args.rounds,
                **ref,
            }
        )
        print(
            f"{n:>6} {cfg.sampling_rate:>6.3f} {0.0:>5.1f} {'inf':>8} {'inf':>8} "
            f"{ref['accuracy']:>6.3f} {0.0:>+7.3f} {ref['false_alarms_per_hour']:>6.2f} "
            f"{ref['recall']:>6.3f} "
            f"{ref['event_recall']:>6.3f}"
        )
        for z in args.zs:
            m = _final(ward.run(replace(cfg, noise_multiplier=z), eval_every=1000))
            m["accuracy_cost"] = ref["accuracy"] - m["accuracy"]
            m["fa_per_hour_cost"] = m["false_alarms_per_hour"] - ref["false_alarms_per_hour"]
            m["recall_cost"] = ref["recall"] - m["recall"]
            doc["dp_sweep"].append(
                {
                    "boxes": n,
                    "boxes_per_round": per,
                    "sampling_rate": cfg.sampling_rate,
                    "z": z,
                    "rounds": args.rounds,
                    **m,
                }
            )
            print(
                f"{n:>6} {cfg.sampling_rate:>6.3f} {z:>5.1f} {m['epsilon']:>8.2f} "
                f"{m['epsilon_q1']:>8.2f} {m['accuracy']:>6.3f} {-m['accuracy_cost']:>+7.3f} "
                f"{m['false_alarms_per_hour']:>6.2f} {m['recall']:>6.3f} {m['event_recall']:>6.3f}"
            )
    # the aggregator as built claims no amplification by sampling (q = 1): the ε target
    # at 1,000 boxes with every box in every round, at the smallest z from --zs that keeps
    # ε(q = 1) within --eps-target over the rounds
    n = max(args.fleets)
    fits = [
        z for z in sorted(args.zs) if epsilon_unsampled(z, args.rounds, 1e-5) <= args.eps_target
    ]
    if fits:
        z = fits[0]
        cfg = replace(base_cfg, boxes=n, feedback=0.10 if not args.quick else 0.5, sample=0)
        plain = _final(ward.run(cfg, eval_every=1000))
        noisy = _final(ward.run(replace(cfg, noise_multiplier=z), eval_every=1000))
        nofed = {k: plain["per_round"][0][k] for k in KEYS}
        for m in (plain, noisy):
            m["fa_cut_vs_no_federation"] = _cut(nofed, m)
            m["recall_not_worse"] = m["recall"] >= nofed["recall"]
        doc["q1_target_run"] = {
            "boxes": n,
            "boxes_per_round": n,
            "z": z,
            "rounds": args.rounds,
            "no_federation": nofed,
            "federated_no_dp": plain,
            "federated_dp": noisy,
        }
        print()
        print(f"every box every round (q = 1, as the aggregator accounts), {n} boxes, z {z}:")
        row(n, cfg.feedback, "no_federation", nofed, nofed)
        row(n, cfg.feedback, "federated_no_dp", plain, nofed)
        row(n, cfg.feedback, "federated_dp", noisy, nofed)
    doc["targets"] = targets(doc)
    doc["seconds"] = round(time.monotonic() - t0, 1)
    print()
    for k, v in doc["targets"].items():
        print(f"{k}: {v}")
    print(f"total {doc['seconds']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_clean(doc), indent=1))
    return 0


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on the grid's 10 % feedback rows (met or not, with figures)."""
    out: dict[str, Any] = {}
    for e in doc["grid"]:
        if not math.isclose(e["feedback"], 0.10):
            continue
        for name in ("federated_no_dp", "federated_dp"):
            m = e[name]
            ref = e["no_federation"]
            met = m["fa_cut_vs_no_federation"] >= 0.30 and m["recall_not_worse"]
            out[f"{e['boxes']} boxes {name}: FA cut >= 30 % at equal or better recall"] = (
                f"{'met' if met else 'NOT met'} (cut {100 * m['fa_cut_vs_no_federation']:.1f} %, "
                f"recall {m['recall']:.3f} vs {ref['recall']:.3f}, event recall "
                f"{m['event_recall']:.3f} vs {ref['event_recall']:.3f}"
                + (f", eps {m['epsilon']:.2f})" if "epsilon" in m else ")")
            )
    q1 = doc.get("q1_target_run")
    if q1 is not None:
        m, ref = q1["federated_dp"], q1["no_federation"]
        met = m["fa_cut_vs_no_federation"] >= 0.30 and m["recall_not_worse"]
        key = f"{q1['boxes']} boxes, every box every round, z {q1['z']}: FA cut >= 30 % at eps <= 8"
        out[key] = (
            f"{'met' if met else 'NOT met'} (cut {100 * m['fa_cut_vs_no_federation']:.1f} %, "
            f"recall {m['recall']:.3f} vs {ref['recall']:.3f}, eps (q = 1) {m['epsilon']:.2f})"
        )
    return out


def _clean(o: Any) -> Any:
    if isinstance(o, float):
        return None if not math.isfinite(o) else round(o, 5)
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


if __name__ == "__main__":
    raise SystemExit(main())
