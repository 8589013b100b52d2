"""Synthetic patients and updates shared by the pilot's tests (tests/test_pilot_*.py)."""

from __future__ import annotations

import numpy as np

from edgeagent.pipeline import features
from edgelab.pilot.evaluate import HeldOutSet
from edgelab.pilot.simulate import PatientData

N_F = len(features.FEATURE_NAMES)


def updates(
    n: int = 8, dim: int = 5, seed: int = 0
) -> tuple[list[str], list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    nodes = [f"hub-{i}" for i in range(n)]
    deltas = [0.05 + rng.normal(0, 0.01, dim) for _ in nodes]
    counts = [int(c) for c in rng.integers(50, 150, n)]
    return nodes, deltas, counts


def blob_patient(i: int, n: int, rng: np.random.Generator, shift: float) -> PatientData:
    """A synthetic patient: class 1 (tachycardia) windows have a shifted heart rate."""
    x = rng.normal(0.0, 1.0, (n, N_F)).astype(np.float32)
    y = (rng.random(n) < 0.4).astype(np.int64)
    hr = features.FEATURE_NAMES.index("hr_bpm")
    x[y == 1, hr] += shift
    spans = np.stack([np.arange(n) * 10.0, np.arange(n) * 10.0 + 10.0], axis=1)
    return PatientData(f"p{i}", x, spans, [], y, ("tachycardia",))


def blob_test(rng: np.random.Generator, shift: float) -> HeldOutSet:
    d = blob_patient(99, 400, rng, shift)
    return HeldOutSet("t", d.x[:50], d.x[50:], d.spans[50:], [], d.y[50:].astype(np.int8))
