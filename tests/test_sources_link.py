import pytest

from edgeagent.sources.link import (
    TRANSITIONS,
    LinkInput,
    LinkState,
    LinkTransitionError,
    next_state,
)

S, In = LinkState, LinkInput


def test_a_whole_session_with_a_stall_walks_the_table() -> None:
    path = [In.SEARCH, In.FOUND, In.CONNECTED, In.SUBSCRIBED, In.QUIET, In.RESUMED, In.ENDED,
            In.SEARCH, In.GIVE_UP]  # fmt: skip
    state, seen = S.SEARCHING, []
    for ev in path:
        state = next_state(state, ev)
        seen.append(state)
    assert seen == [S.SEARCHING, S.CONNECTING, S.SUBSCRIBING, S.STREAMING, S.STALLED,
                    S.STREAMING, S.BACKOFF, S.SEARCHING, S.STOPPED]  # fmt: skip


@pytest.mark.parametrize("state", list(LinkState))
def test_stop_is_legal_from_every_state(state: LinkState) -> None:
    assert next_state(state, In.STOP) is S.STOPPED


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.SEARCHING, In.SUBSCRIBED),  # data before a connection
        (S.STREAMING, In.FOUND),
        (S.BACKOFF, In.QUIET),
        (S.STOPPED, In.SEARCH),  # a stopped link never restarts by itself
        (S.STOPPED, In.ENDED),
        (S.CONNECTING, In.RESUMED),
    ],
)
def test_moves_outside_the_table_raise(state: LinkState, event: LinkInput) -> None:
    with pytest.raises(LinkTransitionError, match=event.value):
        next_state(state, event)


def test_only_stop_leaves_stopped_and_every_state_is_reachable() -> None:
    assert {e for (s, e) in TRANSITIONS if s is S.STOPPED} == {In.STOP}
    assert {nxt for nxt in TRANSITIONS.values()} | {S.SEARCHING} == set(LinkState)
