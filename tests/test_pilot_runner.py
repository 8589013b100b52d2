"""``run_pilot``'s progress lines: throttled, counted, silent at the end (the caller logs it)."""

from __future__ import annotations

import time

from edgelab.pilot.runner import progress_lines


def test_progress_lines_log_done_over_total_and_leave_the_end_to_the_caller() -> None:
    lines: list[str] = []
    tick = progress_lines(lines.append, "training runs", every_s=0.0)
    for d in range(1, 4):
        tick(d, 3)
    assert [ln.split(" (")[0] for ln in lines] == [
        "training runs: 1/3 done",
        "training runs: 2/3 done",
    ]
    assert all(ln.endswith(" s)") for ln in lines)


def test_progress_lines_are_throttled() -> None:
    lines: list[str] = []
    tick = progress_lines(lines.append, "cohort 100", every_s=0.2)
    for d in range(1, 50):
        tick(d, 100)
    assert lines == []
    time.sleep(0.25)
    tick(50, 100)
    tick(51, 100)
    assert [ln.split(" (")[0] for ln in lines] == ["cohort 100: 50/100 done"]
