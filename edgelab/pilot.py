"""The pilot: local vs centralised vs federated learning, attacks, latency, modalities, privacy.

``edgeagent pilot`` and ``bench/pilot.py`` call :func:`run_pilot`, which
produces every figure of the results table from its own runs (nothing is
copied from the seed paper; ``PAPER`` holds the paper's numbers only to print
them beside ours). How each part runs, so the table can be read honestly:

* **Data.** Simulated non-IID patients (``firmware_sim.physiology``): one
  patient per hub, each hub's patient having only ``kinds_per_hub`` of the
  eight clinical event kinds (plus sensor faults), driven through the agent's
  own ``Windower`` and ``features.extract``. Held-out test patients (never a
  hub) have every kind. Labels come from the simulator: the pilot assumes
  hubs hold labelled windows (clinician-confirmed events), which the field
  learner does not (it trains only the normal model, see
  ``pipeline/learn.py``).
* **Training.** One model (``model.graph``/``model.nn``: classifier head +
  autoencoder, same shapes everywhere), trained from the same initial
  weights with ``model.train.fit``. *Same budget*: centralised and local-only
  training run ``rounds * local_epochs`` epochs; a federated run is
  ``rounds`` rounds of ``local_epochs`` epochs per hub.
* **Federation in-process.** Rounds run in this process with the real pure
  protocol code: n_k-weighted FedAvg (``fl.aggregate.weighted_fedavg``), the
  plaintext robust rules (``fl.robust``), and grouped secure aggregation where
  every group's sum is a real in-memory SecAgg+ round
  (``fl.secagg.simulate_round``: signed envelopes, masking, unmasking) and the
  median runs over group means. No broker in the accuracy experiments.
  Every federated run but the DP one ends with a head-calibration round
  (CCVR, ``model.head_calibration``) in which malicious hubs lie too.
* **Cohorts.** The headline rows are also trained on ``cohorts - 1`` other
  simulated cohorts (data seeds ``seed + 100 k``); the accuracy targets use
  the mean over cohorts and training seeds.
* **Evaluation.** Each model is exported to ONNX and scored by onnxruntime on
  the test patients' windows after a calibration period (the first
  ``calibration_frac`` of each patient's windows, unlabelled, which the
  personalised variant uses for its per-patient calibration,
  ``pipeline.personal.calibrate``, moved as far as the hubs' own recordings
  show a calibration period's baseline persists, and for the detector's
  personal threshold). A window is predicted clinical when the
  clinical probability reaches the (personal) threshold and the sensor-fault
  probability does not (as the detector decides, without its hysteresis);
  positive / negative / excluded windows and the metrics are
  ``edgeagent.evaluate``'s definitions.
* **Latency.** Real mosquitto (``edgelab.broker``, shipped TLS config and
  ACL plus a ``cloud`` identity for the centralised path), real ``MqttLink``
  clients, a TCP proxy adding the configured one-way delay to each direction
  of the hub's connection. Edge path: hub featurises and scores the window,
  publishes the alert (delayed hop), the cloud receives it. Centralised path:
  the hub ships the raw window (delayed hop), the cloud featurises and
  scores it and publishes the alert back (delayed hop).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import queue
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from edgeagent.evaluate import POS_OVERLAP_S, _clean, auroc, binary_metrics, window_labels
from edgeagent.federation.accountant import DpAccountant
from edgeagent.fl import robust
from edgeagent.fl.aggregate import (
    ClientUpdate,
    apply_update,
    sum_payloads,
    weighted_fedavg,
)
from edgeagent.fl.constants import DEFENCE_RULES
from edgeagent.fl.privacy import (
    add_gaussian_noise,
    fedavg_payload,
    gaussian_std,
    payload_bound,
)
from edgeagent.model.meta import FAULT, NORMAL, ModelMeta, init_params
from edgeagent.model.nn import Adam, standardise
from edgeagent.pipeline import features
from edgeagent.pipeline.personal import (
    BUFFER_WINDOWS,
    calibrate,
    persistence_sums,
    persistence_weights,
    personal_threshold,
    robust_stats,
    trait_mask,
)
from edgelab import bandwidth as bw
from edgelab.attacks import (
    ATTACKS,
    AttackConfig,
    attack_update,
    choose_malicious,
    poison_labels,
)
from edgelab.head_calibration import (
    PRIORS,
    ClassMoments,
    calibrate_head,
    class_moments,
    robust_moments,
)
from edgelab.train import fit

#: The seed paper's pilot figures, printed beside ours for comparison only (never used as results).
PAPER: dict[str, Any] = {
    "accuracy_federated": 0.92,
    "accuracy_centralised": 0.89,
    "latency_ms_federated": 220.0,
    "latency_ms_centralised": 350.0,
    "accuracy_under_attack_federated": 0.85,
    "accuracy_under_attack_centralised": 0.62,
    "modality_contribution_pct": {"ecg": 40.0, "acc": 30.0, "temp": 20.0, "env": 10.0},
}

#: FedAvg, every defence of ``fl.robust`` over single updates, grouped SecAgg.
MODES: tuple[str, ...] = ("fedavg", *DEFENCE_RULES, "secure_grouped_median")
MODALITIES: tuple[str, ...] = ("ecg", "acc", "temp", "env")
# The headline rows rerun with other training seeds (``PilotConfig.seeds``): the
# federated row moves by several points between seeds, so targets use the mean.
SEED_ROWS: dict[str, dict[str, Any]] = {
    "centralised": {"kind": "central"},
    # control: the centralised model's head re-fitted as the federated runs' is (same
    # prior, its own pooled moments), so the federated rows' gain from that step is not
    # mistaken for federation's
    "centralised_refit": {"kind": "central", "refit": True},
    "federated": {"kind": "fed"},
    "federated_personalised": {"kind": "fed", "personal": True},
}
# Cohort k's patients come from data seed ``seed + COHORT_STRIDE * k``; its training seeds
# are that plus 0..seeds-1, so cohorts never share a seed while seeds < COHORT_STRIDE.
COHORT_STRIDE = 100
_SLOW = ("fever", "hypothermia")
FLEET = "pilot"


@dataclass
class PilotConfig:
    """Every knob of a pilot run; recorded in the results so a run can be repeated."""

    hubs: int = 20
    rounds: int = 20
    local_epochs: int = 5
    hub_seconds: float = 900.0
    test_patients: int = 12
    test_seconds: float = 1200.0
    kinds_per_hub: int = 4
    calibration_frac: float = 0.3
    seed: int = 0
    lr: float = 3e-3
    server_lr: float = 1.0  # FedAvg server step on the mean update (1 = plain FedAvg)
    server_momentum: float = 0.5  # FedAvgM (Hsu et al. 2019); 0 = plain FedAvg
    restrict_classes: bool = True  # local softmax over the classes a trainer holds (FedRS)
    keep_local_optimizer: bool = True  # a hub's Adam moments carry over between rounds
    head_calibration: bool = True  # federated runs end with a CCVR round (not under DP)
    calibration_samples: int = 1000  # virtual features per class for that round (on average)
    calibration_prior: str = "counts"  # classes' shares of them: fleet row counts or "balanced"
    personal_traits_only: bool = True  # personal calibration of trait features only
    personal_spread: bool = False  # personal spread too (False: personal location only)
    # personal location moved only the share the fleet finds persists (persistence_weights)
    personal_persistence: bool = True
    personal_threshold: bool = True  # the detector's personal clinical threshold
    batch: int = 64
    hidden: int = 32
    latent: int = 12
    threshold: float = 0.5
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3)
    attacks: tuple[str, ...] = ATTACKS
    modes: tuple[str, ...] = MODES
    assumed_malicious: float = 0.3  # what robust rules are configured to tolerate
    group_size: int = 2  # secure grouped aggregation: boxes per securely summed group
    secure_clip: float = 0.0  # 0 = median honest update norm of round 1 (stated in results)
    n_cap: int = 1000
    sign_flip_scale: float = 1.0
    scaling_boost: float = 10.0
    free_ride_inflate: float = 10.0
    dp_noise_multiplier: float = 0.3
    dp_delta: float = 1e-5
    permutation_repeats: int = 3
    latency_windows: int = 200
    latency_spacing_s: float = 0.05
    latency_delays_ms: tuple[float, ...] = (0.0, 50.0)
    processes: int = 2
    seeds: int = 3  # training seeds for the headline rows; the data stay those of ``seed``
    cohorts: int = 3  # simulated cohorts (other patients) for the headline rows; targets: mean

    def validate(self) -> None:
        """Raise ``ValueError`` naming the setting and the fix."""
        if self.hubs < 4:
            raise ValueError("hubs must be >= 4 (robust rules need a majority of honest hubs)")
        if self.rounds < 1 or self.local_epochs < 1:
            raise ValueError("rounds and local_epochs must be >= 1")
        if not 0 <= self.server_momentum < 1:
            raise ValueError("server_momentum must be in [0, 1)")
        if self.test_patients < 1:
            raise ValueError("test_patients must be >= 1")
        if self.hub_seconds < 300 or self.test_seconds < 300:
            raise ValueError("hub_seconds and test_seconds must be >= 300 (room for episodes)")
        if not 1 <= self.kinds_per_hub <= 8:
            raise ValueError("kinds_per_hub must be in 1..8")
        if not 0 < self.calibration_frac < 0.9:
            raise ValueError("calibration_frac must be in (0, 0.9)")
        for f in self.fractions:
            if not 0 < f < 0.5:
                raise ValueError(f"fraction {f} must be in (0, 0.5)")
        for a in self.attacks:
            AttackConfig(a)
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
        if not 2 <= self.group_size <= self.hubs // 2:
            raise ValueError("group_size must be in 2..hubs//2 (at least two groups)")
        if self.latency_windows < 10 or self.latency_spacing_s <= 0:
            raise ValueError("latency_windows must be >= 10 and latency_spacing_s > 0")
        if any(d < 0 for d in self.latency_delays_ms):
            raise ValueError("latency_delays_ms must be >= 0")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if not 1 <= self.seeds < COHORT_STRIDE:
            raise ValueError(
                f"seeds must be in 1..{COHORT_STRIDE - 1} (training seeds for the headline rows)"
            )
        if self.calibration_samples < 10:
            raise ValueError("calibration_samples must be >= 10 (virtual features per class)")
        if self.calibration_prior not in PRIORS:
            raise ValueError(
                f"calibration_prior must be one of {', '.join(PRIORS)} (classes' shares of the "
                "virtual features)"
            )
        if self.cohorts < 1:
            raise ValueError("cohorts must be >= 1 (simulated cohorts for the headline rows)")

    @classmethod
    def small(cls, **over: Any) -> PilotConfig:
        """The CI pilot: every table row, tiny data (well under a minute and a half)."""
        base: dict[str, Any] = dict(
            hubs=6,
            rounds=4,
            local_epochs=2,
            hub_seconds=600.0,
            test_patients=2,
            test_seconds=600.0,
            kinds_per_hub=4,
            fractions=(0.1, 0.2, 0.3),
            permutation_repeats=1,
            latency_windows=30,
            latency_spacing_s=0.03,
            latency_delays_ms=(50.0,),
            seeds=2,
            cohorts=2,
            calibration_samples=200,
        )
        base.update(over)
        return cls(**base)


# ----------------------------------------------------------------------------- data
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
    data = _pmap(_sim_job, jobs, cfg.processes)
    return data[: cfg.hubs], data[cfg.hubs :]


# ----------------------------------------------------------------------------- model
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


@dataclass
class TrainSet:
    """One hub's standardised training arrays."""

    z: np.ndarray
    zp: np.ndarray
    m: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """How a box personalises: its personal scale from the calibration period, its threshold.

    The same rule serves the hubs' training data and the test patients, so
    the head is trained on the scale it is evaluated with. ``frac`` is the
    leading share of a recording that calibrates (its normal windows only);
    ``traits_only``, ``spread`` and ``weights`` are
    ``pipeline.personal.calibrate``'s ``mask=trait_mask(...)``, ``spread``
    and ``weights`` (the fleet's ``persistence_weights``; ``None``: full
    weight). ``threshold``: the evaluation raises the clinical threshold to
    ``personal_threshold`` of the calibration period's scores, as the
    detector does.
    """

    frac: float = 0.3
    traits_only: bool = True
    spread: bool = False
    weights: tuple[float, ...] | None = None
    threshold: bool = False

    @classmethod
    def of(cls, cfg: PilotConfig, weights: Sequence[float] | None = None) -> Calibration:
        """The rule a pilot configuration selects (``weights``: the cohort's, if it uses them)."""
        use = cfg.personal_persistence and weights is not None
        return cls(
            cfg.calibration_frac,
            cfg.personal_traits_only,
            cfg.personal_spread,
            tuple(float(v) for v in weights) if use else None,
            cfg.personal_threshold,
        )

    def cut(self, n: int) -> int:
        """How many of a recording's ``n`` leading windows form its calibration period."""
        return max(1, round(self.frac * n))

    def period(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The calibration period's normal rows (all its rows if none is normal)."""
        k = self.cut(len(x))
        cal = x[:k][y[:k] == 0]
        return cal if len(cal) else x[:k]

    def later(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The normal rows after the calibration period (what its baseline should predict)."""
        k = self.cut(len(x))
        return x[k:][y[k:] == 0]

    def __call__(
        self, x_cal: np.ndarray, pop_mu: np.ndarray, pop_sigma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        mask = trait_mask(features.FEATURE_NAMES) if self.traits_only else None
        w = None if self.weights is None else np.asarray(self.weights, np.float32)
        return calibrate(x_cal, pop_mu, pop_sigma, mask=mask, spread=self.spread, weights=w)


def fleet_persistence(
    hubs: Sequence[PatientData], frac: float, pop_mu: np.ndarray, pop_sigma: np.ndarray
) -> np.ndarray:
    """The training hubs' ``persistence_weights``: each hub adds its pair of sums.

    A hub holds its whole recording, so it can tell how well its own
    calibration period predicted its later baseline; only the sums over hubs
    are needed (a secure-aggregation round could carry them), and the test
    patients, who have only their calibration period, use the result.
    """
    rule = Calibration(frac)
    cr = np.zeros(len(pop_mu))
    cc = np.zeros(len(pop_mu))
    for d in hubs:
        a, b = persistence_sums(rule.period(d.x, d.y), rule.later(d.x, d.y), pop_mu, pop_sigma)
        cr += a
        cc += b
    return persistence_weights(cr, cc)


def train_arrays(
    d: PatientData,
    pop_mu: np.ndarray,
    pop_sigma: np.ndarray,
    personal: bool,
    drop: str | None = None,
    y: np.ndarray | None = None,
    rule: Calibration | None = None,
) -> TrainSet:
    """Standardise a hub's windows as its box would (personal calibration or population).

    Personal: ``rule`` (default ``Calibration()``) over the hub's own
    calibration period, exactly as the test patients are calibrated.
    """
    y = d.y if y is None else y
    x = d.x.copy()
    if drop is not None:
        x[:, modality_columns(drop)] = np.nan
    keep = y >= 0
    if personal:
        rule = rule or Calibration()
        mu, sigma = rule(rule.period(x, d.y), pop_mu, pop_sigma)
    else:
        mu, sigma = pop_mu, pop_sigma
    z, m = standardise(x[keep], mu[None], sigma[None])
    zp, _ = standardise(x[keep], pop_mu[None], pop_sigma[None])
    return TrainSet(z, zp, m, y[keep])


def concat(sets: Sequence[TrainSet]) -> TrainSet:
    """Pool several hubs' arrays (the centralised data set)."""
    return TrainSet(
        np.concatenate([s.z for s in sets]),
        np.concatenate([s.zp for s in sets]),
        np.concatenate([s.m for s in sets]),
        np.concatenate([s.y for s in sets]),
    )


def local_fit(
    cfg: PilotConfig,
    meta: ModelMeta,
    ts: TrainSet,
    w: np.ndarray,
    epochs: int,
    seed: int,
    opt: Adam | None = None,
) -> np.ndarray:
    """``epochs`` of ``model.train.fit`` from ``w`` (modality dropout as in the baseline).

    With ``cfg.restrict_classes`` the head's softmax covers only the classes
    in ``ts.y`` (no effect on pooled data, which holds every class). ``opt``
    is the hub's optimiser state from its previous round (updated in place).
    """
    groups = [modality_columns(mod) for mod in MODALITIES]
    out, _ = fit(
        meta.spec,
        ts.z,
        ts.m,
        ts.y,
        epochs=epochs,
        batch=cfg.batch,
        lr=cfg.lr,
        seed=seed,
        flat=w,
        groups=groups,
        zp=ts.zp,
        restrict_classes=cfg.restrict_classes,
        opt=opt,
    )
    return out


# ----------------------------------------------------------------------------- federation
@dataclass
class FedResult:
    """Final global weights and per-round notes of one federated run."""

    w: np.ndarray
    rounds: list[dict[str, Any]] = field(default_factory=list)
    clip: float | None = None
    epsilon: float | None = None


@dataclass
class Reputation:
    """The ``reputation`` rule's memory across rounds: each hub's score, and whom it kept last."""

    scores: dict[str, float] = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)


def aggregate(
    mode: str,
    nodes: Sequence[str],
    deltas: Sequence[np.ndarray],
    counts: Sequence[int],
    *,
    assumed_malicious: float,
    group_size: int = 2,
    clip: float = 1.0,
    n_cap: int = 2000,
    nonce: bytes = b"\0" * 16,
    round_id: int = 0,
    reputation: Reputation | None = None,
) -> np.ndarray:
    """One round's mean update under the deployment's aggregation ``mode`` (pure except SecAgg).

    ``fedavg`` is n_k-weighted; order-statistic rules ignore n_k (a box must
    not buy influence by claiming samples); ``norm_bound`` clips to the
    round's median update norm; ``secure_grouped_median`` sums groups of
    ``group_size`` boxes with real in-memory SecAgg+ rounds (payloads clipped
    to ``clip`` with n_k capped at ``n_cap``) and takes the median of group means.
    ``reputation`` is the stateful rule's memory: the hubs' scores from earlier
    rounds, which this call updates in place with the hubs the rule kept (the
    aggregator service keeps the scores in its state file).
    """
    n = len(nodes)
    f = max(0, min(math.ceil(assumed_malicious * n), (n - 3) // 2))
    if mode == "fedavg":
        ups = [ClientUpdate(a, d, int(c)) for a, d, c in zip(nodes, deltas, counts, strict=True)]
        return weighted_fedavg(ups)
    x = np.stack([np.asarray(d, np.float64) for d in deltas])
    if mode == "median":
        return robust.robust_aggregate(x, "median")
    if mode == "trimmed_mean":
        return robust.robust_aggregate(x, "trimmed_mean", beta=min(0.49, assumed_malicious))
    if mode == "multi_krum":
        return robust.robust_aggregate(x, "multi_krum", f=f)
    if mode == "norm_bound":
        bound = float(np.median(np.linalg.norm(x, axis=1)))
        return robust.robust_aggregate(
            x, "norm_bound", weights=[float(c) for c in counts], max_norm=max(bound, 1e-12)
        )
    if mode == "cosine_cluster":
        return robust.robust_aggregate(x, "cosine_cluster")
    if mode == "reputation":
        memory = Reputation() if reputation is None else reputation
        mean, kept, scores = robust.reputation_by_box(x, nodes, memory.scores)
        memory.scores.update(scores)
        memory.kept = set(kept)
        return mean
    if mode == "secure_grouped_median":
        from edgeagent.fl.secagg import RoundConfig
        from edgeagent.fl.secagg.simulate import simulate_round

        by = dict(zip(nodes, zip(deltas, counts, strict=True), strict=True))
        totals = []
        for gi, group in enumerate(robust.partition_groups(list(nodes), group_size, nonce)):
            rc = RoundConfig(
                round_id=round_id * 1000 + gi,
                nonce=(nonce[:12] + gi.to_bytes(4, "little")),
                participants=group,
                dim=x.shape[1] + 1,
                bound=payload_bound(clip, n_cap),
                clip=clip,
                n_cap=n_cap,
            )
            pay = {b: fedavg_payload(by[b][0], max(1, int(by[b][1])), clip, n_cap) for b in group}
            rep = simulate_round(rc, pay)
            if rep.result is None:
                continue
            totals.append(rep.result.total)
        return robust.grouped_aggregate(totals, "median")
    raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {', '.join(MODES)}")


def run_federation(
    cfg: PilotConfig,
    meta: ModelMeta,
    hubs: Sequence[PatientData],
    *,
    mode: str = "fedavg",
    personal: bool = False,
    attack: AttackConfig | None = None,
    drop: str | None = None,
    dp: bool = False,
    rule: Calibration | None = None,
) -> FedResult:
    """``cfg.rounds`` federated rounds from the shared initial weights; returns the global model.

    ``rule``: the hubs' personal calibration when ``personal`` (default ``Calibration.of(cfg)``).
    """
    pop_mu = np.asarray(meta.pop_mu, np.float32)
    pop_sigma = np.asarray(meta.pop_sigma, np.float32)
    rule = rule or Calibration.of(cfg)
    nodes = [d.id for d in hubs]
    bad = set(choose_malicious(nodes, attack.fraction, cfg.seed)) if attack else set()
    clinical = list(range(1, len(meta.classes) - 1))
    sets: dict[str, TrainSet] = {}
    for d in hubs:
        y = (
            poison_labels(d.y, clinical)
            if (d.id in bad and attack and attack.poisons_data)
            else None
        )
        sets[d.id] = train_arrays(d, pop_mu, pop_sigma, personal, drop, y, rule)
    w = init_params(meta.spec, cfg.seed)
    velocity = np.zeros_like(w)
    # A box keeps its optimiser between rounds, as it keeps its data: restarting Adam every
    # round makes its first steps sign-sized on every coordinate (bias correction), which
    # made the federated row swing by 8 points between training seeds.
    opts = {n: Adam(w.size, lr=cfg.lr) for n in nodes} if cfg.keep_local_optimizer else {}
    res = FedResult(w)
    clip = cfg.secure_clip or None
    acct = DpAccountant(cfg.dp_delta) if dp else None
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xD9]))
    reputation = Reputation()
    for r in range(cfg.rounds):
        deltas: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for i, node in enumerate(nodes):
            ts = sets[node]
            counts[node] = len(ts.y)
            if node in bad and attack is not None and attack.kind == "free_riding":
                deltas[node] = np.zeros_like(w)
                continue
            seed = cfg.seed * 7919 + r * 1009 + i
            deltas[node] = local_fit(cfg, meta, ts, w, cfg.local_epochs, seed, opts.get(node)) - w
        honest = [deltas[n] for n in nodes if n not in bad]
        if clip is None:
            clip = float(np.median([np.linalg.norm(d) for d in honest])) or 1.0
            res.clip = clip
        if attack is not None and bad:
            benign = np.stack(honest)
            for node in sorted(bad):
                deltas[node], counts[node] = attack_update(
                    attack, deltas[node], counts[node], benign, len(nodes), len(bad)
                )
        dl = [deltas[n] for n in nodes]
        cl = [counts[n] for n in nodes]
        if dp:
            assert acct is not None
            ups = [ClientUpdate(a, d, c) for a, d, c in zip(nodes, dl, cl, strict=True)]
            total = sum_payloads(ups, clip=clip, n_cap=cfg.n_cap)
            std = gaussian_std(cfg.dp_noise_multiplier, clip, cfg.n_cap)
            noisy = add_gaussian_noise(total, std, rng)
            # Fixed denominator (McMahan et al. 2018): the noisy count can be <= 0 with few
            # hubs, and dividing by the true count would leak it.
            mean = noisy[:-1] / float(cfg.n_cap * len(nodes))
            acct.step(cfg.dp_noise_multiplier, 1.0)
        else:
            nonce = np.random.default_rng([cfg.seed, r]).bytes(16)
            mean = aggregate(
                mode,
                nodes,
                dl,
                cl,
                assumed_malicious=cfg.assumed_malicious,
                group_size=cfg.group_size,
                clip=clip,
                n_cap=cfg.n_cap,
                nonce=nonce,
                round_id=r,
                reputation=reputation,
            )
        # FedAvgM: the server keeps a momentum of the aggregated update (post-processing of
        # the aggregate, so the robust rules and DP see exactly the same updates).
        velocity = cfg.server_momentum * velocity + np.asarray(mean, np.float32)
        w = apply_update(w, velocity, cfg.server_lr)
        res.rounds.append({"round": r, "update_norm": float(np.linalg.norm(mean))})
    if cfg.head_calibration and not dp:
        nonce = np.random.default_rng([cfg.seed, cfg.rounds]).bytes(16)  # one more round
        # the reputation rule's verdict carries over: hubs it dropped add no moments
        trusted = reputation.kept if mode == "reputation" else None
        w = _calibration_round(cfg, meta, w, sets, mode, attack, bad, nonce, trusted)
    res.w = w
    res.clip = clip
    if acct is not None:
        res.epsilon = acct.epsilon()
    return res


