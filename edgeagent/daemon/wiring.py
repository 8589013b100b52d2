"""What ``edgeagent run`` runs besides the sources: detection, learning, outbox, MQTT, federation.

:func:`daemon_factory` builds, from one config, every component that turns
sample blocks into delivered alerts, and registers nothing global: the
supervisor calls it like any other factory (``service.build_supervisor``).
Everything is built in one function because the parts share objects (one
outbox, one detector, one learner, one MQTT link) and must agree on them.

Start order (lower first) and therefore reverse stop order::

    10 outbox       SQLite store-and-forward; closed last, after every producer
    20 transport    MQTT link + OutboxForwarder; drains the outbox at stop
    30 federation   FlClient (rounds, global models) on the transport's link
    35 detection    per-patient Windower -> features -> Detector -> alerts
    37 learner      LocalLearner's training thread (never on the detection path)
    40 pipeline     the BlockBus drain (service.PipelineComponent)
    60 sources      serial / BLE

So on SIGTERM the sources stop first, the pipeline drains the bus into the
windowers, the learner saves its progress, detection closes what windows it
can and hands their alerts to the outbox, the federation client stops, the
transport offers what the outbox holds for a bounded time, and the outbox is
closed: whatever was not acknowledged stays on disk for the next start.

Why alerts take two stores: ``alerts.sqlite`` is the box's own record (what
a clinician can ask the box) and ``outbox.sqlite3`` is what still has to
reach the fleet. An alert row is marked ``sent`` only once its message is in
the outbox, so an alert written just before a crash is queued at the next
start instead of being lost between the two.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.atomic import write_atomic
from edgeagent.daemon.health import Liveness
from edgeagent.daemon.supervisor import Component, Context, Counters
from edgeagent.daemon.telemetry import outbox_stats_from, status_payload
from edgeagent.errors import EdgeAgentError, ModelError, OutboxError, PkiError, TransportError
from edgeagent.pipeline.alerts import Alert, AlertStore
from edgeagent.streams import Gap, SampleBlock
from edgeagent.transport import topics

log = logging.getLogger(__name__)

ORDER_OUTBOX = 10
ORDER_TRANSPORT = 20
ORDER_FEDERATION = 30
ORDER_DETECTION = 35
ORDER_LEARNER = 37

#: How often the detection component asks the registry which model is active
#: (``edgeagent model activate``/``rollback`` from the CLI take effect this fast).
REGISTRY_CHECK_S = 5.0
#: At shutdown the transport offers what the outbox holds for at most this long;
#: anything unacknowledged then stays on disk for the next start.
DRAIN_ON_STOP_S = 3.0
#: Alerts found unsent at start-up are re-queued in batches of this size.
RESEND_BATCH = 1000
LEARNER_STATE = "learner_state.npz"


# -- alerts: local store + outbox ------------------------------------------------------


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


# -- outbox ------------------------------------------------------------------------------


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


# -- transport ---------------------------------------------------------------------------


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

    def status(self) -> Mapping[str, Any]:
        c = self.link.counters
        return {
            "transport": {
                "broker": f"{self.link.host}:{self.link.port}",
                "connected": self.link.connected,
                "last_error": c.last_error or None,
                "in_flight": self.forwarder.in_flight(),
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
            },
        }


# -- detection ---------------------------------------------------------------------------


class DetectionComponent:
    """Per-patient windows -> features -> detector, fed by the pipeline thread.

    ``consume`` runs on the pipeline thread for every block and gap; ``tick``
    (supervisor thread, ~1 s) closes windows whose streams went quiet (the
    windower's lateness rule) and asks the registry whether another model was
    activated. One lock serialises both, since windowers are single-threaded.
    """

    name = "detection"
    order = ORDER_DETECTION

    def __init__(
        self,
        detector: Any,
        relay: AlertRelay,
        patient_of: Mapping[str, str],
        make_windower: Callable[[str], Any],
        counters: Counters,
        *,
        manager: Any = None,
        learner: Any = None,
        clock: Callable[[], float] = time.time,
        registry_check_s: float = REGISTRY_CHECK_S,
    ) -> None:
        self.detector = detector
        self.relay = relay
        self.patient_of = dict(patient_of)
        self.make_windower = make_windower
        self.counters = counters
        self.manager = manager
        self.learner = learner
        self.clock = clock
        self.registry_check_s = registry_check_s
        self.windowers: dict[str, Any] = {}
        self.windows = 0
        self.unknown_device = 0
        self.swaps: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        #: Held by registry checks and by federated model installs (``SerialManager``),
        #: so a check never sees a model swapped in but not yet activated and swaps back.
        self.model_lock = threading.Lock()
        self._next_check = 0.0

    def _windower(self, device: str) -> Any | None:
        patient = self.patient_of.get(device)
        if patient is None:
            self.unknown_device += 1
            return None
        w = self.windowers.get(patient)
        if w is None:
            w = self.windowers[patient] = self.make_windower(patient)
        return w

    def consume(self, item: SampleBlock | Gap) -> None:
        """Pipeline consumer: buffer the item and score every window it completes."""
        with self._lock:
            w = self._windower(item.device)
            if w is None:
                return
            if isinstance(item, SampleBlock):
                w.push(item)
            else:
                w.push_gap(item)
            self._score(w.pop_ready(self.clock()))

    def _score(self, windows: list[Any]) -> None:
        for win in windows:
            try:
                self.detector.process(win)
            except ModelError as exc:
                self.counters.add("detection_errors")
                log.error("window %s@%.1f not scored: %s", win.patient, win.start, exc)
            self.windows += 1

    def tick(self) -> None:
        now = self.clock()
        with self._lock:
            for w in self.windowers.values():
                self._score(w.pop_ready(now))
        mono = time.monotonic()
        if self.manager is not None and mono >= self._next_check:
            self._next_check = mono + self.registry_check_s
            self.check_registry()

    def check_registry(self) -> None:
        """Follow the registry's active model (CLI activate/rollback) and probation checks."""
        with self.model_lock:
            self._check_registry()
        del self.swaps[:-20]

    def _check_registry(self) -> None:
        mgr = self.manager
        try:
            active = mgr.registry.active()
            if active is not None and active.label != self.detector.model_label:
                data = mgr.registry.load_bytes(active)
                self.detector.swap(data, active.label)
                self._reset_learner(mgr.registry, active)
                self.swaps.append({"label": active.label, "t": round(time.time(), 3)})
                log.info("detector now runs %s (activated in the registry)", active.label)
            res = mgr.probation_check()
            if res is not None:
                log.info("model probation: %s", res.as_dict())
                self.swaps.append({"probation": res.as_dict(), "t": round(time.time(), 3)})
        except EdgeAgentError as exc:
            self.counters.add("model_check_errors")
            log.error("model check failed, keeping %s: %s", self.detector.model_label, exc)

    def _reset_learner(self, registry: Any, rec: Any) -> None:
        if self.learner is None:
            return
        try:
            self.learner.reset_global(registry.load_params(rec))
        except (ValueError, EdgeAgentError) as exc:
            # A different architecture: the learner cannot continue from it.
            self.counters.add("learner_reset_errors")
            log.error("learner keeps its old model: %s", exc)

    def start(self) -> None:
        self.relay.resend_unsent()

    def stop(self) -> None:
        """Score the windows that can close now; partial windows are not scored."""
        with self._lock:
            for w in self.windowers.values():
                self._score(w.pop_ready(self.clock()))
        self.relay.store.close()

    def status(self) -> Mapping[str, Any]:
        d = dict(self.detector.counters)
        wc: dict[str, int] = {}
        for w in list(self.windowers.values()):
            for k, v in w.counters.as_dict().items():
                wc[k] = wc.get(k, 0) + int(v)
        backend = self.detector.backend
        return {
            "model_version": self.detector.model_label,
            "inference": backend.as_dict() if backend is not None else None,
            "detection": {
                "patients": sorted(self.windowers),
                "windows": wc,
                "swaps": list(self.swaps),
                "trusted": bool(self.detector.trusted),
            },
            "counters": {
                "detection_windows": self.windows,
                "detection_scored": d.get("windows", 0),
                "detection_no_data": d.get("no_data", 0),
                "detection_alerts": d.get("alerts", 0),
                "detection_swaps": d.get("swaps", 0),
                "detection_unknown_device": self.unknown_device,
                "windows_late": wc.get("late", 0),
                "windows_nonfinite": wc.get("nonfinite", 0),
            },
        }


class SerialManager:
    """The ``ModelManager`` as lent to the federated client: installs hold ``lock``.

    ``ModelManager.apply`` swaps the detector before it activates the model in
    the registry; the detection component's registry check must not run in
    between, or it would swap the old model back for a few seconds.
    """

    def __init__(self, manager: Any, lock: threading.Lock) -> None:
        self.manager = manager
        self.lock = lock

    @property
    def registry(self) -> Any:
        return self.manager.registry

    def apply(self, data: bytes, source: str, signature: bytes | None = None) -> Any:
        with self.lock:
            return self.manager.apply(data, source, signature)


# -- learner -----------------------------------------------------------------------------


class LearnerComponent:
    """The local learner's training thread, with its progress kept across restarts.

    ``w_local`` and ``n_k`` are saved atomically at stop (beside the hash of
    the global model they belong to) and restored at build when the active
    model is still that one, so a restart does not throw away the windows
    trained on since the last round.
    """

    name = "learner"
    order = ORDER_LEARNER

    def __init__(self, learner: Any, liveness: Liveness, state_path: Path, model_sha: str) -> None:
        self.learner = learner
        self.liveness = liveness
        self.state_path = state_path
        self.model_sha = model_sha
        self.restored = False
        self._steps_seen = 0

    def restore(self) -> bool:
        """Load saved progress if it belongs to ``model_sha``; anything else is ignored."""
        try:
            with np.load(self.state_path, allow_pickle=False) as z:
                sha = str(z["sha"])
                w_local = np.asarray(z["w_local"], np.float32)
                w_global = np.asarray(z["w_global"], np.float32)
                n_k = int(z["n_k"])
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_path, exc)
            return False
        lr = self.learner
        if sha != self.model_sha or w_local.shape != lr.w_local.shape:
            return False
        if not np.array_equal(w_global, lr.w_global) or not np.all(np.isfinite(w_local)):
            return False
        lr.w_local = w_local
        lr.n_k = n_k
        self.restored = True
        return True

    def save(self) -> None:
        lr = self.learner
        buf = io.BytesIO()
        np.savez(
            buf,
            sha=np.asarray(self.model_sha),
            w_local=lr.params(),
            w_global=np.asarray(lr.w_global, np.float32),
            n_k=np.asarray(int(lr.n_k)),
        )
        write_atomic(self.state_path, buf.getvalue())

    def start(self) -> None:
        self.learner.start()

    def tick(self) -> None:
        if not self.learner.running:
            return
        steps = int(self.learner.counters["steps"])
        if steps != self._steps_seen:
            self.liveness.progress(self.name, steps - self._steps_seen)
            self._steps_seen = steps
        else:
            self.liveness.idle(self.name, f"{self.learner.pending} windows queued")

    def stop(self) -> None:
        self.learner.stop()
        try:
            self.save()
        except OSError as exc:
            log.error("learner progress not saved: %s", exc)

    def status(self) -> Mapping[str, Any]:
        lr = self.learner
        return {
            "learner": {"n_k": int(lr.n_k), "pending": lr.pending, "restored": self.restored},
            "counters": {f"learn_{k}": int(v) for k, v in lr.counters.items()},
        }


