"""Per-patient calibration: normalisation and alert thresholds from the patient's own baseline.

Why: a resting heart rate of 95 bpm is normal for one patient and a warning
for another. The global model sees features standardised by each patient's
own median and spread, so it learns "unusual for this person"; the
calibration lives only on the box and is never averaged (the federated
vector holds only model weights).

A new patient starts from the population calibration stored in the model and
moves to their own robust estimate (median, 1.4826 x MAD) with shrinkage
weight ``n / (n + prior_windows)``: after ``warmup_windows`` windows the
personal estimate dominates, so adaptation is bounded in windows, not open
ended. Only windows judged normal and of good quality update it, so an
anomaly cannot teach the box that it is normal. Pure numpy; the caller
persists ``to_dict()``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Windows the population prior is worth; personal data outweighs it after this many.
PRIOR_WINDOWS = 8
#: After this many accepted windows the calibration is considered personal.
WARMUP_WINDOWS = 40
#: Rolling buffer length: old enough to be stable, short enough to follow slow drift.
BUFFER_WINDOWS = 200
#: Personal spread never drops below this fraction of the population's spread,
#: so a constant feature cannot turn noise into 100-sigma events.
SIGMA_FLOOR = 0.15
#: Scores of the patient's own normal windows raise the alert threshold to their
#: 99th percentile plus this margin (never lower it below the global threshold).
THRESHOLD_MARGIN = 0.05
MAX_THRESHOLD = 0.9
#: A calibration or later median counts at most this many population sigmas in the
#: fleet's persistence sums (``persistence_sums``), so no box outweighs the rest.
PERSISTENCE_CLIP = 8.0
#: Features whose per-patient baseline is a stable trait (heart rhythm, ECG morphology,
#: skin temperature). The rest describe the context (activity, posture, environment)
#: or the recording (coverage, signal quality): a calibration period of a few minutes
#: sees one activity state and one room, so a personal median and spread of those
#: features would turn the patient's next walk into an 8-sigma event on every
#: accelerometer feature. Measured on the pilot (docs/pilot.md): calibrating every
#: feature cost ~16 points of accuracy against population scaling; traits only,
#: location only, ~3.
TRAIT_FEATURES: tuple[str, ...] = (
    "hr_bpm",
    "hr_from_device",
    "rr_sdnn_ms",
    "rr_rmssd_ms",
    "rr_pnn50",
    "rr_cv",
    "rr_nrmssd",
    "rr_sd_entropy",
    "rr_premature_frac",
    "ecg_r_amp_uv",
    "ecg_qrs_width_ms",
    "ecg_st_level_uv",
    "ecg_template_corr",
    "ecg_kurtosis",
    "ecg_st_rel",
    "ecg_beat_morph_dist_max",
    "skin_temp_c",
    "skin_temp_slope_c_per_min",
    "skin_temp_std_c",
)


def trait_mask(names: Sequence[str]) -> np.ndarray:
    """Bool per feature name: True for ``TRAIT_FEATURES`` (worth calibrating per patient)."""
    return np.asarray([n in TRAIT_FEATURES for n in names], bool)


def _nanmedian_columns(x: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """Column medians ignoring NaN, ``cnt`` finite values per column (NaN where none).

    The same numbers as ``np.nanmedian(x, axis=0)`` (tested bit for bit), 5-6x
    faster on a calibration buffer: NumPy takes a masked-array path for small
    arrays with NaN, and this runs on every accepted window, before the
    window's alert leaves the box.
    """
    if x.shape[0] == 0:
        return np.full(x.shape[1], np.nan)
    s = np.sort(x, axis=0)  # NaN sorts last, so the finite values lead each column
    top = x.shape[0] - 1
    lo = np.clip((cnt - 1) // 2, 0, top)[None, :]
    hi = np.clip(cnt // 2, 0, top)[None, :]
    med = 0.5 * (np.take_along_axis(s, lo, 0)[0] + np.take_along_axis(s, hi, 0)[0])
    return np.where(cnt > 0, med, np.nan)


def robust_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column median, 1.4826 x MAD, and the count of finite values (NaN ignored)."""
    x = np.asarray(x, np.float64)
    x = np.where(np.isfinite(x), x, np.nan)
    cnt = np.sum(np.isfinite(x), axis=0)
    med = _nanmedian_columns(x, cnt)
    with np.errstate(invalid="ignore"):
        mad = 1.4826 * _nanmedian_columns(np.abs(x - med), cnt)
    return med, mad, cnt


