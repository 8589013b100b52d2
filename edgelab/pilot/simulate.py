"""Simulated non-IID patients, turned into the agent's own feature windows with labels.

One patient per hub with a few event kinds each, held-out test patients with all
of them; windows go through the agent's ``Windower`` and ``features.extract`` so
the pilot trains on exactly what a box would compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeagent.evaluate import POS_OVERLAP_S
from edgeagent.model.meta import FAULT, NORMAL, ModelMeta
from edgeagent.pipeline import features
from edgeagent.pipeline.personal import robust_stats
from edgelab.pilot.config import PilotConfig
from edgelab.pilot.parallel import pmap

#: Kinds scheduled as long episodes (200-300 s) with long gaps: they build over minutes.
_SLOW = ("fever", "hypothermia")


def _classes() -> tuple[str, ...]:
    from firmware_sim.physiology import ANOMALY_KINDS

    return (NORMAL, *ANOMALY_KINDS, FAULT)


@dataclass
class PatientData:
    """One simulated patient's windows: features, spans, labels and training classes."""

    id: str
    x: np.ndarray  # (n, F) float32
    spans: np.ndarray  # (n, 2)
    labels: list[tuple[float, float, str]]
    y: np.ndarray  # training class per window, -1 ambiguous
    kinds: tuple[str, ...]


def schedule(seconds: float, kinds: Sequence[str], seed: int) -> tuple[Any, ...]:
    """A deterministic episode script cycling through ``kinds`` (slow ramps get room)."""
    from firmware_sim.physiology import FAULT_KINDS, Label

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9107]))
    out = []
    t = 40.0
    order = list(rng.permutation(list(kinds)))
    i = 0
    while True:
        k = str(order[i % len(order)])
        i += 1
        slow = k in _SLOW
        gap = float(rng.uniform(20.0, 60.0)) + (240.0 if slow else 0.0)
        if slow:
            dur = float(rng.uniform(200.0, 300.0))
        elif k == "fall":
            dur = float(rng.uniform(21.0, 40.0))
        elif k in FAULT_KINDS:
            dur = float(rng.uniform(20.0, 50.0))
        else:
            dur = float(rng.uniform(30.0, 80.0))
        start = t + gap
        end = start + dur
        if end + (240.0 if slow else 20.0) > seconds:
            if i > 4 * len(order):
                break
            continue
        out.append(Label(start, end, k))
        t = end + (240.0 if slow else 5.0)
    return tuple(out)


def class_labels(spans: np.ndarray, labels: list[tuple[float, float, str]]) -> np.ndarray:
    """Training class per window (index into the classes); -1 for windows grazing an episode."""
    from firmware_sim.physiology import FAULT_KINDS

    classes = _classes()
    y = np.zeros(len(spans), np.int64)
    for i, (w0, w1) in enumerate(spans):
        best, cls = 0.0, 0
        for s, e, k in labels:
            ov = max(0.0, min(w1, e) - max(w0, s))
            near = max(0.0, min(w1, e + 5.0) - max(w0, s - 5.0))
            need = min(POS_OVERLAP_S, 0.5 * (e - s))
            if ov >= need and ov > best:
                best, cls = ov, classes.index(FAULT if k in FAULT_KINDS else k)
            elif near > 0 and cls == 0:
                cls = -1
        y[i] = cls
    return y