def _calibration_round(
    cfg: PilotConfig,
    meta: ModelMeta,
    w: np.ndarray,
    sets: dict[str, TrainSet],
    mode: str,
    attack: AttackConfig | None,
    bad: set[str],
    nonce: bytes,
    trusted: set[str] | None = None,
) -> np.ndarray:
    """One more round after training: the head re-fitted on the hubs' class moments (CCVR).

    Malicious hubs lie here too: their moments carry the label-poisoning flip,
    scaling boosts them like its update, free riders send no features with
    inflated counts. Plain FedAvg sums the moments; the robust modes combine
    them with ``robust_moments`` (per hub, or per SecAgg group for the grouped
    mode, whose server sees only group sums). ``trusted``: the hubs a rule that
    judges single boxes (``reputation``) still keeps after the last round;
    only they take part (all hubs if it is ``None`` or empty), with their
    counts capped but no class mean dropped.
    """
    clinical = list(range(1, len(meta.classes) - 1))
    per_hub: dict[str, ClassMoments] = {}
    for node, ts in sets.items():
        if trusted and node not in trusted:
            continue
        if attack is None or node not in bad:
            per_hub[node] = class_moments(meta.spec, w, ts.z, ts.m, ts.y, ts.zp)
            continue
        # (data-poisoning attackers' labels are flipped in their training set already)
        y = ts.y if attack.poisons_data else poison_labels(ts.y, clinical)
        mom = class_moments(meta.spec, w, ts.z, ts.m, y, ts.zp)
        if attack.kind == "free_riding":
            mom = mom.scaled(counts=attack.inflate, sums=0.0)
        elif attack.kind == "scaling":
            mom = mom.scaled(counts=attack.boost, sums=attack.boost)
        per_hub[node] = mom
    if mode == "fedavg":
        moments = sum(per_hub.values(), ClassMoments.zeros(meta.spec))
    else:
        parts = list(per_hub.values())
        if mode == "secure_grouped_median":
            groups = robust.partition_groups(list(per_hub), cfg.group_size, nonce)
            parts = [sum((per_hub[b] for b in g), ClassMoments.zeros(meta.spec)) for g in groups]
        # Trusted hubs have been judged one by one over the rounds; the per-class outlier
        # test on top dropped atypical honest patients' means and cost the reputation mode
        # ~3 points of clean accuracy (docs/pilot.md), so they only get the count cap.
        moments = robust_moments(parts, k_mad=None if trusted else 3.0)
    return refit_head(cfg, meta, w, moments)