def blend(
    pop_mu: np.ndarray,
    pop_sigma: np.ndarray,
    med: np.ndarray,
    mad: np.ndarray,
    cnt: np.ndarray,
    prior_windows: float = PRIOR_WINDOWS,
    sigma_floor: float = SIGMA_FLOOR,
) -> tuple[np.ndarray, np.ndarray]:
    """Shrink the personal estimate toward the population one, per feature, by its count."""
    w = cnt / (cnt + prior_windows)
    med = np.where(np.isfinite(med), med, pop_mu)
    mad = np.where(np.isfinite(mad), mad, pop_sigma)
    mu = w * med + (1 - w) * pop_mu
    sigma = w * mad + (1 - w) * pop_sigma
    sigma = np.maximum(sigma, sigma_floor * pop_sigma)
    return mu.astype(np.float32), sigma.astype(np.float32)


def personal_threshold(normal_scores: Sequence[float] | np.ndarray, floor: float) -> float:
    """The clinical threshold for a patient whose own normal windows scored ``normal_scores``.

    Why: a patient whose ordinary windows already score near the global
    threshold would be alerted on all day; their 99th percentile plus
    ``THRESHOLD_MARGIN`` becomes the threshold, raised at most to
    ``MAX_THRESHOLD`` and never below ``floor`` (the global or configured
    threshold). Fewer than 20 scores say too little and leave ``floor``.
    """
    s = np.asarray(normal_scores, np.float64)
    if len(s) < 20:
        return floor
    q = float(np.quantile(s, 0.99))
    return max(floor, min(q + THRESHOLD_MARGIN, MAX_THRESHOLD))


