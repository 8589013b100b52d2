"""The alert life's transition table, and the outbox that stores it with each message."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.errors import OutboxError
from edgeagent.transport.alert_life import (
    TRANSITIONS,
    AlertEvent,
    AlertState,
    msg_id,
    split_msg_id,
    step,
)
from edgeagent.transport.outbox import Outbox

S, E = AlertState, AlertEvent


@pytest.mark.parametrize(
    ("before", "event", "after"),
    [
        (None, E.QUEUE_OPENED, S.OPENED_QUEUED),
        (S.OPENED_QUEUED, E.OPENED_ACKED, S.OPENED_SENT),
        (S.OPENED_QUEUED, E.QUEUE_CLOSED, S.CLOSED_QUEUED),
        (S.OPENED_SENT, E.QUEUE_CLOSED, S.CLOSED_QUEUED),
        (S.CLOSED_QUEUED, E.OPENED_ACKED, S.CLOSED_QUEUED),  # both were in flight
        (S.CLOSED_QUEUED, E.CLOSED_ACKED, S.CLOSE_SENT),
        (S.CLOSE_SENT, E.OPENED_ACKED, S.CLOSE_SENT),
        (S.CLOSE_SENT, E.CLOSED_ACKED, S.CLOSE_SENT),  # a re-send acknowledged again
    ],
)
def test_allowed_steps(before: AlertState | None, event: AlertEvent, after: AlertState) -> None:
    assert step(before, event) is after


def test_every_other_step_is_refused() -> None:
    refused = [(b, e) for b in (None, *AlertState) for e in AlertEvent if (b, e) not in TRANSITIONS]
    assert (S.CLOSED_QUEUED, E.QUEUE_CLOSED) in refused  # queueing "closed" twice
    assert (None, E.QUEUE_CLOSED) in refused  # "closed" before "opened"
    assert (S.OPENED_QUEUED, E.QUEUE_OPENED) in refused
    for b, e in refused:
        with pytest.raises(OutboxError, match="not allowed"):
            step(b, e)


def test_message_ids() -> None:
    assert msg_id("ab12", "opened") == "ab12.opened"
    assert split_msg_id("ab12.closed") == ("ab12", "closed")
    assert split_msg_id("ab12") is None and split_msg_id("ab12.status") is None
    with pytest.raises(OutboxError):
        msg_id("ab12", "extended")


def test_outbox_stores_the_step_with_the_message_or_neither(tmp_state: Path) -> None:
    ob = Outbox.in_state_dir(tmp_state)
    ob.put_alert("t/alert", b"{}", "a1", "opened")
    assert ob.alert_lives() == {"a1": S.OPENED_QUEUED} and ob.has_message("a1.opened")
    with pytest.raises(OutboxError):
        ob.put_alert("t/alert", b"{}", "a1", "opened")  # the life refuses: nothing stored
    assert ob.count() == 1
    with pytest.raises(OutboxError):
        ob.put_alert("t/alert", b"{}", "a2", "closed")  # closed before opened
    assert "a2" not in ob.alert_lives() and not ob.has_message("a2.closed")
    ob.put_alert("t/alert", b"{}", "a1", "closed")
    rows = ob.peek(limit=5)
    ob.ack_many([r.id for r in rows])
    assert ob.alert_lives() == {"a1": S.CLOSE_SENT} and ob.count() == 0
    assert ob.alert_lives([S.OPENED_QUEUED, S.OPENED_SENT]) == {}
    assert ob.stats()["alert_lives"] == {"close_sent": 1}
    ob.close()
    # Persisted: a new process reads the same life.
    assert Outbox.in_state_dir(tmp_state).alert_lives() == {"a1": S.CLOSE_SENT}


def test_requeue_of_a_message_still_stored_steps_the_life_without_a_copy(
    tmp_state: Path,
) -> None:
    ob = Outbox.in_state_dir(tmp_state)
    ob.put("t/alert", b"{}", "alert", msg_id="a9.opened")  # queued by an older agent
    ob.put_alert("t/alert", b"{}", "a9", "opened")
    assert ob.count() == 1 and ob.alert_lives() == {"a9": S.OPENED_QUEUED}


def test_finished_lives_are_pruned_past_the_age_bound(tmp_state: Path) -> None:
    from edgeagent.transport.outbox import OutboxLimits

    now = [1000.0]
    ob = Outbox(tmp_state / "o.sqlite3", OutboxLimits(max_age_s=100.0), clock=lambda: now[0])
    for a in ("old", "open"):
        ob.put_alert("t/alert", b"{}", a, "opened")
    ob.put_alert("t/alert", b"{}", "old", "closed")
    ob.ack_many([r.id for r in ob.peek(limit=10) if r.msg_id.startswith("old.")])
    now[0] += 101.0
    ob.checkpoint()
    assert ob.alert_lives() == {"open": S.OPENED_QUEUED}  # unfinished lives stay