def refit_head(
    cfg: PilotConfig, meta: ModelMeta, w: np.ndarray, moments: ClassMoments
) -> np.ndarray:
    """``calibrate_head`` as the pilot configures it (federated runs, centralised control)."""
    return calibrate_head(
        meta.spec,
        w,
        moments,
        per_class=cfg.calibration_samples,
        seed=cfg.seed,
        prior=cfg.calibration_prior,
    )


# ----------------------------------------------------------------------------- evaluation
def model_bytes(meta: ModelMeta, w: np.ndarray) -> bytes:
    """ONNX bytes of ``w`` (the artefact a box would run)."""
    from edgeagent.model.graph import build_model, to_bytes

    return to_bytes(build_model(meta, np.asarray(w, np.float32)))


@dataclass
class HeldOutSet:
    """A test patient split into its unlabelled calibration part and its evaluation part."""

    id: str
    x_cal: np.ndarray
    x: np.ndarray
    spans: np.ndarray
    labels: list[tuple[float, float, str]]
    wy: np.ndarray  # 1 positive, 0 negative, -1 excluded (edgeagent.evaluate)


def split_test(d: PatientData, frac: float) -> HeldOutSet:
    """The first ``frac`` of the windows calibrate; the rest are evaluated.

    Calibration keeps the calibration period's normal windows only, as the
    hubs' training calibration does (``Calibration.period``; on a box, the
    detector's "normal and good quality" judgement selects them).
    """
    rule = Calibration(frac)
    k = rule.cut(len(d.x))
    spans = d.spans[k:]
    wy, _ = window_labels([tuple(s) for s in spans], d.labels)
    cal = rule.period(d.x, d.y)
    return HeldOutSet(d.id, cal, d.x[k:], spans, d.labels, wy)