# -- the factory -------------------------------------------------------------------------


def _open_registry(ctx: Context) -> tuple[Any, Any] | None:
    """The registry and its active model, seeded from ``detection.model_path`` if empty."""
    from edgeagent.model.registry import ModelRegistry

    cfg = ctx.config
    registry = ModelRegistry(cfg.agent.state_dir)
    active = registry.active()
    if active is None and cfg.detection.model_path is not None:
        try:
            data = Path(cfg.detection.model_path).read_bytes()
        except OSError as exc:
            raise ModelError(f"detection.model_path {cfg.detection.model_path}: {exc}") from exc
        active = registry.activate(registry.add(data, "config").version, "starting model")
    if active is None:
        return None
    return registry, active


def _transport(ctx: Context, outbox_c: OutboxComponent, sink: OutboxStatusSink) -> Any:
    from edgeagent.ops.pki import TlsFiles
    from edgeagent.transport.mqtt import MqttLink, OutboxForwarder

    cfg = ctx.config
    fed = cfg.federation
    if not fed.tls or fed.ca_file is None or fed.cert_file is None or fed.key_file is None:
        raise TransportError(
            "no_tls",
            "federation needs tls = true with ca_file, cert_file and key_file (boxes use mTLS; "
            "issue them with `edgeagent pki issue <box>`)",
        )
    link = MqttLink(
        cfg.agent.box_id,
        fed.broker_host,
        fed.broker_port,
        TlsFiles(fed.ca_file, fed.cert_file, fed.key_file),
        cfg.agent.fleet,
        identity=cfg.agent.box_id,
        keepalive_s=fed.keepalive_s,
    )
    forwarder = OutboxForwarder(outbox_c.outbox, link)
    comp = TransportComponent(link, forwarder, ctx.liveness, sink)
    ctx.liveness.register(comp.name, cfg.status.stall_after_s)
    return comp


