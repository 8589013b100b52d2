"""Which classes a window can show (pipeline.evidence): the rules as a table."""

from __future__ import annotations

import numpy as np
import pytest

from edgeagent.pipeline import evidence

CLASSES = ("normal", "tachycardia", "bradycardia", "pvc", "fever", "sensor_fault")
MODS = ("", "ecg", "ecg", "ecg", "temp", "")


@pytest.mark.parametrize(
    ("absent", "abnormal", "hr", "hr_z", "dropped"),
    [
        ((), None, 70.0, None, []),
        (("temp",), None, 70.0, None, ["fever"]),
        (("ecg",), None, 70.0, None, ["tachycardia", "bradycardia", "pvc"]),
        ((), 1, 70.0, None, ["pvc"]),  # one abnormal beat is not an ectopy episode
        ((), 2, 70.0, None, []),
        ((), None, 127.0, 0.3, ["tachycardia", "bradycardia"]),  # the patient's own rate
        ((), None, 127.0, 3.0, ["bradycardia"]),  # fast for this patient
        ((), None, 160.0, 0.3, ["bradycardia"]),  # beyond the absolute limit
        ((), None, 35.0, -0.5, ["tachycardia"]),
        ((), None, 127.0, None, []),  # before warm-up: no personal rate rule
    ],
)
def test_unavailable_classes(
    absent: tuple[str, ...], abnormal: int | None, hr: float, hr_z: float | None, dropped: list[str]
) -> None:
    got = evidence.unavailable_classes(CLASSES, MODS, set(absent), abnormal, hr, hr_z)
    assert [CLASSES[i] for i in got] == dropped


def test_move_to_normal_only_lowers_clinical_scores() -> None:
    p = np.array([0.1, 0.2, 0.1, 0.1, 0.4, 0.1], np.float32)
    q = evidence.move_to_normal(p, [4])
    assert q[4] == 0.0 and q[0] == pytest.approx(0.5)
    assert q.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(q[1:4], p[1:4])  # the others are not inflated
    assert evidence.move_to_normal(p, []) is p
