"""Store-and-forward outbox: every outgoing message is on disk before MQTT sees it.

Why SQLite in WAL mode with ``synchronous=FULL``: a box loses power without
warning and gets ``kill -9``'d by watchdogs. A row is "stored" when
:meth:`Outbox.put` returns, i.e. after a committed, fsync'ed WAL transaction;
SQLite then guarantees it survives a crash or power cut and that the file opens
cleanly afterwards. Rows are deleted only when the broker's PUBACK says the
message was accepted (see :class:`edgeagent.transport.mqtt.OutboxForwarder`).

The outbox is bounded by rows, bytes and age so a long outage cannot fill the
SD card. When over a bound it drops the lowest-priority class first, oldest
first within it (telemetry before updates before alerts: losing an alert to
make room for telemetry would be the wrong trade), and counts every drop per
kind in a persistent counters table that ``edgeagent outbox stats`` reports.

The WAL is checkpointed (automatically every ``WAL_AUTOCHECKPOINT_PAGES`` and
by :meth:`Outbox.checkpoint`, which the daemon calls on its tick) and truncated
to ``JOURNAL_SIZE_LIMIT`` afterwards: an unbounded WAL can fill a small state
directory by itself. Below a free-space floor (``min_free_bytes``) the outbox
refuses new status, telemetry and update rows (counted as ``refused_disk.<kind>``)
and keeps taking alerts, so what is left of the disk goes to what matters.

Each alert's delivery life (queued opened, sent, closed, close sent; see
:mod:`edgeagent.transport.alert_life`) is stored in the ``alert_life`` table in
the same transaction as the message it concerns (:meth:`Outbox.put_alert`, and
the PUBACK deletes in :meth:`Outbox.ack_many`).

Priorities: alerts (0) go before model updates (1), status (2), telemetry (3).
Within a priority, rows go oldest first. Each row carries a ``msg_id`` (sent as
the MQTT 5 user property ``msg-id``) so receivers drop the duplicates that a
resend after a lost PUBACK can create.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeagent.dbschema import migrate
from edgeagent.errors import OutboxError
from edgeagent.transport.alert_life import (
    ACK_EVENT,
    QUEUE_EVENT,
    AlertState,
    split_msg_id,
    step,
)
from edgeagent.transport.alert_life import (
    msg_id as alert_msg_id,
)

log = logging.getLogger(__name__)

#: Lower number = sent first.
PRIORITY: dict[str, int] = {"alert": 0, "update": 1, "status": 2, "telemetry": 3}
KINDS = tuple(PRIORITY)
DB_NAME = "outbox.sqlite3"
#: Checkpoint the WAL into the main file every this many pages (SQLite's default
#: is 1000 pages, 4 MB: more than a small state partition holds).
WAL_AUTOCHECKPOINT_PAGES = 64
#: After a checkpoint the WAL file is truncated to at most this many bytes.
JOURNAL_SIZE_LIMIT = 256 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id   TEXT NOT NULL UNIQUE,
    kind     TEXT NOT NULL,
    priority INTEGER NOT NULL,
    topic    TEXT NOT NULL,
    payload  BLOB NOT NULL,
    retain   INTEGER NOT NULL DEFAULT 0,
    created  REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (priority, id);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created);
CREATE TABLE IF NOT EXISTS totals (
    k     INTEGER PRIMARY KEY CHECK (k = 0),
    rows  INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (k, rows, bytes) VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS messages_ins AFTER INSERT ON messages BEGIN
    UPDATE totals SET rows = rows + 1, bytes = bytes + length(NEW.payload) WHERE k = 0;
END;
CREATE TRIGGER IF NOT EXISTS messages_del AFTER DELETE ON messages BEGIN
    UPDATE totals SET rows = rows - 1, bytes = bytes - length(OLD.payload) WHERE k = 0;
END;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_life (
    alert_id TEXT PRIMARY KEY,
    state    TEXT NOT NULL,
    updated  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_life_state ON alert_life (state);
"""
#: v1: the tables above. Append a statement per schema change (edgeagent.dbschema).
MIGRATIONS = (_SCHEMA,)
SCHEMA_VERSION = len(MIGRATIONS)


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection that works on a file or directory this user cannot write.

    With no ``-wal`` file beside it (no daemon has it open) the database is fully
    checkpointed and ``immutable=1`` reads it without creating the WAL index or
    anything else. With a live daemon ``mode=ro`` shares its WAL index, falling
    back to ``immutable=1`` where that cannot be opened.
    """
    if not path.is_file():
        raise OutboxError(f"no outbox at {path}")
    live = path.with_name(path.name + "-wal").exists()
    for flags in ("mode=ro", "mode=ro&immutable=1") if live else ("mode=ro&immutable=1",):
        try:
            db = sqlite3.connect(
                f"file:{path}?{flags}", uri=True, timeout=10.0, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            db.execute("SELECT rows FROM totals WHERE k = 0").fetchone()
            return db
        except sqlite3.OperationalError as exc:
            err = exc
            continue
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"cannot read outbox {path}: {exc}") from exc
    raise OutboxError(f"cannot read outbox {path}: {err}")


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Bounds on what the outbox keeps. Defaults suit a Pi with an SD card."""

    max_rows: int = 200_000
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_bytes < 1 or self.max_age_s <= 0:
            raise OutboxError(f"outbox limits must be positive, got {self}")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored message."""

    id: int
    msg_id: str
    kind: str
    priority: int
    topic: str
    payload: bytes
    retain: bool
    created: float
    attempts: int


class Outbox:
    """The SQLite outbox of one box. Thread-safe; one instance per process.

    Several processes may open the same file (SQLite locks), but only one
    forwarder should drain it.
    """

    def __init__(
        self,
        path: Path | str,
        limits: OutboxLimits | None = None,
        *,
        clock: Callable[[], float] = time.time,
        min_free_bytes: int = 0,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or OutboxLimits()
        self.min_free_bytes = min_free_bytes
        self._clock = clock
        self._lock = threading.RLock()
        self._put_event = threading.Event()
        #: Offers whose bookkeeping (expiry, attempt counts) could not be written: a full disk.
        self.bookkeeping_failures = 0
        if readonly:  # `outbox stats` and doctor: read what is there, create and change nothing
            self._db = _open_readonly(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: fsync the WAL on every commit, so "stored" survives a power cut.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            migrate(self._db, self.path, MIGRATIONS, OutboxError)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    @classmethod
    def in_state_dir(
        cls, state_dir: Path | str, limits: OutboxLimits | None = None, *, min_free_bytes: int = 0
    ) -> Outbox:
        """The outbox at ``<state_dir>/outbox.sqlite3`` (where the daemon keeps it)."""
        return cls(Path(state_dir) / DB_NAME, limits, min_free_bytes=min_free_bytes)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------
    def put(
        self,
        topic: str,
        payload: bytes,
        kind: str = "telemetry",
        *,
        msg_id: str | None = None,
        retain: bool = False,
    ) -> str:
        """Store one message durably; returns its ``msg_id`` once committed.

        Raises :class:`OutboxError` for an unknown kind, a message larger than
        ``max_bytes``, or when the message itself had to be dropped at once
        because everything else stored outranks it.
        """
        return self.put_many([(topic, payload, kind, msg_id, retain)])[0]

    def put_alert(self, topic: str, payload: bytes, alert_id: str, event: str) -> str:
        """Store an alert's ``opened``/``closed`` message and its life's step in one transaction.

        Raises :class:`OutboxError` when the life forbids the step (queued twice),
        which also means nothing was stored.
        """
        mid = alert_msg_id(alert_id, event)  # raises for an event other than opened/closed
        return self.put_many([(topic, payload, "alert", mid, False)], alert=(alert_id, event))[0]

    def disk_free(self) -> int:
        """Bytes free for this process on the outbox's file system."""
        return int(shutil.disk_usage(self.path.parent).free)

    def put_many(
        self,
        items: Iterable[tuple[str, bytes, str, str | None, bool]],
        *,
        alert: tuple[str, str] | None = None,
    ) -> list[str]:
        """Store several ``(topic, payload, kind, msg_id, retain)`` in one transaction.

        ``alert=(alert id, "opened"|"closed")`` steps that alert's life in the same
        transaction (see :meth:`put_alert`).
        """
        rows = []
        now = self._clock()
        for topic, payload, kind, msg_id, retain in items:
            if kind not in PRIORITY:
                raise OutboxError(f"unknown message kind {kind!r}; use one of {KINDS}")
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise OutboxError(f"payload must be bytes, got {type(payload).__name__}")
            if len(payload) > self.limits.max_bytes:
                raise OutboxError(
                    f"{kind} message of {len(payload)} bytes exceeds the outbox bound "
                    f"({self.limits.max_bytes} bytes)"
                )
            mid = msg_id or uuid.uuid4().hex
            rows.append((mid, kind, PRIORITY[kind], topic, bytes(payload), int(retain), now))
        if not rows:
            return []
        self._check_floor({r[1] for r in rows})
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                ids = []
                for r in rows:
                    if (
                        alert is not None
                        and self._db.execute(
                            "SELECT 1 FROM messages WHERE msg_id = ?", (r[0],)
                        ).fetchone()
                    ):
                        continue  # queued before a crash: only the life's step is missing
                    cur = self._db.execute(
                        "INSERT INTO messages (msg_id, kind, priority, topic, payload, retain,"
                        " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        r,
                    )
                    ids.append(cur.lastrowid)
                    self._bump(f"stored.{r[1]}")
                if alert is not None:
                    self._step_life_locked(alert[0], QUEUE_EVENT[alert[1]], now, strict=True)
                self._expire_locked(now)
                self._enforce_locked()
                survivors = (
                    {
                        i
                        for (i,) in self._db.execute(
                            f"SELECT id FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids
                        )
                    }
                    if ids
                    else set()
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._rollback()
                raise OutboxError(f"duplicate msg_id in put: {exc}") from exc
            except OutboxError:
                self._rollback()
                raise
            except sqlite3.DatabaseError as exc:
                self._rollback()
                raise OutboxError(f"outbox write failed: {exc}") from exc
        self._put_event.set()
        if len(survivors) < len(ids):
            raise OutboxError(
                f"outbox full: {len(ids) - len(survivors)} new message(s) dropped at once "
                "(everything stored outranks them); raise the limits or drain the outbox"
            )
        return [r[0] for r in rows]

    def _check_floor(self, kinds: set[str]) -> None:
        """Refuse non-alert rows while free space is under ``min_free_bytes``."""
        if self.min_free_bytes <= 0 or kinds <= {"alert"}:
            return
        try:
            free = self.disk_free()
        except OSError:
            return
        if free >= self.min_free_bytes:
            return
        low = sorted(kinds - {"alert"})
        with self._lock, contextlib.suppress(sqlite3.DatabaseError):
            for k in low:
                self._bump(f"refused_disk.{k}")
        raise OutboxError(
            f"disk short: {free} bytes free under {self.path.parent}, below the "
            f"{self.min_free_bytes}-byte floor; {', '.join(low)} refused, alerts still taken"
        )

    def _step_life_locked(self, alert_id: str, event: Any, now: float, *, strict: bool) -> None:
        row = self._db.execute(
            "SELECT state FROM alert_life WHERE alert_id = ?", (alert_id,)
        ).fetchone()
        before = AlertState(row[0]) if row is not None else None
        try:
            after = step(before, event)
        except OutboxError:
            if strict:
                raise OutboxError(f"alert {alert_id}: {event.value} in state {before}") from None
            return  # an ack of a message queued outside the life (e.g. by an older agent)
        self._db.execute(
            "INSERT INTO alert_life (alert_id, state, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(alert_id) DO UPDATE SET state = excluded.state, "
            "updated = excluded.updated",
            (alert_id, after.value, now),
        )

    def alert_life(self, alert_id: str) -> AlertState | None:
        """The stored life of one alert, or None when none was started."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM alert_life WHERE alert_id = ?", (alert_id,)
            ).fetchone()
        return AlertState(row[0]) if row is not None else None

    def alert_lives(self, states: Iterable[AlertState] | None = None) -> dict[str, AlertState]:
        """``alert id -> state`` of every stored life (only ``states``, when given)."""
        sql, args = "SELECT alert_id, state FROM alert_life", []
        if states is not None:
            wanted = [s.value for s in states]
            sql += f" WHERE state IN ({','.join('?' * len(wanted))})"
            args = wanted
        with self._lock:
            return {a: AlertState(st) for a, st in self._db.execute(sql, args)}

    def has_message(self, msg_id: str) -> bool:
        """True while the message with ``msg_id`` is still queued."""
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM messages WHERE msg_id = ?", (msg_id,)).fetchone()
                is not None
            )

    def checkpoint(self) -> int:
        """Drop finished alert lives past the age bound, fold the WAL into the main file.

        Returns the WAL pages moved.

        Why the daemon calls this on its tick as well: the automatic checkpoint
        runs only inside a commit, and a box that stopped writing (a full disk)
        would otherwise keep the last WAL's size.
        """
        with self._lock, contextlib.suppress(sqlite3.Error):  # a full disk: checkpoint anyway
            # Finished lives older than the age bound: nothing can re-send them any more.
            self._db.execute(
                "DELETE FROM alert_life WHERE state = ? AND updated < ?",
                (AlertState.CLOSE_SENT.value, self._clock() - self.limits.max_age_s),
            )
        with self._lock:
            row = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(row[2]) if row and row[2] is not None and row[2] > 0 else 0

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def _expire_locked(self, now: float) -> int:
        cutoff = now - self.limits.max_age_s
        victims = self._db.execute(
            "SELECT kind, COUNT(*) FROM messages WHERE created < ? GROUP BY kind", (cutoff,)
        ).fetchall()
        if not victims:
            return 0
        self._db.execute("DELETE FROM messages WHERE created < ?", (cutoff,))
        for kind, n in victims:
            self._bump(f"dropped_age.{kind}", n)
        return sum(n for _, n in victims)

    def _enforce_locked(self) -> None:
        rows, nbytes = self._db.execute("SELECT rows, bytes FROM totals WHERE k = 0").fetchone()
        while rows > self.limits.max_rows or nbytes > self.limits.max_bytes:
            reason = "dropped_rows" if rows > self.limits.max_rows else "dropped_bytes"
            victim = self._db.execute(
                "SELECT id, kind, length(payload) FROM messages ORDER BY priority DESC, id ASC "
                "LIMIT 1"
            ).fetchone()
            if victim is None:
                break
            self._db.execute("DELETE FROM messages WHERE id = ?", (victim[0],))
            self._bump(f"{reason}.{victim[1]}")
            rows -= 1
            nbytes -= victim[2]

    # -- reading and removing -------------------------------------------------
    def peek(self, limit: int = 32, exclude: Iterable[int] = ()) -> list[OutboxRow]:
        """The next rows to send (priority, then age), skipping ids in ``exclude``.

        Expired rows are dropped (and counted) first, so nothing past its age
        bound is offered.
        """
        excl = list(exclude)
        with self._lock:
            now = self._clock()
            cutoff = now - self.limits.max_age_s
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._expire_locked(now)
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # A full disk: expiry waits for space, and the rows still go out (alerts
                # first), since delivering is what frees the disk.
                self._rollback()
                self._bookkeeping_failed(exc)
            except sqlite3.DatabaseError:
                self._rollback()
                raise
            sql = (
                "SELECT id, msg_id, kind, priority, topic, payload, retain, created, attempts "
                "FROM messages WHERE created >= ?"
            )
            if excl:
                sql += f" AND id NOT IN ({','.join('?' * len(excl))})"
            sql += " ORDER BY priority, id LIMIT ?"
            rows = self._db.execute(sql, [cutoff, *excl, limit]).fetchall()
            if rows:
                try:
                    self._db.execute(
                        f"UPDATE messages SET attempts = attempts + 1 "
                        f"WHERE id IN ({','.join('?' * len(rows))})",
                        [r[0] for r in rows],
                    )
                except sqlite3.OperationalError as exc:
                    self._bookkeeping_failed(exc)
        return [
            OutboxRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), bool(r[6]), r[7], r[8] + 1)
            for r in rows
        ]

    def _bookkeeping_failed(self, exc: sqlite3.OperationalError) -> None:
        self.bookkeeping_failures += 1
        if self.bookkeeping_failures == 1 or self.bookkeeping_failures % 1000 == 0:
            log.warning("outbox: offering rows without writing their bookkeeping (%s; %d time(s))",
                        exc, self.bookkeeping_failures)  # fmt: skip

    def _delete(self, row_id: int, counter: str) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT kind FROM messages WHERE id = ?", (row_id,)
                ).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM messages WHERE id = ?", (row_id,))
                    self._bump(f"{counter}.{row[0]}")
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError:
                self._rollback()
                raise
        return row is not None

    def ack(self, row_id: int) -> bool:
        """Delete a row after a successful PUBACK; False if it was already gone."""
        return self.ack_many([row_id]) == 1

    def _rollback(self) -> None:
        """Roll back the open transaction, if any: SQLite ends it by itself on some errors
        (a full disk at COMMIT), and a second ROLLBACK would raise over the real error."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def ack_many(self, row_ids: Iterable[int]) -> int:
        """Delete several acknowledged rows in one transaction; returns how many were there.

        Why batch: each transaction costs an fsync. Losing a not-yet-committed
        delete in a power cut only means one re-send, which receivers dedupe, so
        acknowledgements need not pay one fsync each the way stores do.
        """
        ids = list(row_ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                groups = self._db.execute(
                    f"SELECT kind, COUNT(*) FROM messages WHERE id IN ({marks}) GROUP BY kind", ids
                ).fetchall()
                alert_mids = self._db.execute(
                    f"SELECT msg_id FROM messages WHERE id IN ({marks}) AND kind = 'alert' "
                    "ORDER BY id",
                    ids,
                ).fetchall()
                self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)
                for kind, n in groups:
                    self._bump(f"delivered.{kind}", n)
                now = self._clock()
                for (mid,) in alert_mids:
                    parts = split_msg_id(mid)
                    if parts is not None:
                        self._step_life_locked(parts[0], ACK_EVENT[parts[1]], now, strict=False)
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._rollback()
                raise OutboxError(f"outbox ack failed: {exc}") from exc
        return sum(n for _, n in groups)

    def reject(self, row_id: int, reason: str) -> bool:
        """Delete a row the broker refused for good; counted as ``rejected.<kind>``.

        ``reason`` is logged by the caller; the counter keeps per-kind totals.
        """
        return self._delete(row_id, "rejected")

    def purge(self, kind: str | None = None, older_than_s: float | None = None) -> int:
        """Operator action: delete rows (all, of one kind, or older than); counted."""
        if kind is not None and kind not in PRIORITY:
            raise OutboxError(f"unknown message kind {kind!r}; use one of {KINDS}")
        where, args = [], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if older_than_s is not None:
            where.append("created < ?")
            args.append(self._clock() - older_than_s)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                groups = self._db.execute(
                    f"SELECT kind, COUNT(*) FROM messages{clause} GROUP BY kind", args
                ).fetchall()
                self._db.execute(f"DELETE FROM messages{clause}", args)
                for k, n in groups:
                    self._bump(f"purged.{k}", n)
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError:
                self._rollback()
                raise
        return sum(n for _, n in groups)

    def restore(
        self,
        messages: Iterable[tuple],
        lives: Iterable[tuple[str, str, float]] = (),
        counters: Iterable[tuple[str, int]] = (),
    ) -> int:
        """Copy rows salvaged from a corrupt outbox into this one; returns messages restored.

        ``messages`` are ``(msg_id, kind, priority, topic, payload, retain, created,
        attempts)``; a msg_id already present, an unknown kind or a malformed row is
        skipped. Lives and counters are taken as they were.
        """
        n = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for m in messages:
                    if len(m) != 8 or m[1] not in PRIORITY or not isinstance(m[4], bytes):
                        continue
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO messages (msg_id, kind, priority, topic, payload,"
                        " retain, created, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (m[0], m[1], PRIORITY[m[1]], m[3], m[4], int(bool(m[5])), m[6], m[7]),
                    )
                    n += cur.rowcount
                for alert_id, state, updated in lives:
                    with contextlib.suppress(ValueError):
                        self._db.execute(
                            "INSERT OR REPLACE INTO alert_life (alert_id, state, updated) "
                            "VALUES (?, ?, ?)",
                            (alert_id, AlertState(state).value, updated),
                        )
                for name, value in counters:
                    if isinstance(name, str) and isinstance(value, int):
                        self._bump(name, value)
                if n:
                    self._bump("salvaged", n)
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError:
                self._rollback()
                raise
        if n:
            self._put_event.set()
        return n

    # -- inspection -----------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT rows FROM totals WHERE k = 0").fetchone()[0])

    def remaining_ttl(self, row: OutboxRow) -> float:
        """Seconds the message may still live: its MQTT 5 Message Expiry Interval."""
        return max(1.0, self.limits.max_age_s - (self._clock() - row.created))

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters ORDER BY name"))

    def stats(self) -> dict[str, object]:
        """Rows/bytes per kind, oldest age, limits, drop/delivery counters, alert lives by state."""
        now = self._clock()
        with self._lock:
            rows, nbytes = self._db.execute("SELECT rows, bytes FROM totals WHERE k = 0").fetchone()
            by_kind = {
                k: {"rows": n, "bytes": b, "oldest_age_s": round(now - oldest, 3)}
                for k, n, b, oldest in self._db.execute(
                    "SELECT kind, COUNT(*), SUM(length(payload)), MIN(created) "
                    "FROM messages GROUP BY kind"
                )
            }
            lives = dict(self._db.execute("SELECT state, COUNT(*) FROM alert_life GROUP BY state"))
        return {
            "path": str(self.path),
            "rows": rows,
            "bytes": nbytes,
            "by_kind": by_kind,
            "limits": {
                "max_rows": self.limits.max_rows,
                "max_bytes": self.limits.max_bytes,
                "max_age_s": self.limits.max_age_s,
            },
            "counters": self.counters(),
            "alert_lives": lives,
        }

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file (``"ok"`` when sound)."""
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def wait_for_put(self, timeout: float, also: threading.Event | None = None) -> None:
        """Sleep until a put in this process (or ``also``), at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._put_event.is_set() or (also is not None and also.is_set()):
                break
            self._put_event.wait(min(0.02, max(0.0, deadline - time.monotonic())))
        self._put_event.clear()