def _federation(ctx: Context, link: SharedLink, learner: Any, manager: Any, sha: str) -> Any:
    """H9's ``FlClient`` on the shared link, or None (logged) without a signing identity."""
    from edgeagent.federation.client import FlClient
    from edgeagent.fl.identity import load_ca, load_identity
    from edgeagent.fl.secagg.client import PrivacyFloor
    from edgeagent.ops.revocation import read_deny_list

    cfg = ctx.config
    fed = cfg.federation
    assert fed.ca_file is not None and fed.cert_file is not None
    try:
        ca = load_ca(fed.ca_file)
        identity = load_identity(fed.cert_file, ca, cfg.agent.box_id, fed.signing_key_file)
        revoked = read_deny_list(fed.revoked_file)
    except PkiError as exc:
        log.error("federated rounds disabled: %s", exc)
        ctx.counters.add("federation_unavailable")
        return None
    # Global models arrive signed; nothing unsigned may replace the running one from now on.
    manager.registry.require_signature = True
    return FlClient(
        cfg.agent.box_id,
        cfg.agent.fleet,
        identity,
        ca,
        learner,
        link,  # type: ignore[arg-type]  # the MqttLink surface FlClient uses
        manager=manager,
        global_sha256=sha,
        min_samples=cfg.learning.min_samples,
        state_dir=cfg.agent.state_dir,
        liveness=ctx.liveness,
        allow_plaintext=fed.allow_plaintext,
        min_group_size=fed.min_group_size,
        # the box's own clip and noise multiplier are floors no SETUP may undercut
        floor=PrivacyFloor(max_clip=fed.clip_norm, min_noise_multiplier=fed.noise_multiplier),
        revoked=revoked,
    )


