"""A simulated ward for field learning: alerts, a nurse's verdicts, on-box training, rounds.

What is real and what is simulated:

* Patients: a bank of simulated patients (``firmware_sim.physiology`` with a
  varied lead per patient, ``edgelab.baseline.patient_features``: the agent's
  own ``Windower`` and ``features.extract``), indices 600+ so none was in the
  baseline's training or held-out sets. Each recording is split in time: the
  leading ``train_frac`` is what boxes run on, raise alerts on and get
  verdicts for; the rest is the *unseen* part every metric is measured on
  (no box ever trains on it).
* Boxes: a fleet of ``boxes`` boxes, box ``b`` serving bank patient
  ``b % bank`` from its own random point in the recording (so boxes that share
  a patient see different windows in a round). Fleet sizes beyond the bank
  reuse patients; stated with every result.
* Scoring: the numpy twin of the ONNX graph (``model.nn.forward``, checked
  against onnxruntime by the test suite) with the detector's decision rule:
  the clinical score (sum of the clinical classes), the patient's personal
  threshold (``personal.personal_threshold`` of its calibration windows, floor
  0.5), the detector's hysteresis (``k_off`` windows below ``off_ratio`` x the
  threshold close an episode) and sensor-fault suppression. The detector's
  evidence gates (rate, ectopy, signal quality) are not applied: the figures
  compare models under one rule, they do not restate the model card.
* Feedback: a simulated nurse acknowledges each alert with probability
  ``feedback``, and is wrong with probability ``error_rate`` (confirms a false
  alarm as the kind the model named, or dismisses a true one). The first
  ``alert_windows`` windows behind an acknowledged alert go to the box's real
  ``LocalLearner.offer_labelled`` as ``ValidatedWindow``; windows the rule
  called normal go to ``offer`` (at most ``normal_per_round`` per round).
* Rounds: the invited boxes (all, or a Poisson sample of expected size
  ``sample``) train with the real ``LocalLearner`` from the global model and
  their stored labelled windows; their updates are combined with the real
  pure functions of ``edgeagent.fl``: ``sum_payloads`` (clip, n_k cap),
  ``add_gaussian_noise`` at ``gaussian_std(z, clip, n_cap)`` on the announced
  coordinates only, ``mean_from_total`` and ``apply_update``; ε comes from the
  aggregator's ``DpAccountant`` at the sampling rate that actually happens.
  A box's learner is built afresh from the global model each round it is
  invited (its labelled pool carried in the box's store): the daemon's
  learner keeps its Adam moments across rounds, which 10,000 simulated boxes
  cannot afford in memory.

References (same patients, same unseen windows): no federation (every box
runs the baseline: without a round its local learning never reaches the model
it runs); every box promoting its own locally trained model
(``run(federated=False)``); the centralised model (every training window of
every bank patient with its true label, ``edgelab.train.fit`` from the
baseline, ``Ward.centralised``); and the federated loop without noise.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.evaluate import ScoredWindow, score_windows, window_labels
from edgeagent.fl.aggregate import ClientUpdate, apply_update, mean_from_total, sum_payloads
from edgeagent.fl.privacy import add_gaussian_noise, gaussian_std
from edgeagent.model.meta import NORMAL, ModelMeta
from edgeagent.model.nn import forward, group_mask, standardise
from edgeagent.pipeline.detect import DetectorConfig, ValidatedWindow
from edgeagent.pipeline.learn import LearnerConfig, LocalLearner
from edgeagent.pipeline.personal import calibrate, personal_threshold

#: Bank patients are simulated from these indices on: clear of the baseline's training
#: (0-23, 300-303), held-out (100-109) and unusual (200-203) patients.
BANK_OFFSET = 600
#: Windows of the leading calibration period a box calibrates on (the detector's warm-up
#: is 40 accepted windows; 60 leaves room for the episodes it does not accept).
CALIBRATION_WINDOWS = 60
#: Global threshold floor of the clinical score (the baseline's ``thresholds.clinical``).
CLINICAL_FLOOR = 0.5
#: A window whose sensor-fault probability reaches this is a fault, never clinical.
FAULT_THRESHOLD = 0.5
WINDOW_S = 10.0
HOP_S = 2.0


@dataclass(frozen=True)
class WardConfig:
    """One ward run; defaults are the benchmark's (bench/field_learning.py states them)."""

    boxes: int = 20
    rounds: int = 8
    feedback: float = 0.10
    error_rate: float = 0.05
    bank: int = 16
    minutes: float = 60.0
    train_frac: float = 0.6
    #: windows a box runs per round (its patient's training part, from its own offset)
    round_windows: int = 300
    alert_windows: int = 5
    normal_per_round: int = 32
    #: expected boxes invited per round (Poisson sampling at ``sample / boxes``); 0 = all
    sample: int = 0
    noise_multiplier: float = 0.0
    clip: float = 0.5
    n_cap: int = 64
    server_lr: float = 1.0
    groups: tuple[str, ...] = ("ae", "head")
    delta: float = 1e-5
    seed: int = 0
    learner: LearnerConfig = field(default_factory=LearnerConfig)

    def __post_init__(self) -> None:
        if self.boxes < 1 or self.rounds < 1 or self.bank < 1:
            raise ValueError("boxes, rounds and bank must be >= 1")
        if not (0 <= self.feedback <= 1 and 0 <= self.error_rate <= 1):
            raise ValueError("feedback and error_rate are shares in [0, 1]")
        if not 0.2 <= self.train_frac <= 0.9:
            raise ValueError("train_frac must be in [0.2, 0.9] (room for unseen windows)")
        if self.sample < 0 or self.noise_multiplier < 0:
            raise ValueError("sample and noise_multiplier must be >= 0")

    @property
    def sampling_rate(self) -> float:
        """The share of the fleet invited per round (1 when every box takes part)."""
        return 1.0 if self.sample <= 0 else min(1.0, self.sample / self.boxes)