def _probabilities(sess: Any, x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Class probabilities of rows ``x`` under the personal scale ``mu``, ``sigma``."""
    feeds = {
        "x": np.ascontiguousarray(x, np.float32),
        "mu": mu.reshape(1, -1).astype(np.float32),
        "sigma": sigma.reshape(1, -1).astype(np.float32),
    }
    return np.asarray(sess.run(None, feeds)[0])


def evaluate_model(
    meta: ModelMeta,
    w: np.ndarray,
    tests: Sequence[HeldOutSet],
    personal: bool,
    *,
    drop: str | None = None,
    permute: str | None = None,
    rng: np.random.Generator | None = None,
    rule: Calibration | None = None,
) -> dict[str, Any]:
    """Accuracy, F1, precision, recall, AUROC over the test patients (onnxruntime, batched).

    With ``personal`` the result also lists each test patient's clinical
    threshold (``thresholds``; the global one unless ``rule.threshold``).
    """
    from edgeagent.pipeline.detect import make_session

    sess = make_session(model_bytes(meta, w))
    pop_mu = np.asarray(meta.pop_mu, np.float32)
    pop_sigma = np.asarray(meta.pop_sigma, np.float32)
    fault_idx = meta.classes.index(FAULT)
    clinical = [i for i, c in enumerate(meta.classes) if c not in (NORMAL, FAULT)]
    ys, preds, scores, thresholds = [], [], [], []
    rule = rule or Calibration()
    for t in tests:
        x, x_cal = t.x.copy(), t.x_cal.copy()
        if drop is not None:
            cols = modality_columns(drop)
            x[:, cols] = np.nan
            x_cal[:, cols] = np.nan
        if permute is not None:
            cols = modality_columns(permute)
            order = (rng or np.random.default_rng(0)).permutation(len(x))
            x[:, cols] = x[order][:, cols]
        if personal:
            mu, sigma = rule(x_cal, pop_mu, pop_sigma)
        else:
            mu, sigma = pop_mu, pop_sigma
        threshold = meta.thresholds["clinical"]
        if personal and rule.threshold:
            # the detector's rule over the calibration period's normal windows (its buffer)
            cal_probs = _probabilities(sess, x_cal[-BUFFER_WINDOWS:], mu, sigma)
            threshold = personal_threshold(cal_probs[:, clinical].sum(axis=1), threshold)
        probs = _probabilities(sess, x, mu, sigma)
        score = probs[:, clinical].sum(axis=1)
        pred = (score >= threshold) & (probs[:, fault_idx] < meta.thresholds["fault"])
        thresholds.append(threshold)
        keep = t.wy >= 0
        ys.append(t.wy[keep] == 1)
        preds.append(pred[keep])
        scores.append(score[keep])
    y = np.concatenate(ys)
    out: dict[str, Any] = binary_metrics(y, np.concatenate(preds))
    out["auroc"] = auroc(y, np.concatenate(scores))
    out["balanced_accuracy"] = 0.5 * (
        out["tp"] / max(1, out["tp"] + out["fn"]) + out["tn"] / max(1, out["tn"] + out["fp"])
    )
    if personal:
        out["thresholds"] = [float(v) for v in thresholds]
    return out


def _short(m: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "accuracy",
        "balanced_accuracy",
        "f1",
        "precision",
        "recall",
        "auroc",
        "tp",
        "fp",
        "fn",
        "tn",
        "thresholds",
    )
    return {k: m[k] for k in keys if k in m}


# ----------------------------------------------------------------------------- task runner
_STATE: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _STATE.clear()
    _STATE.update(state)


def _pmap(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    processes: int,
    state: dict[str, Any] | None = None,
) -> list[Any]:
    if processes <= 1 or len(jobs) <= 1:
        _init_worker(state or {})
        return [fn(j) for j in jobs]
    ctx = get_context("fork")
    # One BLAS thread in the parent while it forks, and so in every worker: a forked
    # child inherits OpenBLAS's thread pool in whatever state the parent left it, and
    # the first large product in a worker (the head calibration's) then hung forever.
    # The workers are the parallelism; BLAS threads on top only oversubscribe the cores.
    with (
        threadpool_limits(limits=1),
        ctx.Pool(processes, initializer=_init_worker, initargs=(state or {},)) as pool,
    ):
        return pool.map(fn, jobs, chunksize=1)


def _task(job: dict[str, Any]) -> dict[str, Any]:
    """One training + evaluation, run in a worker (all inputs come from ``_STATE``)."""
    t0 = time.perf_counter()
    cfg: PilotConfig = _STATE["cfg"]
    if "train_seed" in job:  # same patients, other initial weights and batch order
        cfg = dataclasses.replace(cfg, seed=job["train_seed"])
    meta: ModelMeta = _STATE["meta"]
    hubs: list[PatientData] = _STATE["hubs"]
    tests: list[HeldOutSet] = _STATE["tests"]
    pop_mu = np.asarray(meta.pop_mu, np.float32)
    pop_sigma = np.asarray(meta.pop_sigma, np.float32)
    kind = job["kind"]
    personal = bool(job.get("personal", False))
    drop = job.get("drop")
    budget = cfg.rounds * cfg.local_epochs
    extra: dict[str, Any] = {}
    w0 = init_params(meta.spec, cfg.seed)
    ids = [d.id for d in hubs]
    rule = Calibration.of(cfg, _STATE.get("persistence"))

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
    metrics = _short(evaluate_model(meta, w, tests, personal, drop=drop, rule=rule))
    out = {"job": job, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 3), **extra}
    if job.get("keep_weights"):
        out["w"] = w
    return out


# ----------------------------------------------------------------------------- latency
class DelayProxy:
    """A TCP relay adding a fixed one-way delay to each direction (a slow network hop).

    Every chunk read is forwarded ``delay_s`` after it arrived, in order, with
    no bandwidth limit: the link behaves like a WAN path with constant latency.
    Binds 127.0.0.1 only; ``close()`` ends every thread it started.
    """

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target = target
        self.delay_s = float(delay_s)
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(8)
        self._srv.settimeout(0.2)
        self.port = int(self._srv.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._spawn(self._accept)

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name="pilot-delay-proxy")
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
            except OSError:
                client.close()  # the target is down: the client sees a reset, as on a WAN
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.2)
                self._socks.append(s)
            for a, b in ((client, upstream), (upstream, client)):
                q: queue.Queue[tuple[float, bytes]] = queue.Queue()
                self._spawn(self._read, a, q)
                self._spawn(self._write, b, q)

    def _read(self, src: socket.socket, q: queue.Queue[tuple[float, bytes]]) -> None:
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            q.put((time.perf_counter() + self.delay_s, data))
        q.put((0.0, b""))

    def _write(self, dst: socket.socket, q: queue.Queue[tuple[float, bytes]]) -> None:
        while not self._stop.is_set():
            try:
                due, data = q.get(timeout=0.2)
            except queue.Empty:
                continue
            if not data:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._stop.set()
        for s in [self._srv, *self._socks]:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=2.0)


PILOT_ACL = """
# --- pilot only: a "cloud" detector for the centralised latency path ------
pattern read edgeagent/v1/+/cloud/%u/#
user cloud
topic read edgeagent/v1/+/node/#
topic write edgeagent/v1/+/cloud/#
"""


def _pilot_broker(pki: Any, data_dir: Path) -> Any:
    """The shipped broker config + ACL, with the pilot's cloud identity appended to the ACL."""
    from edgelab.broker import Broker

    class _PilotBroker(Broker):
        def write_config(self) -> Path:
            path = super().write_config()
            acl = self.data_dir / "mosquitto.acl"
            acl.write_text(acl.read_text() + PILOT_ACL)
            return path

    return _PilotBroker(pki, data_dir)


def encode_window(w: Any) -> bytes:
    """Raw window bytes for the centralised path: a JSON header, then float arrays."""
    head: dict[str, Any] = {"patient": w.patient, "start": w.start, "end": w.end, "streams": []}
    body = io.BytesIO()
    for s, (t, v) in w.data.items():
        t64 = np.ascontiguousarray(t, np.float64)
        v32 = np.ascontiguousarray(v, np.float32)
        head["streams"].append([str(s), len(t64), v32.shape[1] if v32.ndim == 2 else 1])
        body.write(t64.tobytes())
        body.write(v32.tobytes())
    head["coverage"] = {str(k): float(c) for k, c in w.coverage.items()}
    hb = json.dumps(head).encode()
    return struct.pack("<I", len(hb)) + hb + body.getvalue()


def decode_window(data: bytes) -> Any:
    """Inverse of ``encode_window``: a ``Window`` the cloud can featurise."""
    from edgeagent.pipeline.windows import Window
    from edgeagent.streams import Stream

    (n,) = struct.unpack_from("<I", data)
    head = json.loads(data[4 : 4 + n])
    off = 4 + n
    arrays: dict[Stream, tuple[np.ndarray, np.ndarray]] = {}
    for name, k, ch in head["streams"]:
        t = np.frombuffer(data, np.float64, k, off)
        off += 8 * k
        v = np.frombuffer(data, np.float32, k * ch, off).reshape(k, ch)
        off += 4 * k * ch
        arrays[Stream(name)] = (t, v)
    cov = {Stream(k): float(c) for k, c in head["coverage"].items()}
    return Window(head["patient"], head["start"], head["end"], arrays, cov, frozenset(arrays), ())


def latency_windows(seed: int, n: int = 40) -> list[Any]:
    """``n`` real windows of a test patient (the wearable's data the paths carry)."""
    from edgeagent.pipeline.windows import Windower
    from edgeagent.streams import SampleBlock, Stream
    from firmware_sim.physiology import Generator, SimConfig, make_patient

    prof = make_patient(2000, seed)
    gen = Generator(prof, SimConfig())
    win = Windower(10.0, 2.0, patient=prof.patient_id)
    out: list[Any] = []
    while len(out) < n:
        ch = gen.advance(2.0)
        for name, (tt, vv) in ch.streams.items():
            if len(tt):
                win.push(SampleBlock(prof.patient_id, Stream(name), tt, vv))
        out.extend(win.pop_ready())
    return out[:n]


def _pcts(v: Sequence[float]) -> dict[str, float | int | None]:
    if not v:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None}
    a = np.asarray(v) * 1000.0
    return {
        "n": len(v),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
    }