def persistence_sums(
    x_cal: np.ndarray, x_later: np.ndarray, pop_mu: np.ndarray, pop_sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One patient's share of the fleet's persistence statistic: (c * r, c * c) per feature.

    ``c`` is the median of the calibration period's normal windows (its last
    ``BUFFER_WINDOWS``, as ``calibrate`` takes them), ``r`` the median of the
    patient's later normal windows, both in population sigmas from the
    population median and clipped to +-``PERSISTENCE_CLIP``, so one box moves
    the fleet's sums by a bounded amount. A feature a box did not see in both
    periods adds 0. Sums over boxes, so secure aggregation can carry them.
    """
    pm, ps = np.asarray(pop_mu, np.float64), np.asarray(pop_sigma, np.float64)
    lim = PERSISTENCE_CLIP
    with np.errstate(invalid="ignore"):
        c = np.clip((robust_stats(x_cal[-BUFFER_WINDOWS:])[0] - pm) / ps, -lim, lim)
        r = np.clip((robust_stats(x_later)[0] - pm) / ps, -lim, lim)
    seen = np.isfinite(c) & np.isfinite(r)
    return np.where(seen, c * r, 0.0), np.where(seen, c * c, 0.0)


def persistence_weights(sum_cr: np.ndarray, sum_cc: np.ndarray) -> np.ndarray:
    """Per feature, the share of a calibration period's deviation that persists afterwards.

    Why: a few minutes pin some baselines (ECG amplitude, skin temperature)
    and catch only one activity state of others (heart rate: on the pilot's
    patients the calibration median correlates 0.15-0.27 with the later
    one), and a personal location taken from the latter adds noise, not
    signal. The weight is the fleet's least-squares slope of a patient's
    later median on its calibration median, through the population median,
    clipped to [0, 1]: an empirical-Bayes shrinkage factor learnt from the
    boxes' own recordings. 0 where no box saw the feature move.
    """
    cr, cc = np.asarray(sum_cr, np.float64), np.asarray(sum_cc, np.float64)
    slope = np.divide(cr, cc, out=np.zeros_like(cr), where=cc > 0)
    return np.clip(slope, 0.0, 1.0).astype(np.float32)


@dataclass
class Thresholds:
    """Decision thresholds for one patient (clinical probability, fault probability, novelty)."""

    clinical: float
    fault: float
    novelty: float


class PersonalCalibration:
    """One patient's normalisation and thresholds; updated only from accepted normal windows."""

    def __init__(
        self,
        patient: str,
        pop_mu: np.ndarray,
        pop_sigma: np.ndarray,
        global_thresholds: Thresholds,
        buffer_windows: int = BUFFER_WINDOWS,
        prior_windows: float = PRIOR_WINDOWS,
    ) -> None:
        self.patient = patient
        self.pop_mu = np.asarray(pop_mu, np.float32)
        self.pop_sigma = np.asarray(pop_sigma, np.float32)
        self.global_thresholds = global_thresholds
        self.prior_windows = prior_windows
        self._x: deque[np.ndarray] = deque(maxlen=buffer_windows)
        self._scores: deque[float] = deque(maxlen=buffer_windows)
        self._recon: deque[float] = deque(maxlen=buffer_windows)
        self.accepted = 0
        self.mu = self.pop_mu.copy()[None, :]
        self.sigma = self.pop_sigma.copy()[None, :]
        self.thresholds = Thresholds(**vars(global_thresholds))

    @property
    def warmed_up(self) -> bool:
        return self.accepted >= WARMUP_WINDOWS

    def observe(
        self, x: np.ndarray, score: float | None = None, recon: float | None = None
    ) -> None:
        """Add one accepted normal window's raw features (and its scores once calibrated)."""
        x = np.asarray(x, np.float32).ravel()
        if x.shape != self.pop_mu.shape or not np.any(np.isfinite(x)):
            return
        self._x.append(x)
        self.accepted += 1
        # Scores made before the calibration settled say little about this patient.
        if score is not None and self.accepted > PRIOR_WINDOWS:
            self._scores.append(float(score))
        if recon is not None and self.accepted > PRIOR_WINDOWS and np.isfinite(recon):
            self._recon.append(float(recon))
        self._refresh()

    def _refresh(self) -> None:
        med, mad, cnt = robust_stats(np.stack(self._x))
        mu, sigma = blend(self.pop_mu, self.pop_sigma, med, mad, cnt, self.prior_windows)
        self.mu, self.sigma = mu[None, :], sigma[None, :]
        g = self.global_thresholds
        clinical = personal_threshold(self._scores, g.clinical)
        novelty = g.novelty
        if len(self._recon) >= 20:
            q = float(np.quantile(np.asarray(self._recon), 0.99))
            novelty = max(g.novelty, 1.5 * q)
        self.thresholds = Thresholds(clinical, g.fault, novelty)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (kept on the box, never sent anywhere)."""
        return {
            "patient": self.patient,
            "accepted": self.accepted,
            "x": [v.tolist() for v in self._x],
            "scores": list(self._scores),
            "recon": list(self._recon),
        }

    def load_dict(self, d: dict[str, Any]) -> None:
        """Restore from ``to_dict`` output; ignores rows whose length no longer fits the model."""
        rows = [np.asarray(v, np.float32) for v in d.get("x", [])]
        rows = [r for r in rows if r.shape == self.pop_mu.shape]
        self._x.clear()
        self._x.extend(rows)
        self._scores.clear()
        self._scores.extend(float(s) for s in d.get("scores", []))
        self._recon.clear()
        self._recon.extend(float(s) for s in d.get("recon", []))
        self.accepted = int(d.get("accepted", len(rows)))
        if self._x:
            self._refresh()


def calibrate(
    x: np.ndarray,
    pop_mu: np.ndarray,
    pop_sigma: np.ndarray,
    prior_windows: float = PRIOR_WINDOWS,
    *,
    mask: np.ndarray | None = None,
    spread: bool = True,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The calibration a box reaches after seeing rows ``x`` (used to build training data).

    ``mask`` (bool per feature, e.g. ``trait_mask``) limits the personal
    estimate to those features; the others keep the population values.
    ``spread=False`` keeps the population spread and personalises only the
    location: a few minutes of normal windows give a usable median but a
    spread that reflects one context, far narrower than the patient's day.
    ``weights`` (per feature, in [0, 1], ``persistence_weights``) move the
    location only that share of the way from the population's to the
    personal one. Defaults (every feature, location and spread, full weight)
    are the detector's.
    """
    pm, ps = np.asarray(pop_mu, np.float32), np.asarray(pop_sigma, np.float32)
    med, mad, cnt = robust_stats(x[-BUFFER_WINDOWS:])
    mu, sigma = blend(pm, ps, med, mad, cnt, prior_windows)
    if not spread:
        sigma = ps.copy()
    if weights is not None:
        mu = (pm + np.asarray(weights, np.float32) * (mu - pm)).astype(np.float32)
    if mask is not None:
        keep = np.asarray(mask, bool)
        mu = np.where(keep, mu, pm).astype(np.float32)
        sigma = np.where(keep, sigma, ps).astype(np.float32)
    return mu, sigma
