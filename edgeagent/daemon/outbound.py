"""What leaves the box: alerts into the outbox, the outbox itself, status into it, the MQTT link.

Ordered to start before the producers and stop after them, so whatever detection
hands over is stored before the process ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgeagent.daemon.components import (
    Counters,
)
from edgeagent.daemon.health import Liveness
from edgeagent.daemon.telemetry import outbox_stats_from, status_payload
from edgeagent.errors import OutboxError
from edgeagent.ops.dbcheck import Recovery
from edgeagent.ops.disk import DiskReserve, disk_state, is_disk_full
from edgeagent.pipeline.alerts import SENT_CLOSED, SENT_OPENED, Alert, AlertStore
from edgeagent.transport.alert_life import OPEN_STATES, AlertState

log = logging.getLogger(__name__)


ORDER_OUTBOX = 10


ORDER_TRANSPORT = 20


#: At shutdown the transport offers what the outbox holds for at most this long;
#: anything unacknowledged then stays on disk for the next start.
DRAIN_ON_STOP_S = 3.0


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

    def _complain(self, what: str, exc: BaseException) -> None:
        key = f"{what}: {exc}"
        n = self._errors.get(key, 0) + 1
        self._errors[key] = n
        if n == 1 or n % LOG_EVERY == 0:
            log.error("%s (%d time(s))", key, n)

    def _with_reserve(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; on a full disk release the reserve once and run it again."""
        try:
            return fn()
        except (sqlite3.Error, OutboxError, OSError) as exc:
            if not is_disk_full(exc) or self.reserve is None or not self.reserve.release():
                raise
            self.counters.add("disk_reserve_released")
            return fn()

    def _store(self, what: str, fn: Callable[[], Any]) -> bool:
        try:
            self._with_reserve(fn)
        except sqlite3.Error as exc:
            self.counters.add("alerts_store_errors")
            self._complain(f"alert store {what} failed", exc)
            return False
        return True

    def _enqueue(self, alert: Alert, event: str) -> bool:
        payload = self.payload(alert, event)
        try:
            self._with_reserve(lambda: self.outbox.put_alert(self.topic, payload, alert.id, event))
        except OutboxError as exc:
            if "alert life" in str(exc) or "in state" in str(exc):
                return True  # this step was taken already: the message is on its way
            self.counters.add("alerts_outbox_errors")
            self._complain(f"alert {alert.id} {event} could not be queued", exc)
            return False
        self.counters.add(f"alerts_queued_{event}")
        return True

    def add(self, a: Alert) -> str:
        """Store the new alert, queue its ``opened`` message, then note that in the row."""
        stored = self._store("add", lambda: self.store.add(a))
        self.counters.add("alerts_raised")
        with self._lock:
            self._open[a.id] = a
        if self._enqueue(a, "opened") and stored:
            self._store("mark_sent", lambda: self.store.mark_sent(a.id, SENT_OPENED))
        return a.id

    def extend(self, alert_id: str, end: float, score: float, closed: bool = False) -> None:
        """Stretch the stored episode; when it closes, queue the ``closed`` message."""
        self._store("extend", lambda: self.store.extend(alert_id, end, score, closed))
        with self._lock:
            a = self._open.get(alert_id)
            if a is not None:
                a.end = max(a.end, end)
                a.score = max(a.score, score)
                if closed:
                    a.closed = True
                    del self._open[alert_id]
        if closed and a is not None and self._enqueue(a, "closed"):
            self._store("mark_sent", lambda: self.store.mark_sent(a.id, SENT_CLOSED))

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
            self._store("close", lambda a=a: self.store.close_left_open(a.id, reason))
            a.closed = True
            a.detail["close_reason"] = reason
            if self._enqueue(a, "closed"):
                self._store("mark_sent", lambda a=a: self.store.mark_sent(a.id, SENT_CLOSED))
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
        """Truncate the alert store's WAL (the outbox component's tick calls this)."""
        with contextlib.suppress(sqlite3.Error):
            self.store.checkpoint()


#: The outbox and alert-store WALs are checkpointed (and truncated) this often.
CHECKPOINT_EVERY_S = 30.0


