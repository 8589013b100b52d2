"""Training arrays: the fleet's persistence weights and the calibration rule."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgeagent.pipeline import features
from edgelab.pilot.config import PilotConfig
from edgelab.pilot.train import Calibration, fleet_persistence
from tests.pilot_support import N_F, blob_patient


def test_fleet_persistence_learns_which_baselines_a_calibration_period_pins() -> None:
    rng = np.random.default_rng(6)
    hr = features.FEATURE_NAMES.index("hr_bpm")
    temp = features.FEATURE_NAMES.index("skin_temp_c")
    hubs = []
    for i in range(12):
        d = blob_patient(i, 300, rng, 0.0)
        d.x[:, temp] += rng.normal(0, 2)  # a trait: the whole recording sits there
        d.x[:90, hr] += rng.normal(0, 2)  # the calibration period (30 %) alone
        hubs.append(d)
    w = fleet_persistence(hubs, 0.3, np.zeros(N_F), np.ones(N_F))
    assert w[temp] > 0.9 and w[hr] < 0.2, (w[temp], w[hr])
    assert np.all((w >= 0) & (w <= 1))
    cfg = PilotConfig()
    assert Calibration.of(cfg, w).weights == tuple(float(v) for v in w)
    assert Calibration.of(dataclasses.replace(cfg, personal_persistence=False), w).weights is None
    assert (
        Calibration.of(cfg).threshold
        and not Calibration.of(dataclasses.replace(cfg, personal_threshold=False)).threshold
    )
