"""An alert's delivery life as a transition table: queued opened, sent, closed, close sent.

Why a table kept next to the outbox: an alert leaves the box as two messages,
``<id>.opened`` and ``<id>.closed``. Whether each has been queued and
acknowledged must survive ``kill -9`` at any instant, so the outbox stores the
state in the same SQLite transaction that inserts the message or deletes it on
PUBACK: a crash leaves the state and the queue in agreement. At start the
daemon reads every life that has not reached :attr:`AlertState.CLOSE_SENT` and
finishes it (queues what is missing, closes what the last run left open).

Pure: no I/O, no SQLite; :func:`step` is the whole protocol and is tested as a
table, in the style of h11's ``_state.py``.
"""

from __future__ import annotations

from enum import StrEnum

from edgeagent.errors import OutboxError


class AlertState(StrEnum):
    """Where an alert's messages are. The order of the members is the order of its life."""

    OPENED_QUEUED = "opened_queued"  # the "opened" message is in the outbox
    OPENED_SENT = "opened_sent"  # the broker acknowledged "opened"; the episode runs on
    CLOSED_QUEUED = "closed_queued"  # the episode ended; "closed" is in the outbox
    CLOSE_SENT = "close_sent"  # the broker acknowledged "closed": nothing left to do


class AlertEvent(StrEnum):
    """What can happen to an alert's messages."""

    QUEUE_OPENED = "queue_opened"
    OPENED_ACKED = "opened_acked"
    QUEUE_CLOSED = "queue_closed"
    CLOSED_ACKED = "closed_acked"


#: (state before, event) -> state after. ``None`` is "no life yet". Acks of the
#: "opened" message may arrive after "closed" was queued or even acknowledged (both
#: are in flight at once), so they are accepted and change nothing there.
TRANSITIONS: dict[tuple[AlertState | None, AlertEvent], AlertState] = {
    (None, AlertEvent.QUEUE_OPENED): AlertState.OPENED_QUEUED,
    (AlertState.OPENED_QUEUED, AlertEvent.OPENED_ACKED): AlertState.OPENED_SENT,
    (AlertState.OPENED_QUEUED, AlertEvent.QUEUE_CLOSED): AlertState.CLOSED_QUEUED,
    (AlertState.OPENED_SENT, AlertEvent.QUEUE_CLOSED): AlertState.CLOSED_QUEUED,
    (AlertState.CLOSED_QUEUED, AlertEvent.OPENED_ACKED): AlertState.CLOSED_QUEUED,
    (AlertState.CLOSED_QUEUED, AlertEvent.CLOSED_ACKED): AlertState.CLOSE_SENT,
    (AlertState.CLOSE_SENT, AlertEvent.OPENED_ACKED): AlertState.CLOSE_SENT,
    (AlertState.CLOSE_SENT, AlertEvent.CLOSED_ACKED): AlertState.CLOSE_SENT,
}

#: The message event ("opened"/"closed", the suffix of its msg-id) each event is about.
QUEUE_EVENT = {"opened": AlertEvent.QUEUE_OPENED, "closed": AlertEvent.QUEUE_CLOSED}
ACK_EVENT = {"opened": AlertEvent.OPENED_ACKED, "closed": AlertEvent.CLOSED_ACKED}

#: States in which the "closed" message still has to be queued.
OPEN_STATES = frozenset({AlertState.OPENED_QUEUED, AlertState.OPENED_SENT})


def step(state: AlertState | None, event: AlertEvent) -> AlertState:
    """The state after ``event``; raises :class:`OutboxError` for a move the life forbids.

    A forbidden move is a bug on this box (queueing "closed" twice, an ack of a
    message that was never queued), never a remote fault, so it is an error
    rather than a counter.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise OutboxError(
            f"alert life: {event.value} is not allowed in state {state.value if state else 'none'}"
        ) from None


def msg_id(alert_id: str, event: str) -> str:
    """The outbox/MQTT message id of an alert's ``opened`` or ``closed`` message."""
    if event not in QUEUE_EVENT:
        raise OutboxError(f"alert message event must be opened or closed, got {event!r}")
    return f"{alert_id}.{event}"


def split_msg_id(mid: str) -> tuple[str, str] | None:
    """``(alert id, event)`` of an alert message id, or None if it is not one."""
    alert_id, dot, event = mid.rpartition(".")
    if not dot or not alert_id or event not in QUEUE_EVENT:
        return None
    return alert_id, event
