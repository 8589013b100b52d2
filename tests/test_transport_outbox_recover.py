"""A corrupt or truncated outbox is found at open, moved aside, and its readable rows kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgeagent.ops import dbcheck
from edgeagent.transport.alert_life import AlertState
from edgeagent.transport.outbox import DB_NAME, Outbox
from edgeagent.transport.outbox_recover import open_checked


def _fill(state: Path, n: int) -> dict[str, bytes]:
    ob = Outbox.in_state_dir(state)
    payloads = {}
    for i in range(n):
        body = bytes([i % 251]) * 600
        ob.put("t/update", body, "update", msg_id=f"m{i:04d}")
        payloads[f"m{i:04d}"] = body
    ob.put_alert("t/alert", b"{}", "a1", "opened")
    ob.checkpoint()
    ob.close()
    return payloads


def test_sound_outbox_opens_as_it_is(tmp_state: Path) -> None:
    _fill(tmp_state, 3)
    ob, rec = open_checked(tmp_state)
    assert rec is None and ob.count() == 4
    assert list(tmp_state.glob("*.corrupt-*")) == []


def test_corrupt_page_is_moved_aside_and_readable_rows_salvaged(tmp_state: Path) -> None:
    payloads = _fill(tmp_state, 200)
    path = tmp_state / DB_NAME
    db = sqlite3.connect(path)
    page = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    victim = pages // 2  # a leaf of the messages table, in the middle of the file
    with open(path, "r+b") as f:
        f.seek((victim - 1) * page)
        f.write(b"\xff" * 16)  # the page header
    assert not dbcheck.check(path).ok
    ob, rec = open_checked(tmp_state)
    assert rec is not None and rec.moved_to.exists() and ".corrupt-" in rec.moved_to.name
    assert dbcheck.check(path).ok  # the fresh file
    got = {r.msg_id: r.payload for r in ob.peek(limit=1000)}
    assert 0 < rec.salvaged["messages"] == len(got) < 201
    for mid, body in got.items():  # what was salvaged is what was stored, byte for byte
        assert mid == "a1.opened" or payloads[mid] == body
    assert ob.counters()["salvaged"] == len(got)
    assert "salvaged rows" in rec.describe()


def test_truncated_outbox_is_not_silently_recreated(tmp_state: Path) -> None:
    _fill(tmp_state, 5)
    (tmp_state / DB_NAME).write_bytes(b"")
    verdict = dbcheck.check(tmp_state / DB_NAME)
    assert not verdict.ok and "truncated" in verdict.reason
    ob, rec = open_checked(tmp_state)
    assert rec is not None and "truncated" in rec.reason
    assert ob.count() == 0 and rec.salvaged["messages"] == 0
    assert rec.moved_to.exists() and rec.moved_to.stat().st_size == 0


def test_alert_lives_survive_a_salvage(tmp_state: Path) -> None:
    _fill(tmp_state, 2)
    path = tmp_state / DB_NAME
    with open(path, "r+b") as f:  # break the file header's magic: nothing opens normally
        f.write(b"not a database!!")
    ob, rec = open_checked(tmp_state)
    assert rec is not None
    assert ob.alert_lives() in ({}, {"a1": AlertState.OPENED_QUEUED})


def test_salvaged_lives_step_back_to_what_the_salvaged_messages_prove() -> None:
    from edgeagent.transport.outbox_recover import consistent_lives

    lives = [
        ("a", "opened_queued", 1.0),  # message lost: dropped, queued again from the store
        ("b", "opened_queued", 1.0),  # message salvaged: kept
        ("c", "closed_queued", 1.0),  # both lost: dropped
        ("d", "closed_queued", 1.0),  # closed lost, opened kept: back to opened_queued
        ("e", "close_sent", 1.0),  # done: kept
    ]
    got = consistent_lives(lives, {"b.opened", "d.opened"})
    assert got == [
        ("b", "opened_queued", 1.0),
        ("d", "opened_queued", 1.0),
        ("e", "close_sent", 1.0),
    ]
