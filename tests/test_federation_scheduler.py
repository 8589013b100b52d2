"""The aggregator's round lifecycle table, deadlines and participant choice (no broker)."""

from __future__ import annotations

import random

import pytest

from edgeagent.errors import ProtocolError
from edgeagent.federation.partials import CLOSE_GRACE_S
from edgeagent.federation.scheduler import (
    MAX_WAIT_S,
    MIN_WAIT_S,
    TRANSITIONS,
    BoxInfo,
    Event,
    Phase,
    Scheduler,
    choose,
    eligible,
    transition,
)
from edgeagent.ops.config import AggregatorSection

ALLOWED = [
    (Phase.IDLE, Event.START, Phase.RUNNING),
    (Phase.RUNNING, Event.ADVANCE, Phase.RUNNING),
    (Phase.RUNNING, Event.DRAIN, Phase.DRAINING),
    (Phase.RUNNING, Event.FINISH, Phase.IDLE),
    (Phase.DRAINING, Event.ADVANCE, Phase.RUNNING),
    (Phase.DRAINING, Event.FINISH, Phase.IDLE),
]


@pytest.mark.parametrize(("phase", "event", "after"), ALLOWED)
def test_every_allowed_move(phase: Phase, event: Event, after: Phase) -> None:
    assert transition(phase, event) is after


def test_the_table_holds_exactly_the_documented_moves() -> None:
    assert {(p, e): a for p, e, a in ALLOWED} == dict(TRANSITIONS)


REFUSED = [
    (p, e) for p in Phase for e in Event if (p, e) not in TRANSITIONS
]  # every move the table leaves out


@pytest.mark.parametrize(("phase", "event"), REFUSED)
def test_moves_outside_the_table_are_out_of_order(phase: Phase, event: Event) -> None:
    with pytest.raises(ProtocolError) as err:
        transition(phase, event)
    assert err.value.reason == "out_of_order"
    assert str(event) in str(err.value) and str(phase) in str(err.value)


def test_refused_moves_include_the_ones_a_bug_would_make() -> None:
    # a round opened over another, a stage closed with no round, a drain twice
    assert {(Phase.RUNNING, Event.START), (Phase.IDLE, Event.ADVANCE),
            (Phase.DRAINING, Event.DRAIN), (Phase.IDLE, Event.FINISH)} <= set(REFUSED)  # fmt: skip


def _policy(**kw: object) -> AggregatorSection:
    base: dict[str, object] = {"min_boxes": 3, "max_boxes": 4, "stage_timeout_s": 5.0,
                               "round_interval_s": 60.0}  # fmt: skip
    return AggregatorSection(**{**base, **kw})


def test_a_round_through_its_deadlines() -> None:
    s = Scheduler(_policy(), now=100.0)
    assert s.phase is Phase.IDLE and s.next_round_at == 100.0
    assert not s.due(100.0, 2)  # too few boxes
    assert s.due(100.0, 3)
    assert s.wait(100.0) == MAX_WAIT_S  # idle: only the loop's own bound
    s.start(100.0)
    assert s.phase is Phase.RUNNING and s.deadline == 105.0
    assert not s.due(100.0, 10)  # never a second round over a running one
    assert s.stage_closes(101.0, pending=False)  # every reply in: close early
    assert not s.stage_closes(104.9, pending=True)
    assert s.stage_closes(105.0, pending=True)  # deadline
    assert s.wait(104.9) == pytest.approx(0.1)
    assert s.wait(200.0) == MIN_WAIT_S  # past the deadline: no zero-timeout spin
    s.advance(105.0)
    assert s.deadline == 110.0
    s.drain(110.0)
    assert s.phase is Phase.DRAINING and s.deadline == 110.0 + CLOSE_GRACE_S
    s.advance(111.0)
    s.finish(120.0)
    assert s.phase is Phase.IDLE and s.next_round_at == 180.0
    assert not s.due(179.0, 3) and s.due(180.0, 3)
    assert not s.stage_closes(1e9, pending=False)  # no stage open
    with pytest.raises(ProtocolError, match="out_of_order"):
        s.finish(121.0)


def test_round_limit() -> None:
    assert not Scheduler(_policy(rounds=0), 0.0).limit_reached(10**6)  # 0 = forever
    s = Scheduler(_policy(rounds=2), 0.0)
    assert not s.limit_reached(1) and s.limit_reached(2)


def test_participants_are_online_verified_boxes_drawn_without_bias() -> None:
    boxes = {"c": BoxInfo(None), "a": BoxInfo(None), "b": BoxInfo(None, online=False)}
    assert eligible(boxes) == ["a", "c"]
    ready = [f"box-{i:02d}" for i in range(10)]
    assert choose(ready, 20) == ready  # fewer than max: everyone, sorted
    picked = choose(ready, 4, random.Random(1))
    assert len(picked) == 4 and picked == sorted(picked) and set(picked) <= set(ready)
    counts = dict.fromkeys(ready, 0)
    rng = random.Random(7)
    for _ in range(2000):
        for b in choose(ready, 4, rng):
            counts[b] += 1
    # each box is invited 2000 * 4/10 = 800 times in expectation (sd ~ 22)
    assert all(700 < n < 900 for n in counts.values()), counts
