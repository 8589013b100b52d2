"""Simulated physiology: per-patient ECG, RR/HR, accelerometer, skin and ambient temperature.

The simulator is the ground truth every other part is tested against, so it has
three jobs beyond "look like a wearable":

* **Deterministic.** Everything follows from ``PatientProfile.seed``. Random
  draws come from streams that are consumed in a fixed order per *event* (beat,
  activity bout, episode) or per fixed absolute sample block, never per call,
  so ``advance(10); advance(10)`` yields exactly the samples of ``advance(20)``.
* **Labelled.** Clinical anomalies and sensor faults are injected as episodes
  with ground-truth intervals (``Label``). The interval is where the signal *is*
  abnormal: ramps in and out lie outside it, and episodes never overlap.
* **Non-IID.** Patients differ in resting heart rate, HRV, ECG amplitude,
  temperature, breathing and activity habits, as a federation of real homes
  would.

Model: beats are generated one at a time (RR driven by an activity-dependent
heart rate, LF Mayer-wave modulation and respiratory sinus arrhythmia), and
each beat is drawn as a sum of Gaussians for P, Q, R, S, ST and T - the
time-domain form of McSharry et al., "A dynamical model for generating
synthetic electrocardiogram signals", IEEE TBME 50(3), 2003. Slow quantities
(activity targets, heart-rate set point, orientation, breathing phase) live on a
1 s control grid extended in fixed blocks; sample-rate signals are interpolated
from it and evaluated fully vectorised, so an hour of 250 Hz ECG takes well
under a second.

Units: ECG in microvolts, acceleration in milli-g (device frame, +1 g along the
axis pointing up), temperatures in degrees Celsius, humidity in %RH, HR in bpm,
RR in seconds stamped at the beat that ends the interval. Stream names equal
``edgeagent.streams.Stream`` values by convention; this module never imports
``edgeagent``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from firmware_sim.ecg_variation import ECGVariation, front_end, shape_waves

ANOMALY_KINDS: tuple[str, ...] = (
    "tachycardia",
    "bradycardia",
    "af",
    "pvc",
    "st_change",
    "fall",
    "fever",
    "hypothermia",
)
FAULT_KINDS: tuple[str, ...] = ("lead_off", "motion_artifact", "saturation")
ALL_KINDS: tuple[str, ...] = ANOMALY_KINDS + FAULT_KINDS

ACTIVITIES: tuple[str, ...] = ("sleep", "rest", "walk", "run")

# Channels per stream, in recording-format column order (after the time column).
STREAM_COLUMNS: dict[str, tuple[str, ...]] = {
    "ecg": ("uv",),
    "acc": ("x", "y", "z"),
    "skin_temp": ("celsius",),
    "env": ("celsius", "humidity"),
    "hr": ("bpm",),
    "rr": ("seconds",),
}

# The simulated ECG front end saturates here; "saturation" faults pin the trace
# to this rail, and no clinical signal is allowed to reach it.
ECG_RAIL_UV = 5000.0
# A +-16 g accelerometer, the common wearable range.
ACC_RANGE_MG = 16000.0
# Clinical thresholds the temperature episodes cross inside their labels.
FEVER_THRESHOLD_C = 38.3
HYPOTHERMIA_THRESHOLD_C = 35.0
# How far past the threshold a temperature episode stays inside its label, and
# how far short of it the ramps stay outside, so sensor noise (sigma 0.02 C)
# never moves a sample across the threshold on the wrong side of a label edge.
_TEMP_MARGIN_C = 0.1

_GRID_DT = 1.0  # seconds between control-grid points
_GRID_BLOCK = 600  # grid points computed per extension (fixed => chunk-independent)
_NOISE_BLOCK = 8192  # samples per independently seeded noise block
_PREROLL_S = 10.0  # beats and grid start this long before the generator's start

# Stream tags for seeding per-stream noise blocks.
_TAGS = {
    "ecg": 1,
    "acc": 2,
    "skin_temp": 3,
    "env": 4,
    "beats": 5,
    "bouts": 6,
    "events": 7,
    "emg": 8,
    "ectopy": 9,
}

# Activity-dependent targets, indexed like ACTIVITIES.
_HR_FACTOR = np.array([0.88, 1.0, 1.35, 1.85])
_RESP_FACTOR = np.array([0.85, 1.0, 1.4, 2.0])
_MOTION = np.array([0.0, 0.1, 1.0, 3.0])  # relative movement intensity
_SKIN_OFFSET = np.array([0.25, 0.0, -0.05, -0.25])  # C, slow (tau 10 min)


@dataclass(frozen=True)
class PatientProfile:
    """One simulated wearer. Every field differs across patients (non-IID federation)."""

    patient_id: str
    seed: int
    baseline_hr: float  # resting heart rate, bpm
    hrv: float  # relative RR modulation depth at rest (0.02 = 2 %)
    resp_rate: float  # breaths per minute at rest
    lf_hz: float  # Mayer-wave (LF) frequency of RR modulation
    baseline_temp: float  # skin-patch temperature at rest, C (chest patch, near core)
    circadian_amp: float  # C, half peak-to-peak of the daily temperature cycle
    ecg_r_uv: float  # R-peak amplitude, uV
    ecg_noise_uv: float  # white noise on the ECG, uV rms
    activity_weights: tuple[float, float, float, float]  # daytime sleep/rest/walk/run
    mean_bout_s: tuple[float, float, float, float]  # mean bout length per activity
    walk_cadence_hz: float
    run_cadence_hz: float
    walk_amp_mg: float
    run_amp_mg: float
    ambient_c: float  # indoor temperature, C
    humidity_pct: float  # indoor relative humidity, %
    start_hour: float  # local clock hour at t = 0 (drives sleep and circadian phase)


def make_patient(index: int, seed: int = 0) -> PatientProfile:
    """Build patient ``index`` of population ``seed``; same arguments, same patient.

    Draws come from ``SeedSequence([seed, index])`` so adding patients never
    changes the existing ones.
    """
    if index < 0:
        raise ValueError(f"patient index must be >= 0, got {index}")
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0x5EED])
    rng = np.random.default_rng(ss)
    fitness = float(rng.beta(2.0, 2.0))  # 0 sedentary .. 1 sporty
    baseline_hr = float(rng.uniform(56.0, 80.0) - 8.0 * (fitness - 0.5))
    weights = (
        float(rng.uniform(0.0, 0.08)),
        float(1.2 - 0.6 * fitness),
        float(0.3 + 0.4 * fitness),
        float(0.02 + 0.3 * fitness**2),
    )
    return PatientProfile(
        patient_id=f"patient-{index:03d}",
        seed=int(ss.generate_state(1, np.uint32)[0]),
        baseline_hr=baseline_hr,
        hrv=float(rng.uniform(0.02, 0.065)),
        resp_rate=float(rng.uniform(11.0, 18.0)),
        lf_hz=float(rng.uniform(0.08, 0.12)),
        baseline_temp=float(rng.uniform(36.0, 36.7)),
        circadian_amp=float(rng.uniform(0.15, 0.35)),
        ecg_r_uv=float(rng.uniform(900.0, 1500.0)),
        ecg_noise_uv=float(rng.uniform(6.0, 18.0)),
        activity_weights=weights,
        mean_bout_s=(
            float(rng.uniform(1800.0, 3600.0)),
            float(rng.uniform(240.0, 900.0)),
            float(rng.uniform(90.0, 480.0)),
            float(rng.uniform(120.0, 600.0)),
        ),
        walk_cadence_hz=float(rng.uniform(1.6, 2.0)),
        run_cadence_hz=float(rng.uniform(2.5, 2.95)),
        walk_amp_mg=float(rng.uniform(180.0, 320.0)),
        run_amp_mg=float(rng.uniform(650.0, 1200.0)),
        ambient_c=float(rng.uniform(19.5, 24.5)),
        humidity_pct=float(rng.uniform(30.0, 55.0)),
        start_hour=float(rng.uniform(7.0, 12.0)),
    )


@dataclass(frozen=True)
class Label:
    """A ground-truth episode: the signal is abnormal (or faulty) throughout [start, end]."""

    start: float
    end: float
    kind: str

    @property
    def is_fault(self) -> bool:
        """True for sensor faults, which a detector must not report as clinical events."""
        return self.kind in FAULT_KINDS


@dataclass
class SimConfig:
    """Sampling rates and episode rates. ``kinds`` restricts which episodes occur.

    ``episodes`` (an addition to the agreed interface) replaces the random
    schedule with a scripted one, for tests and demos that need a given event at
    a given time; episode parameters are still drawn from the patient seed.
    ``variation`` adds a real wearable's electrode, front-end and morphology
    spread to the ECG (``firmware_sim.ecg_variation``); None keeps the clean lead.
    """

    ecg_hz: float = 250.0
    acc_hz: float = 50.0
    temp_hz: float = 1.0
    env_hz: float = 0.2
    anomaly_rate_per_hour: float = 6.0
    fault_rate_per_hour: float = 2.0
    kinds: tuple[str, ...] | None = None
    hr_hz: float = 1.0
    episodes: tuple[Label, ...] | None = None
    variation: ECGVariation | None = None

    def validate(self) -> None:
        """Raise ValueError naming the bad setting and the accepted range."""
        for name in ("ecg_hz", "acc_hz", "temp_hz", "env_hz", "hr_hz"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and 0.0 < v <= 4000.0):
                raise ValueError(f"SimConfig.{name} must be in (0, 4000] Hz, got {v!r}")
        for name in ("anomaly_rate_per_hour", "fault_rate_per_hour"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and 0.0 <= v <= 3600.0):
                raise ValueError(f"SimConfig.{name} must be in [0, 3600], got {v!r}")
        if self.kinds is not None:
            unknown = [k for k in self.kinds if k not in ALL_KINDS]
            if unknown:
                raise ValueError(f"SimConfig.kinds has unknown kinds {unknown}; known: {ALL_KINDS}")
        if self.episodes is not None:
            prev_end = -math.inf
            for ep in sorted(self.episodes, key=lambda e: e.start):
                if ep.kind not in ALL_KINDS:
                    raise ValueError(
                        f"scripted episode kind {ep.kind!r} unknown; known: {ALL_KINDS}"
                    )
                if not (math.isfinite(ep.start) and math.isfinite(ep.end) and ep.end > ep.start):
                    raise ValueError(f"scripted episode {ep} needs finite start < end")
                if ep.start < prev_end:
                    raise ValueError(f"scripted episode {ep} overlaps the one before it")
                prev_end = ep.end


@dataclass
class Chunk:
    """Samples of every stream over [start, end) plus the labels that intersect it.

    Labels carry their full episode interval (not clipped to the chunk), so an
    episode spanning two chunks appears in both with identical values.
    """

    streams: dict[str, tuple[np.ndarray, np.ndarray]]
    labels: list[Label]
    start: float = 0.0
    end: float = 0.0


# --------------------------------------------------------------------------- episodes


@dataclass
class _Episode:
    kind: str
    start: float
    end: float
    pre: float  # ramp-in length before start
    post: float  # ramp-out length after end
    p: dict[str, float] = field(default_factory=dict)

    @property
    def occ_start(self) -> float:
        return self.start - self.pre

    @property
    def occ_end(self) -> float:
        return self.end + self.post

    def weight(self, t: np.ndarray) -> np.ndarray:
        """0 outside, 1 inside [start, end], smooth ramps over pre/post."""
        w = np.zeros_like(t, dtype=np.float64)
        inside = (t >= self.start) & (t <= self.end)
        w[inside] = 1.0
        if self.pre > 0:
            m = (t >= self.start - self.pre) & (t < self.start)
            w[m] = _smoothstep((t[m] - (self.start - self.pre)) / self.pre)
        if self.post > 0:
            m = (t > self.end) & (t <= self.end + self.post)
            w[m] = _smoothstep(1.0 - (t[m] - self.end) / self.post)
        return w


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _lerp(u: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * u


# Each builder turns 8 uniforms into (duration, pre, post, params). Durations are
# realistic but detectable within 10 s windows (see docs/recording-format.md).
def _ep_tachy(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    return _lerp(u[0], 30, 120), 4.0, 4.0, {"hr": _lerp(u[1], 118, 165)}


def _ep_brady(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    return _lerp(u[0], 30, 120), 4.0, 4.0, {"hr": _lerp(u[1], 33, 45)}


def _ep_af(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    return (
        _lerp(u[0], 30, 120),
        3.0,
        3.0,
        {
            "hr": _lerp(u[1], 95, 140),
            "irr": _lerp(u[2], 0.16, 0.28),
            "f1": _lerp(u[3], 5.0, 6.0),
            "f2": _lerp(u[4], 6.3, 7.5),
            "famp": _lerp(u[5], 25, 50),
        },
    )


def _ep_pvc(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    return _lerp(u[0], 30, 120), 0.0, 0.0, {"every": float(2 + int(u[1] * 3))}


def _ep_st(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    sign = 1.0 if u[2] < 0.5 else -1.0
    return _lerp(u[0], 30, 120), 5.0, 5.0, {"st": sign * _lerp(u[1], 180, 350)}


def _ep_fall(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    # ~1 s of free fall + impact, then >= 20 s lying still.
    az = 2 * math.pi * u[3]
    return (
        1.0 + _lerp(u[0], 20, 60),
        0.0,
        3.0,
        {
            "peak": _lerp(u[1], 2800, 6000),
            "posture": float(int(u[2] * 4)),
            "dx": math.cos(az),
            "dz": math.sin(az),
        },
    )


def _ep_fever(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    ramp = _lerp(u[1], 240, 480)
    return _lerp(u[0], 300, 900), ramp, ramp, {"peak": _lerp(u[2], 38.8, 39.8)}


def _ep_hypo(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    ramp = _lerp(u[1], 240, 480)
    return (
        _lerp(u[0], 300, 900),
        ramp,
        ramp,
        {"trough": _lerp(u[2], 33.8, 34.6), "cold": _lerp(u[3], 0.0, 10.0)},
    )


def _ep_lead_off(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    return _lerp(u[0], 20, 120), 0.0, 0.0, {}


def _ep_motion(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    p = {"amp": _lerp(u[1], 600, 1100)}  # rms of the artefact, uV
    for i in range(5):
        p[f"f{i}"] = _lerp(u[2 + i], 0.7, 9.0)
    return _lerp(u[0], 20, 90), 0.0, 0.0, p


def _ep_saturation(u: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    sign = 1.0 if u[2] < 0.5 else -1.0
    return _lerp(u[0], 20, 90), 0.0, 0.0, {"offset": sign * _lerp(u[1], 1.1, 1.4) * ECG_RAIL_UV}


_EPISODE_BUILDERS: dict[
    str, Callable[[np.ndarray], tuple[float, float, float, dict[str, float]]]
] = {
    "tachycardia": _ep_tachy,
    "bradycardia": _ep_brady,
    "af": _ep_af,
    "pvc": _ep_pvc,
    "st_change": _ep_st,
    "fall": _ep_fall,
    "fever": _ep_fever,
    "hypothermia": _ep_hypo,
    "lead_off": _ep_lead_off,
    "motion_artifact": _ep_motion,
    "saturation": _ep_saturation,
}
_HR_KINDS = ("tachycardia", "bradycardia", "af")
_N_EVENT_DRAWS = 12

# Lying orientations (unit vectors, device frame): supine, prone, left, right.
_LYING = np.array([[0.0, 0.05, 1.0], [0.0, 0.05, -1.0], [1.0, 0.05, 0.0], [-1.0, 0.05, 0.0]])

# Beat wave table: per wave (P, Q, R, S, ST, T) centre [s], width [s], amplitude
# [fraction of R] for a normal beat at RR = 1 s, and for a PVC (wide QRS, no P,
# discordant T). Centres of ST/T scale with sqrt(RR) (Bazett-like QT).
_NORMAL_C = np.array([-0.165, -0.028, 0.0, 0.030, 0.12, 0.28])
_NORMAL_S = np.array([0.022, 0.009, 0.010, 0.010, 0.045, 0.050])
_NORMAL_A = np.array([0.12, -0.10, 1.0, -0.22, 0.0, 0.25])
_PVC_C = np.array([-0.165, -0.03, 0.012, 0.075, 0.14, 0.34])
_PVC_S = np.array([0.022, 0.01, 0.028, 0.030, 0.05, 0.065])
_PVC_A = np.array([0.0, 0.0, 1.3, -0.45, 0.0, -0.35])


class Generator:
    """Continuous, deterministic multi-stream simulation of one patient.

    ``advance(seconds)`` returns the samples of the next ``seconds``; repeated
    calls join without phase jumps and reproduce a single long call exactly.
    Sample times lie on absolute grids ``k / rate``.
    """

    def __init__(
        self, profile: PatientProfile, config: SimConfig | None = None, start: float = 0.0
    ) -> None:
        cfg = config if config is not None else SimConfig()
        cfg.validate()
        if not math.isfinite(start):
            raise ValueError(f"start must be finite, got {start!r}")
        self.profile = profile
        self.config = cfg
        self._t = float(start)
        self._anchor = float(start) - _PREROLL_S
        self._prng = np.random.default_rng(np.random.SeedSequence([profile.seed, 99]))
        # Per-patient fixed phases and slow-wander components.
        r = self._prng
        self._lf_phase = float(r.uniform(0, 2 * math.pi))
        self._wander_f = r.uniform(0.03, 0.2, 3)
        self._wander_a = r.uniform(25.0, 70.0, 3)
        self._wander_ph = r.uniform(0, 2 * math.pi, 3)
        self._hr_slow_f = r.uniform(1 / 1200, 1 / 300, 2)
        self._hr_slow_ph = r.uniform(0, 2 * math.pi, 2)
        self._env_ph = r.uniform(0, 2 * math.pi, 2)
        self._circ_phase_h = float(r.uniform(3.0, 5.0))  # hour of minimum temperature
        # Activity bouts.
        self._bout_rng = np.random.default_rng(
            np.random.SeedSequence([profile.seed, _TAGS["bouts"]])
        )
        self._bout_len = 0.0
        self._bout_start: list[float] = []
        self._bout_state: list[int] = []
        self._bout_orient: list[np.ndarray] = []
        # Episodes.
        self._ev_rng = np.random.default_rng(
            np.random.SeedSequence([profile.seed, _TAGS["events"]])
        )
        self._episodes: list[_Episode] = []
        self._ev_horizon = self._anchor  # schedule is complete up to here
        self._scripted = cfg.episodes is not None
        if cfg.episodes is not None:
            for lab in sorted(cfg.episodes, key=lambda e: e.start):
                # The label fixes the interval; the builder supplies ramps and parameters.
                _, pre, post, p = _EPISODE_BUILDERS[lab.kind](self._ev_rng.random(_N_EVENT_DRAWS))
                self._episodes.append(_Episode(lab.kind, lab.start, lab.end, pre, post, p))
            self._ev_horizon = math.inf
        allowed = set(cfg.kinds) if cfg.kinds is not None else set(ALL_KINDS)
        self._anom_kinds = [k for k in ANOMALY_KINDS if k in allowed]
        self._fault_kinds = [k for k in FAULT_KINDS if k in allowed]
        self._rate_a = cfg.anomaly_rate_per_hour if self._anom_kinds else 0.0
        self._rate_f = cfg.fault_rate_per_hour if self._fault_kinds else 0.0
        # Control grid (arrays grow by _GRID_BLOCK points).
        self._g_n = 0
        self._g: dict[str, np.ndarray] = {}
        self._g_state: dict[str, np.ndarray] = {}
        # Beats.
        self._beat_rng = np.random.default_rng(
            np.random.SeedSequence([profile.seed, _TAGS["beats"]])
        )
        self._beat_buf = np.empty((0, 4))
        self._beat_buf_i = 0
        self._beat_t: list[float] = [self._anchor]
        self._beat_rr: list[float] = [60.0 / profile.baseline_hr]
        self._beat_kind: list[int] = [0]
        self._beat_p: list[float] = [1.0]
        self._beat_st: list[float] = [0.0]
        self._pvc_count = 0
        self._compensate = 0.0
        # Isolated ectopic beats of a real wearer (ECGVariation), from their own stream.
        self._ectopy_rng = np.random.default_rng(
            np.random.SeedSequence([profile.seed, _TAGS["ectopy"]])
        )
        self._bt_arr: dict[str, np.ndarray] | None = None
        self._noise_cache: dict[tuple[str, int], np.ndarray] = {}

    # ------------------------------------------------------------------ public

    @property
    def now(self) -> float:
        """Simulated time reached so far (the start of the next ``advance``)."""
        return self._t

    def advance(self, seconds: float) -> Chunk:
        """Simulate the next ``seconds`` of every stream and return them with their labels."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        t0, t1 = self._t, self._t + float(seconds)
        self._ensure(t1 + 5.0)
        cfg = self.config
        streams: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        t = _sample_times(t0, t1, cfg.ecg_hz)
        streams["ecg"] = (t, self._ecg(t))
        t = _sample_times(t0, t1, cfg.acc_hz)
        streams["acc"] = (t, self._acc(t))
        t = _sample_times(t0, t1, cfg.temp_hz)
        streams["skin_temp"] = (t, self._skin_temp(t))
        t = _sample_times(t0, t1, cfg.env_hz)
        streams["env"] = (t, self._env(t))
        t = _sample_times(t0, t1, cfg.hr_hz)
        streams["hr"] = self._hr_stream(t)
        streams["rr"] = self._rr_stream(t0, t1)
        labels = [
            Label(float(e.start), float(e.end), e.kind)
            for e in self._episodes
            if e.end >= t0 and e.start < t1
        ]
        self._t = t1
        self._trim_beats(t1 - 30.0)
        return Chunk(streams=streams, labels=labels, start=t0, end=t1)

    def activity_at(self, t: float) -> str:
        """The activity state (one of ACTIVITIES) at time ``t`` (ground truth for context)."""
        self._ensure_bouts(t + 1.0)
        i = int(np.searchsorted(np.asarray(self._bout_start), t, side="right")) - 1
        return ACTIVITIES[self._bout_state[max(i, 0)]]

    # ------------------------------------------------------------------ schedules

    def _ensure(self, t: float) -> None:
        self._ensure_bouts(t + 2 * _GRID_BLOCK * _GRID_DT)
        self._ensure_events(t + 3600.0)
        self._ensure_grid(t + 5.0)
        self._ensure_beats(t + 2.0)

    def _ensure_bouts(self, t: float) -> None:
        p = self.profile
        while not self._bout_start or self._bout_start[-1] <= t:
            u = self._bout_rng.random(6)
            start = self._bout_start[-1] + self._bout_len if self._bout_start else self._anchor
            hour = (p.start_hour + start / 3600.0) % 24.0
            night = hour >= 23.0 or hour < 7.0
            w = np.array([0.85, 0.13, 0.02, 0.0]) if night else np.array(p.activity_weights)
            if self._bout_state and self._bout_state[-1] != 0:
                w = w.copy()
                w[self._bout_state[-1]] = 0.0  # force a change unless asleep (posture shift)
            cdf = np.cumsum(w) / w.sum()
            state = int(min(np.searchsorted(cdf, u[0], side="right"), 3))
            self._bout_len = float(p.mean_bout_s[state] * (0.4 + 1.2 * u[1]))
            if state == 0:
                orient = _LYING[int(u[2] * 4)].copy()
            else:
                tilt = (0.05 + 0.35 * u[3]) if state == 1 else 0.08 * u[3]
                az = 2 * math.pi * u[4]
                orient = np.array([tilt * math.cos(az), 1.0, tilt * math.sin(az)])
            self._bout_start.append(start)
            self._bout_state.append(state)
            self._bout_orient.append(orient / np.linalg.norm(orient))

    def _ensure_events(self, t: float) -> None:
        rate = self._rate_a + self._rate_f
        if self._scripted or rate <= 0.0:
            return
        while self._ev_horizon <= t:
            u = self._ev_rng.random(_N_EVENT_DRAWS)
            pool = self._fault_kinds if u[0] < self._rate_f / rate else self._anom_kinds
            kind = pool[min(int(u[1] * len(pool)), len(pool) - 1)]
            gap = -math.log(1.0 - u[2]) * 3600.0 / rate
            dur, pre, post, params = _EPISODE_BUILDERS[kind](u[3:])
            start = max(self._ev_horizon, self._anchor + _PREROLL_S) + gap + pre
            ep = _Episode(kind, start, start + dur, pre, post, params)
            self._episodes.append(ep)
            self._ev_horizon = ep.occ_end

    def _active(self, a: float, b: float, kinds: tuple[str, ...] | None = None) -> list[_Episode]:
        """Episodes whose ramped extent intersects [a, b]."""
        return [
            e
            for e in self._episodes
            if e.occ_end >= a and e.occ_start <= b and (kinds is None or e.kind in kinds)
        ]

    # ------------------------------------------------------------------ control grid

    def _ensure_grid(self, t: float) -> None:
        while self._anchor + (self._g_n - 1) * _GRID_DT < t:
            self._grow_grid()

    def _grow_grid(self) -> None:
        p = self.profile
        k = np.arange(self._g_n, self._g_n + _GRID_BLOCK)
        tk = self._anchor + k * _GRID_DT
        self._ensure_bouts(float(tk[-1]) + 1.0)
        starts = np.asarray(self._bout_start)
        bi = np.searchsorted(starts, tk, side="right") - 1
        state = np.asarray(self._bout_state)[bi]
        orient = np.asarray(self._bout_orient)[bi]
        slow = sum(
            2.0 * np.sin(2 * np.pi * f * tk + ph)
            for f, ph in zip(self._hr_slow_f, self._hr_slow_ph, strict=True)
        )
        hr_t = p.baseline_hr * _HR_FACTOR[state] + slow
        resp_t = p.resp_rate * _RESP_FACTOR[state]
        amp_t = np.where(state == 2, p.walk_amp_mg, np.where(state == 3, p.run_amp_mg, 0.0))
        cad_t = np.where(state == 2, p.walk_cadence_hz, np.where(state == 3, p.run_cadence_hz, 0.0))
        new = {
            "hr": self._lowpass("hr", hr_t, 25.0),
            "resp": self._lowpass("resp", resp_t, 10.0),
            "amp": self._lowpass("amp", amp_t, 1.5),
            "cad": cad_t,
            "motion": self._lowpass("motion", _MOTION[state], 1.5),
            "skin": self._lowpass("skin", _SKIN_OFFSET[state], 600.0),
            "ox": self._lowpass("ox", orient[:, 0], 1.5),
            "oy": self._lowpass("oy", orient[:, 1], 1.5),
            "oz": self._lowpass("oz", orient[:, 2], 1.5),
        }
        # Phases integrate their frequency; carry the running total across blocks.
        new["resp_ph"] = self._integrate("resp_ph", 2 * np.pi * new["resp"] / 60.0)
        new["cad_ph"] = self._integrate("cad_ph", 2 * np.pi * cad_t)
        for key, val in new.items():
            self._g[key] = np.concatenate([self._g[key], val]) if key in self._g else val
        self._g["t"] = self._anchor + np.arange(self._g_n + _GRID_BLOCK) * _GRID_DT
        self._g_n += _GRID_BLOCK

    def _lowpass(self, key: str, x: np.ndarray, tau: float) -> np.ndarray:
        """First-order lag (time constant ``tau`` s) with state carried across blocks."""
        a = math.exp(-_GRID_DT / tau)
        y = np.empty_like(x, dtype=np.float64)
        prev = float(self._g_state[key][0]) if key in self._g_state else float(x[0])
        for i, xi in enumerate(x.tolist()):
            prev = a * prev + (1.0 - a) * xi
            y[i] = prev
        self._g_state[key] = np.array([prev])
        return y

    def _integrate(self, key: str, rate: np.ndarray) -> np.ndarray:
        start = float(self._g_state[key][0]) if key in self._g_state else 0.0
        out = start + np.concatenate([[0.0], np.cumsum(rate[:-1] * _GRID_DT)])
        self._g_state[key] = np.array([out[-1] + rate[-1] * _GRID_DT])
        return out

    def _grid(self, key: str, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self._g["t"], self._g[key])

    # ------------------------------------------------------------------ beats

    def _draw_beat(self) -> np.ndarray:
        if self._beat_buf_i >= len(self._beat_buf):
            self._beat_buf = self._beat_rng.standard_normal((1024, 4))
            self._beat_buf_i = 0
        row = self._beat_buf[self._beat_buf_i]
        self._beat_buf_i += 1
        return row

    def _ensure_beats(self, t: float) -> None:
        if self._beat_t[-1] > t:
            return
        p = self.profile
        g_t, g_hr, g_resp = self._g["t"], self._g["hr"], self._g["resp_ph"]
        eps = self._active(self._beat_t[-1] - 10.0, t + 10.0)
        while self._beat_t[-1] <= t:
            tb = self._beat_t[-1]
            z = self._draw_beat()
            hr = float(np.interp(tb, g_t, g_hr))
            kind, st = 0, 0.0
            ep = next((e for e in eps if e.occ_start <= tb <= e.occ_end), None)
            in_label = ep is not None and ep.start <= tb <= ep.end
            if ep is not None and ep.kind in _HR_KINDS:
                w = float(ep.weight(np.array([tb]))[0])
                hr = (1.0 - w) * hr + w * ep.p["hr"]
            rr0 = 60.0 / hr
            scale = p.hrv * min(1.0, (p.baseline_hr / hr) ** 2)
            resp_ph = float(np.interp(tb, g_t, g_resp))
            m = scale * (
                0.6 * math.sin(2 * math.pi * p.lf_hz * tb + self._lf_phase)
                + 0.5 * math.sin(resp_ph)
            )
            rr = rr0 * (1.0 + m + 0.006 * z[0])
            var = self.config.variation
            if var is not None and var.rr_jitter > 0:
                # Beat-to-beat (vagal) variability: real resting pNN50 is 5-30 %.
                rr *= 1.0 + var.rr_jitter * float(self._ectopy_rng.standard_normal())
            if self._compensate > 0.0:
                rr, self._compensate = self._compensate, 0.0
            elif var is not None and var.ectopy_per_min > 0 and ep is None:
                # Healthy hearts throw an occasional early beat outside any episode:
                # unlabelled, so a window holding one is still normal.
                u = self._ectopy_rng.random(3)
                if u[0] < var.ectopy_per_min * rr / 60.0:
                    if u[1] < var.pvc_share:
                        rr_pre = rr * (0.6 + 0.1 * u[2])
                        self._compensate = 2.0 * rr - rr_pre  # full compensatory pause
                        rr, kind = rr_pre, 1
                    else:
                        rr_pre = rr * (0.62 + 0.2 * u[2])
                        self._compensate = rr * 1.05  # atrial: the sinus node resets
                        rr = rr_pre
            elif in_label and ep is not None and ep.kind == "af":
                rr = rr0 * math.exp(ep.p["irr"] * z[1])
            elif in_label and ep is not None and ep.kind == "pvc":
                self._pvc_count += 1
                rr_pre = rr * (0.62 + 0.04 * z[3])
                due = self._pvc_count % int(ep.p["every"]) == 0 and z[2] > -1.0
                if due and tb + rr_pre <= ep.end:
                    # Premature by ~35 %, with a full compensatory pause after it.
                    self._compensate = 2.0 * rr - rr_pre
                    rr, kind = rr_pre, 1
            rr = min(max(rr, 0.27), 2.2)
            tn = tb + rr
            # Morphology follows the episode at the new beat's time (ramps outside the label).
            ep_n = next((e for e in eps if e.occ_start <= tn <= e.occ_end), None)
            if ep_n is not None and ep_n.kind == "st_change":
                st = ep_n.p["st"] * float(ep_n.weight(np.array([tn]))[0])
            af_n = ep_n is not None and ep_n.kind == "af" and ep_n.start <= tn <= ep_n.end
            pwave = 0.0 if (kind == 1 or af_n) else 1.0  # no P wave before a PVC or in AF
            self._beat_t.append(tn)
            self._beat_rr.append(rr)
            self._beat_kind.append(kind)
            self._beat_p.append(pwave)
            self._beat_st.append(st)
        self._bt_arr = None

    def _trim_beats(self, before: float) -> None:
        """Forget beats long past so streaming for hours stays O(1) per call."""
        k = int(np.searchsorted(np.asarray(self._beat_t), before)) - 8
        if k > 0:
            for lst in (self._beat_t, self._beat_rr, self._beat_kind, self._beat_p, self._beat_st):
                del lst[:k]
            self._bt_arr = None

    def _beats(self) -> dict[str, np.ndarray]:
        if self._bt_arr is None:
            self._bt_arr = {
                "t": np.asarray(self._beat_t),
                "rr": np.asarray(self._beat_rr),
                "kind": np.asarray(self._beat_kind),
                "p": np.asarray(self._beat_p),
                "st": np.asarray(self._beat_st),
            }
        return self._bt_arr

    # ------------------------------------------------------------------ noise

    def _noise(self, stream: str, t: np.ndarray, rate: float, ch: int) -> np.ndarray:
        """Standard normal noise tied to absolute sample indices (chunking-independent)."""
        if len(t) == 0:
            return np.zeros((0, ch))
        n0 = round(t[0] * rate)
        n1 = n0 + len(t)
        out = np.empty((len(t), ch))
        b0, b1 = n0 // _NOISE_BLOCK, (n1 - 1) // _NOISE_BLOCK
        for b in range(b0, b1 + 1):
            key = (stream, b)
            blk = self._noise_cache.get(key)
            if blk is None:
                ss = np.random.SeedSequence(
                    [self.profile.seed, _TAGS[stream], b & 0xFFFFFFFF, b >> 32 & 0xFFFF]
                )
                blk = np.random.default_rng(ss).standard_normal((_NOISE_BLOCK, ch))
                self._noise_cache = {k: v for k, v in self._noise_cache.items() if k[0] != stream}
                self._noise_cache[key] = blk
            lo = max(n0, b * _NOISE_BLOCK)
            hi = min(n1, (b + 1) * _NOISE_BLOCK)
            out[lo - n0 : hi - n0] = blk[lo - b * _NOISE_BLOCK : hi - b * _NOISE_BLOCK]
        return out

    # ------------------------------------------------------------------ streams

    def _ecg(self, t: np.ndarray) -> np.ndarray:
        p = self.profile
        y = np.zeros(len(t))
        if len(t) == 0:
            return y.astype(np.float32)[:, None]
        full = self._beats()
        i0 = max(int(np.searchsorted(full["t"], t[0])) - 3, 0)
        i1 = int(np.searchsorted(full["t"], t[-1])) + 3
        bt = {k: v[i0:i1] for k, v in full.items()}
        nb = len(bt["t"])
        # Per-beat wave parameters (rows: beats, columns: P Q R S ST T).
        q = np.sqrt(np.clip(bt["rr"], 0.25, 1.69))
        pvc = bt["kind"][:, None] == 1
        c = np.where(pvc, _PVC_C, _NORMAL_C)
        c = c.copy()
        c[:, 4:] *= np.where(pvc[:, 0], 1.0, q)[:, None]
        s = np.where(pvc, _PVC_S, _NORMAL_S).copy()
        s[:, 5] *= np.where(pvc[:, 0], 1.0, q)
        a = np.where(pvc, _PVC_A, _NORMAL_A) * p.ecg_r_uv
        a[:, 0] *= bt["p"]
        a[:, 4] = bt["st"]
        resp = np.sin(self._grid("resp_ph", bt["t"]))
        a[:, :4] *= (1.0 + 0.06 * resp)[:, None]
        a[:, 5] *= 1.0 + 0.06 * resp
        var = self.config.variation
        if var is not None:
            shape_waves(var, a, s, bt["t"], pvc[:, 0])
        step = 65536
        for i in range(0, len(t), step):
            ts = t[i : i + step]
            j = np.searchsorted(bt["t"], ts, side="right") - 1
            acc = np.zeros(len(ts))
            for off in (-1, 0, 1):
                jj = np.clip(j + off, 0, nb - 1)
                dt = ts[:, None] - bt["t"][jj][:, None] - c[jj]
                acc += np.sum(a[jj] * np.exp(-0.5 * (dt / s[jj]) ** 2), axis=1)
            y[i : i + step] = acc
        # Baseline wander (breathing + slow drift), motion noise, mains hum, white noise.
        resp_ph = self._grid("resp_ph", t)
        wander = 35.0 * np.sin(resp_ph)
        for f, amp, ph in zip(self._wander_f, self._wander_a, self._wander_ph, strict=True):
            wander += amp * np.sin(2 * np.pi * f * t + ph)
        y += wander
        motion = self._grid("motion", t)
        z = self._noise("ecg", t, self.config.ecg_hz, 2)
        y += (p.ecg_noise_uv + 12.0 * motion) * z[:, 0]
        y += 60.0 * motion * np.sin(self._grid("cad_ph", t) + 0.3)
        y += 4.0 * np.sin(2 * np.pi * 50.0 * t)
        lead = 1.0
        if var is not None:
            emg = self._noise("emg", t, self.config.ecg_hz, 1)[:, 0]
            y = front_end(var, t, y, wander, emg)
            lead = var.polarity * var.gain
        if len(t):
            for e in self._active(float(t[0]), float(t[-1])):
                m = (t >= e.start) & (t <= e.end)
                if not m.any():
                    continue
                tm = t[m]
                if e.kind == "af":
                    y[m] += (
                        lead
                        * e.p["famp"]
                        * (
                            np.sin(2 * np.pi * e.p["f1"] * tm)
                            + 0.6 * np.sin(2 * np.pi * e.p["f2"] * tm + 1.0)
                        )
                    )
                elif e.kind == "motion_artifact":
                    art = np.zeros(len(tm))
                    for i in range(5):
                        art += np.sin(2 * np.pi * e.p[f"f{i}"] * tm + i)
                    art *= e.p["amp"] / math.sqrt(2.5)  # unit rms -> amp rms
                    art += 4.0 * p.ecg_noise_uv * z[m, 1]
                    # Soft-limit below the rail: an artefact must not look like saturation.
                    lim = 0.95 * ECG_RAIL_UV
                    y[m] = lim * np.tanh((y[m] + art) / lim)
                elif e.kind == "saturation":
                    y[m] = e.p["offset"] + 1.5 * y[m]
                elif e.kind == "lead_off":
                    y[m] = 0.0
        return np.clip(y, -ECG_RAIL_UV, ECG_RAIL_UV).astype(np.float32)[:, None]

    def _acc(self, t: np.ndarray) -> np.ndarray:
        o = np.stack([self._grid("ox", t), self._grid("oy", t), self._grid("oz", t)], axis=1)
        o /= np.linalg.norm(o, axis=1, keepdims=True)
        g = 1000.0 * o
        amp = self._grid("amp", t)
        ph = self._grid("cad_ph", t)
        dyn = np.stack(
            [
                0.4 * amp * np.sin(ph / 2),
                amp * (np.sin(ph) + 0.35 * np.sin(2 * ph)),
                0.25 * amp * np.sin(ph + 0.8),
            ],
            axis=1,
        )
        noise_sd = 4.0 + 10.0 * self._grid("motion", t)
        z = self._noise("acc", t, self.config.acc_hz, 3)
        if len(t):
            for e in self._active(float(t[0]), float(t[-1]), ("fall", "motion_artifact")):
                m = (t >= e.occ_start) & (t <= e.occ_end)
                if not m.any():
                    continue
                tm = t[m]
                if e.kind == "motion_artifact":
                    noise_sd[m] += 40.0
                    continue
                lying = (
                    1000.0
                    * _LYING[int(e.p["posture"])]
                    / np.linalg.norm(_LYING[int(e.p["posture"])])
                )
                ti = e.start + 0.45  # impact time
                falling = (tm >= e.start) & (tm < ti)
                after = tm >= ti
                w_up = np.ones(len(tm))
                post = tm > e.end
                w_up[post] = _smoothstep((tm[post] - e.end) / max(e.post, 1e-6))
                w_up[~post & after] = 0.0
                gm = g[m]
                gm[falling] *= 0.15  # near free fall
                gm[after] = w_up[after, None] * gm[after] + (1 - w_up[after, None]) * lying
                d = np.array([e.p["dx"], -0.6, e.p["dz"]])
                d /= np.linalg.norm(d)
                pulse = e.p["peak"] * np.exp(-0.5 * ((tm - ti) / 0.05) ** 2)
                gm += pulse[:, None] * d
                g[m] = gm
                dyn[m] *= np.where(falling | (after & ~post), 0.0, w_up)[:, None]
                noise_sd[m] = np.where((tm >= e.start + 1.0) & ~post, 1.5, noise_sd[m])
        out = g + dyn + noise_sd[:, None] * z
        return np.clip(out, -ACC_RANGE_MG, ACC_RANGE_MG).astype(np.float32)

    def _normal_temp(self, t: np.ndarray) -> np.ndarray:
        p = self.profile
        hours = p.start_hour + t / 3600.0
        circ = -p.circadian_amp * np.cos(2 * np.pi * (hours - self._circ_phase_h) / 24.0)
        return (
            p.baseline_temp + circ + self._grid("skin", t) + 0.05 * np.sin(2 * np.pi * t / 1700.0)
        )

    def _skin_temp(self, t: np.ndarray) -> np.ndarray:
        y = self._normal_temp(t)
        if len(t):
            for e in self._active(float(t[0]), float(t[-1]), ("fever", "hypothermia")):
                self._apply_temp_episode(e, t, y)
        y += 0.02 * self._noise("skin_temp", t, self.config.temp_hz, 1)[:, 0]
        return y.astype(np.float32)[:, None]

    @staticmethod
    def _apply_temp_episode(e: _Episode, t: np.ndarray, y: np.ndarray) -> None:
        """Ramp to just short of the threshold, cross it at ``start``, return after ``end``."""
        if e.kind == "fever":
            thr, extreme, sign = FEVER_THRESHOLD_C, e.p["peak"], 1.0
        else:
            thr, extreme, sign = HYPOTHERMIA_THRESHOLD_C, e.p["trough"], -1.0
        inner, outer = thr + sign * _TEMP_MARGIN_C, thr - sign * _TEMP_MARGIN_C
        m = (t >= e.occ_start) & (t <= e.occ_end)
        tm = t[m]
        w = e.weight(tm)
        out = (1.0 - w) * y[m] + w * outer
        inside = (tm >= e.start) & (tm <= e.end)
        x = (tm[inside] - e.start) / (e.end - e.start)
        bump = _smoothstep(np.minimum(x / 0.3, 1.0)) * _smoothstep(np.minimum((1.0 - x) / 0.3, 1.0))
        out[inside] = inner + (extreme - inner) * bump
        y[m] = out

    def _env(self, t: np.ndarray) -> np.ndarray:
        p = self.profile
        hours = p.start_hour + t / 3600.0
        day = np.sin(2 * np.pi * (hours - 9.0) / 24.0)
        temp = p.ambient_c + 1.2 * day + 0.3 * np.sin(2 * np.pi * t / 2400.0 + self._env_ph[0])
        hum = p.humidity_pct - 4.0 * day + 2.0 * np.sin(2 * np.pi * t / 3100.0 + self._env_ph[1])
        if len(t):
            for e in self._active(float(t[0]), float(t[-1]), ("hypothermia",)):
                w = e.weight(t)
                temp = (1.0 - w) * temp + w * e.p["cold"]
                hum = (1.0 - w) * hum + w * np.minimum(hum + 15.0, 90.0)
        z = self._noise("env", t, self.config.env_hz, 2)
        out = np.stack([temp + 0.05 * z[:, 0], np.clip(hum + 0.3 * z[:, 1], 0.0, 100.0)], axis=1)
        return out.astype(np.float32)

    def _lead_off_mask(self, t: np.ndarray, lookback: float) -> np.ndarray:
        """True where a lead-off episode covers [t - lookback, t]: the device sees no beats."""
        m = np.zeros(len(t), dtype=bool)
        if len(t):
            for e in self._active(float(t[0]) - lookback, float(t[-1]), ("lead_off",)):
                m |= (t >= e.start) & (t - lookback <= e.end)
        return m

    def _hr_stream(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Device-reported HR: 60 / mean of the last four RR intervals, none while lead-off."""
        bt = self._beats()["t"]
        j = np.searchsorted(bt, t, side="right") - 1
        j4 = np.maximum(j - 4, 0)
        span = np.maximum(j - j4, 1)
        hr = 60.0 * span / np.maximum(bt[j] - bt[j4], 1e-3)
        keep = ~self._lead_off_mask(t, 4.0) & (j >= 4)
        return t[keep], hr[keep].astype(np.float32)[:, None]

    def _rr_stream(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        bt = self._beats()
        i0, i1 = np.searchsorted(bt["t"], [t0, t1], side="left")
        t = bt["t"][i0:i1]
        rr = bt["rr"][i0:i1]
        keep = ~self._lead_off_mask(t, 0.0) & ~self._lead_off_mask(t - rr, 0.0)
        return t[keep].copy(), rr[keep].astype(np.float32)[:, None]


def _sample_times(t0: float, t1: float, rate: float) -> np.ndarray:
    """Absolute sample grid k / rate within [t0, t1), robust to float accumulation."""
    n0 = math.ceil(t0 * rate - 1e-6)
    n1 = math.ceil(t1 * rate - 1e-6)
    return np.arange(n0, n1, dtype=np.float64) / rate


def simulate(profile: PatientProfile, seconds: float, config: SimConfig | None = None) -> Chunk:
    """One-shot simulation from t = 0; equals ``Generator(profile, config).advance(seconds)``."""
    return Generator(profile, config).advance(seconds)
