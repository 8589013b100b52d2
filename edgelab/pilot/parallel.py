"""A process pool whose workers share one read-only state, handed over once at fork.

The pilot's jobs all read the same patients and model meta; giving them to each
worker at start (``STATE``) instead of with every job keeps the jobs small, and
``pool.map`` keeps results in job order, so a run's output does not depend on
which worker finished first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from multiprocessing import get_context
from typing import Any

from threadpoolctl import threadpool_limits

STATE: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    STATE.clear()
    STATE.update(state)


class _Indexed:
    """``fn`` on ``(i, job)``, returning ``(i, result)``: lets results arrive in any order."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, item: tuple[int, Any]) -> tuple[int, Any]:
        return item[0], self.fn(item[1])


def pmap(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    processes: int,
    state: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """``[fn(j) for j in jobs]`` over ``processes`` forked workers, each given ``state``.

    ``progress(done, total)`` is called in this process after each job finishes;
    results come back in job order whichever worker finished first.
    """
    tick = progress or (lambda done, total: None)
    if processes <= 1 or len(jobs) <= 1:
        _init_worker(state or {})
        out = []
        for j in jobs:
            out.append(fn(j))
            tick(len(out), len(jobs))
        return out
    ctx = get_context("fork")
    results: list[Any] = [None] * len(jobs)
    # One BLAS thread in the parent while it forks, and so in every worker: a forked
    # child inherits OpenBLAS's thread pool in whatever state the parent left it, and
    # the first large product in a worker (the head calibration's) then hung forever.
    # The workers are the parallelism; BLAS threads on top only oversubscribe the cores.
    with (
        threadpool_limits(limits=1),
        ctx.Pool(processes, initializer=_init_worker, initargs=(state or {},)) as pool,
    ):
        for done, (i, r) in enumerate(
            pool.imap_unordered(_Indexed(fn), enumerate(jobs), chunksize=1), 1
        ):
            results[i] = r
            tick(done, len(jobs))
    return results
