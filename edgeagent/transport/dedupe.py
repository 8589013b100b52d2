"""Receivers drop repeats by message id: at-least-once on the wire, once at the consumer.

Why the receiver and not the box: a box cannot know whether a PUBACK it never
got was lost before or after the broker took the message, and a ``kill -9``
between a PUBACK and the delete that records it leaves the row to be sent
again. So the box sends *at least once*, each message carrying a stable
``msg-id`` (MQTT 5 user property), and every receiver keeps the ids it has
handled: together that is exactly-once processing.

:class:`SeenIds` is that memory: bounded (the oldest ids go first; a box's
retries come within its outbox age bound, so a memory larger than what a box
can resend in that time never forgets a live id), and optionally persisted in
SQLite so a consumer restart does not forget either.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

#: Ids remembered by default: days of alerts from a large fleet.
DEFAULT_CAPACITY = 200_000


class SeenIds:
    """The message ids a receiver has handled. Thread-safe.

    ``first(msg_id)`` is True exactly once per id (within ``capacity``); every
    later call is a duplicate and counted in ``duplicates``.
    """

    def __init__(self, path: Path | str | None = None, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.duplicates = 0
        self.first_seen = 0
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (n INTEGER PRIMARY KEY AUTOINCREMENT,"
                " msg_id TEXT NOT NULL UNIQUE, t REAL NOT NULL)"
            )
            for (mid,) in self._db.execute(
                "SELECT msg_id FROM seen ORDER BY n DESC LIMIT ?", (capacity,)
            ).fetchall()[::-1]:
                self._ids[mid] = None

    def __contains__(self, msg_id: str) -> bool:
        with self._lock:
            return msg_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def first(self, msg_id: str) -> bool:
        """Record ``msg_id``; True if it was new (handle the message), False for a repeat.

        With a file, the id is committed before this returns True, so a consumer
        killed right after handling a message will not handle it again.
        """
        with self._lock:
            if msg_id in self._ids:
                self.duplicates += 1
                return False
            self._ids[msg_id] = None
            self.first_seen += 1
            evicted = None
            if len(self._ids) > self.capacity:
                evicted, _ = self._ids.popitem(last=False)
            if self._db is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO seen (msg_id, t) VALUES (?, ?)", (msg_id, time.time())
                )
                if evicted is not None:
                    self._db.execute("DELETE FROM seen WHERE msg_id = ?", (evicted,))
            return True

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
