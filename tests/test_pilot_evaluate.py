"""ONNX scoring of the test patients: the personal threshold."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgeagent.pipeline import features
from edgelab.pilot.config import PilotConfig
from edgelab.pilot.evaluate import HeldOutSet, evaluate_model
from edgelab.pilot.federation import (
    run_federation,
)
from edgelab.pilot.simulate import make_meta
from edgelab.pilot.train import Calibration
from tests.pilot_support import N_F, blob_patient


def test_personal_threshold_rises_with_the_scores_of_a_patients_own_normal_windows() -> None:
    rng = np.random.default_rng(7)
    cfg = PilotConfig(hubs=4, rounds=6, local_epochs=2, processes=1, seed=0)
    hubs = [blob_patient(i, 200, rng, 4.0) for i in range(cfg.hubs)]
    meta = make_meta(cfg, np.zeros(N_F, np.float32), np.ones(N_F, np.float32))
    w = run_federation(cfg, meta, hubs).w
    d = blob_patient(99, 400, rng, 4.0)
    normal = d.x[:100][d.y[:100] == 0]  # a calibration period's normal windows
    quiet = HeldOutSet("q", normal, d.x[100:], d.spans[100:], [], d.y[100:].astype(np.int8))
    hot = dataclasses.replace(quiet, id="h", x_cal=normal.copy())
    hot.x_cal[:, features.FEATURE_NAMES.index("hr_bpm")] += 4.0  # looks like the anomaly
    tests = [quiet, hot]
    rule = Calibration(traits_only=False, weights=(0.0,) * N_F, threshold=True)
    got = evaluate_model(meta, w, tests, True, rule=rule)
    assert cfg.threshold <= got["thresholds"][0] < got["thresholds"][1] <= 0.9
    plain = evaluate_model(meta, w, tests, True, rule=dataclasses.replace(rule, threshold=False))
    assert plain["thresholds"] == [cfg.threshold] * 2
    assert got["tp"] + got["fp"] < plain["tp"] + plain["fp"]  # fewer windows called clinical
    assert "thresholds" not in evaluate_model(meta, w, tests, False, rule=rule)
