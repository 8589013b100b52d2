"""SQLite files checked before use: integrity, moving a corrupt file aside, salvaging rows.

Why at start and not on first error: a corrupt page is found only when a query
reaches it, which may be hours later and inside a commit that then fails on
every retry. Checking once at start costs a read of the file (milliseconds for
an outbox) and turns a silent half-working store into one logged event: the
bad file is kept, renamed with a timestamp for later analysis, a fresh file
takes its place, and whatever rows can still be read are copied into it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: A corrupt region is skipped by probing single rowids; after this many misses in a
#: row the rest of the table is taken to be unreadable.
MAX_PROBE_MISSES = 2000


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the check found: ``ok``, or why the file cannot be trusted."""

    ok: bool
    reason: str = ""


@dataclass(slots=True)
class Recovery:
    """A corrupt file moved aside and replaced; what could be read out of it."""

    path: Path
    moved_to: Path
    reason: str
    salvaged: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        got = ", ".join(f"{t}: {n}" for t, n in sorted(self.salvaged.items())) or "nothing"
        return (
            f"{self.path} was corrupt ({self.reason}); moved to {self.moved_to.name}, "
            f"started a fresh file, salvaged rows: {got}"
        )


def check(path: Path | str) -> Verdict:
    """SQLite's verdict on ``path`` (which must exist); it writes no row.

    An empty main file with no WAL beside it is a truncated database, not a new one:
    SQLite would silently treat it as empty.
    """
    p = Path(path)
    wal = p.with_name(p.name + "-wal")
    try:
        if p.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0):
            return Verdict(False, "the file is empty (truncated)")
    except OSError as exc:
        return Verdict(False, f"cannot stat: {exc}")
    try:
        # Read-write, not mode=ro: after a crash SQLite must be free to recover the WAL
        # (and create a missing -shm) to read the file at all; nothing else is written.
        db = sqlite3.connect(str(p), timeout=10.0)
    except sqlite3.Error as exc:
        return Verdict(False, str(exc))
    try:
        rows = db.execute("PRAGMA integrity_check(20)").fetchall()
    except sqlite3.DatabaseError as exc:
        return Verdict(False, str(exc))
    finally:
        db.close()
    if rows == [("ok",)]:
        return Verdict(True)
    return Verdict(False, "; ".join(str(r[0]) for r in rows[:3]))


def quarantine(path: Path | str, clock: float | None = None) -> Path:
    """Rename ``path`` and its -wal/-shm to ``<name>.corrupt-<UTC time>``; returns the new path."""
    p = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock if clock is not None else None))
    target = p.with_name(f"{p.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = p.with_name(f"{p.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(p, target)
    for suffix in ("-wal", "-shm"):
        side = p.with_name(p.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    with contextlib.suppress(OSError):
        fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target


def read_rows(path: Path | str, table: str, columns: tuple[str, ...]) -> Iterator[tuple]:
    """Every readable row of ``table`` in rowid order, skipping pages that cannot be read.

    A full scan stops at the first bad page; from there single rowids are probed
    (a lookup descends the b-tree by key and reaches the good leaves around a bad
    one) until a row answers, and the scan resumes after it.
    """
    cols = ", ".join(columns)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error:
        return
    try:
        last = 0
        while True:
            try:
                for row in db.execute(
                    f"SELECT rowid, {cols} FROM {table} WHERE rowid > ? ORDER BY rowid", (last,)
                ):
                    last = row[0]
                    yield row[1:]
                return
            except sqlite3.DatabaseError:
                pass
            found = None
            for rid in range(last + 1, last + 1 + MAX_PROBE_MISSES):
                try:
                    row = db.execute(
                        f"SELECT rowid, {cols} FROM {table} WHERE rowid = ?", (rid,)
                    ).fetchone()
                except sqlite3.DatabaseError:
                    continue
                if row is not None:
                    found = row
                    break
            if found is None:
                return
            last = found[0]
            yield found[1:]
    finally:
        db.close()
