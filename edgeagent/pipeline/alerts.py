"""Alerts and their durable local store (SQLite in the state directory).

Why a store before MQTT: an alert must survive a crash or a broker outage,
and a clinician must be able to ask the box what it raised. Each alert is a
row; episodes are de-duplicated by the detector, which opens one alert and
later extends its end time instead of writing a new row per window. The
``sent`` column says how far the row's messages got into the outbox: 0 none,
1 ``opened`` queued, 2 ``closed`` queued too (the outbox's ``alert_life`` table
is the authority; this copy lets a restart find unfinished rows by an index).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeagent.dbschema import migrate

DB_NAME = "alerts.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id       TEXT PRIMARY KEY,
    patient  TEXT NOT NULL,
    device   TEXT NOT NULL,
    start    REAL NOT NULL,
    end      REAL NOT NULL,
    kind     TEXT NOT NULL,
    category TEXT NOT NULL,
    score    REAL NOT NULL,
    modality TEXT NOT NULL,
    model    TEXT NOT NULL,
    created  REAL NOT NULL,
    closed   INTEGER NOT NULL DEFAULT 0,
    sent     INTEGER NOT NULL DEFAULT 0,
    detail   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS alerts_patient_start ON alerts(patient, start);
CREATE INDEX IF NOT EXISTS alerts_unfinished ON alerts(sent) WHERE sent < 2 OR closed = 0;
"""
#: v1: the table above. Append a statement per schema change (edgeagent.dbschema).
MIGRATIONS = (_SCHEMA,)

#: ``sent`` values: how far the alert's messages got into the outbox.
SENT_NONE, SENT_OPENED, SENT_CLOSED = 0, 1, 2


