"""Open the outbox only after checking it: a corrupt file is moved aside and salvaged.

Why here and not in :class:`~edgeagent.transport.outbox.Outbox`: the check, the
rename and the salvage happen once per process start, before anything else opens
the file; the outbox class stays about storing and forwarding.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeagent.ops import dbcheck
from edgeagent.ops.dbcheck import Recovery
from edgeagent.transport.alert_life import AlertState
from edgeagent.transport.outbox import DB_NAME, Outbox, OutboxLimits

log = logging.getLogger(__name__)

_MESSAGE_COLUMNS = (
    "msg_id", "kind", "priority", "topic", "payload", "retain", "created", "attempts",
)  # fmt: skip


def open_checked(
    state_dir: Path | str, limits: OutboxLimits | None = None, *, min_free_bytes: int = 0
) -> tuple[Outbox, Recovery | None]:
    """The outbox of ``state_dir``, integrity-checked; a corrupt one replaced and salvaged.

    Returns the open outbox and, when the file had to be replaced, what happened
    (the caller logs it, raises a status fault and an alert). Raises
    :class:`OutboxError` only when even a fresh file cannot be created.
    """
    path = Path(state_dir) / DB_NAME
    recovery = None
    if path.exists():
        verdict = dbcheck.check(path)
        if not verdict.ok:
            moved = dbcheck.quarantine(path)
            recovery = Recovery(path, moved, verdict.reason)
    outbox = Outbox(path, limits, min_free_bytes=min_free_bytes)
    if recovery is not None:
        _salvage(recovery, outbox)
        log.error("outbox: %s", recovery.describe())
    return outbox, recovery


def _salvage(rec: Recovery, outbox: Outbox) -> None:
    src = rec.moved_to
    tables: dict[str, tuple[str, ...]] = {
        "messages": _MESSAGE_COLUMNS,
        "alert_life": ("alert_id", "state", "updated"),
        "counters": ("name", "value"),
    }
    got: dict[str, list[tuple]] = {}
    for table, cols in tables.items():
        try:
            got[table] = list(dbcheck.read_rows(src, table, cols))
        except Exception as exc:  # salvage is best effort: a fresh outbox matters more
            rec.unreadable[table] = f"{type(exc).__name__}: {exc}"
            got[table] = []
    msgs = [tuple(bytes(c) if isinstance(c, memoryview) else c for c in m)
            for m in got["messages"]]  # fmt: skip
    got["alert_life"] = consistent_lives(got["alert_life"], {str(m[0]) for m in msgs})
    try:
        n = outbox.restore(
            msgs,
            got["alert_life"],
            got["counters"],
        )
    except Exception as exc:  # the fresh file stays usable either way
        rec.unreadable["restore"] = f"{type(exc).__name__}: {exc}"
        n = 0
    rec.salvaged = {
        "messages": n,
        "alert_life": len(got["alert_life"]),
        "counters": len(got["counters"]),
    }


def consistent_lives(lives: list[tuple], salvaged_ids: set[str]) -> list[tuple[str, str, float]]:
    """The salvaged lives that agree with the salvaged messages.

    A life that says a message is queued while that message was on an
    unreadable page would keep it from ever being queued again. Such a life
    steps back to what the rows prove: ``closed_queued`` without its closed
    message becomes ``opened_queued`` if the opened one survived, else it is
    dropped (the alert store queues both again; receivers drop repeats);
    ``opened_queued`` without its message is dropped.
    """
    out = []
    for alert_id, state, updated in lives:
        opened, closed = f"{alert_id}.opened" in salvaged_ids, f"{alert_id}.closed" in salvaged_ids
        if state == AlertState.OPENED_QUEUED and not opened:
            continue
        if state == AlertState.CLOSED_QUEUED and not closed:
            if not opened:
                continue
            state = AlertState.OPENED_QUEUED.value
        out.append((alert_id, str(state), updated))
    return out
