"""The detector's alert sink: the box's alert store first, then the outbox, one life per alert.

Split from :mod:`edgeagent.daemon.outbound` because it owns the alert's life
across restarts (close or resume at start, close at a clean stop) and across a
full disk (rows rewritten once writes work again), which is one job of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from edgeagent.daemon.components import Counters
from edgeagent.errors import OutboxError
from edgeagent.ops.dbcheck import Recovery
from edgeagent.ops.disk import DiskReserve, is_disk_full
from edgeagent.pipeline.alerts import SENT_CLOSED, SENT_OPENED, Alert, AlertStore
from edgeagent.transport.alert_life import OPEN_STATES, AlertState

log = logging.getLogger(__name__)

#: At start, at most this many unfinished alerts are closed or resumed (the rest next start).
RECOVER_BATCH = 10_000

#: Lives whose "closed" message is queued or delivered: nothing left to queue.
DONE_STATES = frozenset({AlertState.CLOSED_QUEUED, AlertState.CLOSE_SENT})

#: A store error is logged the first time and then once per this many repeats (counted always).
LOG_EVERY = 100


class AlertRelay:
    """The detector's alert sink: the local ``AlertStore`` first, then the outbox.

    An episode produces two outbox messages, ``opened`` (as soon as it is
    raised) and ``closed`` (with its final end and peak score); the
    per-window extensions in between only update the local row. Each message
    has a stable ``msg_id`` (``<alert id>.<event>``) and its queueing is one
    step of the alert's life (``transport.alert_life``), stored in the same
    transaction as the message. :meth:`recover` finishes, at start, every life
    the previous run left unfinished.

    The store is the box's record, the outbox the fleet's: when the store
    cannot write (disk full), the alert still goes to the outbox, and the
    disk reserve is released once to make room for it.
    """

    def __init__(
        self,
        store: AlertStore,
        outbox: Any,
        topic: str,
        box_id: str,
        counters: Counters,
        reserve: DiskReserve | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.topic = topic
        self.box_id = box_id
        self.counters = counters
        self.reserve = reserve
        self._open: dict[str, Alert] = {}
        self._lock = threading.Lock()
        self._errors: dict[str, int] = {}
        #: Alerts whose store write failed (full disk): rewritten whole once writes work.
        self._dirty: dict[str, Alert] = {}
        #: Alerts a message of which the outbox could not take (full disk): queued again
        #: as soon as it can, so an alert raised on a full disk still leaves the box.
        self._unqueued: dict[str, Alert] = {}
        #: Set by the wiring when the outbox was found corrupt and replaced at start.
        self.outbox_recovery: Recovery | None = None

    def start(self) -> None:
        """Finish the previous run's alerts; report a replaced outbox as a box alert."""
        self.recover(outbox_replaced=self.outbox_recovery is not None)
        rec = self.outbox_recovery
        if rec is not None:
            self.raise_box_fault(
                "outbox_corrupt",
                {"moved_to": str(rec.moved_to), "reason": rec.reason, "salvaged": rec.salvaged},
            )

    def payload(self, alert: Alert, event: str) -> bytes:
        """The alert message body (JSON): the alert row plus who sent it and why."""
        body = {"type": "alert", "event": event, "box_id": self.box_id, **alert.as_dict()}
        return json.dumps(body, separators=(",", ":"), default=str).encode()

    def _complain(self, what: str, exc: BaseException, detail: str = "") -> None:
        key = f"{what}: {exc}"
        n = self._errors.get(key, 0) + 1
        self._errors[key] = n
        if n == 1 or n % LOG_EVERY == 0:
            log.error("%s (%d time(s))%s", key, n, f" [{detail}]" if detail else "")

    def _with_reserve(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; on a full disk release the reserve once and run it again."""
        try:
            return fn()
        except (sqlite3.Error, OutboxError, OSError) as exc:
            if not is_disk_full(exc) or self.reserve is None or not self.reserve.release():
                raise
            self.counters.add("disk_reserve_released")
            return fn()

    def _store(self, what: str, fn: Callable[[], Any], alert: Alert | None = None) -> bool:
        try:
            self._with_reserve(fn)
        except sqlite3.Error as exc:
            self.counters.add("alerts_store_errors")
            self._complain(f"alert store {what} failed", exc)
            if alert is not None:
                with self._lock:
                    self._dirty[alert.id] = alert
            return False
        return True

    def retry_store(self) -> int:
        """Rewrite the rows whose writes failed; returns how many are now stored.

        The row's ``sent`` level comes from the outbox's life of the alert, the
        authority on what was queued.
        """
        with self._lock:
            todo = list(self._dirty.values())
        if not todo:
            return 0
        lives = self.outbox.alert_lives()
        done = 0
        for a in todo:
            life = lives.get(a.id)
            sent = SENT_CLOSED if life in DONE_STATES else SENT_OPENED if life else 0
            try:
                self.store.upsert(a, sent)
            except sqlite3.Error as exc:
                self._complain("alert store rewrite failed", exc)
                break
            with self._lock:
                if self._dirty.get(a.id) is a:
                    del self._dirty[a.id]
            done += 1
        if done:
            self.counters.add("alerts_store_rewritten", done)
            log.info("alert store writable again: %d alert row(s) rewritten", done)
        return done

    def _enqueue(self, alert: Alert, event: str) -> bool:
        payload = self.payload(alert, event)
        try:
            self._with_reserve(lambda: self.outbox.put_alert(self.topic, payload, alert.id, event))
        except OutboxError as exc:
            if "alert life" in str(exc) or "in state" in str(exc):
                life = self.outbox.alert_life(alert.id)
                if life is not None and (event == "opened" or life in DONE_STATES):
                    return True  # this step was taken already: the message is on its way
                # "closed" before "opened" made it (the disk refused it): retried in order.
                with self._lock:
                    self._unqueued[alert.id] = alert
                return False
            self.counters.add("alerts_outbox_errors")
            self._complain(f"alert {event} message could not be queued", exc, alert.id)
            with self._lock:
                self._unqueued[alert.id] = alert
            return False
        self.counters.add(f"alerts_queued_{event}")
        return True

    def retry_queue(self) -> int:
        """Queue the messages the outbox could not take before; returns alerts now complete."""
        with self._lock:
            todo = list(self._unqueued.values())
        done = 0
        for a in todo:
            life = self.outbox.alert_life(a.id)
            ok = life is not None or self._enqueue(a, "opened")
            if ok and a.closed and life not in DONE_STATES:
                ok = self._enqueue(a, "closed")
            if not ok:
                break  # still no room: keep the order, try again later
            with self._lock:
                if self._unqueued.get(a.id) is a:
                    del self._unqueued[a.id]
            level = SENT_CLOSED if a.closed else SENT_OPENED
            self._store("mark_sent", lambda a=a, lv=level: self.store.mark_sent(a.id, lv), a)
            done += 1
        if done:
            self.counters.add("alerts_requeued", done)
            log.info("outbox writable again: queued the messages of %d alert(s)", done)
        return done

    def _retry(self) -> None:
        if self._unqueued:
            self.retry_queue()
        if self._dirty:
            self.retry_store()

    def add(self, a: Alert) -> str:
        """Store the new alert, queue its ``opened`` message, then note that in the row."""
        self._retry()
        stored = self._store("add", lambda: self.store.add(a), a)
        self.counters.add("alerts_raised")
        with self._lock:
            self._open[a.id] = a
        if self._enqueue(a, "opened") and stored:
            self._store("mark_sent", lambda: self.store.mark_sent(a.id, SENT_OPENED), a)
        return a.id

    def extend(self, alert_id: str, end: float, score: float, closed: bool = False) -> None:
        """Stretch the stored episode; when it closes, queue the ``closed`` message."""
        self._retry()
        with self._lock:
            a = self._open.get(alert_id)
            if a is not None:
                a.end = max(a.end, end)
                a.score = max(a.score, score)
                if closed:
                    a.closed = True
                    del self._open[alert_id]
        self._store("extend", lambda: self.store.extend(alert_id, end, score, closed), a)
        if closed and a is not None and self._enqueue(a, "closed"):
            self._store("mark_sent", lambda: self.store.mark_sent(a.id, SENT_CLOSED), a)

    def close_open(self, reason: str) -> list[str]:
        """Close every episode still open (a clean stop), queueing each ``closed`` message.

        The detector's episode state ends with the process, so an episode that is
        not closed now would only be closed at the next start: close it while the
        transport can still deliver the message.
        """
        with self._lock:
            still = list(self._open.values())
            self._open.clear()
        for a in still:
            a.closed = True
            a.detail["close_reason"] = reason
            self._store("close", lambda a=a: self.store.close_left_open(a.id, reason), a)
            if self._enqueue(a, "closed"):
                self._store("mark_sent", lambda a=a: self.store.mark_sent(a.id, SENT_CLOSED), a)
        self._retry()
        if still:
            self.counters.add("alerts_closed_at_stop", len(still))
            log.info("closed %d open alert(s) at %s: %s", len(still), reason,
                     ", ".join(a.id for a in still))  # fmt: skip
        return [a.id for a in still]

    def raise_box_fault(self, kind: str, detail: dict[str, Any]) -> str:
        """An alert about the box itself (category ``box_fault``), opened and closed at once."""
        now = time.time()
        a = Alert(
            patient="", device=self.box_id, start=now, end=now, kind=kind,
            category="box_fault", score=1.0, modality="box", model="", detail=detail,
        )  # fmt: skip
        self.add(a)
        self.extend(a.id, now, 1.0, closed=True)
        return a.id

    def recover(self, *, outbox_replaced: bool = False) -> dict[str, list[str]]:
        """Finish every alert life the previous run left unfinished, and say which.

        The detector's episode state dies with its process, so an alert still
        open in the store is *closed* now (``detail.close_reason = "restart"``)
        and its ``closed`` message queued; an alert whose ``opened`` or ``closed``
        message never reached the outbox (a crash between the two stores) has
        that message *resumed*. With ``outbox_replaced`` (a corrupt outbox was
        set aside) every stored alert whose life the new outbox does not know is
        queued again in full: a receiver may see it twice (it dedupes by
        msg-id), but none is lost.
        """
        lives = self.outbox.alert_lives()
        closed_now: list[str] = []
        resumed: list[str] = []
        todo = self.store.unfinished(RECOVER_BATCH)
        if outbox_replaced:
            since = time.time() - float(getattr(self.outbox.limits, "max_age_s", 7 * 86400))
            seen = {a.id for a in todo}
            todo += [a for a in self.store.list(since=since, limit=RECOVER_BATCH)
                     if a.id not in seen and lives.get(a.id) not in DONE_STATES]  # fmt: skip
        for a in todo:
            life = lives.get(a.id)
            if not a.closed:
                self._store("close", lambda a=a: self.store.close_left_open(a.id, "restart"))
                a.closed = True
                a.detail["close_reason"] = "restart"
                closed_now.append(a.id)
            queued = True
            if life is None:
                queued = self._enqueue(a, "opened")
                if queued:
                    resumed.append(a.id)
            if queued and (life is None or life in OPEN_STATES):
                queued = self._enqueue(a, "closed")
                if queued and a.id not in closed_now and a.id not in resumed:
                    resumed.append(a.id)
            if queued:
                self._store("mark_sent", lambda a=a: self.store.mark_sent(a.id, SENT_CLOSED))
        # Lives the outbox holds open whose alert row is gone (the store was replaced).
        known = {a.id for a in todo}
        for alert_id, life in lives.items():
            if life in OPEN_STATES and alert_id not in known and not self._row_exists(alert_id):
                body = {"type": "alert", "event": "closed", "box_id": self.box_id,
                        "id": alert_id, "closed": True,
                        "detail": {"close_reason": "restart", "row_lost": True}}  # fmt: skip
                data = json.dumps(body, separators=(",", ":")).encode()
                try:
                    self.outbox.put_alert(self.topic, data, alert_id, "closed")
                    closed_now.append(alert_id)
                except OutboxError as exc:
                    self._complain(f"alert {alert_id} closed could not be queued", exc)
        if closed_now:
            self.counters.add("alerts_closed_at_start", len(closed_now))
            log.warning(
                "closed %d alert(s) left open by the previous run (episode state ends with "
                "the process; close_reason=restart): %s",
                len(closed_now),
                ", ".join(closed_now),
            )
        if resumed:
            self.counters.add("alerts_resumed_at_start", len(resumed))
            log.info(
                "resumed delivery of %d alert(s) whose messages the previous run had not "
                "queued: %s",
                len(resumed),
                ", ".join(resumed),
            )
        return {"closed": closed_now, "resumed": resumed}

    def _row_exists(self, alert_id: str) -> bool:
        try:
            return bool(self.store.get(alert_id))
        except sqlite3.Error:
            return False

    def checkpoint(self) -> None:
        """Retry what a full disk kept out; truncate the store's WAL (called on the tick)."""
        self._retry()
        with contextlib.suppress(sqlite3.Error):
            self.store.checkpoint()
