"""The daemon: a Supervisor that starts, watches and cleanly stops components.

Everything the box runs (sources, pipeline, learner, federated client,
transport) is a :class:`Component` with ``start()``, ``stop()`` and
``status()``. Components are built from the config by *factories*
(:data:`COMPONENT_FACTORIES`), so wiring a new part in is one ``register_factory``
call and never an edit to the supervisor's loop.

The supervisor owns the process-level duties: SIGTERM/SIGINT handling, the
sd_notify READY/STATUS/WATCHDOG/STOPPING conversation, the liveness-gated
watchdog, the control socket, and the periodic status snapshot (written
atomically to ``state_dir/status.json`` and handed to status sinks such as
the MQTT publisher). Shutdown stops components in reverse start order, each
bounded in time, so data producers stop before the consumers that flush them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from edgeagent import __version__
from edgeagent.atomic import write_atomic
from edgeagent.daemon.control import ControlServer
from edgeagent.daemon.health import Liveness, LivenessReport
from edgeagent.daemon.sdnotify import Notifier, watchdog_interval
from edgeagent.daemon.telemetry import OutboxStats, ProcessStats, build_status, status_payload
from edgeagent.errors import EdgeAgentError
from edgeagent.ops.config import Config
from edgeagent.streams import Gap, SampleBlock

log = logging.getLogger(__name__)

# A stop() that takes longer than this is abandoned (logged) so the rest still
# flush before systemd's TimeoutStopSec escalates to SIGKILL.
DEFAULT_STOP_TIMEOUT_S = 10.0
# All stops together stay inside this, under the unit's TimeoutStopSec=30s, so
# the final status.json is written before systemd's SIGKILL.
DEFAULT_STOP_BUDGET_S = 20.0
# Start order: sinks < pipeline < sources; equal orders keep registration order.
DEFAULT_ORDER = 50
ORDER_SINK = 20
ORDER_PIPELINE = 40
ORDER_SOURCE = 60
# Upper bound of the supervisor's sleep: how fast it notices ticks and signals.
MAX_TICK_S = 1.0


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


class SerialComponent:
    """Adapts a ``SerialSource`` (sources/serial.py) to the Component protocol.

    Liveness: each block is progress. While the reader thread runs, a link
    that is connecting, backing off, open-but-silent or given up is *known
    idle*: restarting the daemon would not make a device talk, and the state
    is shown per link in the status. A reader thread that died without
    reaching ``stopped``/``failed`` stops reporting, so the watchdog fires.
    """

    order = ORDER_SOURCE

    def __init__(self, source: Any, device_id: str, patient: str, liveness: Liveness) -> None:
        self.source = source
        self.device_id = device_id
        self.patient = patient
        self.name = f"serial:{device_id}"
        self.liveness = liveness

    def on_block(self) -> None:
        self.liveness.progress(self.name)

    def start(self) -> None:
        self.source.start()

    def tick(self) -> None:
        state = str(getattr(self.source, "state", "unknown"))
        if state in ("stopped", "failed") or self.source.alive:
            note = "link open, no data" if state == "open" else f"link {state}"
            self.liveness.idle(self.name, note)

    def stop(self) -> None:
        self.source.stop()

    def status(self) -> Mapping[str, Any]:
        counters = getattr(self.source, "counters", None)
        err = getattr(self.source, "last_error", None)
        return {
            "links": {
                self.device_id: {
                    "kind": "serial",
                    "patient": self.patient,
                    "port": getattr(self.source, "port", None),
                    "state": str(getattr(self.source, "state", "unknown")),
                    "last_error": str(err) if err is not None else None,
                    "counters": counters.as_dict() if counters is not None else {},
                }
            }
        }


class BleComponent:
    """Adapts the ``BleSource`` (sources/ble.py, one for every wearable) to a Component.

    Blocks and gaps of configured wearables are relabelled from the BLE
    address to the configured ``device_id``, so everything downstream sees
    the same ids as in the config and status. Liveness: each block is
    progress; every tick schedules an idle report *on the source's own event
    loop*, so a wedged loop (not just a dead thread) stops the watchdog,
    while searching for or reconnecting to absent wearables is known idle.
    """

    name = "ble"
    order = ORDER_SOURCE

    def __init__(self, liveness: Liveness, ids: Mapping[str, str]) -> None:
        self.liveness = liveness
        self.ids = {a.upper(): d for a, d in ids.items()}
        self.source: Any = None
        self._stopping = False

    def relabel(self, item: SampleBlock | Gap) -> SampleBlock | Gap:
        device_id = self.ids.get(item.device.upper())
        if device_id is None:
            return item
        if isinstance(item, SampleBlock):
            return SampleBlock(device_id, item.stream, item.t, item.values, item.seq)
        return dataclasses.replace(item, device=device_id)

    def start(self) -> None:
        self.source.start()

    def tick(self) -> None:
        loop = self.source.loop
        state = str(getattr(self.source, "state", "unknown"))
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.liveness.idle, self.name, f"ble {state}")
        elif self._stopping:
            self.liveness.idle(self.name, "stopped")

    def stop(self) -> None:
        self._stopping = True
        self.source.stop()

    def status(self) -> Mapping[str, Any]:
        links: dict[str, Any] = {}
        for addr, info in dict(getattr(self.source, "links", {})).items():
            counters = self.source.counters.get(addr)
            links[self.ids.get(addr.upper(), addr)] = {
                "kind": "ble",
                **info.as_dict(),
                "counters": counters.as_dict() if counters is not None else {},
            }
        return {"links": links}


def ble_device_filter(ble: Any) -> dict[str, Any]:
    """DeviceFilter arguments from ``[devices.ble]``: allow-list (or the configured
    addresses), name prefixes as one anchored pattern, advertised services."""
    addresses = set(ble.allow) or {d.address for d in ble.device}
    pattern = (
        "^(?:" + "|".join(re.escape(p) for p in ble.name_prefixes) + ")"
        if ble.name_prefixes
        else None
    )
    return {
        "addresses": frozenset(addresses),
        "name_pattern": pattern,
        "service_uuids": frozenset(ble.service_uuids),
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


def _serial_factory(ctx: Context) -> list[Component]:
    """One SerialComponent per ``[[devices.serial]]`` once sources/serial.py exists."""
    if not ctx.config.devices.serial:
        return []
    try:
        from edgeagent.sources.serial import SerialSource
    except ImportError as exc:
        log.warning("serial devices configured but serial sources are unavailable: %s", exc)
        ctx.counters.add("serial_unavailable", len(ctx.config.devices.serial))
        return []
    out: list[Component] = []
    stall = ctx.config.status.stall_after_s
    for dev in ctx.config.devices.serial:
        holder: dict[str, SerialComponent] = {}

        def on_block(block: SampleBlock, _h: dict[str, SerialComponent] = holder) -> None:
            ctx.bus.put(block)
            _h["c"].on_block()

        source = SerialSource(
            dev.port, dev.device_id, on_block=on_block, on_gap=ctx.bus.put, baudrate=dev.baudrate
        )
        comp = SerialComponent(source, dev.device_id, dev.patient, ctx.liveness)
        holder["c"] = comp
        ctx.liveness.register(comp.name, stall)
        out.append(comp)
    return out


def _ble_factory(ctx: Context) -> list[Component]:
    """One BleComponent when ``[devices.ble] enabled = true``."""
    ble = ctx.config.devices.ble
    if not ble.enabled:
        return []
    try:
        from edgeagent.sources.ble import BleSource, DeviceFilter
    except ImportError as exc:
        log.warning("BLE enabled but BLE sources are unavailable: %s", exc)
        ctx.counters.add("ble_unavailable")
        return []
    comp = BleComponent(ctx.liveness, {d.address: d.device_id for d in ble.device})

    def on_block(block: SampleBlock) -> None:
        ctx.bus.put(comp.relabel(block))
        ctx.liveness.progress(comp.name)

    def on_gap(gap: Gap) -> None:
        ctx.bus.put(comp.relabel(gap))

    comp.source = BleSource(
        DeviceFilter(**ble_device_filter(ble)),
        on_block,
        on_gap,
        scan_s=min(ble.scan_timeout_s, 5.0),
    )
    ctx.liveness.register(comp.name, ctx.config.status.stall_after_s)
    return [comp]


COMPONENT_FACTORIES: list[Factory] = [_serial_factory, _ble_factory]


def register_factory(factory: Factory) -> None:
    """Add a factory whose components start after those already registered."""
    if factory not in COMPONENT_FACTORIES:
        COMPONENT_FACTORIES.append(factory)


def sample_process(proc: Any = None) -> ProcessStats | None:
    """CPU/memory of this process via psutil (None if psutil cannot read it)."""
    try:
        import psutil

        p = proc or psutil.Process()
        with p.oneshot():
            try:
                nfiles = len(p.open_files())
            except psutil.Error:
                nfiles = 0
            return ProcessStats(
                cpu_percent=float(p.cpu_percent(interval=None)),
                rss_bytes=int(p.memory_info().rss),
                memory_percent=round(float(p.memory_percent()), 3),
                threads=int(p.num_threads()),
                open_files=nfiles,
            )
    except Exception:  # telemetry must never take the daemon down
        return None


class Supervisor:
    """Runs components under one process with systemd integration.

    ``components`` are started in order and stopped in reverse. ``clock`` and
    ``wall`` are injectable for tests; nothing else about the loop is faked.
    """

    def __init__(
        self,
        config: Config,
        components: list[Component] | None = None,
        *,
        notifier: Notifier | None = None,
        liveness: Liveness | None = None,
        counters: Counters | None = None,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        stop_budget_s: float = DEFAULT_STOP_BUDGET_S,
        control: bool = True,
    ) -> None:
        self.config = config
        self.components: list[Component] = sorted(
            components or [], key=lambda c: getattr(c, "order", DEFAULT_ORDER)
        )
        self.notifier = notifier or Notifier()
        self.liveness = liveness or Liveness()
        self.counters = counters or Counters()
        self.stop_timeout_s = stop_timeout_s
        self.stop_budget_s = stop_budget_s
        self.status_sinks: list[Callable[[dict[str, Any]], None]] = []
        self.state = "created"
        self.started_at = time.time()
        self.watchdog_s = watchdog_interval()
        self.watchdog_pings = 0
        self.watchdog_withheld = 0
        self.last_report: LivenessReport | None = None
        self._started: list[Component] = []
        self._stop_event = threading.Event()
        self._stop_reason = ""
        self._last_status_text = ""
        self._proc: Any = None
        with contextlib.suppress(Exception):
            import psutil

            # One Process object: cpu_percent() measures since the previous call on it.
            self._proc = psutil.Process()
            self._proc.cpu_percent(interval=None)
        self._control = (
            ControlServer(
                config.control.socket_path,
                {"status": lambda _r: self.snapshot(), "counters": lambda _r: self.all_counters()},
            )
            if control
            else None
        )

    # -- lifecycle ---------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to shut down (safe from signal handlers and other threads)."""
        if not self._stop_event.is_set():
            self._stop_reason = reason
            self._stop_event.set()

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, lambda s, _f: self.request_stop(signal.Signals(s).name))
        return previous

    def run(self) -> int:
        """Start everything, supervise until a stop is requested, stop cleanly.

        Returns the process exit code: 0 after a requested stop with every
        component stopped in time, 1 when start-up failed or a stop timed out.
        """
        previous = self._install_signals()
        code = 0
        try:
            code = self._start_all()
            if code == 0:
                self._loop()
        finally:
            code = max(code, self._stop_all())
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.notifier.close()
        return code

    def _start_all(self) -> int:
        self.state = "starting"
        self.notifier.status("starting")
        try:
            if self._control is not None:
                self._control.start()
            for comp in self.components:
                log.info("starting %s", comp.name)
                comp.start()
                self._started.append(comp)
        except Exception as exc:
            log.error("start-up failed: %s", exc)
            self.notifier.status(f"start-up failed: {exc}")
            self.state = "failed"
            return 1
        self.state = "running"
        self.notifier.ready(status=f"running {len(self._started)} components")
        log.info("edgeagent %s running with %d components", __version__, len(self._started))
        return 0

    def _loop(self) -> None:
        next_status = time.monotonic()
        next_ping = time.monotonic()
        tick = MAX_TICK_S
        if self.watchdog_s:
            tick = min(tick, self.watchdog_s / 4)
        while not self._stop_event.is_set():
            now = time.monotonic()
            for comp in self._started:
                t = getattr(comp, "tick", None)
                if callable(t):
                    try:
                        t()
                    except Exception:
                        log.exception("tick of %s failed", comp.name)
            report = self.liveness.check()
            self._on_liveness(report)
            if self.watchdog_s and now >= next_ping:
                if report.ok:
                    self.notifier.watchdog()
                    self.watchdog_pings += 1
                else:
                    # No ping: systemd restarts us after WatchdogSec, which is the point.
                    self.watchdog_withheld += 1
                next_ping = now + self.watchdog_s / 2
            if now >= next_status:
                self.publish_status()
                next_status = now + self.config.status.interval_s
            self._stop_event.wait(tick)
        log.info("stopping: %s", self._stop_reason)

    def _on_liveness(self, report: LivenessReport) -> None:
        prev = self.last_report
        self.last_report = report
        text = report.summary()
        if (prev is None or prev.ok != report.ok) and not report.ok:
            log.error("liveness: %s", text)
        if text != self._last_status_text:
            self._last_status_text = text
            self.notifier.status(text)

    def _stop_one(self, comp: Component, timeout: float) -> bool:
        done = threading.Event()
        err: list[BaseException] = []

        def target() -> None:
            try:
                comp.stop()
            except BaseException as exc:
                err.append(exc)
            finally:
                done.set()

        threading.Thread(target=target, name=f"stop:{comp.name}", daemon=True).start()
        if not done.wait(timeout):
            log.error("%s did not stop within %.1f s; abandoning it", comp.name, timeout)
            return False
        if err:
            log.error("%s failed to stop cleanly: %s", comp.name, err[0])
            return False
        return True

    def _stop_all(self) -> int:
        if self.state == "stopped":
            return 0
        self.state = "stopping"
        self.notifier.stopping(status=f"stopping: {self._stop_reason or 'start-up failed'}")
        ok = True
        deadline = time.monotonic() + self.stop_budget_s
        for comp in reversed(self._started):
            log.info("stopping %s", comp.name)
            left = max(0.05, min(self.stop_timeout_s, deadline - time.monotonic()))
            ok = self._stop_one(comp, left) and ok
        self._started.clear()
        if self._control is not None:
            self._control.stop()
        self.state = "stopped"
        self.publish_status()
        return 0 if ok else 1

    # -- status -----------------------------------------------------------------

    def all_counters(self) -> dict[str, int]:
        """Counters from the process and every component's status()."""
        out = self.counters.snapshot()
        out["watchdog_pings"] = self.watchdog_pings
        out["watchdog_withheld"] = self.watchdog_withheld
        for comp in self.components:
            for k, v in _safe_status(comp).get("counters", {}).items():
                out[k] = out.get(k, 0) + int(v)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The status snapshot (see telemetry.build_status) of this moment."""
        links: dict[str, Mapping[str, Any]] = {}
        outbox: OutboxStats | None = None
        model_version: str | None = None
        last_round: int | str | None = None
        inference: dict[str, Any] | None = None  # the detector's backend (edgeagent.providers)
        components: dict[str, Any] = {}
        for comp in self.components:
            st = _safe_status(comp)
            components[comp.name] = st
            links.update(st.get("links", {}))
            if "outbox" in st:
                ob = st["outbox"]
                outbox = ob if isinstance(ob, OutboxStats) else OutboxStats(**ob)
            model_version = st.get("model_version", model_version)
            last_round = st.get("last_round", last_round)
            inference = st.get("inference") or inference
        snap = build_status(
            box_id=self.config.agent.box_id,
            fleet=self.config.agent.fleet,
            version=__version__,
            started_at=self.started_at,
            now=time.time(),
            state=self.state,
            model_version=model_version,
            links=links,
            outbox=outbox,
            counters=self.all_counters(),
            process=sample_process(self._proc),
            last_round=last_round,
            liveness=self.last_report or self.liveness.check(),
        )
        snap["watchdog_s"] = self.watchdog_s
        if inference is not None:
            snap["inference"] = inference
        # Whatever else a component reports (transport, detection, learner, federation
        # detail), so the operator sees it without a schema change for each part.
        details = {
            name: {k: v for k, v in st.items() if k not in _SNAPSHOT_KEYS}
            for name, st in components.items()
        }
        snap["components"] = {name: d for name, d in details.items() if d}
        return snap

    def publish_status(self) -> None:
        """Write status.json atomically and hand the snapshot to every sink."""
        snap = self.snapshot()
        try:
            write_atomic(
                self.config.agent.state_dir / "status.json",
                json.dumps(snap, indent=1, default=str).encode(),
            )
        except OSError as exc:
            self.counters.add("status_write_errors")
            log.warning("cannot write status.json: %s", exc)
        for sink in self.status_sinks:
            try:
                sink(snap)
            except Exception:
                self.counters.add("status_sink_errors")
                log.exception("status sink %r failed", sink)


#: Component status keys the snapshot folds into its own fields.
_SNAPSHOT_KEYS = frozenset(
    {"links", "outbox", "counters", "model_version", "last_round", "inference"}
)


def _safe_status(comp: Component) -> dict[str, Any]:
    try:
        return dict(comp.status())
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def build_supervisor(config: Config, notifier: Notifier | None = None) -> Supervisor:
    """The daemon as configured: pipeline first, then every factory's components."""
    liveness = Liveness()
    counters = Counters()
    bus = BlockBus(counters=counters)
    pipeline = PipelineComponent(bus, liveness, counters)
    liveness.register(pipeline.name, config.status.stall_after_s)
    ctx = Context(config, liveness, counters, bus, pipeline)
    components: list[Component] = [pipeline]
    from edgeagent.daemon.wiring import daemon_factory

    register_factory(daemon_factory)  # detection, learner, outbox, MQTT, federation
    for factory in COMPONENT_FACTORIES:
        components.extend(factory(ctx))
    sup = Supervisor(config, components, notifier=notifier, liveness=liveness, counters=counters)
    sup.status_sinks.extend(ctx.status_sinks)
    return sup


def run_daemon(config: Config) -> int:
    """Entry point of ``edgeagent run``: build the supervisor and run it to completion.

    A part that cannot be built (unreadable model or outbox, missing TLS
    files) is reported in one line and in ``STATUS=``, and the exit code is 1
    (no ``READY=1``), so systemd's ``Restart=on-failure`` retries it.
    """
    try:
        sup = build_supervisor(config)
    except EdgeAgentError as exc:
        log.error("cannot start: %s", exc)
        notifier = Notifier()
        notifier.status(f"start-up failed: {exc}")
        notifier.close()
        return 1
    return sup.run()