def daemon_factory(ctx: Context) -> list[Component]:
    """Detection, learner, outbox, transport and federation components for ``ctx.config``.

    Without a model (empty registry, no ``detection.model_path``) the box
    still ingests and reports status, and says why detection is off. Without
    ``federation.enabled`` alerts are stored and queued, to go out once a
    broker is configured.
    """
    from edgeagent.pipeline.detect import Detector, DetectorConfig
    from edgeagent.pipeline.learn import LearnerConfig, LocalLearner
    from edgeagent.pipeline.lifecycle import ModelManager
    from edgeagent.pipeline.windows import Windower
    from edgeagent.transport.outbox import Outbox, OutboxLimits

    cfg = ctx.config
    state = Path(cfg.agent.state_dir)
    fed_on = cfg.federation.enabled
    model = _open_registry(ctx)
    if model is None:
        log.warning(
            "detection is off: no model in %s and no detection.model_path "
            "(add one with `edgeagent model add FILE --activate`)",
            state,
        )
        ctx.counters.add("detection_no_model")
        if not fed_on:
            return []
    comps: list[Component] = []
    limits = OutboxLimits(cfg.outbox.max_messages, cfg.outbox.max_bytes, cfg.outbox.max_age_s)
    outbox_c = OutboxComponent(Outbox.in_state_dir(state, limits))
    comps.append(outbox_c)
    sink = OutboxStatusSink(
        outbox_c, topics.status(cfg.agent.fleet, cfg.agent.box_id), ctx.counters
    )
    transport = None
    if fed_on:
        transport = _transport(ctx, outbox_c, sink)
        comps.append(transport)
        ctx.status_sinks.append(sink)
    if model is None:
        return comps

    registry, active = model
    data = registry.load_bytes(active)
    relay = AlertRelay(
        AlertStore(state),
        outbox_c.outbox,
        topics.alert(cfg.agent.fleet, cfg.agent.box_id),
        cfg.agent.box_id,
        ctx.counters,
    )
    from edgeagent.providers import choose_from_config

    backend = choose_from_config(cfg.detection, state)  # providers + threads sized to the box
    detector = Detector(
        data,
        active.label,
        relay,
        DetectorConfig(
            intra_op_threads=backend.intra_op_threads,
            backend=backend,
            thresholds=dict(cfg.detection.thresholds),
        ),
    )
    if detector.backend is not None:
        log.info("inference backend: %s", detector.backend.reason)
    learner = None
    if cfg.learning.enabled:
        learner = LocalLearner(
            detector.meta.spec,
            registry.load_params(active),
            LearnerConfig(lr=cfg.learning.learning_rate, batch=min(16, cfg.learning.batch_size)),
        )
        # Non-blocking: offer() only queues; training runs on the learner's own thread.
        detector.on_scored = learner.offer
    manager = ModelManager(registry, detector)
    lateness = min(5.0, cfg.windows.length_s)

    def make_windower(patient: str) -> Windower:
        return Windower(cfg.windows.length_s, cfg.windows.hop_s, patient=patient,
                        lateness_s=lateness)  # fmt: skip

    detection = DetectionComponent(
        detector, relay, ctx.patient_of, make_windower, ctx.counters,
        manager=manager, learner=learner,
    )  # fmt: skip
    ctx.pipeline.add_consumer(detection.consume)
    comps.append(detection)
    if learner is not None:
        lc = LearnerComponent(learner, ctx.liveness, state / LEARNER_STATE, active.sha256)
        if lc.restore():
            log.info("learner resumed with n_k=%d", learner.n_k)
        ctx.liveness.register(lc.name, cfg.status.stall_after_s)
        comps.append(lc)
        if transport is not None:
            shared_mgr = SerialManager(manager, detection.model_lock)
            client = _federation(ctx, transport.shared, learner, shared_mgr, active.sha256)
            if client is not None:
                ctx.liveness.register(client.name, cfg.status.stall_after_s)
                comps.append(client)
    return comps


def describe(components: list[Component]) -> list[str]:
    """Names in start order, for logs and tests."""
    return [c.name for c in sorted(components, key=lambda c: getattr(c, "order", 50))]


__all__ = [
    "AlertRelay",
    "DetectionComponent",
    "LearnerComponent",
    "OutboxComponent",
    "OutboxStatusSink",
    "SerialManager",
    "SharedLink",
    "TransportComponent",
    "daemon_factory",
    "describe",
]
