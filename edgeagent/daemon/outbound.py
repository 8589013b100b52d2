"""What leaves the box: alerts into the outbox, the outbox itself, status into it, the MQTT link.

Ordered to start before the producers and stop after them, so whatever detection
hands over is stored before the process ends.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgeagent.daemon.alert_relay import AlertRelay
from edgeagent.daemon.components import (
    Counters,
)
from edgeagent.daemon.health import Liveness
from edgeagent.daemon.telemetry import outbox_stats_from, status_payload
from edgeagent.errors import OutboxError
from edgeagent.ops.dbcheck import Recovery
from edgeagent.ops.disk import DiskReserve, disk_state

log = logging.getLogger(__name__)

__all__ = [
    "AlertRelay",
    "OutboxComponent",
    "OutboxStatusSink",
    "SharedLink",
    "TransportComponent",
]


ORDER_OUTBOX = 10


ORDER_TRANSPORT = 20


#: At shutdown the transport offers what the outbox holds for at most this long;
#: anything unacknowledged then stays on disk for the next start.
DRAIN_ON_STOP_S = 3.0


#: The outbox and alert-store WALs are checkpointed (and truncated) this often.
CHECKPOINT_EVERY_S = 30.0
#: ``edgeagent outbox flush`` through the daemon waits at most this long (the
#: control socket serves one request at a time).
MAX_FLUSH_S = 60.0


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
                "down_for_s": self.link.down_for_s(),
                "last_outage_s": c.last_outage_s,
                "refusal": refusal,
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
                "outbox_refused_kept": self.forwarder.refused_kept,
            },
        }
