"""Beat matching, beat classes, alert time, false alarms per alert-hour, event recall."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.metrics import (
    alert_spans,
    beat_classification,
    beat_detection,
    beat_scores,
    event_recall,
    false_alarms,
    match_beats,
    time_in_alert,
    total_s,
)


@pytest.mark.parametrize(
    ("ref", "test", "pairs"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [(0, 0), (1, 1), (2, 2)]),
        ([1.0, 2.0], [1.15, 2.151], [(0, 0)]),  # 150 ms inclusive, 151 ms out
        ([1.0, 2.0], [0.85, 1.849], [(0, 0)]),
        ([1.0], [0.95, 1.02], [(0, 1)]),  # the closer detection wins, the other is an FP
        ([1.0, 1.25], [1.125], [(0, 0)]),  # a tie goes to the earlier reference, once
        ([1.0, 1.2], [1.12], [(1, 0)]),  # the nearer reference takes it
        ([1.0, 1.2], [1.02, 1.13], [(0, 0), (1, 1)]),
        ([3.0, 1.0, 2.0], [2.01, 0.99], [(1, 1), (2, 0)]),  # unsorted inputs, original indices
        ([], [1.0], []),
        ([1.0], [], []),
    ],
)
def test_match_beats_table(
    ref: list[float], test: list[float], pairs: list[tuple[int, int]]
) -> None:
    r, t = match_beats(ref, test)
    assert list(zip(r.tolist(), t.tolist(), strict=True)) == pairs


def test_beat_detection_counts_and_undefined_ratios() -> None:
    d = beat_detection([1.0, 2.0, 3.0, 4.0], [1.01, 2.2, 3.0, 5.0, 5.5])
    assert (d["tp"], d["fn"], d["fp"]) == (2, 2, 3)
    assert d["sensitivity"] == pytest.approx(0.5)
    assert d["positive_predictivity"] == pytest.approx(0.4)
    assert math.isnan(beat_detection([], [1.0])["sensitivity"])
    assert math.isnan(beat_detection([1.0], [])["positive_predictivity"])


@settings(max_examples=60, deadline=None)
@given(
    ref=st.lists(st.floats(0, 100, allow_nan=False), max_size=40),
    test=st.lists(st.floats(0, 100, allow_nan=False), max_size=40),
)
def test_matching_is_one_to_one_and_within_tolerance(ref: list[float], test: list[float]) -> None:
    r, t = match_beats(ref, test)
    assert len(set(r.tolist())) == len(r) and len(set(t.tolist())) == len(t)
    for i, j in zip(r.tolist(), t.tolist(), strict=True):
        assert abs(ref[i] - test[j]) <= 0.150 + 1e-9
    # Maximal: no unmatched pair left that is within tolerance.
    ur = set(range(len(ref))) - set(r.tolist())
    ut = set(range(len(test))) - set(t.tolist())
    assert not any(abs(ref[i] - test[j]) <= 0.15 for i in ur for j in ut)


def test_beat_scores_take_the_worst_window_containing_the_beat() -> None:
    s = beat_scores(
        [1.0, 5.0, 9.0, 30.0], [0.0, 4.0, 8.0], [6.0, 10.0, 14.0], [0.1, 0.7, float("nan")]
    )
    assert s[:3].tolist() == pytest.approx([0.1, 0.7, 0.7])
    assert math.isnan(s[3])


def test_beat_classification_auroc_excludes_q_and_unscored() -> None:
    cls = ["N", "N", "S", "V", "Q", "F", "N"]
    sc = [0.1, 0.2, 0.9, 0.15, 0.99, float("nan"), 0.3]
    out = beat_classification(cls, sc, flagged=[False, True, True, False, True, False, False])
    assert (out["positives"], out["negatives"], out["beats_unscored"]) == (2, 3, 2)
    # Pairs (pos, neg): S beats all three N, V (0.15) beats only 0.1 -> 4/6.
    assert out["auroc"] == pytest.approx(4 / 6)
    assert out["sensitivity"] == pytest.approx(1 / 3)  # S of S, V, F
    assert out["positive_predictivity"] == pytest.approx(1 / 2)  # flagged N, S (Q not counted)
    assert math.isnan(beat_classification(["N", "N"], [0.1, 0.2])["auroc"])


@pytest.mark.parametrize(
    ("ends", "active", "hold", "until", "spans"),
    [
        ([2, 4, 6, 8], [0, 1, 1, 0], 2.0, None, [(4.0, 8.0)]),
        ([2, 4, 6, 8], [1, 0, 0, 1], 2.0, 9.0, [(2.0, 4.0), (8.0, 9.0)]),
        ([2, 4, 20, 22], [1, 1, 1, 0], 2.0, None, [(2.0, 6.0), (20.0, 22.0)]),  # a gap: not alert
        ([], [], 2.0, None, []),
    ],
)
def test_alert_spans_table(
    ends: list[float],
    active: list[int],
    hold: float,
    until: float | None,
    spans: list[tuple[float, float]],
) -> None:
    assert alert_spans(ends, np.asarray(active, bool), hold, until) == spans


def test_time_in_alert() -> None:
    assert time_in_alert([(0.0, 10.0), (5.0, 20.0)], 40.0) == pytest.approx(0.5)
    assert total_s([(0.0, 10.0), (5.0, 20.0)]) == pytest.approx(20.0)
    assert math.isnan(time_in_alert([], 0.0))


H = 3600.0


@pytest.mark.parametrize(
    ("spans", "labels", "grace", "count", "outside"),
    [
        # One alert covering the whole half hour with a labelled beat inside: one false alarm.
        ([(0.0, 1800.0)], [(600.0, 600.0, "pvc")], 0.0, 1, 1800.0),
        # An alert inside its label: none.
        ([(10.0, 50.0)], [(0.0, 60.0, "af")], 0.0, 0, 0.0),
        # Late by less than the grace: none.
        ([(55.0, 65.0)], [(0.0, 60.0, "af")], 10.0, 0, 0.0),
        # Runs on past the label for 2.5 h: three false alarms.
        ([(10.0, 60.0 + 2.5 * H)], [(0.0, 60.0, "af")], 0.0, 3, 2.5 * H),
        # Five hours outside any label: five.
        ([(0.0, 5 * H)], [], 0.0, 5, 5 * H),
        # Two short spurious alerts: two.
        ([(0.0, 10.0), (100.0, 110.0)], [], 0.0, 2, 20.0),
        # A label in the middle splits one alert into two outside pieces.
        ([(0.0, 100.0)], [(40.0, 60.0, "tachycardia")], 0.0, 2, 80.0),
        # Sensor faults do not excuse a clinical alert.
        ([(0.0, 10.0)], [(0.0, 10.0, "lead_off")], 0.0, 1, 10.0),
    ],
)
def test_false_alarms_per_alert_hour_table(
    spans: list[tuple[float, float]],
    labels: list[tuple[float, float, str]],
    grace: float,
    count: int,
    outside: float,
) -> None:
    fa = false_alarms(spans, labels, duration_s=1800.0, grace_s=grace, fault_kinds=("lead_off",))
    assert fa["false_alarms"] == count
    assert fa["alert_s_outside_labels"] == pytest.approx(outside)
    assert fa["false_alarms_per_hour"] == pytest.approx(count / 0.5)


def test_event_recall_table() -> None:
    labels = [
        (0.0, 10.0, "af"),
        (100.0, 110.0, "pvc"),
        (200.0, 200.0, "pvc"),
        (0.0, 5.0, "lead_off"),
    ]
    spans = [(112.0, 120.0), (199.0, 201.0)]
    r = event_recall(spans, labels, grace_s=5.0, fault_kinds=("lead_off",))
    assert (r["events"], r["detected"]) == (3, 2)
    assert r["recall"] == pytest.approx(2 / 3)
    assert event_recall(spans, labels, grace_s=0.0, fault_kinds=("lead_off",))["detected"] == 1
    assert math.isnan(event_recall([], [])["recall"])
