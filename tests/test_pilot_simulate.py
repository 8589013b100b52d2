"""The patients' event schedules: deterministic, well formed."""

from __future__ import annotations

import itertools

from edgelab.pilot.simulate import schedule


def test_schedule_is_deterministic_and_well_formed() -> None:
    kinds = ("tachycardia", "fever", "lead_off")
    a = schedule(1800.0, kinds, seed=3)
    assert a == schedule(1800.0, kinds, seed=3)
    assert a != schedule(1800.0, kinds, seed=4)
    assert len(a) >= 5
    assert {lb.kind for lb in a} == set(kinds)
    for prev, nxt in itertools.pairwise(a):
        assert prev.end < nxt.start  # episodes never overlap
    assert all(0 < lb.start < lb.end < 1800.0 for lb in a)
