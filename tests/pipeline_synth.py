"""Synthetic signals with known ground truth for the windows/features/ECG tests.

Independent of firmware_sim on purpose: these tests need exact beat times and
exact RR series, which a sum-of-Gaussians ECG (McSharry et al. 2003, simplified
to fixed wave offsets) gives directly.
"""

from __future__ import annotations

import itertools

import numpy as np

from edgeagent.streams import CHANNELS, SampleBlock, Stream

# (offset from R in s, amplitude uV, width sd in s): P, Q, R, S, T.
WAVES: tuple[tuple[float, float, float], ...] = (
    (-0.20, 120.0, 0.025),
    (-0.035, -120.0, 0.008),
    (0.0, 1100.0, 0.010),
    (0.035, -250.0, 0.009),
    (0.28, 300.0, 0.045),
)


def beat_times(rr: np.ndarray, first: float = 0.5) -> np.ndarray:
    """R-peak times for an RR series (seconds), starting at ``first``."""
    return first + np.concatenate(([0.0], np.cumsum(rr)[:-1]))


def synth_ecg(
    beats: np.ndarray,
    duration: float,
    fs: float,
    *,
    noise_uv: float = 10.0,
    wander_uv: float = 80.0,
    st_uv: float = 0.0,
    qrs_scale: float = 1.0,
    seed: int = 0,
    waves: tuple[tuple[float, float, float], ...] = WAVES,
) -> tuple[np.ndarray, np.ndarray]:
    """ECG (t, uV) with R peaks exactly at ``beats``.

    ``st_uv`` adds a plateau from J point to T (ST elevation or depression);
    ``qrs_scale`` widens Q/R/S (bundle-branch-like or ventricular beats).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(round(duration * fs)) / fs
    x = np.zeros_like(t)
    for b in beats:
        lo, hi = np.searchsorted(t, (b - 0.4, b + 0.6))
        tt = t[lo:hi] - b
        for off, amp, sd in waves:
            s = sd * (qrs_scale if abs(off) < 0.05 else 1.0)
            o = off * (qrs_scale if abs(off) < 0.05 else 1.0)
            x[lo:hi] += amp * np.exp(-0.5 * ((tt - o) / s) ** 2)
        if st_uv:
            x[lo:hi] += st_uv * ((tt > 0.05) & (tt < 0.22))
    x += wander_uv * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6.28))
    x += rng.normal(0, noise_uv, t.shape)
    return t, x


def blocks(
    device: str, stream: Stream, t: np.ndarray, values: np.ndarray, block_s: float = 0.5
) -> list[SampleBlock]:
    """Cut a (t, values) series into SampleBlocks of about ``block_s`` seconds."""
    values = np.asarray(values, dtype=np.float32).reshape(t.shape[0], len(CHANNELS[stream]))
    if t.shape[0] == 0:
        return []
    edges = np.searchsorted(t, np.arange(t[0], t[-1] + block_s, block_s), side="left")
    edges = np.unique(np.concatenate((edges, [t.shape[0]])))
    return [
        SampleBlock(device, stream, t[a:b].astype(np.float64), values[a:b])
        for a, b in itertools.pairwise(edges)
        if b > a
    ]


def match_beats(found_s: np.ndarray, truth_s: np.ndarray, tol_s: float = 0.05) -> tuple[int, int]:
    """(true positives, false positives) matching detections to truth within ``tol_s``."""
    used = np.zeros(truth_s.shape[0], dtype=bool)
    tp = 0
    for f in found_s:
        j = int(np.argmin(np.abs(truth_s - f))) if truth_s.shape[0] else -1
        if j >= 0 and not used[j] and abs(truth_s[j] - f) <= tol_s:
            used[j] = True
            tp += 1
    return tp, int(found_s.shape[0]) - tp
