"""Build the baseline detector deterministically from simulated patients.

    python -m edgelab.baseline        # writes models/baseline.onnx and models/baseline.json

Why package code: the baseline model is an artefact, and anyone must be able
to rebuild it bit-for-bit and see how it was trained, from a checkout or from
an installed wheel (the demo builds it here when the package lacks it).
Training data is the simulator (``firmware_sim.physiology``) driven through the agent's
own windows and features, so the model sees exactly what a box sees.
Patients are split by index: training (0..N-1), held-out evaluation
(100..), and "unusual baseline" patients (200.., profiles with resting HR
and skin temperature moved to the edges of the population) for the
personalisation comparison.

The helpers here (``schedule``, ``patient_features``, ``class_labels``) are
also what the tests use to build held-out data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from edgeagent.evaluate import POS_OVERLAP_S, ScoredWindow, score_windows  # noqa: E402
from edgeagent.model.graph import FAULT, NORMAL, ModelMeta, build_model, to_bytes  # noqa: E402
from edgeagent.model.nn import standardise  # noqa: E402
from edgeagent.pipeline import features  # noqa: E402
from edgeagent.pipeline.alerts import MemoryAlertSink  # noqa: E402
from edgeagent.pipeline.detect import CLASS_MODALITY, Detector, DetectorConfig  # noqa: E402
from edgeagent.pipeline.personal import calibrate, robust_stats  # noqa: E402
from edgeagent.pipeline.windows import Windower  # noqa: E402
from edgeagent.streams import SampleBlock, Stream  # noqa: E402
from edgelab.train import fit  # noqa: E402
from firmware_sim.ecg_variation import ECGVariation, make_variation  # noqa: E402
from firmware_sim.physiology import (  # noqa: E402
    ANOMALY_KINDS,
    FAULT_KINDS,
    Generator,
    Label,
    PatientProfile,
    SimConfig,
    make_patient,
)

CLASSES: tuple[str, ...] = (NORMAL, *ANOMALY_KINDS, FAULT)
WINDOW_S = 10.0
HOP_S = 2.0
TRAIN_PATIENTS = range(0, 24)
TRAIN_SECONDS = 2400.0
HELDOUT_PATIENTS = range(100, 110)
HELDOUT_SECONDS = 1800.0
UNUSUAL_PATIENTS = range(200, 204)
#: Training patients whose resting heart rate is high (100-126 bpm, as in ICU
#: patients), labelled normal: "tachycardia" must mean fast *for this patient*,
#: not fast for the population, or every such patient alarms all day.
HIGH_HR_PATIENTS = range(300, 304)
SEED = 0
_SLOW = ("fever", "hypothermia")  # long ramps: leave room before and after


def unusual_profile(index: int, seed: int = SEED) -> PatientProfile:
    """A patient at the edge of the population: resting HR and skin temperature moved out."""
    p = make_patient(index, seed)
    k = index % 4
    hr = (46.0, 92.0, 50.0, 88.0)[k]
    temp = (35.6, 37.3, 37.2, 35.5)[k]
    return dataclasses.replace(
        p, patient_id=f"unusual-{index:03d}", baseline_hr=hr, baseline_temp=temp
    )


def high_hr_profile(index: int, seed: int = SEED) -> PatientProfile:
    """A patient whose resting heart rate is high (their normal, not an episode)."""
    p = make_patient(index, seed)
    hr = (102.0, 110.0, 118.0, 126.0)[index % 4]
    return dataclasses.replace(p, patient_id=f"high-hr-{index:03d}", baseline_hr=hr)


def schedule(
    index: int, seconds: float, kinds: Sequence[str], seed: int = SEED
) -> tuple[Label, ...]:
    """A scripted, deterministic episode schedule cycling through ``kinds``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0xE9]))
    out: list[Label] = []
    t = 60.0
    order = list(rng.permutation(list(kinds)))
    i = 0
    while True:
        k = str(order[i % len(order)])
        i += 1
        gap = float(rng.uniform(40.0, 120.0)) + (480.0 if k in _SLOW else 0.0)
        if k in _SLOW:
            dur = float(rng.uniform(240.0, 420.0))
        elif k == "fall":
            dur = float(rng.uniform(21.0, 40.0))
        elif k in FAULT_KINDS:
            dur = float(rng.uniform(20.0, 60.0))
        else:
            dur = float(rng.uniform(30.0, 90.0))
        start = t + gap
        end = start + dur
        if end + (480.0 if k in _SLOW else 20.0) > seconds:
            break
        out.append(Label(start, end, k))
        t = end + (480.0 if k in _SLOW else 5.0)
    return tuple(out)


