"""The box's round table: every allowed move, the refused ones and their reasons."""

from __future__ import annotations

import pytest

from edgeagent.errors import ProtocolError
from edgeagent.federation.box_round import (
    REFUSALS,
    TRANSITIONS,
    BoxEvent,
    BoxPhase,
    stage_event,
    transition,
)
from edgeagent.fl.constants import Stage

P, E = BoxPhase, BoxEvent

SECAGG = (P.COMMITTING, P.COMMITTED, P.REVEALED, P.MASKING)
IN_ROUND = (*SECAGG, P.SENDING_UPDATE, P.AWAITING_RESULT)
ALLOWED = [
    *((p, E.JOIN_SECAGG, P.COMMITTING) for p in BoxPhase),  # a newer round supersedes
    *((p, E.JOIN_PLAIN, P.SENDING_UPDATE) for p in BoxPhase),
    (P.SENDING_UPDATE, E.UPDATE_SENT, P.AWAITING_RESULT),
    # the round seed's commit-reveal comes before any SecAgg+ stage
    (P.COMMITTING, E.COMMIT, P.COMMITTED),
    (P.COMMITTED, E.REVEAL, P.REVEALED),
    (P.REVEALED, E.STAGE, P.MASKING),
    (P.MASKING, E.STAGE, P.MASKING),
    *((p, E.RESULT, P.IDLE) for p in SECAGG),
    (P.AWAITING_RESULT, E.RESULT, P.IDLE),
    *((p, E.WITHDRAWN, P.IDLE) for p in IN_ROUND),
    *((p, E.REFUSED, P.IDLE) for p in IN_ROUND),
]


@pytest.mark.parametrize(("phase", "event", "after"), ALLOWED)
def test_every_allowed_move(phase: BoxPhase, event: BoxEvent, after: BoxPhase) -> None:
    assert transition(phase, event) is after


def test_the_table_holds_exactly_the_documented_moves() -> None:
    assert {(p, e): a for p, e, a in ALLOWED} == dict(TRANSITIONS)
    assert not set(REFUSALS) & set(TRANSITIONS)  # a refusal reason never shadows a move


@pytest.mark.parametrize(
    ("phase", "event", "reason"),
    [
        # the other mode's messages
        (P.MASKING, E.UPDATE, "wrong_mode"),
        (P.AWAITING_RESULT, E.STAGE, "wrong_mode"),
        (P.AWAITING_RESULT, E.UPDATE, "wrong_mode"),
        (P.SENDING_UPDATE, E.STAGE, "wrong_mode"),
        (P.SENDING_UPDATE, E.COMMIT, "wrong_mode"),
        (P.AWAITING_RESULT, E.REVEAL, "wrong_mode"),
        # out of order: no SecAgg+ stage before the seed, no reveal before the commit
        (P.COMMITTING, E.STAGE, "out_of_order"),
        (P.COMMITTED, E.STAGE, "out_of_order"),
        (P.COMMITTING, E.REVEAL, "out_of_order"),
        (P.REVEALED, E.COMMIT, "out_of_order"),
        (P.MASKING, E.REVEAL, "out_of_order"),
        (P.IDLE, E.STAGE, "out_of_order"),
        (P.IDLE, E.RESULT, "out_of_order"),
        (P.IDLE, E.UPDATE_SENT, "out_of_order"),
        (P.IDLE, E.WITHDRAWN, "out_of_order"),
        (P.IDLE, E.REFUSED, "out_of_order"),
        (P.MASKING, E.UPDATE_SENT, "out_of_order"),
        (P.AWAITING_RESULT, E.UPDATE_SENT, "out_of_order"),  # one update per round
        (P.SENDING_UPDATE, E.RESULT, "out_of_order"),
    ],
)
def test_refused_moves_say_why(phase: BoxPhase, event: BoxEvent, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        transition(phase, event)
    assert err.value.reason == reason


def test_every_move_outside_the_table_is_refused() -> None:
    for p in BoxPhase:
        for e in BoxEvent:
            if (p, e) in TRANSITIONS:
                continue
            with pytest.raises(ProtocolError) as err:
                transition(p, e)
            assert err.value.reason == REFUSALS.get((p, e), "out_of_order")


def test_stage_bodies_map_to_events() -> None:
    assert stage_event(Stage.RESULT) is E.RESULT
    assert stage_event(Stage.UPDATE) is E.UPDATE
    assert stage_event(Stage.COMMIT) is E.COMMIT
    assert stage_event(Stage.REVEAL) is E.REVEAL
    for s in (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED, Stage.CONSISTENCY, Stage.UNMASK):
        assert stage_event(s) is E.STAGE
