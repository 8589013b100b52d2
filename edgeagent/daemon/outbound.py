"""What leaves the box: alerts into the outbox, the outbox itself, status into it, the MQTT link.

Ordered to start before the producers and stop after them, so whatever detection
hands over is stored before the process ends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from edgeagent.daemon.components import (
    Counters,
)
from edgeagent.daemon.health import Liveness
from edgeagent.daemon.telemetry import outbox_stats_from, status_payload
from edgeagent.errors import OutboxError
from edgeagent.pipeline.alerts import Alert, AlertStore

log = logging.getLogger(__name__)


ORDER_OUTBOX = 10


ORDER_TRANSPORT = 20


#: At shutdown the transport offers what the outbox holds for at most this long;
#: anything unacknowledged then stays on disk for the next start.
DRAIN_ON_STOP_S = 3.0


#: ``edgeagent outbox flush`` through the daemon waits at most this long (the
#: control socket serves one request at a time).
MAX_FLUSH_S = 60.0


#: Alerts found unsent at start-up are re-queued in batches of this size.
RESEND_BATCH = 1000


class AlertRelay:
    """The detector's alert sink: the local ``AlertStore`` first, then the outbox.

    An episode produces two outbox messages, ``opened`` (as soon as it is
    raised) and ``closed`` (with its final end and peak score); the
    per-window extensions in between only update the local row. Each message
    has a stable ``msg_id`` (``<alert id>.<event>``), so a re-queue after a
    crash is deduplicated by the outbox or, if already delivered, by the
    receiver.
    """

    def __init__(
        self,
        store: AlertStore,
        outbox: Any,
        topic: str,
        box_id: str,
        counters: Counters,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.topic = topic
        self.box_id = box_id
        self.counters = counters
        self._open: dict[str, Alert] = {}
        self._lock = threading.Lock()

    def payload(self, alert: Alert, event: str) -> bytes:
        """The alert message body (JSON): the alert row plus who sent it and why."""
        body = {"type": "alert", "event": event, "box_id": self.box_id, **alert.as_dict()}
        return json.dumps(body, separators=(",", ":"), default=str).encode()

    def _enqueue(self, alert: Alert, event: str) -> bool:
        try:
            self.outbox.put(
                self.topic, self.payload(alert, event), "alert", msg_id=f"{alert.id}.{event}"
            )
        except OutboxError as exc:
            if "duplicate msg_id" in str(exc):
                return True  # queued before a crash, not yet marked: already on its way
            self.counters.add("alerts_outbox_errors")
            log.error("alert %s could not be queued for delivery: %s", alert.id, exc)
            return False
        self.counters.add(f"alerts_queued_{event}")
        return True

    def add(self, a: Alert) -> str:
        """Store the new alert, queue its ``opened`` message, then mark it sent."""
        self.store.add(a)
        self.counters.add("alerts_raised")
        with self._lock:
            self._open[a.id] = a
        if self._enqueue(a, "opened"):
            self.store.mark_sent(a.id)
        return a.id

    def extend(self, alert_id: str, end: float, score: float, closed: bool = False) -> None:
        """Stretch the stored episode; when it closes, queue the ``closed`` message."""
        self.store.extend(alert_id, end, score, closed)
        with self._lock:
            a = self._open.get(alert_id)
            if a is not None:
                a.end = max(a.end, end)
                a.score = max(a.score, score)
                if closed:
                    a.closed = True
                    del self._open[alert_id]
        if closed and a is not None:
            self._enqueue(a, "closed")

    def resend_unsent(self) -> int:
        """Queue the ``opened`` message of every stored alert not yet in the outbox."""
        n = 0
        for a in self.store.list(unsent=True, limit=RESEND_BATCH):
            if self._enqueue(a, "opened"):
                self.store.mark_sent(a.id)
                n += 1
        if n:
            self.counters.add("alerts_requeued", n)
            log.info("re-queued %d alert(s) stored before the last shutdown", n)
        return n


class OutboxComponent:
    """Owns the SQLite outbox: opened at build, closed after every producer stopped."""

    name = "outbox"
    order = ORDER_OUTBOX

    def __init__(self, outbox: Any) -> None:
        self.outbox = outbox
        self.closed = False

    def start(self) -> None:
        """Nothing to start: the file was opened (and checked) when the daemon was built."""

    def stop(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.close()

    def status(self) -> Mapping[str, Any]:
        if self.closed:
            return {}
        return {"outbox": outbox_stats_from(self.outbox.stats())}


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
            log.warning("status not queued: %s", exc)

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

    def stop(self) -> None:
        """Offer what is stored for ``drain_s`` while connected, then close the link."""
        if self.link.connected:
            self.drained_on_stop = self.forwarder.drain(self.drain_s)
        self.forwarder.stop()
        self.link.close(timeout=2.0)

    def commands(self) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
        """Control-socket commands: ``flush`` sends what is stored now over the daemon's
        own connection (a second client with the box's certificate would take it over)."""
        return {"flush": self.flush}

    def flush(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """Offer everything stored for up to ``timeout_s`` (capped); the daemon keeps running."""
        timeout = min(float(req.get("timeout_s", 10.0)), MAX_FLUSH_S)
        before, delivered, rejected = self.forwarder.outbox.count(), self.forwarder.delivered, \
            self.forwarder.rejected  # fmt: skip
        done = self.link.connected and self.forwarder.drain(timeout)
        refusal = self.forwarder.refusal
        return {
            "via": "daemon",
            "connected": bool(self.link.connected),
            "before": before,
            "delivered": self.forwarder.delivered - delivered,
            "rejected": self.forwarder.rejected - rejected,
            "rows": self.forwarder.outbox.count(),
            "complete": bool(done),
            "refused": refusal["problem"] if refusal else None,
        }

    def status(self) -> Mapping[str, Any]:
        c = self.link.counters
        refusal = self.forwarder.refusal
        return {
            "degraded": [f"{refusal['problem']}; {refusal['fix']}"] if refusal else [],
            "transport": {
                "broker": f"{self.link.host}:{self.link.port}",
                "connected": self.link.connected,
                "last_error": c.last_error or None,
                "in_flight": self.forwarder.in_flight(),
                "refusal": refusal,
            },
            "counters": {
                "mqtt_connects": c.connects,
                "mqtt_disconnects": c.disconnects,
                "mqtt_connect_failures": c.connect_failures,
                "mqtt_acked": c.acked,
                "mqtt_refused": c.refused,
                "outbox_delivered": self.forwarder.delivered,
                "outbox_rejected": self.forwarder.rejected,
                "outbox_reoffered": self.forwarder.reoffered,
                "outbox_refused_kept": self.forwarder.refused_kept,
            },
        }
