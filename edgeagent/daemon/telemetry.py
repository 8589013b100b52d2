"""The box's health snapshot: what a fleet operator sees for each box.

:func:`build_status` is a pure function from the daemon's current facts to a
JSON-able dict. The same snapshot is returned by ``edgeagent status`` over the
control socket and published, retained, on ``.../node/<box>/status`` so the
last known state of an offline box stays visible on the broker. Keeping it
pure lets tests pin the schema without starting anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edgeagent.daemon.health import LivenessReport

# Bumped when a field changes meaning or disappears (adding fields is compatible).
STATUS_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """CPU and memory of the agent process (sampled by the daemon with psutil)."""

    cpu_percent: float
    rss_bytes: int
    memory_percent: float
    threads: int
    open_files: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Store-and-forward health: how much is waiting and how much was dropped."""

    depth: int
    bytes: int = 0
    dropped: int = 0
    oldest_age_s: float | None = None


def outbox_stats_from(stats: Mapping[str, Any]) -> OutboxStats:
    """Map ``transport.outbox.Outbox.stats()`` onto the snapshot's outbox block.

    Every ``dropped_*`` counter (rows, bytes and age bounds) is a message the
    box produced and the fleet will never see, so they add up to ``dropped``.
    """
    counters: Mapping[str, Any] = stats.get("counters", {}) or {}
    dropped = sum(int(v) for k, v in counters.items() if k.startswith("dropped_"))
    ages = [
        float(k["oldest_age_s"])
        for k in (stats.get("by_kind", {}) or {}).values()
        if k.get("oldest_age_s") is not None
    ]
    return OutboxStats(
        depth=int(stats.get("rows") or 0),
        bytes=int(stats.get("bytes") or 0),
        dropped=dropped,
        oldest_age_s=max(ages) if ages else None,
    )


def presence_state(snapshot: Mapping[str, Any]) -> str:
    """``online``/``degraded``/``offline``: the state word the MQTT link's presence
    messages and last will use, derived from the daemon state, liveness and the
    components' ``degraded`` reasons (e.g. the broker refusing this box's publishes)."""
    if snapshot.get("state") != "running":
        return "offline"
    live = snapshot.get("liveness") or {}
    healthy = live.get("ok", True) and not live.get("faults") and not snapshot.get("degraded")
    return "online" if healthy else "degraded"


def status_payload(snapshot: Mapping[str, Any]) -> bytes:
    """The retained status message: the presence fields the transport's
    ``{"id", "state", "t"}`` schema defines, plus the whole snapshot.

    The snapshot's own ``state`` (the daemon's) moves to ``daemon_state`` so a
    reader of presence messages and last wills sees one meaning of ``state``.
    """
    body = dict(snapshot)
    body["daemon_state"] = body.pop("state", None)
    body.update(id=snapshot.get("box_id"), state=presence_state(snapshot), t=snapshot.get("time"))
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def status_topic(prefix: str, fleet: str, box_id: str) -> str:
    """The retained status topic of one box (design §4)."""
    return f"{prefix}/{fleet}/node/{box_id}/status"


def build_status(
    *,
    box_id: str,
    fleet: str,
    version: str,
    started_at: float,
    now: float,
    state: str,
    model_version: str | None = None,
    links: Mapping[str, Mapping[str, Any]] | None = None,
    outbox: OutboxStats | None = None,
    counters: Mapping[str, int] | None = None,
    process: ProcessStats | None = None,
    last_round: int | str | None = None,
    liveness: LivenessReport | None = None,
) -> dict[str, Any]:
    """Assemble the status snapshot (wall-clock ``now`` and ``started_at`` in seconds).

    ``links`` maps device id -> {"state": ..., "counters": {...}, ...} as each
    source reports it; unknown keys pass through so sources can add detail.
    """
    uptime = 0.0 if now < started_at else round(now - started_at, 3)
    return {
        "schema": STATUS_SCHEMA,
        "box_id": box_id,
        "fleet": fleet,
        "version": version,
        "state": state,
        "time": round(now, 3),
        "uptime_s": uptime,
        "model_version": model_version,
        "last_round": last_round,
        "links": {k: dict(v) for k, v in sorted((links or {}).items())},
        "outbox": asdict(outbox) if outbox is not None else None,
        "counters": dict(sorted((counters or {}).items())),
        "process": asdict(process) if process is not None else None,
        "liveness": (
            {
                "ok": liveness.ok,
                "summary": liveness.summary(),
                "faults": dict(liveness.faults),
                "components": [asdict(c) for c in liveness.components],
            }
            if liveness is not None
            else None
        ),
    }
