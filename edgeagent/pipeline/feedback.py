"""Clinicians' verdicts on alerts, stored with the windows behind each alert, as labels.

Why on the box and in its own store: the windows are patient data and never
leave the box; a verdict turns them into the most valuable labels the learner
can get (a dismissed alert is a false alarm, labelled ``normal``). The detector
hands over every window that opens or extends an alert (``Detector.on_alert_window``);
:meth:`FeedbackStore.keep` stores the first ``windows_per_alert`` of them. A
verdict (:meth:`FeedbackStore.record`) labels them, unless it is refused: an
unknown, expired or already acknowledged alert, a kind that is not a class of
the model, a patient the box does not serve, a patient over its rate, or a
malformed request each get a :class:`~edgeagent.errors.FeedbackReason` and a
counter, and nothing is labelled.

A fixed share of labelled alerts is held back (:func:`split_of`, by a hash of
the alert id, so the same alert always falls on the same side and no window of
a held-back alert ever trains): a candidate model is judged on windows it has
never seen. All windows of one alert share a split.

The pure rules (:func:`parse_request`, :func:`split_of`, :class:`TokenBucket`)
live in ``pipeline.feedback_rules`` and are re-exported here; the daemon's
``daemon.feedback`` does the I/O around the store (control socket, MQTT, the
learner).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.dbschema import migrate
from edgeagent.errors import FeedbackError, FeedbackReason
from edgeagent.model.meta import NORMAL
from edgeagent.ops.config import FeedbackSection
from edgeagent.pipeline.detect import ValidatedWindow
from edgeagent.pipeline.feedback_rules import (
    ALERT_ID_RE,
    HOLDOUT,
    MAX_REQUEST_BYTES,
    MIN_PREFIX,
    SPLITS,
    TRAIN,
    AckRequest,
    TokenBucket,
    Verdict,
    parse_request,
    split_of,
)

__all__ = [
    "DB_NAME",
    "HOLDOUT",
    "MAX_REQUEST_BYTES",
    "MIN_PREFIX",
    "SPLITS",
    "TRAIN",
    "AckRequest",
    "FeedbackStore",
    "TokenBucket",
    "Verdict",
    "parse_request",
    "split_of",
]

DB_NAME = "feedback.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id      TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    kind    TEXT NOT NULL,
    opened  REAL NOT NULL,
    n       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_opened ON alerts(opened);
CREATE TABLE IF NOT EXISTS windows (
    alert TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    x     BLOB NOT NULL,
    mu    BLOB NOT NULL,
    sigma BLOB NOT NULL,
    PRIMARY KEY (alert, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verdicts (
    alert     TEXT PRIMARY KEY,
    confirmed INTEGER NOT NULL,
    label     TEXT NOT NULL,
    kind      TEXT NOT NULL,
    source    TEXT NOT NULL,
    patient   TEXT NOT NULL,
    split     TEXT NOT NULL,
    t         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_split ON verdicts(split, t);
"""
#: v1: the tables above. Append a statement per schema change (edgeagent.dbschema).
MIGRATIONS = (_SCHEMA,)


def _blob(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, np.float32).ravel().tobytes()


def _row(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, np.float32).copy()