@dataclass
class Patient:
    """One bank patient: windows, labels, calibration and the train/unseen split."""

    id: str
    x: np.ndarray  # (n, F)
    spans: np.ndarray  # (n, 2)
    labels: list[tuple[float, float, str]]
    mu: np.ndarray
    sigma: np.ndarray
    cut: int  # windows [0, cut) are the training part, [cut, n) unseen
    ypos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # 1/0/-1 per window
    kinds: list[str] = field(default_factory=list)  # clinical kind per window ("" if none)

    def test_labels(self) -> list[tuple[float, float, str]]:
        t0, t1 = float(self.spans[self.cut, 0]), float(self.spans[-1, 1])
        return [(s, e, k) for s, e, k in self.labels if s < t1 and e > t0]


# -- the patient bank ---------------------------------------------------------
def _simulate(args: tuple[int, float]) -> dict[str, Any]:
    from edgelab.baseline import ANOMALY_KINDS, FAULT_KINDS, SEED, patient_features, schedule
    from firmware_sim.ecg_variation import make_variation
    from firmware_sim.physiology import make_patient

    index, seconds = args
    eps = schedule(index, seconds, tuple(ANOMALY_KINDS) + tuple(FAULT_KINDS))
    x, spans, labs = patient_features(
        make_patient(index, SEED), seconds, eps, variation=make_variation(index, SEED)
    )
    return {"id": f"ward-{index}", "x": x, "spans": spans, "labels": labs}


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGELAB_CACHE", Path.home() / ".cache" / "edgelab"))


def simulate_bank(n: int, minutes: float, processes: int = 2) -> list[dict[str, Any]]:
    """``n`` simulated recordings of ``minutes`` each (deterministic; cached on disk, since
    the physiology simulator takes ~7 s per patient-hour)."""
    import pickle

    from edgeagent.pipeline import features

    key = hashlib.sha256(
        f"{n}:{minutes}:{BANK_OFFSET}:{','.join(features.FEATURE_NAMES)}".encode()
    ).hexdigest()[:16]
    path = _cache_dir() / f"ward-bank-{key}.pkl"
    try:
        with path.open("rb") as f:
            return list(pickle.load(f))  # our own cache file, written below
    except (OSError, EOFError, pickle.UnpicklingError):
        pass
    jobs = [(BANK_OFFSET + i, minutes * 60.0) for i in range(n)]
    if processes > 1:
        with Pool(processes) as pool:
            data = pool.map(_simulate, jobs)
    else:
        data = [_simulate(j) for j in jobs]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(data, f)
        tmp.replace(path)
    except OSError:
        pass
    return data