def patient_features(
    profile: PatientProfile,
    seconds: float,
    episodes: tuple[Label, ...] | None,
    drop_streams: Sequence[str] = (),
    variation: ECGVariation | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float, str]]]:
    """(features (n, F), spans (n, 2), labels) of one simulated patient via the agent's windows.

    ``variation`` gives the patient a real wearable's lead (polarity, gain,
    noise, morphology spread); the baseline is built and evaluated with one
    drawn per patient (``make_variation``).
    """
    cfg = SimConfig(episodes=episodes, variation=variation)
    gen = Generator(profile, cfg)
    win = Windower(WINDOW_S, HOP_S, patient=profile.patient_id)
    windows = []
    labels: set[Label] = set()
    t = 0.0
    while t < seconds:
        ch = gen.advance(2.0)
        t += 2.0
        labels.update(ch.labels)
        for name, (tt, vv) in ch.streams.items():
            if len(tt) and name not in drop_streams:
                win.push(SampleBlock(profile.patient_id, Stream(name), tt, vv))
        windows.extend(win.pop_ready())
    windows.extend(win.flush())
    x = np.stack([features.extract(w) for w in windows]).astype(np.float32)
    spans = np.asarray([(w.start, w.end) for w in windows], np.float64)
    labs = sorted((float(lb.start), float(lb.end), lb.kind) for lb in labels)
    return x, spans, labs


def class_labels(spans: np.ndarray, labels: list[tuple[float, float, str]]) -> np.ndarray:
    """Training class per window; -1 where the window only grazes an episode or sits in a ramp."""
    y = np.zeros(len(spans), np.int64)
    for i, (w0, w1) in enumerate(spans):
        best, cls = 0.0, 0
        for s, e, k in labels:
            # Windows that only graze an episode are ambiguous; ramps outside the
            # label are *normal* (below the clinical threshold), which is what
            # teaches the model where the threshold lies.
            margin = 5.0
            ov = max(0.0, min(w1, e) - max(w0, s))
            near = max(0.0, min(w1, e + margin) - max(w0, s - margin))
            need = min(POS_OVERLAP_S, 0.5 * (e - s))
            if ov >= need and ov > best:
                best, cls = ov, CLASSES.index(FAULT if k in FAULT_KINDS else k)
            elif near > 0 and cls == 0:
                cls = -1
        y[i] = cls
    return y


def _job(args: tuple[str, int, float]) -> dict[str, Any]:
    group, index, seconds = args
    kinds = ANOMALY_KINDS + FAULT_KINDS
    if group == "unusual":
        profile = unusual_profile(index)
    elif group == "train_hr":
        profile = high_hr_profile(index)
        # Rate episodes are drawn in absolute bpm, below or near this baseline.
        kinds = tuple(k for k in kinds if k not in ("tachycardia", "bradycardia"))
    else:
        profile = make_patient(index, SEED)
    eps = schedule(index, seconds, kinds)
    x, spans, labs = patient_features(profile, seconds, eps, variation=make_variation(index, SEED))
    return {
        "group": group,
        "index": index,
        "id": profile.patient_id,
        "x": x,
        "spans": spans,
        "labels": labs,
    }