def _cloud_side(
    conn: Any,
    host: str,
    port: int,
    files: Any,
    model: bytes,
    alert_topic: str,
    raw_topic: str,
    back_topic: str,
) -> None:
    """The WAN and the cloud, in a process of their own (they are other machines).

    Run in the hub's process, the relay's and the cloud client's threads took
    the GIL from the on-box detector exactly when it ran (the previous
    window's delayed bytes arrive one spacing later), which charged the
    network's emulation to the box. Here: the cloud's MQTT client records
    when edge alerts arrive and runs the cloud detector on raw windows; the
    ``DelayProxy`` the hub connects through lives here too. Commands over
    ``conn``: ``("proxy", delay_s)`` -> port, ``("count", None)`` -> edge alerts
    arrived, ``("take", None)`` -> {window: arrival perf_counter} (and clears),
    ``("stop", None)``. ``perf_counter`` is CLOCK_MONOTONIC, shared by processes.
    """
    from edgeagent.pipeline.alerts import MemoryAlertSink
    from edgeagent.pipeline.detect import Detector, DetectorConfig
    from edgeagent.transport.mqtt import MqttLink

    det = Detector(model, "pilot", MemoryAlertSink(), DetectorConfig())
    arrived: dict[int, float] = {}  # edge alerts; centralised answers arrive at the hub
    link: MqttLink | None = None

    def on_cloud(msg: Any) -> None:
        now = time.perf_counter()
        if msg.topic == alert_topic:
            arrived[int(json.loads(msg.payload)["i"])] = now
        elif msg.topic == raw_topic:
            (n,) = struct.unpack_from("<I", msg.payload)
            i = int(json.loads(msg.payload[4 : 4 + n])["i"])
            w = decode_window(msg.payload)
            x = features.extract(w)
            d = det.process_features(w.patient, w.start, w.end, x)
            assert link is not None
            link.publish(back_topic, json.dumps({"i": i, "score": d.score}).encode())

    proxy: DelayProxy | None = None
    try:
        link = MqttLink("cloud", host, port, files, FLEET, identity="cloud", status=False,
                        on_message=on_cloud, clean_start=True)  # fmt: skip
        link.connect(timeout=10.0)
        link.subscribe(alert_topic).wait(5.0)
        link.subscribe(raw_topic).wait(5.0)
        conn.send(("ready", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "proxy":
                if proxy is not None:
                    proxy.close()
                proxy = DelayProxy((host, port), float(arg))
                conn.send(proxy.port)
            elif cmd == "count":
                conn.send(len(arrived))
            elif cmd == "take":
                conn.send(dict(arrived))
                arrived.clear()
            else:
                break
    except Exception as exc:  # the parent reads this instead of waiting forever
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        if proxy is not None:
            proxy.close()
        if link is not None:
            link.close()


def measure_latency(cfg: PilotConfig, model: bytes, workdir: Path) -> dict[str, Any]:
    """Edge vs centralised alert latency over a real broker, per added one-way delay.

    This process is the hub: it cuts features, runs the detector and publishes
    over its own MQTT link. The WAN relay and the cloud run in another process
    (``_cloud_side``), so only the hub's own work is timed on the hub.
    """
    from edgeagent.ops.pki import Pki
    from edgeagent.pipeline.alerts import MemoryAlertSink
    from edgeagent.pipeline.detect import Detector, DetectorConfig
    from edgeagent.transport import topics
    from edgeagent.transport.mqtt import MqttLink

    pki = Pki.init(workdir / "pki", fleet=FLEET)
    pki.issue("hub-00")
    pki.issue("cloud")
    broker = _pilot_broker(pki, workdir / "broker")
    broker.start()
    windows = latency_windows(cfg.seed)
    box_det = Detector(model, "pilot", MemoryAlertSink(), DetectorConfig())
    alert_topic = topics.alert(FLEET, "hub-00")
    raw_topic = topics.node(FLEET, "hub-00", "raw")
    back_topic = f"{topics.prefix(FLEET)}/cloud/hub-00/alert"
    results: dict[str, Any] = {}
    back: dict[int, float] = {}

    def on_box(msg: Any) -> None:
        if msg.topic == back_topic:
            back[int(json.loads(msg.payload)["i"])] = time.perf_counter()

    # fork, like the training pool: no re-import of the caller's __main__ (spawn would need
    # an ``if __name__ == "__main__"`` guard in every script that runs a pilot)
    ctx = get_context("fork")
    conn, child_conn = ctx.Pipe()
    cloud = ctx.Process(
        target=_cloud_side,
        args=(
            child_conn,
            broker.host,
            broker.port,
            pki.client_files("cloud"),
            model,
            alert_topic,
            raw_topic,
            back_topic,
        ),
        daemon=True,
        name="pilot-cloud",
    )

    def ask(cmd: str, arg: Any = None) -> Any:
        conn.send((cmd, arg))
        if not conn.poll(60.0):
            raise RuntimeError(f"the pilot's cloud process did not answer {cmd!r}")
        got = conn.recv()
        if isinstance(got, tuple) and got and got[0] == "error":
            raise RuntimeError(f"the pilot's cloud process failed: {got[1]}")
        return got

    try:
        cloud.start()
        hello = conn.recv() if conn.poll(120.0) else ("error", "no answer in 120 s")
        if hello != ("ready", None):
            raise RuntimeError(f"the pilot's cloud process did not come up: {hello[1]}")
        for delay_ms in cfg.latency_delays_ms:
            port = ask("proxy", delay_ms / 1000.0)
            box = MqttLink(f"hub-00-{int(delay_ms)}", "127.0.0.1", port,
                           pki.client_files("hub-00"), FLEET, identity="hub-00", status=False,
                           on_message=on_box, clean_start=True)  # fmt: skip
            try:
                box.connect(timeout=15.0)
                box.subscribe(back_topic).wait(10.0)
                local: list[float] = []
                sent: dict[str, dict[int, float]] = {"edge": {}, "central": {}}
                got: dict[str, dict[int, float]] = {}
                for path in ("edge", "central"):
                    ask("take")  # drop what a previous delay left behind
                    back.clear()
                    for i in range(cfg.latency_windows):
                        w = windows[i % len(windows)]
                        t0 = time.perf_counter()
                        sent[path][i] = t0
                        if path == "edge":
                            x = features.extract(w)
                            det = box_det.process_features(w.patient, w.start, w.end, x)
                            local.append(time.perf_counter() - t0)
                            box.publish(
                                alert_topic, json.dumps({"i": i, "score": det.score}).encode()
                            )
                        else:
                            raw = encode_window(w)
                            (n,) = struct.unpack_from("<I", raw)
                            head = json.loads(raw[4 : 4 + n])
                            head["i"] = i
                            hb = json.dumps(head).encode()
                            box.publish(raw_topic, struct.pack("<I", len(hb)) + hb + raw[4 + n :])
                        time.sleep(cfg.latency_spacing_s)
                    deadline = time.monotonic() + 10.0 + 4 * delay_ms / 1000.0
                    while time.monotonic() < deadline:
                        n = ask("count") if path == "edge" else len(back)
                        if n >= cfg.latency_windows:
                            break
                        time.sleep(0.01)
                    got[path] = ask("take") if path == "edge" else dict(back)
                lat = {
                    p: [got[p][i] - sent[p][i] for i in sent[p] if i in got[p]]
                    for p in ("edge", "central")
                }
                results[f"{delay_ms:g}"] = {
                    "added_one_way_delay_ms": delay_ms,
                    "edge_on_box_decision": _pcts(local),
                    "edge": _pcts(lat["edge"]),
                    "central": _pcts(lat["central"]),
                    "lost": {p: cfg.latency_windows - len(lat[p]) for p in lat},
                    "raw_window_bytes": len(encode_window(windows[0])),
                }
            finally:
                box.close()
    finally:
        if cloud.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("stop", None))
            cloud.join(15.0)
            if cloud.is_alive():
                cloud.kill()
        broker.stop()
    return results


# ----------------------------------------------------------------------------- the run
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
        done = _pmap(_task, seed_jobs(ck, first=0), cfg.processes, state)
        out[str(ck.seed)] = seed_spread({d["job"]["row"]: d for d in done}, ck)
        log(f"cohort {ck.seed}: {len(done)} headline runs in {time.perf_counter() - t0:.1f} s")
    return out


def headline_means(spread: dict[str, Any]) -> dict[str, float]:
    """Each headline row's accuracy averaged over one cohort's training seeds (``seed_spread``)."""
    return {row: spread[row]["accuracy_mean"] for row in SEED_ROWS}


def cohort_summary(
    main: dict[str, Any], others: dict[str, dict[str, Any]], seed: int
) -> dict[str, Any]:
    """Per cohort (data seed) the mean accuracy of each headline row, and the mean over cohorts."""
    per = {str(seed): main, **others}
    per_means = [headline_means(c) for c in per.values()]
    means = {row: float(np.mean([m[row] for m in per_means])) for row in SEED_ROWS}
    return {"data_seeds": [int(k) for k in per], "per_cohort": per, "accuracy_mean": means}


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
    done = _pmap(_task, jobs, cfg.processes, state)
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
    best20 = _best_robust(attacks, cfg, 0.2)
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
        more = _pmap(_task, extra_jobs, cfg.processes, state)
        timings["robust_seeds_s"] = time.perf_counter() - t0
        log(f"{len(extra_jobs)} robust-mode reruns over seeds in {timings['robust_seeds_s']:.1f} s")
        done += more
        by.update({d["job"]["row"]: d for d in more})
        best20["over_seeds"] = robust_over_seeds(by, attacks, best20, cfg)

    # Modality contribution.
    fed = by["federated"]
    full = fed["metrics"]
    drops = {m: _drop(full, by[f"drop:{m}"]["metrics"]) for m in MODALITIES}
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
            "auroc": _nan_sub(full["auroc"], float(np.nanmean(aucs))),
        }
    modality = {
        "retrain_drop": drops,
        "permutation_drop": perm,
        "share_pct": {
            "retrain_accuracy": _shares({m: drops[m]["accuracy"] for m in MODALITIES}),
            "retrain_f1": _shares({m: drops[m]["f1"] for m in MODALITIES}),
            "permutation_accuracy": _shares({m: perm[m]["accuracy"] for m in MODALITIES}),
            "permutation_f1": _shares({m: perm[m]["f1"] for m in MODALITIES}),
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


def seed_spread(by: dict[str, Any], cfg: PilotConfig) -> dict[str, Any]:
    """Per headline row: accuracy, F1 and AUROC for each training seed, their mean and sd.

    Seed ``cfg.seed`` is the main table's run; the others (``row@k``) use the
    same patients with other initial weights and batch order.
    """
    out: dict[str, Any] = {}
    for row in SEED_ROWS:
        runs = [by[row]] + [by[f"{row}@{k}"] for k in range(1, cfg.seeds)]
        entry: dict[str, Any] = {"train_seeds": [cfg.seed + k for k in range(cfg.seeds)]}
        for key in ("accuracy", "f1", "auroc"):
            v = [float(r["metrics"][key]) for r in runs]
            entry[key] = v
            entry[key + "_mean"] = float(np.mean(v))
            entry[key + "_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        out[row] = entry
    return out


def robust_over_seeds(
    by: dict[str, Any], attacks: dict[str, Any], best: dict[str, Any], cfg: PilotConfig
) -> dict[str, Any]:
    """Per training seed at 20 %: clean FedAvg, the best mode's worst attack, the ideal defence.

    Seed ``cfg.seed`` comes from the attack grid, the others from the reruns;
    losses are against the same seed's clean FedAvg, then averaged.
    """
    mode = best["best_robust_mode"]
    row0 = attacks["runs"][f"{best['fraction']:g}"]
    clean = [by["federated"]["metrics"]["accuracy"]]
    per_attack = {a: [row0[a][mode]["accuracy"]] for a in cfg.attacks}
    honest = [row0["honest_hubs_only"]["accuracy"]]
    for k in range(1, cfg.seeds):
        clean.append(by[f"federated@{k}"]["metrics"]["accuracy"])
        for a in cfg.attacks:
            per_attack[a].append(by[f"seed20:{a}@{k}"]["metrics"]["accuracy"])
        honest.append(by[f"seed20:honest_only@{k}"]["metrics"]["accuracy"])
    worst_name = [min(cfg.attacks, key=lambda a: per_attack[a][k]) for k in range(cfg.seeds)]
    worst = [per_attack[a][k] for k, a in enumerate(worst_name)]
    c, w, h = (np.asarray(v, float) for v in (clean, worst, honest))
    return {
        "mode": mode,
        "train_seeds": [cfg.seed + k for k in range(cfg.seeds)],
        "clean_fedavg": clean,
        "accuracy_per_attack": per_attack,
        "worst_attack": worst_name,
        "worst_attack_accuracy": worst,
        "honest_only_accuracy": honest,
        "worst_loss_mean": float(np.mean(c - w)),
        "honest_only_loss_mean": float(np.mean(c - h)),
    }


def _nan_sub(a: float, b: float) -> float:
    return float(a - b) if np.isfinite(a) and np.isfinite(b) else float("nan")


def _drop(full: dict[str, Any], without: dict[str, Any]) -> dict[str, float]:
    return {
        "accuracy": full["accuracy"] - without["accuracy"],
        "f1": full["f1"] - without["f1"],
        "auroc": _nan_sub(full["auroc"], without["auroc"]),
    }


def _shares(drops: dict[str, float]) -> dict[str, float] | None:
    """Drops normalised to 100% (negative drops count as 0); None when no modality helps."""
    pos = {k: max(0.0, float(v)) if np.isfinite(v) else 0.0 for k, v in drops.items()}
    s = sum(pos.values())
    if s <= 0:
        return None
    return {k: 100.0 * v / s for k, v in pos.items()}


def _best_robust(attacks: dict[str, Any], cfg: PilotConfig, frac: float) -> dict[str, Any] | None:
    """Per mode: its worst accuracy loss over attacks at ``frac``; the best robust mode."""
    key = next((k for k in attacks["runs"] if abs(float(k) - frac) < 1e-9), None)
    if key is None:
        return None
    row = attacks["runs"][key]
    worst: dict[str, float] = {}
    for mode in cfg.modes:
        base = attacks["clean_accuracy"]["fedavg"]
        worst[mode] = max(base - row[a][mode]["accuracy"] for a in cfg.attacks)
    robust_modes = {m: v for m, v in worst.items() if m != "fedavg"}
    best = min(robust_modes, key=lambda m: robust_modes[m]) if robust_modes else None
    honest = row.get("honest_hubs_only")
    return {
        "fraction": frac,
        "worst_loss_vs_clean_fedavg": worst,
        "best_robust_mode": best,
        "best_robust_worst_loss": robust_modes.get(best) if best else None,
        "fedavg_worst_loss": worst.get("fedavg"),
        # What a perfect defence loses: the malicious hubs' data are simply missing.
        "honest_only_loss": (
            attacks["clean_accuracy"]["fedavg"] - honest["accuracy"] if honest else None
        ),
    }


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and whether it was met."""
    acc = r["accuracy"]
    out: dict[str, Any] = {}
    # Judged on the mean over cohorts and training seeds (one seed's federated row is a
    # draw from a spread of several points, one cohort's gap moved by more than the
    # margins); the main cohort's seed mean and the main table's seed are shown beside it.
    spread = acc.get("seed_spread")
    cohorts = acc.get("cohorts")
    main_seed = {row: acc[row]["accuracy"] for row in SEED_ROWS}

    main_cohort = headline_means(spread) if spread else main_seed
    per_cohort = {k: headline_means(c) for k, c in (cohorts or {}).get("per_cohort", {}).items()}
    judged = cohorts["accuracy_mean"] if cohorts else main_cohort
    for name, row, need, bound in (
        ("fed_personalised_ge_centralised", "federated_personalised", ">= 0", 0.0),
        ("federated_within_2pt_of_centralised", "federated", ">= -0.02", -0.02),
    ):
        value = judged[row] - judged["centralised"]
        control = judged[row] - judged["centralised_refit"]
        t: dict[str, Any] = {
            "value": value,
            "need": need,
            "met": value >= bound,
            "value_main_seed": main_seed[row] - main_seed["centralised"],
            # the same gap against the centralised model given the federated runs' head
            # re-fit: what is left once that step's own gain is taken out
            "value_vs_refit_control": control,
            "met_vs_refit_control": control >= bound,
        }
        if cohorts:
            t["value_main_cohort"] = main_cohort[row] - main_cohort["centralised"]
            t["value_per_cohort"] = {k: m[row] - m["centralised"] for k, m in per_cohort.items()}
        out[name] = t
    b = r.get("best_robust_at_20pct")
    if b:
        # Mean over training seeds when the best mode was rerun (seed-0 value beside it).
        seeds = b.get("over_seeds")
        loss = seeds["worst_loss_mean"] if seeds else b["best_robust_worst_loss"]
        out["best_robust_loss_at_20pct_le_3pt"] = {
            "value": loss,
            "need": "<= 0.03",
            "met": loss is not None and loss <= 0.03,
            "mode": b["best_robust_mode"],
            "fedavg_worst_loss": b["fedavg_worst_loss"],
            "honest_only_loss": (
                seeds["honest_only_loss_mean"] if seeds else b.get("honest_only_loss")
            ),
        }
        if seeds:
            out["best_robust_loss_at_20pct_le_3pt"]["value_main_seed"] = b["best_robust_worst_loss"]
    lat = r.get("latency", {}).get("50")
    if lat and lat["edge"]["p99"] and lat["central"]["p99"]:
        # The edge path is on-box detection: the alert is raised (local alarm) on the hub.
        # Forwarding it to the cloud crosses the delayed link once, which no design can
        # avoid; that ratio is reported beside it, not hidden.
        ratio = lat["edge_on_box_decision"]["p99"] / lat["central"]["p99"]
        delivered = lat["edge"]["p99"] / lat["central"]["p99"]
        out["edge_p99_le_tenth_of_central_at_50ms"] = {
            "value": ratio,
            "need": "<= 0.1",
            "met": ratio <= 0.1,
            "alert_delivered_ratio": delivered,
            "alert_delivered_met": delivered <= 0.1,
        }
    return out


# ----------------------------------------------------------------------------- outputs
def _f(v: Any, pct: bool = True, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{100 * v:.{nd}f}" if pct else f"{v:.{nd}f}"


def budget(cfg: PilotConfig, hubs: Sequence[PatientData]) -> dict[str, Any]:
    """What "same budget" means in numbers: training rows processed and optimiser steps.

    Federated and centralised process the same rows the same number of times
    (``rounds x local_epochs`` passes over the hubs' data); the federated
    model gets far fewer sequential steps (each round's steps run in
    parallel on the hubs and are averaged), which is the price of federation.
    """
    rows = [int((d.y >= 0).sum()) for d in hubs]
    passes = cfg.rounds * cfg.local_epochs
    local_steps = [cfg.local_epochs * math.ceil(n / cfg.batch) for n in rows]
    return {
        "passes_over_hub_data": passes,
        "centralised_epochs": passes,
        "training_rows": sum(rows),
        "rows_processed": passes * sum(rows),
        "centralised_steps": passes * math.ceil(sum(rows) / cfg.batch),
        "federated_rounds": cfg.rounds,
        "federated_local_steps_per_round_mean": float(np.mean(local_steps)),
        "federated_sequential_steps": int(cfg.rounds * round(float(np.mean(local_steps)))),
        "batch": cfg.batch,
        "local_lr": cfg.lr,
        "server_lr": cfg.server_lr,
        "server_momentum": cfg.server_momentum,
        "restrict_classes": cfg.restrict_classes,
    }


def _budget_lines(r: dict[str, Any]) -> list[str]:
    b = r.get("budget")
    if not b:
        return []
    opt = (
        "FedAvgM, server momentum " + f"{b['server_momentum']:g}"
        if b["server_momentum"]
        else "FedAvg"
    )
    return [
        f"Budget: every variant processes the {b['training_rows']:,} training windows "
        f"{b['passes_over_hub_data']} times ({b['rows_processed']:,} rows, Adam lr "
        f"{b['local_lr']:g}, batch {b['batch']}). Centralised: {b['centralised_steps']:,} "
        f"sequential steps. Federated: {b['federated_rounds']} rounds of "
        f"{b['federated_local_steps_per_round_mean']:.0f} local steps per hub on average "
        f"({b['federated_sequential_steps']:,} sequential steps), {opt}"
        + (", local softmax over the classes each hub holds" if b["restrict_classes"] else "")
        + ".",
        "",
    ]


def _personalisation_lines(r: dict[str, Any]) -> list[str]:
    """What the personalised rows' personalisation was: the fleet's weights, the thresholds."""
    pers = r.get("personalisation")
    if not pers:
        return []
    out = ["", "Personalisation (the two personalised rows):"]
    weights = pers.get("persistence_weights")
    if weights:
        out.append(
            "personal location moved by the share of a calibration period's deviation that "
            "persists on the hubs' own recordings (`persistence_weights`): "
            + ", ".join(f"{n} {v:.2f}" for n, v in weights.items())
            + ";"
        )
    else:
        out.append("personal location at full weight;")
    th = r["accuracy"]["federated_personalised"].get("thresholds")
    if r["config"].get("personal_threshold") and th:
        g = r["config"]["threshold"]
        raised = [v for v in th if v > g]
        top = f" (up to {max(raised):.2f})" if raised else ""
        out.append(
            f"clinical threshold personal (the detector's rule): raised above {g:g} for "
            f"{len(raised)} of {len(th)} test patients{top} in the federated + "
            "personalisation run."
        )
    else:
        out.append("one global clinical threshold.")
    return out


def render_markdown(r: dict[str, Any]) -> str:
    """The results table as Markdown (what docs/pilot.md quotes)."""
    cfg = r["config"]
    acc = r["accuracy"]
    lines = [
        "# Pilot results",
        "",
        f"{cfg['hubs']} hubs (one simulated patient each, {cfg['kinds_per_hub']} of 8 "
        f"clinical kinds per hub), {cfg['test_patients']} held-out test patients, "
        f"{cfg['rounds']} rounds x "
        f"{cfg['local_epochs']} local epochs (= {cfg['rounds'] * cfg['local_epochs']} epochs for "
        f"centralised and local-only), seed {cfg['seed']}. Window-level metrics in %.",
        "",
        *_budget_lines(r),
        "## Detection quality",
        "",
        "| variant | accuracy | balanced acc. | F1 | AUROC | paper accuracy |",
        "|---|---|---|---|---|---|",
    ]
    paper = r["paper"]
    rows = [
        ("local-only (mean over hubs)", "local_only", None),
        ("centralised (pooled raw windows)", "centralised", paper["accuracy_centralised"]),
        ("federated (FedAvg, n_k-weighted)", "federated", paper["accuracy_federated"]),
        ("federated + personalisation", "federated_personalised", None),
        ("centralised + personalisation (control)", "centralised_personalised", None),
        ("centralised + head re-fit (control)", "centralised_refit", None),
    ]
    for label, key, p in rows:
        m = acc[key]
        lines.append(
            f"| {label} | {_f(m['accuracy'])} | {_f(m['balanced_accuracy'])} | {_f(m['f1'])} | "
            f"{_f(m['auroc'], False, 3)} | {_f(p, True, 0) if p else ''} |"
        )
    lines += _personalisation_lines(r)
    spread = acc.get("seed_spread")
    if spread:
        seeds = spread["centralised"]["train_seeds"]
        lines += [
            "",
            f"Training-seed spread (accuracy %; same patients, initial weights and batch order "
            f"from seeds {', '.join(map(str, seeds))}; the table above is seed {seeds[0]}; "
            "targets use the mean):",
            "",
            "| variant | " + " | ".join(f"seed {k}" for k in seeds) + " | mean | sd |",
            "|---|" + "---|" * (len(seeds) + 2),
        ]
        for key, e in spread.items():
            lines.append(
                f"| {key} | "
                + " | ".join(_f(v) for v in e["accuracy"])
                + f" | {_f(e['accuracy_mean'])} | {_f(e['accuracy_sd'])} |"
            )
    co = acc.get("cohorts")
    if co:
        lines += [
            "",
            f"Over cohorts (accuracy %, mean over the training seeds; each cohort is another "
            f"draw of hubs and test patients, data seed {cfg['seed']} is the table above; "
            "the accuracy targets use the mean over cohorts):",
            "",
            "| cohort (data seed) | centralised | federated | federated + personalisation "
            "| federated - centralised | fed. + pers. - centralised "
            "| centralised + head re-fit (control) | federated - control |",
            "|---|---|---|---|---|---|---|---|",
        ]
        table = {k: headline_means(c) for k, c in co["per_cohort"].items()}
        table["mean"] = co["accuracy_mean"]
        for key, means in table.items():
            cen, fed, per, ref = (
                means[k]
                for k in ("centralised", "federated", "federated_personalised", "centralised_refit")
            )
            lines.append(
                f"| {key} | {_f(cen)} | {_f(fed)} | {_f(per)} | {_f(fed - cen)} | {_f(per - cen)} "
                f"| {_f(ref)} | {_f(fed - ref)} |"
            )
    lines += ["", "## Accuracy under attack (%, clean accuracy in the first row)", ""]
    modes = cfg["modes"]
    lines.append(
        "| attack | malicious | "
        + " | ".join(modes)
        + " | honest hubs only (ideal defence) | centralised (poisoned data) |"
    )
    lines.append("|---|---|" + "---|" * (len(modes) + 2))
    att = r["attacks"]
    lines.append(
        "| none | 0% | "
        + " | ".join(_f(att["clean_accuracy"].get(m)) for m in modes)
        + f" | {_f(att['clean_accuracy']['fedavg'])} | {_f(att['centralised_clean'])} |"
    )
    for key, row in att["runs"].items():
        honest = row.get("honest_hubs_only", {}).get("accuracy")
        for a in cfg["attacks"]:
            lines.append(
                f"| {a} | {float(key) * 100:.0f}% | "
                + " | ".join(_f(row[a][m]["accuracy"]) for m in modes)
                + f" | {_f(honest)} | {_f(row['centralised_poisoned_data']['accuracy'])} |"
            )
    b = r.get("best_robust_at_20pct")
    if b:
        lines += [
            "",
            f"At 20% malicious hubs the best robust mode is **{b['best_robust_mode']}** "
            f"(worst-case loss {_f(b['best_robust_worst_loss'])} points vs clean FedAvg); "
            f"plain FedAvg's worst-case loss is {_f(b['fedavg_worst_loss'])} points.",
        ]
        if b.get("honest_only_loss") is not None:
            lines.append(
                "An ideal defence that drops exactly the malicious hubs (FedAvg over the honest "
                f"hubs only) loses {_f(b['honest_only_loss'])} points in this seed: what an "
                "attack costs even when every attacker is found (their patients are missing)."
            )
        o = b.get("over_seeds")
        if o:
            lines += [
                "",
                f"Over training seeds (the attack grid is seed {o['train_seeds'][0]}; "
                f"**{o['mode']}** and the ideal defence rerun at 20 % with the others; "
                "loss vs the same seed's clean FedAvg):",
                "",
                "| 20 % malicious | "
                + " | ".join(f"seed {k}" for k in o["train_seeds"])
                + " | mean loss |",
                "|---|" + "---|" * (len(o["train_seeds"]) + 1),
                "| clean FedAvg | " + " | ".join(_f(v) for v in o["clean_fedavg"]) + " | |",
                f"| {o['mode']}, worst attack | "
                + " | ".join(_f(v) for v in o["worst_attack_accuracy"])
                + f" | {_f(o['worst_loss_mean'])} |",
                *(
                    f"| {o['mode']}, {a} | " + " | ".join(_f(v) for v in accs) + " | |"
                    for a, accs in o["accuracy_per_attack"].items()
                ),
                "| honest hubs only (ideal defence) | "
                + " | ".join(_f(v) for v in o["honest_only_accuracy"])
                + f" | {_f(o['honest_only_loss_mean'])} |",
            ]
    lines += ["", "## Latency from a sample leaving the wearable to its alert (ms)", ""]
    lines.append("| added one-way delay | path | p50 | p95 | p99 | lost |")
    lines.append("|---|---|---|---|---|---|")
    for key, row in r.get("latency", {}).items():
        for path, label in (
            ("edge_on_box_decision", "edge: on-box decision (local alarm)"),
            ("edge", "edge: alert delivered (1 delayed hop)"),
            ("central", "centralised: raw window up, alert back (2 delayed hops)"),
        ):
            p = row[path]
            lost = row["lost"].get(path, 0) if path in row["lost"] else 0
            lines.append(
                f"| {key} ms | {label} | {_f(p['p50'], False)} | {_f(p['p95'], False)} | "
                f"{_f(p['p99'], False)} | {lost} |"
            )
    band = r.get("bandwidth")
    if band:
        raw = band["raw_bytes_per_h"]
        lines += [
            "",
            "## Bandwidth leaving a box (kB per patient-hour)",
            "",
            f"Raw streams, as the textile frames them, over MQTT/TLS: {raw / 1e3:,.1f} kB/h. "
            f"Sent instead: alerts for {band['episodes_per_h']} labelled episodes, one "
            f"SecAgg+ update of this model ({band['model_parameters']:,} parameters, "
            f"{band['update_bytes_per_round'] / 1e3:.1f} kB up per round) per round, "
            "and the retained status.",
            "",
            "| profile | status every | rounds/h | alerts | updates | status | total | % of raw |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, p in band["profiles"].items():
            lines.append(
                f"| {name} | {p['status_interval_s']:.0f} s | {p['rounds_per_hour']:.1f} | "
                f"{p['alerts_bytes_per_h'] / 1e3:.1f} | {p['updates_bytes_per_h'] / 1e3:.1f} | "
                f"{p['status_bytes_per_h'] / 1e3:.1f} | {p['total_bytes_per_h'] / 1e3:.1f} | "
                f"{p['ratio_to_raw'] * 100:.2f} |"
            )
    lines += ["", "## Modality contribution (% of the total accuracy drop)", ""]
    sh = r["modality"]["share_pct"]
    lines.append(
        "| modality | retrain (acc.) | retrain (F1) | permutation (acc.) | permutation (F1) "
        "| paper |"
    )
    lines.append("|---|---|---|---|---|---|")
    for m in MODALITIES:
        cells = []
        for k in ("retrain_accuracy", "retrain_f1", "permutation_accuracy", "permutation_f1"):
            cells.append(_f(sh[k][m], False) if sh[k] else "n/a")
        lines.append(
            f"| {m} | " + " | ".join(cells) + f" | {paper['modality_contribution_pct'][m]:.0f} |"
        )
    pr = r["privacy"]
    lines += [
        "",
        "## Privacy",
        "",
        f"Federated + central Gaussian DP (noise multiplier {pr['noise_multiplier']}, clip "
        f"{_f(pr['clip'], False, 3)}, n_cap {pr['n_cap']}, {pr['rounds']} rounds, sampling rate "
        f"{pr['sampling_rate']}): epsilon = {_f(pr['epsilon'], False, 2)} "
        f"at delta = {pr['delta']:g}; "
        f"accuracy {_f(pr['federated_dp']['accuracy'])}%, F1 {_f(pr['federated_dp']['f1'])}%. "
        "All other rows use no DP noise (epsilon = infinity).",
        "",
        "## Targets",
        "",
    ]
    for name, t in r["targets"].items():
        extra = ""
        if "value_main_cohort" in t:
            per = ", ".join(f"{k}: {_f(v, False, 3)}" for k, v in t["value_per_cohort"].items())
            extra = (
                f" (mean over cohorts x training seeds; per cohort {per}; "
                f"seed {cfg['seed']} of cohort {cfg['seed']}: {_f(t['value_main_seed'], False, 3)})"
            )
        elif "value_main_seed" in t:
            seed_value = _f(t["value_main_seed"], False, 3)
            extra = f" (mean over training seeds; seed {cfg['seed']}: {seed_value})"
        if "value_vs_refit_control" in t:
            extra += (
                f"; against the centralised model with its head re-fitted the same way "
                f"(control): {_f(t['value_vs_refit_control'], False, 3)} -> "
                f"{'met' if t['met_vs_refit_control'] else 'NOT met'}"
            )
        if t.get("honest_only_loss") is not None:
            extra += f" (ideal defence, honest hubs only: {_f(t['honest_only_loss'], False, 3)})"
        if "alert_delivered_ratio" in t:
            extra = (
                f" (on-box decision; the alert delivered over the delayed link: "
                f"{_f(t['alert_delivered_ratio'], False, 3)})"
            )
        lines.append(
            f"- {name}: value {_f(t['value'], False, 3)} (need {t['need']}) -> "
            f"{'met' if t['met'] else 'NOT met'}{extra}"
        )
    lines.append("")
    return "\n".join(lines)


def write_outputs(r: dict[str, Any], out: Path) -> None:
    """``pilot.json``, ``pilot.md`` and PNG plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
    (out / "pilot.md").write_text(render_markdown(r))
    plot(r, out)


def plot(r: dict[str, Any], out: Path) -> list[Path]:
    """accuracy.png, attacks.png, latency.png, modality.png (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    acc = r["accuracy"]
    names = ["local_only", "centralised", "federated", "federated_personalised"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = np.arange(len(names))
    for j, k in enumerate(("accuracy", "f1", "auroc")):
        ax.bar(xs + 0.27 * (j - 1), [acc[n][k] or 0 for n in names], 0.27, label=k)
    ax.set_xticks(xs, [n.replace("_", "\n") for n in names])
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("Detection quality on held-out patients")
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    cfg = r["config"]
    fig, axes = plt.subplots(
        1, len(cfg["attacks"]), figsize=(3 * len(cfg["attacks"]), 3.2), sharey=True
    )
    axes = np.atleast_1d(axes)
    fr = sorted(r["attacks"]["runs"], key=float)
    for ax, a in zip(axes, cfg["attacks"], strict=True):
        for mode in cfg["modes"]:
            ax.plot(
                [float(f) * 100 for f in fr],
                [r["attacks"]["runs"][f][a][mode]["accuracy"] for f in fr],
                marker="o",
                label=mode,
            )
        ax.plot(
            [float(f) * 100 for f in fr],
            [r["attacks"]["runs"][f]["centralised_poisoned_data"]["accuracy"] for f in fr],
            "k--",
            label="centralised (poisoned)",
        )
        ax.set_title(a, fontsize=9)
        ax.set_xlabel("% malicious hubs")
    axes[0].set_ylabel("accuracy")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    paths.append(out / "attacks.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    if r.get("latency"):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        keys = list(r["latency"])
        xs = np.arange(len(keys))
        for j, p in enumerate(("edge_on_box_decision", "edge", "central")):
            ax.bar(
                xs + 0.27 * (j - 1), [r["latency"][k][p]["p99"] or 0 for k in keys], 0.27, label=p
            )
        ax.set_xticks(xs, [f"+{k} ms" for k in keys])
        ax.set_ylabel("p99 latency (ms)")
        ax.legend()
        fig.tight_layout()
        paths.append(out / "latency.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)

    sh = r["modality"]["share_pct"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = np.arange(len(MODALITIES))
    kinds = [k for k in ("retrain_accuracy", "permutation_accuracy", "permutation_f1") if sh[k]]
    for j, k in enumerate(kinds):
        ax.bar(xs + 0.25 * (j - 1), [sh[k][m] for m in MODALITIES], 0.25, label=k)
    ax.bar(
        xs + 0.25 * len(kinds) - 0.25,
        [PAPER["modality_contribution_pct"][m] for m in MODALITIES],
        0.25,
        label="paper",
        color="grey",
    )
    ax.set_xticks(xs, MODALITIES)
    ax.set_ylabel("% of total drop")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "modality.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