@dataclass
class Alert:
    """One alert episode. ``category`` is "clinical", "sensor_fault" or "novelty".

    ``start``/``end`` span the windows that triggered it (agent clock, seconds);
    ``modality`` is the sensor modality that contributed most; ``model`` is
    the registry label of the model that raised it.
    """

    patient: str
    device: str
    start: float
    end: float
    kind: str
    category: str
    score: float
    modality: str
    model: str
    created: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    closed: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlertStore:
    """Durable alert table. Thread-safe; one connection guarded by a lock (writes are tiny)."""

    def __init__(self, path: Path | str) -> None:
        p = Path(path)
        if p.is_dir():
            p = p / DB_NAME
        self.path = p
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(p), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Bounded WAL (see transport.outbox: an unbounded one can fill a small disk).
        self._db.execute("PRAGMA wal_autocheckpoint=64")
        self._db.execute("PRAGMA journal_size_limit=262144")
        migrate(self._db, p, MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, a: Alert) -> str:
        with self._lock:
            self._db.execute(
                "INSERT INTO alerts (id, patient, device, start, end, kind, category, score,"
                " modality, model, created, closed, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    a.id,
                    a.patient,
                    a.device,
                    a.start,
                    a.end,
                    a.kind,
                    a.category,
                    a.score,
                    a.modality,
                    a.model,
                    a.created,
                    int(a.closed),
                    json.dumps(a.detail),
                ),
            )
        return a.id

    def extend(self, alert_id: str, end: float, score: float, closed: bool = False) -> None:
        """Stretch an episode to ``end``; keep its peak score; optionally close it.

        A closed row stays closed: the detector may resume an episode within its
        cooldown (same id), but its ``closed`` message is already on its way, so the
        resumption only stretches the box's own record.
        """
        with self._lock:
            self._db.execute(
                "UPDATE alerts SET end=MAX(end, ?), score=MAX(score, ?), closed=MAX(closed, ?)"
                " WHERE id=?",
                (end, score, int(closed), alert_id),
            )

    def mark_sent(self, alert_id: str, level: int = SENT_OPENED) -> None:
        """Record that the alert's ``opened`` (1) or also its ``closed`` (2) message is queued."""
        with self._lock:
            self._db.execute("UPDATE alerts SET sent=MAX(sent, ?) WHERE id=?", (level, alert_id))

    def upsert(self, a: Alert, sent: int) -> None:
        """Write the whole row as the relay knows it (after writes failed on a full disk).

        End, score, ``closed`` and ``sent`` only ever grow, so a late copy
        cannot undo a newer write.
        """
        with self._lock:
            self._db.execute(
                "INSERT INTO alerts (id, patient, device, start, end, kind, category, score,"
                " modality, model, created, closed, sent, detail)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
                " end=MAX(end, excluded.end), score=MAX(score, excluded.score),"
                " closed=MAX(closed, excluded.closed), sent=MAX(sent, excluded.sent),"
                " detail=excluded.detail",
                (a.id, a.patient, a.device, a.start, a.end, a.kind, a.category, a.score,
                 a.modality, a.model, a.created, int(a.closed), sent, json.dumps(a.detail)),
            )  # fmt: skip

    def close_left_open(self, alert_id: str, reason: str) -> None:
        """Close an episode the detector can no longer follow (its state died with a process)."""
        with self._lock:
            row = self._db.execute("SELECT detail FROM alerts WHERE id=?", (alert_id,)).fetchone()
            detail = json.loads(row[0]) if row is not None else {}
            detail["close_reason"] = reason
            self._db.execute(
                "UPDATE alerts SET closed=1, detail=? WHERE id=?", (json.dumps(detail), alert_id)
            )

    def restore(self, rows: Iterable[tuple]) -> int:
        """Insert rows salvaged from a corrupt store (all 14 columns); returns how many."""
        n = 0
        with self._lock:
            for r in rows:
                if len(r) != 14:
                    continue
                try:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO alerts (id, patient, device, start, end, kind,"
                        " category, score, modality, model, created, closed, sent, detail)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        r,
                    )
                except sqlite3.Error:
                    continue
                n += cur.rowcount
        return n

    def get(self, alert_id: str) -> Alert | None:
        """One alert by id, or None."""
        found = self._select("WHERE id = ?", [alert_id], 1)
        return found[0] if found else None

    def unfinished(self, limit: int = 10_000) -> list[Alert]:
        """Alerts still open or whose messages are not all queued, oldest first."""
        return self._select("WHERE sent < 2 OR closed = 0", [], limit)

    def checkpoint(self) -> None:
        """Fold the WAL into the main file and truncate it (the daemon's tick calls this)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def list(
        self,
        patient: str | None = None,
        since: float | None = None,
        category: str | None = None,
        unsent: bool = False,
        limit: int = 1000,
    ) -> list[Alert]:
        """Alerts in start order, filtered."""
        q = "WHERE 1=1"
        args: list[Any] = []
        if patient is not None:
            q += " AND patient=?"
            args.append(patient)
        if since is not None:
            q += " AND end>=?"
            args.append(since)
        if category is not None:
            q += " AND category=?"
            args.append(category)
        if unsent:
            q += " AND sent=0"
        return self._select(q, args, limit)

    def _select(self, where: str, args: list[Any], limit: int) -> list[Alert]:
        q = (
            "SELECT id, patient, device, start, end, kind, category, score, modality, model,"
            f" created, closed, detail FROM alerts {where} ORDER BY start, created LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(q, [*args, limit]).fetchall()
        return [
            Alert(
                id=r[0],
                patient=r[1],
                device=r[2],
                start=r[3],
                end=r[4],
                kind=r[5],
                category=r[6],
                score=r[7],
                modality=r[8],
                model=r[9],
                created=r[10],
                closed=bool(r[11]),
                detail=json.loads(r[12]),
            )
            for r in rows
        ]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0])


class MemoryAlertSink:
    """In-memory stand-in with the store's write API, for evaluation replays (no disk needed)."""

    def __init__(self) -> None:
        self.alerts: dict[str, Alert] = {}

    def add(self, a: Alert) -> str:
        self.alerts[a.id] = a
        return a.id

    def extend(self, alert_id: str, end: float, score: float, closed: bool = False) -> None:
        a = self.alerts[alert_id]
        a.end = max(a.end, end)
        a.score = max(a.score, score)
        a.closed = closed

    def list(self) -> list[Alert]:
        return sorted(self.alerts.values(), key=lambda a: a.start)
