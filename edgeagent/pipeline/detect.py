"""Per-window anomaly detection: onnxruntime scores -> personal thresholds -> alert episodes.

Why it is built this way:

* One ``InferenceSession`` per model, created once, single-threaded by default
  (a hub has 2-4 small cores shared with BLE and MQTT); a window is one row.
* The model is swapped hot: a new session is built and dry-run *before* it
  replaces the old one in a single reference assignment, so a bad model
  raises ``ModelError`` and the old one keeps running; no window is dropped.
* Scores become alerts through per-patient thresholds (``personal.py``),
  hysteresis (an episode opens at the threshold and closes only after
  ``k_off`` windows below ``off_ratio`` x threshold) and de-duplication (one
  alert per episode, extended in place; an episode that restarts within
  ``cooldown_s`` re-opens the same alert).
* Sensor faults (the head's ``sensor_fault`` class, trained on signal-quality
  features) suppress clinical decisions for that window and produce alerts of
  kind "sensor_fault", never clinical ones.
* Missing modalities arrive as NaN features; the graph masks them, so a
  window with ECG alone is still scored. A class that only an absent
  modality can show (fever without a temperature stream, a fall without an
  accelerometer) gets probability 0, its mass going to "normal": on a real
  ECG-only recording the head otherwise called 746 of 898 windows "fever".
  A window with no finite feature is reported as ``status="no_data"`` and
  raises nothing.
* ECG signal quality (``ecg_sqi``, from ``pipeline.beats``) below
  ``beats.SQI_MIN`` makes the ECG classes unavailable for that window, as if
  the lead were absent, and opens a sensor-fault alert whose detail says
  ``"reason": "signal_quality"``: a noisy strip is reported as such, never
  as asystole or VT.
* A rate class (tachycardia, bradycardia) needs, once the patient's
  calibration is personal, a rate unusual for the patient (``RATE_Z``) or
  beyond absolute limits (``RATE_LIMITS_BPM``).
* An ectopy class ("pvc") needs ``ECTOPY_MIN_BEATS`` abnormal beats in the
  window (from the beat tracker): a lone early beat is normal for most people.
* A candidate model can run in *shadow* beside the active one
  (``set_shadow``): a second session scores every window with the same
  inputs, thresholds and masks, its would-be alerts are counted
  (``ShadowTally``) and never reach the sink. The model lifecycle compares
  the two on the same windows before a candidate may raise alerts.
* Clinical ECG alerts name the beats: a per-patient ``BeatTracker`` keeps the
  patient's dominant beat and rhythm, and the alert's ``detail`` lists the
  abnormal beats of the window that opened it ("3 ventricular beats at ...").
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from edgeagent.errors import ModelError
from edgeagent.model.meta import FAULT, NORMAL, ModelMeta, session_meta
from edgeagent.pipeline import beats, evidence
from edgeagent.pipeline.alerts import Alert
from edgeagent.pipeline.evidence import (
    CLASS_MODALITY,
    SQI_HOLD_WINDOWS,
    beat_detail,
)
from edgeagent.pipeline.personal import PersonalCalibration, Thresholds
from edgeagent.pipeline.shadow import Decision, ShadowTally, WouldBe
from edgeagent.providers import ProviderChoice, open_session
from edgeagent.streams import Stream

#: Default global thresholds when a model does not carry its own.
DEFAULT_THRESHOLDS = {"clinical": 0.5, "fault": 0.5, "novelty": 4.0}
#: Seconds of each window's ECG tail fed to the patient's beat tracker (windows
#: overlap; the tracker skips beats it has seen, so the tail only has to cover a hop).
TRACK_TAIL_S = 6.0
#: Which stream a feature modality comes from, to name the device behind an alert.
MODALITY_STREAMS: dict[str, tuple[Stream, ...]] = {
    "ecg": (Stream.ECG, Stream.HR, Stream.RR),
    "acc": (Stream.ACC,),
    "temp": (Stream.SKIN_TEMP,),
    "env": (Stream.ENV,),
}


class AlertSink(Protocol):
    """Where alerts go: ``AlertStore`` on a box, ``MemoryAlertSink`` in a replay."""

    def add(self, a: Alert) -> str: ...

    def extend(self, alert_id: str, end: float, score: float, closed: bool = False) -> None: ...


class WindowLike(Protocol):
    patient: str
    start: float
    end: float


@dataclass
class DetectorConfig:
    """Knobs with small-box defaults; every field is documented in docs/model.md."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    off_ratio: float = 0.6
    k_on: int = 1
    k_off: int = 2
    cooldown_s: float = 20.0
    personalise: bool = True
    novelty: bool = False
    #: No ECG class (rate, rhythm, ectopy, ST) answers before the patient's
    #: calibration has warmed up (``personal.WARMUP_WINDOWS`` accepted windows,
    #: ~80 s at a 2 s hop): they are judged against the patient's own normal,
    #: which the first minutes establish. Falls, temperature classes, sensor
    #: faults and signal quality are never held.
    warmup_hold: bool = True
    #: Operator overrides of the model's thresholds (``[detection] thresholds``).
    thresholds: dict[str, float] = field(default_factory=dict)
    #: Execution providers + threads from ``edgeagent.providers.choose_from_config``;
    #: None = CPU with intra/inter_op_threads above.
    backend: ProviderChoice | None = None

    def __post_init__(self) -> None:
        if self.intra_op_threads < 1 or self.inter_op_threads < 1:
            raise ModelError("onnxruntime thread counts must be >= 1")
        if not 0 < self.off_ratio <= 1:
            raise ModelError("off_ratio must be in (0, 1]")
        if self.k_on < 1 or self.k_off < 1:
            raise ModelError("k_on and k_off must be >= 1")


