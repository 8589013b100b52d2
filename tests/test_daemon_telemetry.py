"""Status snapshot: a pure function with a pinned schema; outbox stats mapping."""

from __future__ import annotations

import json
from pathlib import Path

from edgeagent.daemon.health import Liveness
from edgeagent.daemon.telemetry import (
    OutboxStats,
    ProcessStats,
    build_status,
    outbox_stats_from,
    presence_state,
    status_payload,
    status_topic,
)
from edgeagent.transport.outbox import Outbox, OutboxLimits


def test_status_snapshot_schema() -> None:
    lv = Liveness()
    lv.register("pipeline", 5)
    snap = build_status(
        box_id="box-1",
        fleet="f",
        version="0.1.0",
        started_at=100.0,
        now=160.5,
        state="running",
        model_version="v3",
        links={"t1": {"state": "open", "counters": {"frames_ok": 5}}},
        outbox=OutboxStats(depth=4, bytes=100, dropped=1),
        counters={"b": 2, "a": 1},
        process=ProcessStats(cpu_percent=1.5, rss_bytes=10, memory_percent=0.1, threads=3),
        last_round=7,
        liveness=lv.check(),
    )
    assert snap["schema"] == 1
    assert snap["uptime_s"] == 60.5
    assert snap["links"]["t1"]["counters"]["frames_ok"] == 5
    assert snap["outbox"] == {"depth": 4, "bytes": 100, "dropped": 1, "oldest_age_s": None}
    assert list(snap["counters"]) == ["a", "b"]
    assert snap["process"]["threads"] == 3
    assert snap["last_round"] == 7 and snap["model_version"] == "v3"
    assert snap["liveness"]["ok"] is True
    assert snap["liveness"]["components"][0]["name"] == "pipeline"
    # A clock step backwards never produces a negative uptime.
    again = build_status(box_id="b", fleet="f", version="v", started_at=10, now=5, state="x")
    assert again["uptime_s"] == 0.0 and again["outbox"] is None


def test_status_topic() -> None:
    topic = status_topic("edgeagent/v1", "clinic", "box-1")
    assert topic == "edgeagent/v1/clinic/node/box-1/status"


def test_outbox_stats_from_a_real_outbox(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite3", OutboxLimits(max_rows=3)) as ob:
        for i in range(5):
            ob.put(f"t/{i}", b"x" * 10, kind="telemetry")
        stats = outbox_stats_from(ob.stats())
    assert stats.depth == 3
    assert stats.bytes == 30
    assert stats.dropped == 2
    assert stats.oldest_age_s is not None and stats.oldest_age_s >= 0


def test_outbox_stats_from_empty() -> None:
    assert outbox_stats_from({"rows": 0, "bytes": 0, "counters": {}, "by_kind": {}}) == (
        OutboxStats(depth=0, bytes=0, dropped=0, oldest_age_s=None)
    )


def _snap(state: str, ok: bool) -> dict[str, object]:
    live = Liveness()
    snap = build_status(
        box_id="box-1",
        fleet="f",
        version="v",
        started_at=0,
        now=10,
        state=state,
        liveness=live.check(),
    )
    snap["liveness"]["ok"] = ok  # type: ignore[index]
    return snap


def test_presence_state_and_payload() -> None:
    assert presence_state(_snap("running", True)) == "online"
    assert presence_state(_snap("running", False)) == "degraded"
    assert presence_state(_snap("stopping", True)) == "offline"
    body = json.loads(status_payload(_snap("running", True)))
    # The transport's presence schema {"id", "state", "t"} plus the whole snapshot.
    assert body["id"] == "box-1" and body["state"] == "online" and body["t"] == 10
    assert body["daemon_state"] == "running" and body["schema"] == 1
    assert "liveness" in body and "uptime_s" in body
