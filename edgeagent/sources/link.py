"""One wearable's BLE link as a transition table, h11 style: states, inputs, and nothing else.

Why a table: the link's life (search, connect, subscribe, stream, stall, back off, stop) used
to be set from wherever the code happened to be. As a table every legal move is written in
one place, an illegal one raises instead of leaving ``edgeagent status`` showing a state the
link is not in, and the whole life is testable without bleak or a bus.
"""

from __future__ import annotations

from enum import StrEnum


class LinkState(StrEnum):
    """Where one wearable's link is (shown by ``edgeagent status``)."""

    SEARCHING = "searching"
    CONNECTING = "connecting"
    SUBSCRIBING = "subscribing"
    STREAMING = "streaming"
    STALLED = "stalled"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class LinkInput(StrEnum):
    """What happened to the link."""

    SEARCH = "search"  # a session starts: look for the device's advertisement
    FOUND = "found"  # advertisement seen: connecting
    CONNECTED = "connected"  # GATT connected: subscribing to its streams
    SUBSCRIBED = "subscribed"  # notifications on: data may flow
    QUIET = "quiet"  # no notification for the stall time
    RESUMED = "resumed"  # data flows again after a stall
    RETRY_NOW = "retry_now"  # a transient BlueZ error: search again at once
    ENDED = "ended"  # the session ended (link lost, failure, stall too long): back off
    GIVE_UP = "give_up"  # retrying cannot help (classified error, attempts exhausted)
    STOP = "stop"  # the source is shutting down


S, In = LinkState, LinkInput
_ACTIVE = (S.SEARCHING, S.CONNECTING, S.SUBSCRIBING, S.STREAMING, S.STALLED)

#: (state, input) -> next state. Anything not listed is a bug in the source, not the device.
TRANSITIONS: dict[tuple[LinkState, LinkInput], LinkState] = {
    (S.SEARCHING, In.SEARCH): S.SEARCHING,
    (S.BACKOFF, In.SEARCH): S.SEARCHING,
    (S.SEARCHING, In.FOUND): S.CONNECTING,
    (S.CONNECTING, In.CONNECTED): S.SUBSCRIBING,
    (S.SUBSCRIBING, In.SUBSCRIBED): S.STREAMING,
    (S.STREAMING, In.QUIET): S.STALLED,
    (S.STALLED, In.RESUMED): S.STREAMING,
    **{(s, In.RETRY_NOW): S.SEARCHING for s in _ACTIVE},
    **{(s, In.ENDED): S.BACKOFF for s in _ACTIVE},
    **{(s, In.GIVE_UP): S.STOPPED for s in (*_ACTIVE, S.BACKOFF)},
    **{(s, In.STOP): S.STOPPED for s in LinkState},
}


class LinkTransitionError(RuntimeError):
    """An input the table does not allow in the current state (a source bug)."""

    def __init__(self, state: LinkState, event: LinkInput) -> None:
        self.state = state
        self.event = event
        super().__init__(f"link cannot take {event.value!r} while {state.value!r}")


def next_state(state: LinkState, event: LinkInput) -> LinkState:
    """The state after ``event``; raises ``LinkTransitionError`` if the table has no such move."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LinkTransitionError(state, event) from None
