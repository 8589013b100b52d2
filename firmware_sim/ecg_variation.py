"""What real ECG wearables add to a clean heart: electrodes, front ends and morphology spread.

Why: a model trained on one tidy lead learns that lead. Real electrodes are
placed either way round (polarity), amplify differently (gain spread of
several times between a chest strap and a patch), wander with breathing and
movement, pick up muscle (EMG) and mains (50/60 Hz) noise, and sit on hearts
whose QRS width, S depth, T height and resting ST level differ from person to
person and a little from beat to beat. ``ECGVariation`` holds one wearer's
draw of all of these; ``physiology.Generator`` applies it when
``SimConfig.variation`` is set. Without it the simulator keeps its clean
lead, which the protocol and device tests rely on.

Ranges: gain 0.35-2.6x (R waves of ~0.3-4 mV seen across leads and devices),
QRS 0.7-1.35x the table's width (real narrow QRS 40-60 ms at the 20 %-slope
measure used by the agent; record 100 of the MIT-BIH Arrhythmia Database
reads 42 ms), resting ST -8 % to +4 % of R (record 100: -45 uV on 1.2 mV),
EMG up to 35 uV rms in bursts, mains up to 40 uV, and up to 2.5 isolated
early beats a minute outside episodes, beat-to-beat RR noise of 0.5-3.5 %
(record 100: RMSSD 27 ms, pNN50 9 % in 10 s windows), QRS widths varying
2-10 % from beat to beat, (record 100: 34 in 30 min; healthy
Holter recordings commonly hold some), a share of them ventricular. Deterministic from
``(seed, index)``; never imports ``edgeagent``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ECGVariation:
    """One wearer's electrode, front-end and morphology draw (neutral values = clean lead)."""

    polarity: float = 1.0  # -1: lead placed the other way round
    gain: float = 1.0  # front-end/electrode gain multiplier
    qrs_scale: float = 1.0  # widths of Q, R, S
    s_scale: float = 1.0  # depth of S
    p_scale: float = 1.0
    t_scale: float = 1.0
    st_offset: float = 0.0  # resting ST level, fraction of R
    beat_jitter: float = 0.0  # relative beat-to-beat amplitude spread
    wander_scale: float = 1.0
    emg_uv: float = 0.0  # muscle noise rms during bursts
    emg_duty: float = 0.0  # fraction of time in EMG bursts
    mains_uv: float = 0.0
    mains_hz: float = 50.0
    rr_jitter: float = 0.0  # relative beat-to-beat RR noise (vagal variability)
    width_jitter: float = 0.0  # relative beat-to-beat QRS width spread
    ectopy_per_min: float = 0.0  # isolated early beats outside any episode
    pvc_share: float = 0.0  # of those, the fraction that are ventricular


def make_variation(index: int, seed: int = 0) -> ECGVariation:
    """Wearer ``index``'s variation; same arguments, same draw (independent of the patient's)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0xEC6]))
    return ECGVariation(
        polarity=-1.0 if rng.random() < 0.3 else 1.0,
        gain=float(math.exp(rng.uniform(math.log(0.35), math.log(2.6)))),
        qrs_scale=float(rng.uniform(0.7, 1.35)),
        s_scale=float(rng.uniform(0.3, 2.0)),
        p_scale=float(rng.uniform(0.5, 1.5)),
        t_scale=float(rng.uniform(0.4, 1.6)),
        st_offset=float(rng.uniform(-0.08, 0.04)),
        beat_jitter=float(rng.uniform(0.01, 0.06)),
        wander_scale=float(rng.uniform(0.5, 4.0)),
        emg_uv=float(rng.uniform(0.0, 35.0)),
        emg_duty=float(rng.uniform(0.0, 0.3)),
        mains_uv=float(rng.uniform(0.0, 40.0)),
        mains_hz=50.0 if rng.random() < 0.5 else 60.0,
        rr_jitter=float(rng.uniform(0.005, 0.035)),
        width_jitter=float(rng.uniform(0.02, 0.10)),
        ectopy_per_min=float(rng.uniform(0.0, 2.5)),
        pvc_share=float(rng.uniform(0.0, 0.5)),
    )


def beat_hash(t: np.ndarray) -> np.ndarray:
    """A uniform(-0.5, 0.5) number per beat time, the same however the stream is chunked."""
    v = np.sin(np.asarray(t, np.float64) * 12.9898 + 78.233) * 43758.5453
    return v - np.floor(v) - 0.5


def shape_waves(
    var: ECGVariation, amp: np.ndarray, width: np.ndarray, beat_t: np.ndarray, pvc: np.ndarray
) -> None:
    """Apply the morphology draw to per-beat wave tables in place (columns P Q R S ST T).

    ``amp`` is in uV with R scaled to the patient's R amplitude; ``pvc`` marks
    ectopic beats, whose QRS keeps its own (wide) shape.
    """
    normal = ~np.asarray(pvc, bool)
    width[normal, 1:4] *= var.qrs_scale
    amp[:, 3] *= var.s_scale
    amp[:, 0] *= var.p_scale
    amp[:, 5] *= var.t_scale
    r = amp[:, 2].copy()
    amp[:, 4] += var.st_offset * r
    amp *= (1.0 + var.beat_jitter * 3.46 * beat_hash(beat_t))[:, None]
    width[:, 1:4] *= (1.0 + var.width_jitter * 3.46 * beat_hash(beat_t + 0.5))[:, None]


def front_end(
    var: ECGVariation, t: np.ndarray, y: np.ndarray, wander: np.ndarray, emg: np.ndarray
) -> np.ndarray:
    """The lead as the device reports it: cardiac signal + wander, gained, plus EMG and mains.

    ``wander`` is the simulator's own baseline wander (scaled here), ``emg`` a
    standard-normal sequence tied to the samples; bursts come from a slow
    deterministic envelope so they last seconds, as muscle tension does.
    """
    out = y + (var.wander_scale - 1.0) * wander
    out = var.polarity * var.gain * out
    if var.emg_uv > 0 and var.emg_duty > 0:
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 0.05 * t) * np.sin(2 * np.pi * 0.013 * t + 1.0)
        burst = env > 1.0 - var.emg_duty
        out = out + var.emg_uv * burst * emg
    if var.mains_uv > 0:
        out = out + var.mains_uv * np.sin(2 * np.pi * var.mains_hz * t)
    return out