class FeedbackStore:
    """``feedback.sqlite``: alerts' windows, verdicts on them, and the labelled windows.

    Thread-safe (one connection under a lock): the detection thread keeps
    windows, the control and MQTT threads record verdicts. ``classes`` gives the
    running model's classes at the time of a verdict; ``served`` the patients
    this box serves (None: any). ``clock`` is wall time (tests inject one).
    """

    def __init__(
        self,
        path: Path | str,
        policy: FeedbackSection | None = None,
        *,
        classes: Callable[[], Sequence[str]] = lambda: (),
        served: Callable[[], Collection[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        p = Path(path)
        if p.is_dir():
            p = p / DB_NAME
        self.path = p
        self.policy = policy or FeedbackSection()
        self.classes = classes
        self.served = served
        self.clock = clock
        self.counters: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._closed = False
        self._db = sqlite3.connect(str(p), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Windows are many and replaceable (NORMAL: a power cut may lose the last few);
        # a verdict is one person's judgement and is written with FULL (see record()).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=64")
        self._db.execute("PRAGMA journal_size_limit=262144")
        migrate(self._db, p, MIGRATIONS)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:  # detection, control and MQTT threads all count
            self.counters[key] = self.counters.get(key, 0) + n

    def counter_snapshot(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.counters)

    def refused(self, reason: FeedbackReason | str, detail: str, alert_id: str = "") -> Verdict:
        """Count a refusal (also one found before the store, e.g. a bad signature) and say it."""
        r = FeedbackReason(reason)
        self._count(f"refused_{r}")
        return Verdict(False, alert_id, r, detail)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def checkpoint(self) -> None:
        with self._lock:
            if not self._closed:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- windows in ----------------------------------------------------------------------------
    def keep(self, alert_id: str, patient: str, w: ValidatedWindow) -> bool:
        """Keep one window behind an alert (``w.label`` = the alert's kind); False if not kept.

        Not kept: the alert has ``windows_per_alert`` already, has a verdict (the
        learner was given its windows then), or the store is closed.
        """
        now = self.clock()
        with self._lock:
            if self._closed:
                return False
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR IGNORE INTO alerts (id, patient, kind, opened) VALUES (?,?,?,?)",
                    (alert_id, patient, w.label, now),
                )
                (n,) = db.execute("SELECT n FROM alerts WHERE id=?", (alert_id,)).fetchone()
                acked = db.execute("SELECT 1 FROM verdicts WHERE alert=?", (alert_id,)).fetchone()
                if n >= self.policy.windows_per_alert or acked:
                    db.execute("COMMIT")
                    self._count("windows_not_kept")
                    return False
                db.execute(
                    "INSERT INTO windows (alert, seq, x, mu, sigma) VALUES (?,?,?,?,?)",
                    (alert_id, n, _blob(w.x), _blob(w.mu), _blob(w.sigma)),
                )
                db.execute("UPDATE alerts SET n=n+1 WHERE id=?", (alert_id,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._count("windows_kept")
        return True

    # -- verdicts ------------------------------------------------------------------------------
    def resolve(self, prefix: str) -> str | None:
        """The one alert id starting with ``prefix`` (hex), or None (none or several)."""
        if not ALERT_ID_RE.match(prefix):
            return None
        with self._lock:
            if self._closed:
                return None
            rows = self._db.execute(
                "SELECT id FROM alerts WHERE id >= ? AND id < ? LIMIT 2", (prefix, prefix + "g")
            ).fetchall()
        return rows[0][0] if len(rows) == 1 else None

    def record(
        self,
        alert_id: str,
        confirmed: bool,
        kind: str | None = None,
        source: str = "cli",
        patient: str | None = None,
    ) -> Verdict:
        """Label the alert's windows with the verdict, or refuse it (counted, nothing stored).

        Confirmed: labelled with ``kind`` if given (a correction), else the
        alert's own kind; either must be a class of the running model other than
        ``normal``. Dismissed: labelled ``normal``. Checks in order: unknown,
        patient (not served, or not the alert's), expired, already acknowledged,
        kind, the patient's rate.
        """
        try:
            req = parse_request(
                {"alert": alert_id, "confirmed": confirmed, "kind": kind, "source": source,
                 "patient": patient}
            )  # fmt: skip
        except FeedbackError as exc:
            return self.refused(exc.reason, exc.detail, str(alert_id)[:64])
        now = self.clock()
        with self._lock:
            if self._closed:
                return self.refused("unavailable", "the feedback store is closed", alert_id)
            row = self._db.execute(
                "SELECT patient, kind, opened FROM alerts WHERE id=?", (req.alert_id,)
            ).fetchone()
            if row is None:
                return self.refused(
                    "unknown_alert",
                    "no windows kept for this alert on this box (a system alert, or raised "
                    "before feedback was on); see `edgeagent alerts list`",
                    req.alert_id,
                )
            a_patient, a_kind, opened = row
            served = self.served() if self.served is not None else None
            for who in (req.patient, a_patient):
                if who is not None and served is not None and who not in served:
                    return self.refused(
                        "unknown_patient", f"this box does not serve patient {who!r}", req.alert_id
                    )
            if req.patient is not None and req.patient != a_patient:
                return self.refused(
                    "patient_mismatch",
                    f"the alert is about patient {a_patient!r}, not {req.patient!r}",
                    req.alert_id,
                )
            if now - opened > self.policy.retention_s:
                return self.refused(
                    "expired",
                    f"opened {now - opened:.0f} s ago; verdicts are taken for "
                    f"{self.policy.retention_s:.0f} s ([feedback] retention_s)",
                    req.alert_id,
                )
            prior = self._db.execute(
                "SELECT label, source FROM verdicts WHERE alert=?", (req.alert_id,)
            ).fetchone()
            if prior is not None:
                return self.refused(
                    "already_acked",
                    f"labelled {prior[0]!r} by {prior[1]!r}; the first verdict stands",
                    req.alert_id,
                )
            classes = tuple(self.classes())
            label = (req.kind or a_kind) if req.confirmed else NORMAL
            if req.confirmed and (label not in classes or label == NORMAL):
                known = ", ".join(c for c in classes if c != NORMAL) or "none (no model)"
                return self.refused(
                    "bad_kind",
                    f"{label!r} is not a class of the running model; use --kind with one of: "
                    f"{known}",
                    req.alert_id,
                )
            bucket = self._buckets.get(a_patient)
            if bucket is None:
                bucket = self._buckets[a_patient] = TokenBucket(
                    self.policy.rate_per_hour / 3600.0, float(self.policy.burst)
                )
            if not bucket.take(now):
                return self.refused(
                    "rate_limited",
                    f"more than {self.policy.burst} verdicts at once or "
                    f"{self.policy.rate_per_hour:g} an hour for patient {a_patient!r}",
                    req.alert_id,
                )
            split = split_of(req.alert_id, self.policy.holdout_share)
            windows = self._write_verdict(req, label, a_kind, a_patient, split, now)
        self._count("accepted")
        self._count(f"windows_labelled_{split}", len(windows))
        return Verdict(True, req.alert_id, None, "", label, split, windows)

    def _write_verdict(
        self, req: AckRequest, label: str, kind: str, patient: str, split: str, now: float
    ) -> tuple[ValidatedWindow, ...]:
        db = self._db
        # A verdict must survive a power cut once it was answered: FULL for this commit.
        db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO verdicts (alert, confirmed, label, kind, source, patient, split,"
                    " t) VALUES (?,?,?,?,?,?,?,?)",
                    (req.alert_id, int(req.confirmed), label, kind, req.source, patient, split,
                     now),
                )  # fmt: skip
                rows = db.execute(
                    "SELECT x, mu, sigma FROM windows WHERE alert=? ORDER BY seq", (req.alert_id,)
                ).fetchall()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return tuple(
            ValidatedWindow(_row(x), _row(mu)[None, :], _row(sg)[None, :], label)
            for x, mu, sg in rows
        )

    # -- labels out ----------------------------------------------------------------------------
    def labelled(self, split: str, limit: int | None = None) -> list[ValidatedWindow]:
        """Labelled windows of one split (``"train"`` or ``"holdout"``), oldest verdict first."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        q = (
            "SELECT w.x, w.mu, w.sigma, v.label FROM verdicts v JOIN windows w ON w.alert = v.alert"
            " WHERE v.split = ? ORDER BY v.t, v.alert, w.seq"
        )
        args: list[Any] = [split]
        if limit is not None:
            q += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            if self._closed:
                return []
            rows = self._db.execute(q, args).fetchall()
        return [ValidatedWindow(_row(x), _row(m)[None, :], _row(s)[None, :], lb)
                for x, m, s, lb in rows]  # fmt: skip

    def verdict(self, alert_id: str) -> dict[str, Any] | None:
        """The verdict on one alert (for ``alerts show``), or None."""
        with self._lock:
            if self._closed:
                return None
            row = self._db.execute(
                "SELECT confirmed, label, kind, source, patient, split, t FROM verdicts"
                " WHERE alert=?",
                (alert_id,),
            ).fetchone()
        if row is None:
            return None
        keys = ("confirmed", "label", "kind", "source", "patient", "split", "t")
        out = dict(zip(keys, row, strict=True))
        out["confirmed"] = bool(out["confirmed"])
        return out

    def counts(self) -> dict[str, Any]:
        """Verdicts, labelled windows per split, alerts awaiting a verdict, refusals (status)."""
        now = self.clock()
        with self._lock:
            if self._closed:
                return {"closed": True, "counters": self.counter_snapshot()}
            db = self._db
            verdicts = dict(
                db.execute("SELECT confirmed, COUNT(*) FROM verdicts GROUP BY confirmed").fetchall()
            )
            per_split = dict(
                db.execute(
                    "SELECT v.split, COUNT(*) FROM verdicts v JOIN windows w ON w.alert = v.alert"
                    " GROUP BY v.split"
                ).fetchall()
            )
            (pending,) = db.execute(
                "SELECT COUNT(*) FROM alerts a WHERE a.opened >= ? AND a.n > 0"
                " AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.alert = a.id)",
                (now - self.policy.retention_s,),
            ).fetchone()
            (stored,) = db.execute("SELECT COUNT(*) FROM windows").fetchone()
        return {
            "confirmed": int(verdicts.get(1, 0)),
            "dismissed": int(verdicts.get(0, 0)),
            "windows_train": int(per_split.get(TRAIN, 0)),
            "windows_holdout": int(per_split.get(HOLDOUT, 0)),
            "windows_stored": int(stored),
            "alerts_awaiting": int(pending),
            "counters": self.counter_snapshot(),
        }

    # -- retention -----------------------------------------------------------------------------
    def purge(self) -> dict[str, int]:
        """Delete what retention and the size cap no longer allow; returns what went.

        Windows of an alert without a verdict go once it expired (its row stays
        for another ``retention_s``, so a late verdict is refused as expired, not
        unknown). Beyond ``max_windows`` stored, the oldest windows awaiting a
        verdict go first (most alerts are never acknowledged), then the oldest
        labelled ones: a label cost a person's time.
        """
        now = self.clock()
        ret = self.policy.retention_s
        with self._lock:
            if self._closed:
                return {}
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                unacked = "NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.alert = alerts.id)"
                expired = db.execute(
                    f"DELETE FROM windows WHERE alert IN (SELECT id FROM alerts WHERE opened < ?"
                    f" AND {unacked})",
                    (now - ret,),
                ).rowcount
                db.execute(f"UPDATE alerts SET n=0 WHERE opened < ? AND {unacked}", (now - ret,))
                forgotten = db.execute(
                    f"DELETE FROM alerts WHERE opened < ? AND {unacked}", (now - 2 * ret,)
                ).rowcount
                (stored,) = db.execute("SELECT COUNT(*) FROM windows").fetchone()
                over = stored - self.policy.max_windows
                capped = 0
                if over > 0:
                    capped = db.execute(
                        "DELETE FROM windows WHERE (alert, seq) IN (SELECT w.alert, w.seq"
                        " FROM windows w JOIN alerts a ON a.id = w.alert LEFT JOIN verdicts v"
                        " ON v.alert = w.alert ORDER BY v.alert IS NOT NULL,"
                        " COALESCE(v.t, a.opened), w.alert, w.seq LIMIT ?)",
                        (over,),
                    ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        out = {"windows_expired": expired, "alerts_forgotten": forgotten, "windows_capped": capped}
        for k, v in out.items():
            if v:
                self._count(k, v)
        return out