def make_patients(
    meta: ModelMeta, raw: Sequence[dict[str, Any]], train_frac: float
) -> list[Patient]:
    """Bank recordings with their personal calibration (the leading normal windows)."""
    from edgelab.baseline import class_labels

    pop_mu = np.asarray(meta.pop_mu, np.float32)
    pop_sigma = np.asarray(meta.pop_sigma, np.float32)
    out = []
    for d in raw:
        x = np.asarray(d["x"], np.float32)
        spans = np.asarray(d["spans"], np.float64)
        cls = class_labels(spans, d["labels"])
        head = np.flatnonzero(cls[:CALIBRATION_WINDOWS] == 0)
        mu, sigma = calibrate(x[head], pop_mu, pop_sigma) if len(head) else (pop_mu, pop_sigma)
        ypos, kinds = window_labels([tuple(s) for s in spans], d["labels"])
        out.append(
            Patient(
                d["id"],
                x,
                spans,
                list(d["labels"]),
                mu.astype(np.float32),
                sigma.astype(np.float32),
                round(train_frac * len(x)),
                ypos,
                kinds,
            )
        )
    return out


# -- scoring with the detector's rule -----------------------------------------
@dataclass
class Scores:
    """One model's decisions over some of a patient's windows."""

    probs: np.ndarray
    score: np.ndarray
    fault: np.ndarray
    active: np.ndarray


def clinical_scores(meta: ModelMeta, w: np.ndarray, p: Patient, idx: np.ndarray) -> np.ndarray:
    """(probs) of windows ``idx`` under weights ``w`` (the graph's numpy twin)."""
    z, m = standardise(p.x[idx], p.mu[None], p.sigma[None])
    zp, _ = standardise(
        p.x[idx], np.asarray(meta.pop_mu, np.float32)[None], np.asarray(meta.pop_sigma, np.float32)
    )
    probs, _ = forward(meta.spec, w, z, m, zp)
    return probs


def threshold_for(meta: ModelMeta, w: np.ndarray, p: Patient) -> float:
    """The patient's personal clinical threshold under ``w`` (from its calibration windows)."""
    idx = np.arange(min(CALIBRATION_WINDOWS, p.cut))
    probs = clinical_scores(meta, w, p, idx)
    normal = p.ypos[idx] == 0
    return personal_threshold(probs[normal, 1:-1].sum(axis=1), CLINICAL_FLOOR)


def decide(probs: np.ndarray, thr: float, cfg: DetectorConfig | None = None) -> Scores:
    """The detector's clinical decision with hysteresis and fault suppression, per window."""
    cfg = cfg or DetectorConfig()
    score = probs[:, 1:-1].sum(axis=1)
    fault = probs[:, -1] >= FAULT_THRESHOLD
    active = np.zeros(len(score), bool)
    on, below = False, 0
    for i in range(len(score)):
        if fault[i]:
            on, below = False, 0
            continue
        if not on:
            on = bool(score[i] >= thr)
            below = 0
        elif score[i] < cfg.off_ratio * thr:
            below += 1
            if below >= cfg.k_off:
                on, below = False, 0
        else:
            below = 0
        active[i] = on
    return Scores(probs, score, fault, active)


def evaluate_unseen(meta: ModelMeta, w: np.ndarray, p: Patient) -> dict[str, Any]:
    """``score_windows`` metrics of ``w`` on the patient's unseen windows."""
    idx = np.arange(p.cut, len(p.x))
    s = decide(clinical_scores(meta, w, p, idx), threshold_for(meta, w, p))
    scored = [
        ScoredWindow(float(a), float(b), float(sc), bool(act), bool(f))
        for (a, b), sc, act, f in zip(p.spans[idx], s.score, s.active, s.fault, strict=True)
    ]
    dur = float(p.spans[-1, 1] - p.spans[p.cut, 0])
    return score_windows(scored, p.test_labels(), WINDOW_S, duration_s=dur, hop_s=HOP_S)