def make_data(jobs: list[tuple[str, int, float]], processes: int = 2) -> list[dict[str, Any]]:
    """Simulate and featurise patients (deterministic; parallel across processes)."""
    if processes <= 1:
        return [_job(j) for j in jobs]
    with Pool(processes) as pool:
        return pool.map(_job, jobs)


def population_stats(train: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Population median and robust spread over the training patients' normal windows."""
    rows = []
    for d in train:
        y = class_labels(d["spans"], d["labels"])
        rows.append(d["x"][y == 0])
    med, mad, _ = robust_stats(np.concatenate(rows))
    med = np.where(np.isfinite(med), med, 0.0)
    sd = np.nanstd(np.concatenate(rows), axis=0)
    # MAD is 0 for features that are mostly constant (coverage, flags): fall back to the SD.
    sigma = np.where(mad > 1e-6, mad, np.where(sd > 1e-6, sd, 1.0))
    return med.astype(np.float32), sigma.astype(np.float32)


def training_arrays(
    train: list[dict[str, Any]], pop_mu: np.ndarray, pop_sigma: np.ndarray, personal: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z, zp, m, y) with each patient standardised as a box would (personal or population)."""
    zs, zps, ms, ys = [], [], [], []
    for d in train:
        y = class_labels(d["spans"], d["labels"])
        keep = y >= 0
        x = d["x"]
        if personal:
            # The calibration a box reaches from the patient's accepted (normal) windows.
            mu, sigma = calibrate(x[y == 0], pop_mu, pop_sigma)
        else:
            mu, sigma = pop_mu, pop_sigma
        z, m = standardise(x[keep], mu[None], sigma[None])
        zp, _ = standardise(x[keep], pop_mu[None], pop_sigma[None])
        zs.append(z)
        zps.append(zp)
        ms.append(m)
        ys.append(y[keep])
    return np.concatenate(zs), np.concatenate(zps), np.concatenate(ms), np.concatenate(ys)


def train_model(
    train: list[dict[str, Any]], personal: bool = True, epochs: int = 40, seed: int = SEED
) -> bytes:
    """Train the detector and return its ONNX bytes (deterministic for fixed data and seed)."""
    pop_mu, pop_sigma = population_stats(train)
    z, zp, m, y = training_arrays(train, pop_mu, pop_sigma, personal)
    names = features.FEATURE_NAMES
    groups = [
        np.asarray([i for i, n in enumerate(names) if features.MODALITY_OF[n] == mod])
        for mod in ("ecg", "acc", "temp", "env")
    ]
    meta = ModelMeta(
        feature_names=tuple(names),
        classes=CLASSES,
        pop_mu=pop_mu.tolist(),
        pop_sigma=pop_sigma.tolist(),
        hidden=32,
        latent=12,
        thresholds={"clinical": 0.5, "fault": 0.5, "novelty": 6.0},
        info={
            "built_by": "edgelab.baseline",
            "personal_standardisation": personal,
            "train_patients": [d["id"] for d in train],
            "train_seconds_each": TRAIN_SECONDS,
            "train_windows": len(y),
            "class_counts": {c: int((y == i).sum()) for i, c in enumerate(CLASSES)},
            "seed": seed,
        },
    )
    # A class's own modality is never dropped from its rows (see ``fit``).
    mods = ("ecg", "acc", "temp", "env")
    class_group = np.asarray(
        [mods.index(CLASS_MODALITY[c]) if c in CLASS_MODALITY else -1 for c in CLASSES]
    )
    w, _ = fit(
        meta.spec,
        z,
        m,
        y,
        epochs=epochs,
        batch=128,
        lr=3e-3,
        seed=seed,
        groups=groups,
        zp=zp,
        class_group=class_group,
    )
    return to_bytes(build_model(meta, w))


def replay_features(
    model: bytes,
    d: dict[str, Any],
    personalise: bool = True,
    config: DetectorConfig | None = None,
) -> dict[str, Any]:
    """Run a patient's precomputed windows through a fresh detector; return evaluation metrics."""
    cfg = config or DetectorConfig()
    cfg = dataclasses.replace(cfg, personalise=personalise)
    det = Detector(model, "build", MemoryAlertSink(), cfg)
    scored = []
    for (s, e), x in zip(d["spans"], d["x"], strict=True):
        r = det.process_features(d["id"], float(s), float(e), x)
        scored.append(
            ScoredWindow(r.start, r.end, r.score, r.clinical_active, r.fault_active, r.status)
        )
    return {"scored": scored, "labels": d["labels"]}


def pooled_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over several patients' replays pooled (windows and events concatenated)."""
    scored: list[ScoredWindow] = []
    labels: list[tuple[float, float, str]] = []
    offset = 0.0
    for r in runs:
        for w in r["scored"]:
            scored.append(dataclasses.replace(w, start=w.start + offset, end=w.end + offset))
        labels.extend((s + offset, e + offset, k) for s, e, k in r["labels"])
        offset += max(w.end for w in r["scored"]) + 1000.0
    return score_windows(
        scored,
        labels,
        WINDOW_S,
        duration_s=sum(
            max(w.end for w in r["scored"]) - min(w.start for w in r["scored"]) for r in runs
        ),
    )


def default_out() -> Path:
    """The checkout's ``models/`` (where ``edgeagent/data/baseline.onnx`` links), else ./models."""
    if (ROOT / "pyproject.toml").is_file() and (ROOT / "models").is_dir():
        return ROOT / "models"
    return Path("models")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_out())
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    jobs = [("train", i, TRAIN_SECONDS) for i in TRAIN_PATIENTS]
    jobs += [("train_hr", i, TRAIN_SECONDS) for i in HIGH_HR_PATIENTS]
    jobs += [("heldout", i, HELDOUT_SECONDS) for i in HELDOUT_PATIENTS]
    jobs += [("unusual", i, HELDOUT_SECONDS) for i in UNUSUAL_PATIENTS]
    data = make_data(jobs, args.processes)
    train = [d for d in data if d["group"] in ("train", "train_hr")]
    t1 = time.perf_counter()
    print(f"simulated + featurised {len(data)} patients in {t1 - t0:.1f} s")
    model = train_model(train, personal=True, epochs=args.epochs)
    model_global = train_model(train, personal=False, epochs=args.epochs)
    t2 = time.perf_counter()
    print(f"trained in {t2 - t1:.1f} s")
    report: dict[str, Any] = {"train_s": round(t2 - t1, 1)}
    for group in ("heldout", "unusual"):
        ds = [d for d in data if d["group"] == group]
        report[group] = {
            "personalised": pooled_metrics([replay_features(model, d, True) for d in ds]),
            "global_calibration_only": pooled_metrics(
                [replay_features(model, d, False) for d in ds]
            ),
            "global_model_trained_without_personalisation": pooled_metrics(
                [replay_features(model_global, d, False) for d in ds]
            ),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "baseline.onnx").write_bytes(model)
    (args.out / "baseline.json").write_text(
        json.dumps(_clean(report), indent=1, sort_keys=True) + "\n"
    )
    for group in ("heldout", "unusual"):
        for variant, m in report[group].items():
            print(
                f"{group:8} {variant:45} auroc={m['auroc']:.3f} f1={m['f1']:.3f} "
                f"prec={m['precision']:.3f} rec={m['recall']:.3f} "
                f"fa/h={m['false_alarms_per_hour'] or 0:.2f} fault_recall={m['fault_recall']}"
            )
        print(
            "  per-kind recall:",
            {
                k: round(v["recall"], 2)
                for k, v in report[group]["personalised"]["per_kind"].items()
            },
        )
    return 0


def _clean(o: Any) -> Any:
    from edgeagent.evaluate import _clean as c

    return c(o)


if __name__ == "__main__":
    raise SystemExit(main())
