"""The pilot's worker pool: results in job order, every worker sees the state, progress counted."""

from __future__ import annotations

import os

import pytest

from edgelab.pilot.parallel import STATE, pmap


def _job(j: int) -> tuple[int, int, int]:
    # Later jobs finish first (shorter spin), so arrival order differs from job order.
    n = (40 - j) * 20_000
    s = 0
    for i in range(n):
        s += i & 7
    return j, STATE["k"] * j, os.getpid()


@pytest.mark.parametrize("processes", [1, 2])
def test_pmap_keeps_job_order_shares_state_and_counts_progress(processes: int) -> None:
    ticks: list[tuple[int, int]] = []
    out = pmap(_job, list(range(12)), processes, {"k": 3}, lambda d, t: ticks.append((d, t)))
    assert [(j, v) for j, v, _ in out] == [(j, 3 * j) for j in range(12)]
    assert ticks == [(d, 12) for d in range(1, 13)]
    pids = {p for _, _, p in out}
    if processes == 1:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids


def test_pmap_without_progress_gives_the_same_results() -> None:
    a = [v for _, v, _ in pmap(_job, list(range(6)), 2, {"k": 5})]
    b = [v for _, v, _ in pmap(_job, list(range(6)), 1, {"k": 5})]
    assert a == b == [5 * j for j in range(6)]


def _boom(j: int) -> int:
    if j == 3:
        raise ValueError(f"job {j} failed")
    return j


@pytest.mark.parametrize("processes", [1, 2])
def test_pmap_raises_a_worker_error(processes: int) -> None:
    with pytest.raises(ValueError, match="job 3 failed"):
        pmap(_boom, list(range(6)), processes)
