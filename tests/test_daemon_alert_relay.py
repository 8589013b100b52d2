"""The detector's alert sink: store, outbox, and each alert's life across restarts.

Real parts: SQLite stores in a temp state dir (alerts.sqlite and the outbox).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeagent.daemon.alert_relay import AlertRelay
from edgeagent.daemon.components import Counters
from edgeagent.pipeline.alerts import Alert, AlertStore
from edgeagent.transport.alert_life import AlertState
from edgeagent.transport.outbox import Outbox, OutboxLimits

TOPIC = "edgeagent/v1/f/node/box/alert"


def _alert(**kw: Any) -> Alert:
    base = dict(
        patient="p1",
        device="d1",
        start=10.0,
        end=20.0,
        kind="fall",
        category="clinical",
        score=0.9,
        modality="acc",
        model="v1-x",
    )
    return Alert(**{**base, **kw})


def _relay(state: Path, limits: OutboxLimits | None = None) -> tuple[AlertRelay, Outbox, Counters]:
    ob = Outbox.in_state_dir(state, limits)
    counters = Counters()
    return AlertRelay(AlertStore(state), ob, TOPIC, "box", counters), ob, counters


def _messages(ob: Outbox) -> list[tuple[str, dict[str, Any]]]:
    rows = ob.peek(limit=100)
    return [(r.msg_id, json.loads(r.payload)) for r in rows]


def test_relay_stores_then_queues_opened_and_closed(tmp_state: Path) -> None:
    relay, ob, counters = _relay(tmp_state)
    a = _alert()
    relay.add(a)
    relay.extend(a.id, 24.0, 0.95)  # an extension only updates the local row
    assert [m for m, _ in _messages(ob)] == [f"{a.id}.opened"]
    relay.extend(a.id, 26.0, 0.5, closed=True)
    msgs = dict(_messages(ob))
    assert set(msgs) == {f"{a.id}.opened", f"{a.id}.closed"}
    closed = msgs[f"{a.id}.closed"]
    assert closed["event"] == "closed" and closed["closed"] is True
    assert closed["end"] == 26.0 and closed["score"] == 0.95 and closed["box_id"] == "box"
    (row,) = relay.store.list()
    assert row.end == 26.0 and row.closed
    assert ob.peek(limit=1)[0].kind == "alert"
    assert counters.snapshot() == {
        "alerts_raised": 1,
        "alerts_queued_opened": 1,
        "alerts_queued_closed": 1,
    }


def test_alert_stored_before_a_crash_is_queued_once_at_next_start(tmp_state: Path) -> None:
    relay, ob, counters = _relay(tmp_state)
    lost = _alert(closed=True)
    relay.store.add(lost)  # the process died before the outbox put
    assert relay.recover() == {"closed": [], "resumed": [lost.id]}
    assert relay.recover() == {"closed": [], "resumed": []}  # finished: not queued twice
    assert [m for m, _ in _messages(ob)] == [f"{lost.id}.opened", f"{lost.id}.closed"]
    # Queued but not yet marked when the crash came: the life steps, the row is not doubled.
    again = _alert(closed=True)
    relay.store.add(again)
    ob.put(TOPIC, relay.payload(again, "opened"), "alert", msg_id=f"{again.id}.opened")
    assert relay.recover()["resumed"] == [again.id]
    assert ob.count() == 4 and relay.store.unfinished() == []
    assert counters.snapshot().get("alerts_outbox_errors", 0) == 0


def test_alert_open_at_a_restart_is_closed_and_its_closed_message_queued(tmp_state: Path) -> None:
    relay, ob, counters = _relay(tmp_state)
    a = _alert()
    relay.add(a)
    relay.extend(a.id, 30.0, 0.97)  # still open when the process dies
    relay.store.close()
    ob.close()
    relay, ob, counters = _relay(tmp_state)  # the next start
    assert relay.recover() == {"closed": [a.id], "resumed": []}
    msgs = dict(_messages(ob))
    assert set(msgs) == {f"{a.id}.opened", f"{a.id}.closed"}
    closed = msgs[f"{a.id}.closed"]
    assert closed["end"] == 30.0 and closed["score"] == 0.97
    assert closed["detail"]["close_reason"] == "restart"
    assert relay.store.get(a.id).closed and relay.store.unfinished() == []  # type: ignore[union-attr]
    assert ob.alert_lives()[a.id] == AlertState.CLOSED_QUEUED
    assert counters.snapshot()["alerts_closed_at_start"] == 1


def test_closed_row_whose_closed_message_was_never_queued_is_resumed(tmp_state: Path) -> None:
    relay, ob, _ = _relay(tmp_state)
    a = _alert()
    relay.add(a)
    relay.store.extend(a.id, 40.0, 0.9, closed=True)  # killed before the closed put
    got = relay.recover()
    assert got == {"closed": [], "resumed": [a.id]}
    assert f"{a.id}.closed" in dict(_messages(ob))


def test_acks_walk_the_life_to_close_sent(tmp_state: Path) -> None:
    relay, ob, _ = _relay(tmp_state)
    a = _alert()
    relay.add(a)
    (opened,) = ob.peek(limit=5)
    ob.ack_many([opened.id])
    assert ob.alert_lives()[a.id] == AlertState.OPENED_SENT
    relay.extend(a.id, 22.0, 0.9, closed=True)
    (closed,) = ob.peek(limit=5)
    ob.ack_many([closed.id])
    assert ob.alert_lives()[a.id] == AlertState.CLOSE_SENT
    assert relay.recover() == {"closed": [], "resumed": []}
    assert ob.count() == 0


def test_alert_the_outbox_cannot_take_stays_unsent_and_counted(tmp_state: Path) -> None:
    relay, ob, counters = _relay(tmp_state, OutboxLimits(max_bytes=1024))
    a = _alert(detail={"trace": "x" * 2000})  # larger than the outbox may hold
    relay.add(a)
    assert counters.snapshot()["alerts_outbox_errors"] == 1
    assert ob.count() == 0
    assert [x.id for x in relay.store.list(unsent=True)] == [a.id]  # kept, retried at start
    assert [x.id for x in relay.store.unfinished()] == [a.id]