@dataclass(frozen=True)
class Detection:
    """What the detector concluded about one window (returned for every window)."""

    patient: str
    start: float
    end: float
    status: str  # "ok" | "no_data"
    score: float  # probability of a clinical anomaly, 0..1
    p_fault: float
    recon_err: float
    kind: str  # most likely clinical kind (even when below threshold)
    fault: bool
    clinical_active: bool  # a clinical episode is open after this window
    fault_active: bool
    model: str
    opened: tuple[Alert, ...] = ()


@dataclass
class _Episode:
    alert_id: str | None = None
    above: int = 0
    below: int = 0
    last_end: float = float("-inf")
    last_id: str | None = None
    last_kind: str = ""


@dataclass
class _Active:
    session: ort.InferenceSession
    meta: ModelMeta
    label: str
    fault_idx: int
    clinical_idx: np.ndarray
    thresholds: Thresholds
    class_modality: tuple[str, ...]  # per class: the modality it needs ("" = none)


@dataclass
class ValidatedWindow:
    """A window with a label a person gave it (clinician feedback), the calibration
    (``mu``, ``sigma``) it was scored with beside it."""

    x: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    label: str


def make_session(data: bytes, intra: int = 1, inter: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with bounded threads (no busy-spinning on small boxes)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra
    so.inter_op_num_threads = inter
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise ModelError(f"onnxruntime cannot load the model: {e}") from e


def _default_features() -> tuple[tuple[str, ...], Callable[[Any], np.ndarray], dict[str, str]]:
    from edgeagent.pipeline import features

    return tuple(features.FEATURE_NAMES), features.extract, dict(features.MODALITY_OF)


class Detector:
    """Scores windows with the active model and turns scores into alert episodes.

    ``featurize``/``feature_names``/``modality_of`` default to
    ``edgeagent.pipeline.features``; pass them to run on precomputed features.
    ``on_scored`` (e.g. ``LocalLearner.offer``) is called with every scored
    window and must not block.
    """

    def __init__(
        self,
        model_bytes: bytes,
        label: str,
        sink: AlertSink,
        config: DetectorConfig | None = None,
        feature_names: tuple[str, ...] | None = None,
        featurize: Callable[[Any], np.ndarray] | None = None,
        modality_of: dict[str, str] | None = None,
        on_scored: Callable[[np.ndarray, np.ndarray, np.ndarray, bool], None] | None = None,
    ) -> None:
        self.config = config or DetectorConfig()
        if feature_names is None or featurize is None or modality_of is None:
            fn, fx, mo = _default_features()
            feature_names = feature_names or fn
            featurize = featurize or fx
            modality_of = modality_of if modality_of is not None else mo
        self.feature_names = tuple(feature_names)
        self._featurize = featurize
        self._modality_of = dict(modality_of)
        self.sink = sink
        self.on_scored = on_scored
        #: Called (detection thread, must not block long) with ``(alert id, patient, window)``
        #: for every window that opens or extends an alert, the window labelled with the
        #: alert's kind: ``pipeline.feedback`` keeps them for a clinician's verdict.
        self.on_alert_window: Callable[[str, str, ValidatedWindow], None] | None = None
        self.calibrations: dict[str, PersonalCalibration] = {}
        self._episodes: dict[tuple[str, str], _Episode] = {}
        #: A candidate scored beside the active model, raising nothing (``set_shadow``).
        self._shadow: _Active | None = None
        self.shadow_tally: ShadowTally | None = None
        self._would_be: dict[tuple[str, str, str], WouldBe] = {}
        self._lock = threading.Lock()  # guards calibrations/episodes, not the session
        self.counters = {
            "windows": 0,
            "no_data": 0,
            "alerts": 0,
            "swaps": 0,
            "swap_refused": 0,
            "shadow_windows": 0,
        }
        #: What onnxruntime actually runs on (after any GPU->CPU fallback), for status/doctor.
        self.backend: ProviderChoice | None = self.config.backend
        self._active = self._prepare(model_bytes, label)
        self._mod_idx = self._modality_index(self._active.meta)
        self._sqi_idx = (
            self.feature_names.index("ecg_sqi") if "ecg_sqi" in self.feature_names else -1
        )
        #: Per-patient dominant beat and rhythm (stays on the box, never averaged).
        self.trackers: dict[str, beats.BeatTracker] = {}
        self._sqi_recent: dict[str, deque[float]] = {}
        self._hr_idx = self.feature_names.index("hr_bpm") if "hr_bpm" in self.feature_names else -1

    # -- model lifecycle -------------------------------------------------
    def _prepare(self, data: bytes, label: str) -> _Active:
        if self.config.backend is not None:
            sess, self.backend = open_session(data, self.config.backend)
        else:
            sess = make_session(data, self.config.intra_op_threads, self.config.inter_op_threads)
        meta = session_meta(sess, self.feature_names)
        f = len(self.feature_names)
        try:
            probs, recon = sess.run(
                None,
                {
                    "x": np.zeros((1, f), np.float32),
                    "mu": np.zeros((1, f), np.float32),
                    "sigma": np.ones((1, f), np.float32),
                },
            )
        except Exception as e:  # onnxruntime's runtime errors are untyped
            raise ModelError(f"model dry run failed: {e}") from e
        if probs.shape != (1, meta.spec.n_classes) or recon.shape != (1,):
            raise ModelError(f"model outputs have shapes {probs.shape}, {recon.shape}")
        if not (np.all(np.isfinite(probs)) and np.all(np.isfinite(recon))):
            raise ModelError("model dry run produced NaN/inf (corrupt weights?)")
        classes = list(meta.classes)
        fault_idx = classes.index(FAULT) if FAULT in classes else -1
        clinical = [i for i, c in enumerate(classes) if c not in (NORMAL, FAULT)]
        th = {**DEFAULT_THRESHOLDS, **meta.thresholds, **self.config.thresholds}
        cmod = {**CLASS_MODALITY, **dict(meta.info.get("class_modality", {}))}
        return _Active(
            session=sess,
            meta=meta,
            label=label,
            fault_idx=fault_idx,
            clinical_idx=np.asarray(clinical, np.int64),
            thresholds=Thresholds(th["clinical"], th["fault"], th["novelty"]),
            class_modality=tuple(str(cmod.get(c, "")) for c in classes),
        )

    def _modality_index(self, meta: ModelMeta) -> dict[str, np.ndarray]:
        out: dict[str, list[int]] = {}
        for i, name in enumerate(meta.feature_names):
            out.setdefault(self._modality_of.get(name, "other"), []).append(i)
        return {k: np.asarray(v) for k, v in out.items()}

    @property
    def model_label(self) -> str:
        return self._active.label

    @property
    def meta(self) -> ModelMeta:
        return self._active.meta

    def swap(self, model_bytes: bytes, label: str) -> None:
        """Hot-swap the model. On any problem raises ``ModelError`` and keeps the old one.

        A shadow in place stays (a registry-driven swap does not judge it)."""
        try:
            new = self._prepare(model_bytes, label)
        except ModelError:
            self.counters["swap_refused"] += 1
            raise
        self._install(new)

    # -- shadow ------------------------------------------------------------
    def set_shadow(self, model_bytes: bytes, label: str) -> None:
        """Score every window with this model too, counting what it would alert on.

        Raises ``ModelError`` (and changes nothing) when the model fails the dry run.
        A shadow already in place is replaced and its tally dropped.
        """
        new = self._prepare(model_bytes, label)
        with self._lock:
            self._shadow = new
            self.shadow_tally = ShadowTally(label)
            self._would_be.clear()

    def clear_shadow(self) -> ShadowTally | None:
        """Stop shadow scoring; returns the tally it leaves."""
        with self._lock:
            tally, self._shadow, self.shadow_tally = self.shadow_tally, None, None
            self._would_be.clear()
        return tally

    @property
    def shadow_label(self) -> str | None:
        s = self._shadow
        return s.label if s is not None else None

    def promote_shadow(self) -> ShadowTally | None:
        """Make the shadow the active model (its session is already built and dry-run)."""
        with self._lock:
            new, tally = self._shadow, self.shadow_tally
            self._shadow, self.shadow_tally = None, None
            self._would_be.clear()
        if new is None:
            raise ModelError("no shadow model to promote")
        self._install(new)
        return tally

    def verdicts(self, windows: Sequence[ValidatedWindow], shadow: bool = False) -> list[str]:
        """What the active (or shadow) model calls each labelled window: normal, the fault
        class or a clinical kind, by the same masks and thresholds as a live window.

        The patient's calibration at labelling time travels with the window (``mu``,
        ``sigma``); its personal thresholds do not, so the model's own thresholds apply.
        """
        a = self._shadow if shadow else self._active
        if a is None:
            raise ModelError("no shadow model")
        out = []
        for w in windows:
            x = np.asarray(w.x, np.float32).ravel()
            if not np.any(np.isfinite(x)):
                out.append(NORMAL)
                continue
            probs, _ = self._run(a, x[None, :], w.mu, w.sigma)
            sqi = float(x[self._sqi_idx]) if self._sqi_idx >= 0 else float("nan")
            poor = bool(np.isfinite(sqi) and sqi < beats.SQI_MIN)
            d = self._decide(a, probs[0], x, poor, False, None, None, sqi, a.thresholds)
            out.append(d.verdict)
        return out

    def _install(self, new: _Active) -> None:
        with self._lock:
            old_meta = self._active.meta
            self._active = new  # one assignment: in-flight windows finish on the old session
            self._mod_idx = self._modality_index(new.meta)
            if (
                new.meta.pop_mu != old_meta.pop_mu
                or new.meta.pop_sigma != old_meta.pop_sigma
                or new.meta.thresholds != old_meta.thresholds
            ):
                for pid, cal in list(self.calibrations.items()):
                    fresh = self._new_calibration(pid, new)
                    fresh.load_dict(cal.to_dict())
                    self.calibrations[pid] = fresh
        self.counters["swaps"] += 1

    # -- calibration -----------------------------------------------------
    def _new_calibration(self, patient: str, active: _Active) -> PersonalCalibration:
        return PersonalCalibration(
            patient,
            np.asarray(active.meta.pop_mu, np.float32),
            np.asarray(active.meta.pop_sigma, np.float32),
            active.thresholds,
        )

    def calibration(self, patient: str) -> PersonalCalibration:
        """The patient's calibration, created from the population one on first sight."""
        cal = self.calibrations.get(patient)
        if cal is None:
            cal = self._new_calibration(patient, self._active)
            self.calibrations[patient] = cal
        return cal

    # -- scoring ---------------------------------------------------------
    def score(
        self, x: np.ndarray, mu: np.ndarray, sigma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw model outputs (probs (N,C), recon_err (N,)) for feature rows."""
        return self._run(self._active, x, mu, sigma)

    def _run(
        self, a: _Active, x: np.ndarray, mu: np.ndarray, sigma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        probs, recon = a.session.run(
            None,
            {
                "x": np.ascontiguousarray(x, np.float32).reshape(-1, len(self.feature_names)),
                "mu": np.asarray(mu, np.float32).reshape(1, -1),
                "sigma": np.asarray(sigma, np.float32).reshape(1, -1),
            },
        )
        return probs, recon

    def process(self, window: Any) -> Detection:
        """Featurise and score one window (from ``Windower.pop_ready``)."""
        x = np.asarray(self._featurize(window), np.float32)
        devices = {str(k): v for k, v in getattr(window, "devices", {}).items()}
        sqi = float(x[self._sqi_idx]) if self._sqi_idx >= 0 else float("nan")
        # A poor strip is still scored (its beats may be named) but teaches the
        # template nothing: noise must not become the patient's normal beat.
        tracker = self._track(window, learn=not (np.isfinite(sqi) and sqi < beats.SQI_MIN))
        detail = None
        if tracker is not None:
            w0, w1 = float(window.start), float(window.end)

            def detail() -> dict[str, Any]:
                return beat_detail(tracker, w0, w1)

        abnormal = None
        if tracker is not None and tracker.ready:
            w0, w1 = float(window.start), float(window.end)
            abnormal = sum(1 for e in tracker.events if w0 <= e.t <= w1 and e.label == "V")
        return self.process_features(
            window.patient,
            window.start,
            window.end,
            x,
            devices,
            detail=detail,
            abnormal_beats=abnormal,
        )

    def _track(self, window: Any, learn: bool = True) -> beats.BeatTracker | None:
        """Feed the window's newest ECG to the patient's beat tracker (None without ECG)."""
        data = getattr(window, "data", {})
        if Stream.ECG not in data:
            return None
        t, v = data[Stream.ECG]
        fs = getattr(window, "rates", {}).get(Stream.ECG, float("nan"))
        if t.shape[0] < 2:
            return None
        if not np.isfinite(fs):
            fs = 1.0 / float(np.median(np.diff(t)))
        if fs < 100.0:
            return None
        tail = int(np.searchsorted(t, t[-1] - TRACK_TAIL_S))
        tt, xx = t[tail:], v[tail:, 0].astype(np.float64)
        if tt.shape[0] < fs or float(np.max(np.diff(tt))) > 1.5 / fs:
            return self.trackers.get(window.patient)  # a hole: skip this hop
        tr = self.trackers.setdefault(window.patient, beats.BeatTracker())
        tr.update(tt, xx, fs, learn=learn)
        return tr

    def process_features(
        self,
        patient: str,
        start: float,
        end: float,
        x: np.ndarray,
        devices: dict[str, str] | None = None,
        detail: Callable[[], dict[str, Any]] | None = None,
        abnormal_beats: int | None = None,
    ) -> Detection:
        """Score one feature vector and update the patient's alert episodes.

        ``detail`` is called only when a clinical alert opens; what it returns
        goes into the alert's ``detail`` (the beats that raised it).
        ``abnormal_beats`` is how many beats of the window the patient's beat
        tracker judged ventricular (shape unlike the patient's normal beat;
        None: estimated from ``ecg_beat_abnormal_frac``, which also counts
        premature beats of normal shape, and the heart rate).
        """
        a = self._active
        self.counters["windows"] += 1
        x = np.asarray(x, np.float32).ravel()
        if x.shape != (len(self.feature_names),):
            raise ModelError(
                f"feature vector has {x.shape[0]} values, model expects {len(self.feature_names)}"
            )
        if not np.any(np.isfinite(x)):
            self.counters["no_data"] += 1
            return Detection(
                patient, start, end, "no_data", 0.0, 0.0, 0.0, "", False, False, False, a.label
            )
        with self._lock:
            cal = self.calibration(patient)
            if self.config.personalise:
                mu, sigma, th = cal.mu, cal.sigma, cal.thresholds
            else:
                mu = np.asarray(a.meta.pop_mu, np.float32)[None, :]
                sigma = np.asarray(a.meta.pop_sigma, np.float32)[None, :]
                th = a.thresholds
        probs, recon = self._run(a, x[None, :], mu, sigma)
        sqi = float(x[self._sqi_idx]) if self._sqi_idx >= 0 else float("nan")
        if np.isfinite(sqi):
            recent = self._sqi_recent.setdefault(patient, deque(maxlen=SQI_HOLD_WINDOWS))
            recent.append(sqi)
            sqi = min(recent)
        poor_ecg = bool(np.isfinite(sqi) and sqi < beats.SQI_MIN)
        if abnormal_beats is None:
            abnormal_beats = self._abnormal_from_features(x, end - start)
        hr_z = None
        if self._hr_idx >= 0 and self.config.personalise and cal.warmed_up:
            i = self._hr_idx
            hr_z = float((x[i] - mu.ravel()[i]) / sigma.ravel()[i])
        # Until the patient's own normal is known, no ECG class (judged against
        # it) may answer; falls and temperature thresholds are absolute and may.
        held = self.config.personalise and self.config.warmup_hold and not cal.warmed_up
        d = self._decide(a, probs[0], x, poor_ecg, held, abnormal_beats, hr_z, sqi, th)
        r = float(recon[0])
        score, p_fault, kind, fault = d.score, d.p_fault, d.kind, d.fault
        clin_on, clin_hold = d.clin_on, d.clin_hold
        shadow = self._shadow
        if shadow is not None:
            # Same inputs, masks and (personal) thresholds as the active model: what
            # the candidate would do here if it ran, without a sink to raise anything.
            sth = th if self.config.personalise else shadow.thresholds
            sp, _ = self._run(shadow, x[None, :], mu, sigma)
            sd = self._decide(shadow, sp[0], x, poor_ecg, held, abnormal_beats, hr_z, sqi, sth)
        novel_on = self.config.novelty and not fault and not clin_on and r >= th.novelty
        devs = devices or {}
        opened: list[Alert] = []
        with self._lock:
            ctx = (patient, start, end, devs, a.label, x, mu, sigma)
            al = self._step("clinical", ctx, clin_on, clin_hold, kind, score, detail)
            if al:
                opened.append(al)
            fault_hold = d.fault_hold
            why = {"reason": "signal_quality", "ecg_sqi": round(sqi, 3)} if poor_ecg else None
            al = self._step(
                "sensor_fault",
                ctx,
                fault,
                fault_hold,
                FAULT,
                p_fault,
                (lambda: why) if why else None,
            )
            if al:
                opened.append(al)
            if self.config.novelty:
                al = self._step("novelty", ctx, novel_on, novel_on, "novelty", r)
                if al:
                    opened.append(al)
            clin_active = self._episodes[(patient, "clinical")].alert_id is not None
            fault_active = self._episodes[(patient, "sensor_fault")].alert_id is not None
            normal_ok = (
                not fault
                and not clin_active
                and p_fault < 0.5 * th.fault
                and score < th.clinical * self.config.off_ratio
            )
            if normal_ok or (not cal.warmed_up and not fault and p_fault < 0.5 * th.fault):
                # During warm-up every good-quality window calibrates (the robust
                # median tolerates a minority of anomalies); otherwise a patient
                # whose baseline looks anomalous to the population would never
                # get a personal baseline.
                cal.observe(x, score if normal_ok else None, r if normal_ok else None)
            if shadow is not None and self._shadow is shadow and self.shadow_tally is not None:
                self._tally(self.shadow_tally, patient, start, end, d, sd)
        if self.on_scored is not None:
            # Training waits for a personal baseline: pre-calibration z-scores would teach noise.
            self.on_scored(x, mu, sigma, normal_ok and cal.warmed_up)
        return Detection(
            patient,
            start,
            end,
            "ok",
            score,
            p_fault,
            r,
            kind,
            fault,
            clin_active,
            fault_active,
            a.label,
            tuple(opened),
        )

    def _decide(
        self,
        a: _Active,
        probs: np.ndarray,
        x: np.ndarray,
        poor_ecg: bool,
        held: bool,
        abnormal_beats: int | None,
        hr_z: float | None,
        sqi: float,
        th: Thresholds,
    ) -> Decision:
        """One model's decision on one window: masked classes, scores, thresholds."""
        p = self._mask_classes(probs, x, poor_ecg or held, abnormal_beats, hr_z, a)
        p_fault = float(p[a.fault_idx]) if a.fault_idx >= 0 else 0.0
        if poor_ecg:
            p_fault = max(p_fault, 1.0 - sqi)
        clin = p[a.clinical_idx]
        score = float(clin.sum())
        kind = a.meta.classes[int(a.clinical_idx[int(np.argmax(clin))])] if clin.size else ""
        fault = p_fault >= th.fault or poor_ecg
        off = self.config.off_ratio
        return Decision(
            score=score,
            p_fault=p_fault,
            kind=kind,
            fault=fault,
            clin_on=(not fault) and score >= th.clinical,
            clin_hold=(not fault) and score >= th.clinical * off,
            fault_hold=p_fault >= th.fault * off,
        )

    def _tally(
        self,
        t: ShadowTally,
        patient: str,
        start: float,
        end: float,
        active: Decision,
        shadow: Decision,
    ) -> None:
        """Count one window for both models by the same episode rule (caller holds the lock)."""
        t.windows += 1
        self.counters["shadow_windows"] += 1
        cfg = self.config
        for role, d in (("active", active), ("shadow", shadow)):
            opened = 0
            for category, on, hold, kind in (
                ("clinical", d.clin_on, d.clin_hold, d.kind),
                ("sensor_fault", d.fault, d.fault_hold, FAULT),
            ):
                ep = self._would_be.setdefault((role, patient, category), WouldBe())
                opened += ep.step(on, hold, kind, start, end, cfg)
            if role == "active":
                t.active_alerts += opened
                t.active_flagged += int(d.clin_on)
            else:
                t.shadow_alerts += opened
                t.shadow_flagged += int(d.clin_on)
        t.disagreed += int(active.verdict != shadow.verdict)

    def _abnormal_from_features(self, x: np.ndarray, span_s: float) -> int | None:
        names = self.feature_names
        if "ecg_beat_abnormal_frac" not in names or "hr_bpm" not in names:
            return None
        frac = float(x[names.index("ecg_beat_abnormal_frac")])
        hr = float(x[names.index("hr_bpm")])
        if not (np.isfinite(frac) and np.isfinite(hr)):
            return None
        return round(frac * hr * span_s / 60.0)

    def _mask_classes(
        self,
        p: np.ndarray,
        x: np.ndarray,
        poor_ecg: bool,
        abnormal_beats: int | None = None,
        hr_z: float | None = None,
        a: _Active | None = None,
    ) -> np.ndarray:
        """``evidence.move_to_normal`` of the classes this window cannot show."""
        a = a if a is not None else self._active
        absent = {m for m, idx in self._mod_idx.items() if not np.isfinite(x[idx]).any()}
        if poor_ecg:
            absent.add("ecg")
        hr = float(x[self._hr_idx]) if self._hr_idx >= 0 else float("nan")
        drop = evidence.unavailable_classes(
            a.meta.classes, a.class_modality, absent, abnormal_beats, hr, hr_z
        )
        return evidence.move_to_normal(p, drop)

    def _step(
        self,
        category: str,
        ctx: tuple[str, float, float, dict[str, str], str, np.ndarray, np.ndarray, np.ndarray],
        on: bool,
        hold: bool,
        kind: str,
        score: float,
        detail: Callable[[], dict[str, Any]] | None = None,
    ) -> Alert | None:
        patient, start, end, devices, label, x, mu, sigma = ctx
        ep = self._episodes.setdefault((patient, category), _Episode())
        cfg = self.config
        if ep.alert_id is not None:
            if hold:
                ep.below = 0
                self.sink.extend(ep.alert_id, end, score)
                self._alert_window(ep.alert_id, patient, ep.last_kind, x, mu, sigma)
            else:
                ep.below += 1
                if ep.below >= cfg.k_off:
                    self.sink.extend(ep.alert_id, ep.last_end, score if hold else 0.0, closed=True)
                    ep.last_id, ep.alert_id = ep.alert_id, None
                    ep.above = 0
                    return None
            if hold:
                ep.last_end = end
            return None
        ep.above = ep.above + 1 if on else 0
        if ep.above < cfg.k_on:
            return None
        ep.below = 0
        resumed = ep.last_id is not None and start - ep.last_end <= cfg.cooldown_s
        if resumed and ep.last_kind == kind:
            ep.alert_id = ep.last_id  # same episode resumed: de-duplicate
            ep.last_end = end
            self.sink.extend(ep.alert_id, end, score)
            self._alert_window(ep.alert_id, patient, kind, x, mu, sigma)
            return None
        modality = self._contributing(x, mu, sigma, category, kind)
        alert = Alert(
            patient=patient,
            device=self._device_for(modality, devices),
            start=start,
            end=end,
            kind=kind,
            category=category,
            score=score,
            modality=modality,
            model=label,
            detail=detail() if detail is not None else {},
        )
        self.sink.add(alert)
        self.counters["alerts"] += 1
        ep.alert_id, ep.last_end, ep.last_kind = alert.id, end, kind
        self._alert_window(alert.id, patient, kind, x, mu, sigma)
        return alert

    def _alert_window(
        self,
        alert_id: str,
        patient: str,
        kind: str,
        x: np.ndarray,
        mu: np.ndarray,
        sigma: np.ndarray,
    ) -> None:
        if self.on_alert_window is not None:
            w = ValidatedWindow(
                x.copy(), np.array(mu, np.float32), np.array(sigma, np.float32), kind
            )
            self.on_alert_window(alert_id, patient, w)

    def _contributing(
        self, x: np.ndarray, mu: np.ndarray, sigma: np.ndarray, category: str, kind: str
    ) -> str:
        """The modality whose removal lowers the alert's probability most (occlusion).

        Run only when an alert opens (one extra model call per modality), so
        it costs nothing per window. Novelty alerts use the largest mean |z|.
        """
        a = self._active
        classes = list(a.meta.classes)
        if category == "novelty" or kind not in classes:
            with np.errstate(invalid="ignore", divide="ignore"):
                z = np.abs((x - mu.ravel()) / sigma.ravel())
            means = {
                mod: float(np.nanmean(z[idx])) if np.isfinite(z[idx]).any() else -1.0
                for mod, idx in self._mod_idx.items()
            }
            return max(means, key=lambda k: means[k]) if means else ""
        mods = [m for m, idx in self._mod_idx.items() if np.isfinite(x[idx]).any()]
        if not mods:
            return ""
        rows = np.repeat(x[None, :], len(mods), axis=0)
        for i, mod in enumerate(mods):
            rows[i, self._mod_idx[mod]] = np.nan
        probs, _ = self.score(rows, mu, sigma)
        if category == "clinical":
            drop = -probs[:, a.clinical_idx].sum(axis=1)
        else:
            drop = -probs[:, classes.index(kind)]
        return mods[int(np.argmax(drop))]

    @staticmethod
    def _device_for(modality: str, devices: dict[str, str]) -> str:
        for s in MODALITY_STREAMS.get(modality, ()):
            if str(s) in devices:
                return devices[str(s)]
        return next(iter(devices.values()), "")
