"""What the supervisor runs: the component protocol, the factories' context, the block bus.

Why apart from the supervisor: components and factories are what the composition root
(``daemon.wiring``) assembles; the supervisor only starts, ticks, reports and stops them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edgeagent.daemon.health import Liveness
from edgeagent.daemon.telemetry import status_payload
from edgeagent.ops.config import Config
from edgeagent.streams import Gap, SampleBlock

log = logging.getLogger(__name__)


# Start order: sinks < pipeline < sources; equal orders keep registration order.
DEFAULT_ORDER = 50


ORDER_SINK = 20


ORDER_PIPELINE = 40


ORDER_SOURCE = 60


@runtime_checkable
class Component(Protocol):
    """A supervised part of the daemon.

    ``start`` returns once the component runs (threads started); it raises to
    abort daemon start-up. ``stop`` flushes and closes, is idempotent and must
    return in bounded time. ``status`` is cheap and JSON-able; recognised keys
    feed the status snapshot: ``links`` (device -> dict), ``outbox``
    (``OutboxStats`` fields), ``model_version``, ``last_round``, ``counters``.
    A component may also define ``tick() -> None``, called from the supervisor
    loop about once a second (e.g. to poll a source's state into liveness),
    and ``order: int`` (default :data:`DEFAULT_ORDER`): lower starts earlier
    and stops later, so sinks (outbox, transport) outlive the producers
    that flush into them.
    """

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> Mapping[str, Any]: ...


class Counters:
    """Process-wide counters that components add to (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class BlockBus:
    """Bounded hand-off from source threads to the pipeline thread.

    Sources must never block on a slow consumer (that would stall the link and
    lose device data silently), so a full bus drops the *oldest* item and
    counts it; the pipeline component reports the depth as its backlog.
    """

    def __init__(self, maxsize: int = 4096, counters: Counters | None = None) -> None:
        self._q: queue.Queue[SampleBlock | Gap] = queue.Queue(maxsize=maxsize)
        self._counters = counters or Counters()
        self._lock = threading.Lock()

    def put(self, item: SampleBlock | Gap) -> None:
        with self._lock:
            while True:
                try:
                    self._q.put_nowait(item)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._q.get_nowait()
                        self._counters.add("bus_dropped")
        self._counters.add("bus_in")

    def get(self, timeout: float) -> SampleBlock | Gap | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def depth(self) -> int:
        return self._q.qsize()


Consumer = Callable[[SampleBlock | Gap], None]


class PipelineComponent:
    """Drains the bus on its own thread and feeds every registered consumer.

    Until windows/detection land, consumers may be empty: blocks are then only
    counted. Liveness: progress per item, idle when the bus is empty, backlog
    = bus depth, so a consumer that hangs makes the watchdog stop pinging.
    """

    name = "pipeline"
    order = ORDER_PIPELINE

    def __init__(self, bus: BlockBus, liveness: Liveness, counters: Counters) -> None:
        self.bus = bus
        self.liveness = liveness
        self.counters = counters
        self.consumers: list[Consumer] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0
        self.consumer_errors = 0

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self.bus.get(timeout=0.2)
            if item is None:
                self.liveness.idle(self.name, "bus empty")
                continue
            for consumer in self.consumers:
                try:
                    consumer(item)
                except Exception:  # one bad consumer must not stop ingestion
                    self.consumer_errors += 1
                    self.counters.add("pipeline_consumer_errors")
                    log.exception("pipeline consumer %r failed", consumer)
            self.processed += 1
            self.liveness.progress(self.name, backlog=self.bus.depth())

    def tick(self) -> None:
        self.liveness.backlog(self.name, self.bus.depth())

    def stop(self) -> None:
        """Drain what is queued (bounded), then stop the thread."""
        deadline = time.monotonic() + 2.0
        while self.bus.depth() and time.monotonic() < deadline and self._thread is not None:
            time.sleep(0.01)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def status(self) -> Mapping[str, Any]:
        return {
            "counters": {
                "pipeline_processed": self.processed,
                "pipeline_backlog": self.bus.depth(),
                "pipeline_consumer_errors": self.consumer_errors,
            }
        }


class MqttStatusSink:
    """Status sink that publishes each snapshot, retained, through an ``MqttLink``.

    Published directly (QoS 1, retained) rather than through the outbox: only
    the latest status matters, and while the link is down the last will
    already says ``offline``. Snapshots taken while disconnected are skipped
    and counted.
    """

    def __init__(self, link: Any, topic: str | None = None) -> None:
        self.link = link
        self.topic = topic or link.status_topic
        if not self.topic:
            raise ValueError("MqttStatusSink needs a topic (the link has no status topic)")
        self.published = 0
        self.skipped = 0

    def __call__(self, snapshot: dict[str, Any]) -> None:
        if not self.link.connected:
            self.skipped += 1
            return
        self.link.publish(self.topic, status_payload(snapshot), qos=1, retain=True)
        self.published += 1


@dataclass
class Context:
    """What a component factory gets to build its components from."""

    config: Config
    liveness: Liveness
    counters: Counters
    bus: BlockBus
    pipeline: PipelineComponent
    status_sinks: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)

    @property
    def patient_of(self) -> dict[str, str]:
        """device_id -> patient for every configured device (blocks carry device ids)."""
        devs = (*self.config.devices.serial, *self.config.devices.ble.device)
        return {d.device_id: d.patient for d in devs}


Factory = Callable[[Context], list[Component]]
