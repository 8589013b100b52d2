"""Clipping, Gaussian noise and adaptive clipping, as small pure helpers.

The accountant that turns rounds into (epsilon, delta) runs on the aggregator
only (``federation.accountant``): a box needs none of dp-accounting's weight.

Unit of privacy: one box per round (user-level DP, McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models"). A box's payload
is ``[n_k * clip(delta_k), n_k]`` with ``n_k <= n_cap``, so adding or removing
one box changes the summed payload by at most ``n_cap * sqrt(clip^2 + 1)`` in
L2 norm: that is the sensitivity the Gaussian noise is scaled to.

Noise can be central (the aggregator adds it to the unmasked sum) or
distributed (each box adds ``N(0, sigma^2 / m)`` before masking, where ``m`` is
the round's ``min_survivors``; the round aborts below ``m`` survivors, so the
sum always carries at least ``sigma^2``). Floating-point Gaussian sampling is
the usual practical approximation (see Mironov 2012 on its limits).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np


def l2_clip(delta: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """Scale ``delta`` down to L2 norm ``clip`` if longer; return ``(clipped, original norm)``."""
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip!r}")
    d = np.asarray(delta, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("update contains NaN or infinity; refuse it rather than clip it")
    norm = float(np.linalg.norm(d))
    return (d * (clip / norm) if norm > clip else d.copy()), norm


def fedavg_payload(delta: np.ndarray, n_k: int, clip: float, n_cap: int) -> np.ndarray:
    """The vector a box submits: ``[min(n_k, n_cap) * clip(delta), min(n_k, n_cap)]``.

    Summing these over boxes and dividing by the last coordinate gives the
    paper's weighted objective ``sum_k (n_k / n) clip(delta_k)``; the cap on
    ``n_k`` bounds one box's influence (and the DP sensitivity).
    """
    if n_k < 1 or n_cap < 1:
        raise ValueError("n_k and n_cap must be >= 1")
    n = float(min(int(n_k), int(n_cap)))
    clipped, _ = l2_clip(delta, clip)
    return np.concatenate([n * clipped, [n]])


def select(vec: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    """The coordinates a round's parameter mask sends (all of them for ``idx = None``).

    Selecting before ``fedavg_payload`` is what makes clip and noise apply to
    the trained coordinates alone: the clip budget is not spent on entries that
    nobody trained, and the noise (``z * sensitivity`` per coordinate) lands on
    ``len(idx)`` coordinates instead of the whole vector.
    """
    v = np.asarray(vec, dtype=np.float64)
    return v.copy() if idx is None else v[idx]


def scatter(values: np.ndarray, idx: np.ndarray | None, size: int) -> np.ndarray:
    """A full-length update with ``values`` at ``idx`` and zeros elsewhere.

    The aggregator applies this to the global model, so the coordinates a
    round did not send keep the global's values exactly.
    """
    v = np.asarray(values, dtype=np.float64)
    if idx is None:
        if v.shape != (size,):
            raise ValueError(f"update has {v.size} values, the model {size}")
        return v.copy()
    if v.shape != idx.shape:
        raise ValueError(f"update has {v.size} values, the round's mask {idx.size}")
    out = np.zeros(size, dtype=np.float64)
    out[idx] = v
    return out


def sensitivity(clip: float, n_cap: int) -> float:
    """L2 sensitivity of the summed FedAvg payload to one box."""
    return float(n_cap) * math.sqrt(clip * clip + 1.0)


def payload_bound(clip: float, n_cap: int, noise_std: float = 0.0) -> float:
    """Largest |coordinate| of one box's payload (+6 sigma of its noise) for the quantiser."""
    return float(n_cap) * max(clip, 1.0) + 6.0 * noise_std


def gaussian_std(noise_multiplier: float, clip: float, n_cap: int) -> float:
    """Total noise standard deviation for the sum: ``z * sensitivity``."""
    if noise_multiplier < 0:
        raise ValueError("noise_multiplier must be >= 0")
    return noise_multiplier * sensitivity(clip, n_cap)


def distributed_std(total_std: float, min_survivors: int) -> float:
    """Per-box std so that any ``>= min_survivors`` boxes together add ``>= total_std``."""
    if min_survivors < 1:
        raise ValueError("min_survivors must be >= 1")
    return total_std / math.sqrt(min_survivors)


def new_noise_rng() -> np.random.Generator:
    """A generator seeded from the OS CSPRNG (never a fixed seed for real noise)."""
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


def add_gaussian_noise(
    vec: np.ndarray, std: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Return ``vec + N(0, std^2)`` per coordinate (a new array)."""
    if std < 0:
        raise ValueError("std must be >= 0")
    v = np.asarray(vec, dtype=np.float64)
    if std == 0:
        return v.copy()
    return v + (rng or new_noise_rng()).normal(0.0, std, size=v.shape)


@dataclass
class AdaptiveClip:
    """Adaptive clipping to a target quantile of update norms (Andrew et al. 2021, NeurIPS).

    Each box reports ``b_k = 1[norm_k <= clip]`` (summed securely alongside its
    update, or in plaintext); the aggregator adds ``N(0, indicator_std^2)`` to
    the count and moves the clip geometrically:
    ``clip <- clip * exp(-lr * (b_mean - target_quantile))``.
    """

    clip: float
    target_quantile: float = 0.5
    lr: float = 0.2
    indicator_std: float = 0.0

    def __post_init__(self) -> None:
        if self.clip <= 0 or not 0 < self.target_quantile < 1 or self.lr <= 0:
            raise ValueError("need clip > 0, 0 < target_quantile < 1, lr > 0")

    def update(
        self, indicator_sum: float, count: int, rng: np.random.Generator | None = None
    ) -> float:
        """Fold one round's (noised) fraction of unclipped updates in; return the new clip."""
        if count < 1:
            return self.clip
        noisy = float(add_gaussian_noise(np.array([indicator_sum]), self.indicator_std, rng)[0])
        frac = min(1.0, max(0.0, noisy / count))
        self.clip *= math.exp(-self.lr * (frac - self.target_quantile))
        return self.clip


def clip_indicator(norm: float, clip: float) -> float:
    """``1.0`` if an update of this norm was not clipped, else ``0.0``."""
    return 1.0 if norm <= clip else 0.0


def adjusted_noise_multiplier(noise_multiplier: float, indicator_multiplier: float) -> float:
    """Noise multiplier left for the update when the clip indicator is also released.

    Andrew et al. 2021, Theorem 1: releasing both at multipliers ``z_delta``
    and ``sigma_b`` costs as much as one Gaussian at ``z`` when
    ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``.
    """
    inv = noise_multiplier**-2 - (2.0 * indicator_multiplier) ** -2
    if inv <= 0:
        raise ValueError("indicator noise too small for this total noise multiplier")
    return inv**-0.5