def simulate_patient(
    index: int, seconds: float, kinds: Sequence[str], seed: int, window_s: float = 10.0
) -> PatientData:
    """Simulate one patient and featurise it through the agent's windower and features."""
    from edgeagent.pipeline.windows import Windower
    from edgeagent.streams import SampleBlock, Stream
    from firmware_sim.physiology import Generator, SimConfig, make_patient

    profile = make_patient(index, seed)
    eps = schedule(seconds, kinds, seed * 100_003 + index)
    gen = Generator(profile, SimConfig(episodes=eps))
    win = Windower(window_s, 2.0, patient=profile.patient_id)
    windows = []
    labs: set[Any] = set()
    t = 0.0
    while t < seconds:
        ch = gen.advance(2.0)
        t += 2.0
        labs.update(ch.labels)
        for name, (tt, vv) in ch.streams.items():
            if len(tt):
                win.push(SampleBlock(profile.patient_id, Stream(name), tt, vv))
        windows.extend(win.pop_ready())
    windows.extend(win.flush())
    x = features.extract_batch(windows)
    spans = np.asarray([(w.start, w.end) for w in windows], np.float64)
    labels = sorted((float(lb.start), float(lb.end), str(lb.kind)) for lb in labs)
    return PatientData(
        profile.patient_id, x, spans, labels, class_labels(spans, labels), tuple(kinds)
    )


def hub_kinds(hub: int, k: int, seed: int) -> tuple[str, ...]:
    """The clinical kinds hub ``hub``'s patient has (non-IID) plus every sensor fault."""
    from firmware_sim.physiology import ANOMALY_KINDS, FAULT_KINDS

    rng = np.random.default_rng(np.random.SeedSequence([seed, hub, 0x4B1D]))
    pick = rng.choice(len(ANOMALY_KINDS), size=k, replace=False)
    return tuple(ANOMALY_KINDS[i] for i in sorted(pick)) + tuple(FAULT_KINDS)


def _sim_job(args: tuple[int, float, tuple[str, ...], int]) -> PatientData:
    return simulate_patient(*args)


def make_dataset(cfg: PilotConfig) -> tuple[list[PatientData], list[PatientData]]:
    """(hubs, test patients): deterministic from ``cfg.seed``; parallel over processes."""
    from firmware_sim.physiology import ANOMALY_KINDS, FAULT_KINDS

    jobs = [
        (h, cfg.hub_seconds, hub_kinds(h, cfg.kinds_per_hub, cfg.seed), cfg.seed)
        for h in range(cfg.hubs)
    ]
    all_kinds = tuple(ANOMALY_KINDS) + tuple(FAULT_KINDS)
    jobs += [(1000 + i, cfg.test_seconds, all_kinds, cfg.seed) for i in range(cfg.test_patients)]
    data = pmap(_sim_job, jobs, cfg.processes)
    return data[: cfg.hubs], data[cfg.hubs :]


def modality_columns(modality: str) -> np.ndarray:
    """Feature indices of one modality."""
    return np.asarray(
        [i for i, n in enumerate(features.FEATURE_NAMES) if features.MODALITY_OF[n] == modality]
    )


def population_calibration(hubs: Sequence[PatientData]) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust spread (1.4826 MAD, SD where MAD is 0) of the hubs' normal windows.

    Computed once and shared by every variant (fair comparison); in a
    deployment it ships inside the baseline model (``models/build.py`` does
    the same over its training patients).
    """
    import warnings

    rows = np.concatenate([d.x[d.y == 0] for d in hubs])
    med, mad, _ = robust_stats(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        sd = np.nanstd(rows, axis=0)
    mu = np.where(np.isfinite(med), med, 0.0)
    sigma = np.where(mad > 1e-6, mad, np.where(sd > 1e-6, sd, 1.0))
    return mu.astype(np.float32), sigma.astype(np.float32)


def make_meta(cfg: PilotConfig, pop_mu: np.ndarray, pop_sigma: np.ndarray) -> ModelMeta:
    """The model description every variant shares."""
    return ModelMeta(
        feature_names=tuple(features.FEATURE_NAMES),
        classes=_classes(),
        pop_mu=pop_mu.tolist(),
        pop_sigma=pop_sigma.tolist(),
        hidden=cfg.hidden,
        latent=cfg.latent,
        thresholds={"clinical": cfg.threshold, "fault": 0.5, "novelty": 6.0},
        info={"built_by": "edgelab.pilot", "seed": cfg.seed},
    )