def _pool(parts: Sequence[tuple[dict[str, Any], float, float]]) -> dict[str, float]:
    """Pooled accuracy, window recall, event recall and false alarms per hour.

    ``parts``: (metrics, weight, hours) per patient or box; weight is how many boxes the
    metrics stand for (a shared global model scores a shared patient identically)."""
    tp = fp = fn = tn = fa = hours = ev = det = 0.0
    for m, k, h in parts:
        tp += k * m["tp"]
        fp += k * m["fp"]
        fn += k * m["fn"]
        tn += k * m["tn"]
        fa += k * m["false_alarms"]
        hours += k * h
        ev += k * m["events"]
        det += k * m["events_detected"]
    n = tp + fp + fn + tn
    return {
        "accuracy": (tp + tn) / n if n else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "event_recall": det / ev if ev else float("nan"),
        "false_alarms_per_hour": fa / hours if hours else float("nan"),
    }


# -- the ward ------------------------------------------------------------------
@dataclass
class Box:
    """One simulated box: its patient, where it is in the recording, its labelled store."""

    index: int
    patient: int
    pos: int
    rng: np.random.Generator
    new_labelled: list[ValidatedWindow] = field(default_factory=list)
    pool: dict[str, np.ndarray] | None = None
    w: np.ndarray | None = None  # its own model (no-federation reference only)
    alerts: int = 0
    acked: int = 0


@dataclass
class WardRun:
    """A run's per-round figures (round 0: the starting model) and its settings."""

    config: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    epsilon: float | None = None
    w: np.ndarray | None = None