class OutboxComponent:
    """Owns the SQLite outbox: opened at build, closed after every producer stopped.

    Its tick watches the disk (free bytes against ``min_free_bytes``: a fault
    flag and one log line when pressure starts and ends), keeps the reserve
    file in place while there is room for it, and checkpoints the WALs.
    """

    name = "outbox"
    order = ORDER_OUTBOX

    def __init__(
        self,
        outbox: Any,
        liveness: Liveness | None = None,
        *,
        reserve: DiskReserve | None = None,
        recovery: Recovery | None = None,
        checkpoints: tuple[Callable[[], Any], ...] = (),
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.liveness = liveness
        self.reserve = reserve
        self.recovery = recovery
        self.checkpoints: list[Callable[[], Any]] = [outbox.checkpoint, *checkpoints]
        self.checkpoint_every_s = checkpoint_every_s
        self._clock = clock
        self._next_checkpoint = clock() + checkpoint_every_s
        self.disk: dict[str, Any] | None = None
        self.closed = False
        if recovery is not None and liveness is not None:
            liveness.fault("outbox", f"replaced a corrupt file: {recovery.describe()}")

    def start(self) -> None:
        """Put the disk reserve in place and take a first look at the disk."""
        if self.reserve is not None:
            self.reserve.ensure(self.outbox.min_free_bytes)
        self._watch_disk()

    def tick(self) -> None:
        self._watch_disk()
        now = self._clock()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + self.checkpoint_every_s
            for fn in self.checkpoints:
                try:
                    fn()
                except Exception as exc:  # a busy or full disk: next time
                    log.debug("checkpoint failed: %s", exc)

    def _watch_disk(self) -> None:
        if self.closed:
            return
        try:
            st = disk_state(self.outbox.path.parent, self.outbox.min_free_bytes, self.reserve)
        except OSError as exc:
            log.debug("disk state unavailable: %s", exc)
            return
        was_short = bool(self.disk and self.disk.get("short"))
        self.disk = st.as_dict()
        if st.short and not was_short:
            log.error("disk pressure: %s; only alerts are stored until space is freed",
                      st.describe())  # fmt: skip
        elif was_short and not st.short:
            log.warning("disk pressure over: %s", st.describe())
        if not st.short and self.reserve is not None and st.reserve_bytes < self.reserve.size:
            self.reserve.ensure(self.outbox.min_free_bytes)
        if self.liveness is not None:
            self.liveness.fault("disk", f"short: {st.describe()}" if st.short else None)

    def stop(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.outbox.checkpoint()
            self.outbox.close()

    def status(self) -> Mapping[str, Any]:
        if self.closed:
            return {}
        out: dict[str, Any] = {"disk": self.disk}
        if self.recovery is not None:
            out["recovered"] = {
                "moved_to": str(self.recovery.moved_to),
                "reason": self.recovery.reason,
                "salvaged": dict(self.recovery.salvaged),
            }
        try:
            out["outbox"] = outbox_stats_from(self.outbox.stats())
        except Exception as exc:  # a store that fails now: say so, never hide it as null
            out["error"] = f"outbox unreadable: {type(exc).__name__}: {exc}"
            if self.liveness is not None:
                self.liveness.fault("outbox", out["error"])
        return out


class OutboxStatusSink:
    """Status sink: each snapshot goes into the outbox as a retained ``status`` message.

    Only the newest status matters, so the previous, not yet delivered ones
    are purged first (counted as ``purged.status`` in ``outbox stats``, not
    as drops): after an outage the broker gets the current state, not a
    backlog of stale ones. The supervisor's final snapshot after shutdown
    arrives when the outbox is closed and is skipped (status.json has it).
    """

    def __init__(self, box: OutboxComponent, topic: str, counters: Counters) -> None:
        self.box = box
        self.topic = topic
        self.counters = counters
        self.last: dict[str, Any] | None = None
        self.queued = 0
        self._last_error = ""

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self.last = snapshot
        if self.box.closed:
            return
        try:
            self.box.outbox.purge(kind="status")
            self.box.outbox.put(self.topic, status_payload(snapshot), "status", retain=True)
            self.queued += 1
        except OutboxError as exc:
            self.counters.add("status_outbox_errors")
            text = str(exc).split(":", 1)[0]
            if text != self._last_error:  # once per kind of refusal, not once a second
                log.warning("status not queued: %s", exc)
            self._last_error = text
        else:
            self._last_error = ""

    def requeue(self) -> None:
        """Queue the latest snapshot again (the link's presence message just replaced it)."""
        if self.last is not None:
            self(self.last)


class SharedLink:
    """The transport's ``MqttLink`` as lent to the federation client.

    The client would connect and close the link itself; here the transport
    component owns both (so the outbox can still drain after the client
    stopped), and the client's ``on_connect`` runs next to the transport's.
    """

    def __init__(self, link: Any) -> None:
        self._link = link
        self.on_connect: Callable[[bool], None] | None = None

    @property
    def on_message(self) -> Any:
        return self._link.on_message

    @on_message.setter
    def on_message(self, fn: Any) -> None:
        self._link.on_message = fn

    @property
    def connected(self) -> bool:
        return bool(self._link.connected)

    def connect(self, *_a: Any, **_k: Any) -> SharedLink:
        """No-op: the transport component connected the link already."""
        return self

    def close(self, *_a: Any, **_k: Any) -> None:
        """No-op: the transport component closes the link after draining the outbox."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


class TransportComponent:
    """MQTT link (mTLS, persistent session, retained status will) + outbox forwarder.

    The link connects in the background: a broker that is down at boot does
    not stop the box, whose messages wait in the outbox. Liveness: the
    forwarder thread's loop is the unit of work; a dead thread stops the
    watchdog, a down link is known idle (restarting cannot bring a broker up).
    """

    name = "transport"
    order = ORDER_TRANSPORT

    def __init__(
        self,
        link: Any,
        forwarder: Any,
        liveness: Liveness,
        status_sink: OutboxStatusSink | None = None,
        drain_s: float = DRAIN_ON_STOP_S,
    ) -> None:
        self.link = link
        self.forwarder = forwarder
        self.liveness = liveness
        self.status_sink = status_sink
        self.drain_s = drain_s
        self.shared = SharedLink(link)
        self.drained_on_stop: bool | None = None
        self._delivered_seen = 0
        link.on_connect = self._on_connect

    def _on_connect(self, session_present: bool) -> None:
        # The link just published its small retained presence message on the
        # status topic; put the full snapshot back behind it.
        if self.status_sink is not None:
            self.status_sink.requeue()
        if self.shared.on_connect is not None:
            self.shared.on_connect(session_present)

    def start(self) -> None:
        self.link.connect(wait=False)
        self.forwarder.start()

    def tick(self) -> None:
        if not self.forwarder.running:
            return  # a dead forwarder thread must stall the watchdog
        delivered = self.forwarder.delivered
        if delivered != self._delivered_seen:
            self.liveness.progress(self.name, delivered - self._delivered_seen)
            self._delivered_seen = delivered
        else:
            self.liveness.idle(self.name, "mqtt up" if self.link.connected else "mqtt down")
        down = self.link.down_for_s()
        self.liveness.fault(
            "broker",
            None
            if down is None
            else f"{self.link.host}:{self.link.port} unreachable for {down:.0f} s",
        )

    def stop(self) -> None:
        """Offer what is stored for ``drain_s`` while connected, then close the link."""
        if self.link.connected:
            self.drained_on_stop = self.forwarder.drain(self.drain_s)
        self.forwarder.stop()
        self.link.close(timeout=2.0)

    def status(self) -> Mapping[str, Any]:
        c = self.link.counters
        return {
            "transport": {
                "broker": f"{self.link.host}:{self.link.port}",
                "connected": self.link.connected,
                "last_error": c.last_error or None,
                "in_flight": self.forwarder.in_flight(),
                "down_for_s": self.link.down_for_s(),
                "last_outage_s": c.last_outage_s,
            },
            "counters": {
                "mqtt_connects": c.connects,
                "mqtt_disconnects": c.disconnects,
                "mqtt_connect_failures": c.connect_failures,
                "mqtt_acked": c.acked,
                "mqtt_refused": c.refused,
                "mqtt_outages": c.outages,
                "outbox_delivered": self.forwarder.delivered,
                "outbox_rejected": self.forwarder.rejected,
                "outbox_reoffered": self.forwarder.reoffered,
            },
        }
