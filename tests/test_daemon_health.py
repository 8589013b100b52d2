"""Liveness: progress or known-idle keeps a component alive; silence or stuck backlog does not."""

from __future__ import annotations

import threading

import pytest

from edgeagent.daemon.health import Liveness


class Clock:
    """A settable clock (the tracker takes any callable; this is not a library mock)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_registration_is_a_grace_period(clock: Clock) -> None:
    lv = Liveness(clock)
    lv.register("a", 10)
    clock.t += 9.9
    assert lv.check().ok
    clock.t += 0.2
    rep = lv.check()
    assert not rep.ok and rep.stalled == ["a"]


def test_progress_keeps_alive(clock: Clock) -> None:
    lv = Liveness(clock)
    lv.register("a", 5)
    for _ in range(10):
        clock.t += 4
        lv.progress("a")
        assert lv.check().ok
    assert lv.check().components[0].progress_total == 10


def test_known_idle_keeps_alive_without_progress(clock: Clock) -> None:
    lv = Liveness(clock)
    lv.register("src", 5)
    for _ in range(10):
        clock.t += 4
        lv.idle("src", "no device")
        rep = lv.check()
        assert rep.ok
    assert rep.components[0].state == "idle"
    assert rep.components[0].note == "no device"
    assert rep.summary() == "0 active, 1 idle"


def test_idle_reports_must_keep_coming(clock: Clock) -> None:
    lv = Liveness(clock)
    lv.register("src", 5)
    lv.idle("src")
    clock.t += 5.1  # the idle report is stale: the loop stopped running
    assert lv.check().stalled == ["src"]


def test_backlog_without_progress_is_stalled_even_if_recently_idle(clock: Clock) -> None:
    lv = Liveness(clock)
    lv.register("pipe", 5)
    clock.t += 4
    lv.idle("pipe")
    lv.backlog("pipe", 3)  # work arrived ...
    clock.t += 2  # ... and nothing was processed since registration 6 s ago
    rep = lv.check()
    assert rep.stalled == ["pipe"]
    assert rep.components[0].backlog == 3
    assert rep.summary() == "stalled: pipe"
    lv.progress("pipe", backlog=0)
    assert lv.check().ok


def test_one_stalled_component_fails_the_whole_check(clock: Clock) -> None:
    lv = Liveness(clock)
    lv.register("a", 5)
    lv.register("b", 5)
    clock.t += 6
    lv.progress("a")
    rep = lv.check()
    assert not rep.ok
    assert {c.name: c.state for c in rep.components} == {"a": "active", "b": "stalled"}


def test_unknown_component_and_bad_stall(clock: Clock) -> None:
    lv = Liveness(clock)
    with pytest.raises(KeyError, match="not registered"):
        lv.progress("ghost")
    with pytest.raises(ValueError):
        lv.register("x", 0)
    lv.register("x", 1)
    lv.unregister("x")
    assert lv.check().ok and lv.check().summary() == "no components"


def test_thread_safe_under_concurrent_reports() -> None:
    lv = Liveness()
    lv.register("a", 60)

    def work() -> None:
        for _ in range(2000):
            lv.progress("a")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lv.check().components[0].progress_total == 8000
