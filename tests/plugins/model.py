"""Fixtures for the model tests: a small synthetic feature world and a model trained on it.

The world is deliberately simple (Gaussian features with per-patient offsets,
each anomaly kind shifting its own feature) so the detector, learner, registry
and lifecycle can be tested without the simulator and feature extractor; the
baseline-quality tests use the real ones.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.model.graph import ModelMeta, build_model, to_bytes
from edgeagent.model.nn import standardise
from edgeagent.pipeline.personal import calibrate
from edgelab.train import fit

SYN_FEATURES = (
    "hr_mean",
    "hr_std",
    "ecg_flat",
    "acc_mag",
    "acc_jerk",
    "temp_mean",
    "temp_slope",
    "env_temp",
)
SYN_MODALITY = {
    "hr_mean": "ecg",
    "hr_std": "ecg",
    "ecg_flat": "ecg",
    "acc_mag": "acc",
    "acc_jerk": "acc",
    "temp_mean": "temp",
    "temp_slope": "temp",
    "env_temp": "env",
}
SYN_CLASSES = ("normal", "tachycardia", "fall", "fever", "sensor_fault")
# Feature shifts (in units of the patient's own spread) per class.
_SHIFT = {
    "tachycardia": {0: 6.0, 1: -2.0},
    "fall": {4: 7.0, 3: 4.0},
    "fever": {5: 6.0, 6: 2.0},
    "sensor_fault": {2: 8.0, 1: 5.0},
}
_SCALE = np.array([8.0, 2.0, 0.05, 30.0, 10.0, 0.3, 0.05, 2.0], np.float32)
_POP = np.array([70.0, 6.0, 0.1, 1000.0, 20.0, 33.5, 0.0, 22.0], np.float32)


@dataclass
class SynWorld:
    """Draw feature rows for synthetic patients; ``offset`` moves a patient's baseline."""

    seed: int = 0

    def baseline(self, patient: int) -> np.ndarray:
        rng = np.random.default_rng(1000 + patient)
        return _POP + rng.normal(0, 1.0, _POP.shape).astype(np.float32) * _SCALE

    def rows(
        self, patient: int, kind: str, n: int, offset: np.ndarray | None = None, seed: int = 0
    ) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(f"{patient}|{kind}|{n}|{seed}".encode()))
        base = self.baseline(patient) + (0 if offset is None else offset)
        spread = _SCALE * 0.35
        x = base + rng.normal(0, 1, (n, len(_POP))).astype(np.float32) * spread
        for j, s in _SHIFT.get(kind, {}).items():
            x[:, j] += s * spread[j]
        return x.astype(np.float32)


def train_syn_model(world: SynWorld, patients: range = range(12), seed: int = 0) -> bytes:
    """Train a small detector on the synthetic world the way edgelab.baseline does."""
    xs, ys, cal = [], [], []
    for p in patients:
        normal = world.rows(p, "normal", 240)
        mu, sigma = calibrate(normal, _POP, _SCALE)
        for ci, kind in enumerate(SYN_CLASSES):
            x = normal if kind == "normal" else world.rows(p, kind, 30)
            xs.append(x)
            ys.append(np.full(len(x), ci))
            cal.append((np.repeat(mu[None], len(x), 0), np.repeat(sigma[None], len(x), 0)))
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    mu = np.concatenate([c[0] for c in cal])
    sg = np.concatenate([c[1] for c in cal])
    z, m = standardise(x, mu, sg)
    zp, _ = standardise(x, _POP, _SCALE)
    meta = ModelMeta(
        SYN_FEATURES,
        SYN_CLASSES,
        _POP.tolist(),
        _SCALE.tolist(),
        hidden=16,
        latent=4,
        thresholds={"clinical": 0.5, "fault": 0.5, "novelty": 4.0},
        info={"trained_on": "synthetic test world"},
    )
    w, _ = fit(meta.spec, z, m, y, epochs=25, batch=64, lr=5e-3, seed=seed, zp=zp)
    return to_bytes(build_model(meta, w))


@pytest.fixture(scope="session")
def syn_world() -> SynWorld:
    return SynWorld()


@pytest.fixture(scope="session")
def syn_model(syn_world: SynWorld) -> bytes:
    """Bytes of a detector trained on the synthetic world (session-scoped: trained once)."""
    return train_syn_model(syn_world)


@pytest.fixture(scope="session")
def syn_model_other(syn_world: SynWorld) -> bytes:
    """A second, differently seeded model (a plausible 'new global model')."""
    return train_syn_model(syn_world, seed=1)


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