class Ward:
    """Patients, boxes and the starting model; ``run`` plays one learning variant."""

    def __init__(self, meta: ModelMeta, w0: np.ndarray, patients: Sequence[Patient]) -> None:
        self.meta = meta
        self.w0 = np.asarray(w0, np.float32)
        self.patients = list(patients)
        self.pop = (np.asarray(meta.pop_mu, np.float32), np.asarray(meta.pop_sigma, np.float32))

    # per-patient figures of one shared model, weighted by the boxes holding that patient
    def evaluate_shared(self, w: np.ndarray, weights: Sequence[float]) -> dict[str, float]:
        parts = []
        for p, k in zip(self.patients, weights, strict=True):
            if k <= 0:
                continue
            hours = float(p.spans[-1, 1] - p.spans[p.cut, 0]) / 3600.0
            parts.append((evaluate_unseen(self.meta, w, p), float(k), hours))
        return _pool(parts)

    def evaluate_boxes(self, boxes: Sequence[Box]) -> dict[str, float]:
        parts = []
        for b in boxes:
            p = self.patients[b.patient]
            hours = float(p.spans[-1, 1] - p.spans[p.cut, 0]) / 3600.0
            w = self.w0 if b.w is None else b.w
            parts.append((evaluate_unseen(self.meta, w, p), 1.0, hours))
        return _pool(parts)

    def boxes(self, cfg: WardConfig) -> list[Box]:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, cfg.boxes, 0x3A7D]))
        out = []
        for b in range(cfg.boxes):
            p = b % len(self.patients)
            pos = int(rng.integers(0, max(1, self.patients[p].cut)))
            out.append(Box(b, p, pos, np.random.default_rng(np.random.SeedSequence([cfg.seed, b]))))
        return out

    def weights(self, boxes: Sequence[Box]) -> list[float]:
        k = np.zeros(len(self.patients))
        for b in boxes:
            k[b.patient] += 1
        return k.tolist()

    def train_scores(self, w: np.ndarray, p: Patient) -> Scores:
        """Decisions of ``w`` over the patient's whole training part (a box's running model
        scores the stretch it runs this round; boxes sharing a model and a patient share
        these, computed once per round)."""
        return decide(
            clinical_scores(self.meta, w, p, np.arange(p.cut)), threshold_for(self.meta, w, p)
        )

    # one round of a box's ward life: alerts under its running model, verdicts, windows
    def observe(
        self, cfg: WardConfig, box: Box, full: Scores
    ) -> tuple[list[ValidatedWindow], np.ndarray]:
        """Run the box's next ``round_windows`` windows (``full``: its running model's decisions
        over its patient's training part); return the acknowledged alerts' labelled windows
        and the indices of the windows the rule called normal."""
        p = self.patients[box.patient]
        idx = (box.pos + np.arange(cfg.round_windows)) % p.cut
        box.pos = int((box.pos + cfg.round_windows) % p.cut)
        active, fault, probs = full.active[idx], full.fault[idx], full.probs[idx]
        classes = self.meta.classes
        out: list[ValidatedWindow] = []
        onsets = np.flatnonzero(active & ~np.r_[False, active[:-1]])
        for o in onsets:
            end = o
            while end < len(idx) and active[end]:
                end += 1
            box.alerts += 1
            if box.rng.random() >= cfg.feedback:
                continue
            box.acked += 1
            span = idx[o:end]
            pos = [i for i in span if p.ypos[i] == 1 and p.kinds[i] in classes]
            truth = p.kinds[pos[0]] if pos else NORMAL
            named = classes[1 + int(np.argmax(probs[o, 1:-1]))]
            if box.rng.random() < cfg.error_rate:
                label = named if truth == NORMAL else NORMAL
            else:
                label = truth
            for i in span[: cfg.alert_windows]:
                out.append(ValidatedWindow(p.x[i], p.mu[None], p.sigma[None], label))
        normal = idx[~active & ~fault]
        if len(normal) > cfg.normal_per_round:
            normal = box.rng.choice(normal, cfg.normal_per_round, replace=False)
        return out, normal

    def train(
        self, cfg: WardConfig, box: Box, w_start: np.ndarray, normal: np.ndarray
    ) -> LocalLearner:
        """The box's learner for this round: from ``w_start``, its stored labels replayed,
        its new labelled windows offered (the budget applies), its normal windows."""
        lr = LocalLearner(self.meta.spec, w_start, cfg.learner, pop=self.pop)
        if box.pool is not None:
            lr.restore_labelled(box.pool)
        for v in box.new_labelled:
            lr.offer_labelled(v)
        box.new_labelled = []
        p = self.patients[box.patient]
        for i in normal:
            lr.offer(p.x[i], p.mu[None], p.sigma[None], True)
        while lr.pending:
            lr.step(64)
        box.pool = lr.labelled_arrays()
        return lr

    def run(self, cfg: WardConfig, *, federated: bool = True, eval_every: int = 1) -> WardRun:
        """Play ``cfg.rounds`` rounds; federated (FedAvg, DP when ``noise_multiplier``) or
        every box alone (``federated=False``: the no-federation reference)."""
        from edgeagent.federation.accountant import DpAccountant

        run = WardRun(
            config={
                **asdict(replace(cfg, learner=LearnerConfig())),
                "learner": asdict(cfg.learner),
                "federated": federated,
            }
        )
        boxes = self.boxes(cfg)
        weights = self.weights(boxes)
        w = self.w0.copy()
        base = self.evaluate_shared(w, weights)
        run.rounds.append({"round": 0, **base})
        acct = DpAccountant(cfg.delta) if (federated and cfg.noise_multiplier > 0) else None
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5A3]))
        noise_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xD9]))
        mask = group_mask(self.meta.spec, cfg.groups).astype(bool)
        q = cfg.sampling_rate
        for r in range(1, cfg.rounds + 1):
            shared: dict[int, Scores] = {}
            for b in boxes:
                p = self.patients[b.patient]
                if federated:
                    if b.patient not in shared:
                        shared[b.patient] = self.train_scores(w, p)
                    full = shared[b.patient]
                else:
                    full = self.train_scores(self.w0 if b.w is None else b.w, p)
                got, normal = self.observe(cfg, b, full)
                b.new_labelled.extend(got)
                b._normal = normal  # type: ignore[attr-defined]
            if not federated:
                for b in boxes:
                    start = self.w0 if b.w is None else b.w
                    lr = self.train(cfg, b, start, b._normal)  # type: ignore[attr-defined]
                    b.w = lr.params()
                rec: dict[str, Any] = {"round": r}
                if r % eval_every == 0 or r == cfg.rounds:
                    rec.update(self.evaluate_boxes(boxes))
                run.rounds.append(rec)
                continue
            invited = boxes if q >= 1.0 else [b for b in boxes if rng.random() < q]
            ups = []
            groups: set[str] = set()
            for b in invited:
                lr = self.train(cfg, b, w, b._normal)  # type: ignore[attr-defined]
                if lr.n_k < 1:
                    continue
                groups |= lr.trained_groups()
                d = lr.delta()
                if np.any(d[~mask]):
                    raise AssertionError("a box trained coordinates outside the announced groups")
                ups.append(ClientUpdate(f"box-{b.index}", d[mask], int(lr.n_k)))
            rec = {
                "round": r,
                "invited": len(invited),
                "updates": len(ups),
                "groups": sorted(groups),
            }
            if ups:
                total = sum_payloads(ups, clip=cfg.clip, n_cap=cfg.n_cap)
                if acct is not None:
                    std = gaussian_std(cfg.noise_multiplier, cfg.clip, cfg.n_cap)
                    total = add_gaussian_noise(total, std, noise_rng)
                    acct.step(cfg.noise_multiplier, q)
                if total[-1] > 0.5:
                    full = np.zeros(w.size, np.float64)
                    full[mask] = mean_from_total(total)
                    w = apply_update(w, full, cfg.server_lr)
                    rec["update_norm"] = float(np.linalg.norm(full))
            if acct is not None:
                rec["epsilon"] = acct.epsilon()
            if r % eval_every == 0 or r == cfg.rounds:
                rec.update(self.evaluate_shared(w, weights))
            run.rounds.append(rec)
        run.w = w
        run.epsilon = acct.epsilon() if acct is not None else None
        run.config["alerts"] = int(sum(b.alerts for b in boxes))
        run.config["acked"] = int(sum(b.acked for b in boxes))
        return run

    def centralised(self, epochs: int = 3, seed: int = 0) -> np.ndarray:
        """Every bank patient's training windows with true labels, ``edgelab.train.fit``
        from the starting model (the pilot's centralised reference, all labels known)."""
        from edgelab.baseline import class_labels
        from edgelab.train import fit

        zs, zps, ms, ys = [], [], [], []
        for p in self.patients:
            y = class_labels(p.spans[: p.cut], p.labels)
            keep = y >= 0
            z, m = standardise(p.x[: p.cut][keep], p.mu[None], p.sigma[None])
            zp, _ = standardise(p.x[: p.cut][keep], self.pop[0][None], self.pop[1][None])
            zs.append(z)
            zps.append(zp)
            ms.append(m)
            ys.append(y[keep])
        w, _ = fit(
            self.meta.spec,
            np.concatenate(zs),
            np.concatenate(ms),
            np.concatenate(ys),
            epochs=epochs,
            batch=128,
            lr=1e-3,
            seed=seed,
            flat=self.w0,
            zp=np.concatenate(zps),
        )
        return w


def load_baseline() -> tuple[ModelMeta, np.ndarray]:
    """The shipped baseline's metadata and weights."""
    from edgeagent.model.graph import get_params, parse_model, read_meta
    from edgeagent.pipeline.lifecycle import SHIPPED_BASELINE

    proto = parse_model(SHIPPED_BASELINE.read_bytes())
    return read_meta(proto), get_params(proto)


def make_ward(
    bank: int = 16, minutes: float = 60.0, train_frac: float = 0.6, processes: int = 2
) -> Ward:
    """The shipped baseline and a bank of simulated patients (cached after the first call)."""
    meta, w0 = load_baseline()
    raw = simulate_bank(bank, minutes, processes)
    return Ward(meta, w0, make_patients(meta, raw, train_frac))


def reduction(before: float, after: float) -> float:
    """Relative cut ``1 - after / before`` (NaN when ``before`` is 0)."""
    return 1.0 - after / before if before > 0 and math.isfinite(before) else float("nan")
