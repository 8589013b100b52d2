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
    33 feedback     clinicians' verdicts (control socket, ward topic) -> labels -> learner
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

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.daemon.components import (
    BlockBus,
    Component,
    Context,
    Counters,
    Factory,
    PipelineComponent,
)
from edgeagent.daemon.detection import (
    LEARNER_STATE,
    DetectionComponent,
    LearnerComponent,
    SerialManager,
)
from edgeagent.daemon.feedback import FeedbackComponent
from edgeagent.daemon.health import Liveness
from edgeagent.daemon.outbound import (
    AlertRelay,
    OutboxComponent,
    OutboxStatusSink,
    SharedLink,
    TransportComponent,
)
from edgeagent.daemon.sdnotify import Notifier
from edgeagent.daemon.sources import ble_factory, serial_factory
from edgeagent.daemon.supervisor import Supervisor
from edgeagent.errors import EdgeAgentError, PkiError, TransportError
from edgeagent.model.registry import ModelRecord, ModelRegistry
from edgeagent.ops.config import Config, LearningSection
from edgeagent.ops.disk import DiskReserve
from edgeagent.pipeline.alerts import AlertStore
from edgeagent.pipeline.detect import AlertSink, Detector, DetectorConfig
from edgeagent.pipeline.learn import LearnerConfig, LocalLearner
from edgeagent.pipeline.lifecycle import ModelManager
from edgeagent.transport import topics

log = logging.getLogger(__name__)

ORDER_FEDERATION = 30


# -- alerts: local store + outbox ------------------------------------------------------


# -- outbox ------------------------------------------------------------------------------


# -- transport ---------------------------------------------------------------------------


# -- detection ---------------------------------------------------------------------------


# -- learner -----------------------------------------------------------------------------


# -- the factory -------------------------------------------------------------------------


#: The learner's batch: the config's ``learning.batch_size`` capped at this. Every wiring of
#: the detector and learner has used the cap since the first release, and the shipped
#: learning rate was chosen with it; lifting it is a measured change, not a refactor.
MAX_LEARN_BATCH = 16


@dataclass
class DetectionStack:
    """The detector, the local learner fed by it, and the model lifecycle around both."""

    detector: Detector
    learner: LocalLearner | None
    manager: ModelManager


def detection_stack(
    registry: ModelRegistry,
    active: ModelRecord,
    sink: AlertSink,
    learning: LearningSection,
    *,
    detector_config: DetectorConfig | None = None,
    featurize: Callable[[Any], np.ndarray] | None = None,
    feature_names: tuple[str, ...] | None = None,
    modality_of: dict[str, str] | None = None,
) -> DetectionStack:
    """The one place the detection pipeline is wired: the daemon, the demo and the lab use it.

    The detector scores windows (``featurize`` turns a window into features; the
    defaults are the agent's own), hands every scored window to the learner's queue
    (non-blocking: training runs on the learner's thread), and the model manager swaps
    and rolls back models on both.
    """
    detector = Detector(
        registry.load_bytes(active),
        active.label,
        sink,
        detector_config,
        feature_names=feature_names,
        featurize=featurize,
        modality_of=modality_of,
    )
    learner = None
    if learning.enabled:
        learner = LocalLearner(
            detector.meta.spec,
            registry.load_params(active),
            LearnerConfig(
                lr=learning.learning_rate, batch=min(MAX_LEARN_BATCH, learning.batch_size)
            ),
            pop=(detector.meta.pop_mu, detector.meta.pop_sigma),
        )
        detector.on_scored = learner.offer
    return DetectionStack(detector, learner, ModelManager(registry, detector))


def _open_registry(ctx: Context) -> tuple[Any, Any, str | None] | None:
    """The registry, the model to run and why it is a fallback (see ``runnable_model``)."""
    from edgeagent.model.registry import ModelRegistry
    from edgeagent.pipeline.lifecycle import runnable_model

    cfg = ctx.config
    registry = ModelRegistry(cfg.agent.state_dir)
    chosen = runnable_model(registry, cfg.detection.model_path)
    if chosen is None:
        return None
    if chosen.fallback is not None:
        ctx.counters.add("model_fallbacks")
        log.error("model fallback: %s", chosen.fallback)
    return registry, chosen.record, chosen.fallback


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
        max_reveal_aborts=fed.max_reveal_aborts,
        reveal_abort_window_s=fed.reveal_abort_window_s,
        # the box's own clip and noise multiplier are floors no SETUP may undercut
        floor=PrivacyFloor(max_clip=fed.clip_norm, min_noise_multiplier=fed.noise_multiplier),
        revoked=revoked,
    )


def _alert_store(state: Path, ctx: Context) -> AlertStore:
    """``alerts.sqlite``, integrity-checked: a corrupt one is moved aside and its rows salvaged."""
    from edgeagent.ops import dbcheck
    from edgeagent.pipeline.alerts import DB_NAME

    path = state / DB_NAME
    bad = None
    if path.exists():
        verdict = dbcheck.check(path)
        if not verdict.ok:
            bad = dbcheck.quarantine(path)
            reason = verdict.reason
    store = AlertStore(path)
    if bad is not None:
        cols = ("id", "patient", "device", "start", "end", "kind", "category", "score",
                "modality", "model", "created", "closed", "sent", "detail")  # fmt: skip
        n = store.restore(dbcheck.read_rows(bad, "alerts", cols))
        ctx.counters.add("alert_store_recovered")
        ctx.liveness.fault("alert_store", f"replaced a corrupt {path.name} ({reason})")
        log.error(
            "alert store: %s was corrupt (%s); moved to %s, started a fresh file, "
            "salvaged %d alert(s)",
            path, reason, bad.name, n,
        )  # fmt: skip
    return store


def _feedback(
    ctx: Context, state: Path, detector: Detector, learner: LocalLearner | None, transport: Any
) -> FeedbackComponent:
    """Clinicians' verdicts as labels: the store beside the alerts, fed by the detector.

    A corrupt ``feedback.sqlite`` is moved aside and a fresh one started (labels are
    worth less than a box that detects). Over MQTT only with the fleet CA, which the
    ward's signatures are checked against.
    """
    from edgeagent.fl.identity import load_ca
    from edgeagent.ops import dbcheck
    from edgeagent.pipeline.feedback import DB_NAME, FeedbackStore

    cfg = ctx.config
    path = state / DB_NAME
    if path.exists():
        verdict = dbcheck.check(path)
        if not verdict.ok:
            bad = dbcheck.quarantine(path)
            ctx.counters.add("feedback_store_recovered")
            log.error("feedback store: %s was corrupt (%s); moved to %s, started a fresh file",
                      path, verdict.reason, bad.name)  # fmt: skip
    served = frozenset(ctx.patient_of.values())
    store = FeedbackStore(
        path, cfg.feedback, classes=lambda: detector.meta.classes, served=lambda: served,
        # labels stop well above the floor where the outbox keeps only alerts
        min_free_bytes=2 * cfg.outbox.min_free_bytes,
    )  # fmt: skip
    link = ca = None
    if transport is not None and cfg.federation.ca_file is not None:
        try:
            ca = load_ca(cfg.federation.ca_file)
            link = transport.shared
        except PkiError as exc:
            ctx.counters.add("feedback_mqtt_unavailable")
            log.error("feedback from the ward system over MQTT is off: %s", exc)
    comp = FeedbackComponent(
        store, learner, ctx.counters, box_id=cfg.agent.box_id, fleet=cfg.agent.fleet,
        link=link, ca=ca,
    )  # fmt: skip
    detector.on_alert_window = comp.keep
    return comp


def check_directories(config: Config) -> list[str]:
    """One line per directory the daemon must write and cannot (empty when all are fine)."""
    from edgeagent.ops.disk import check_writable

    wanted = [
        (Path(config.agent.state_dir), "state directory (agent.state_dir)"),
        (Path(config.control.socket_path).parent, "control socket directory (control.socket_path)"),
    ]
    problems = []
    for path, what in wanted:
        why = check_writable(path, what)
        if why is not None:
            problems.append(why)
    return problems


def daemon_factory(ctx: Context) -> list[Component]:
    """Detection, learner, outbox, transport and federation components for ``ctx.config``.

    Without a model (empty registry, no ``detection.model_path``) the box
    still ingests and reports status, and says why detection is off. Without
    ``federation.enabled`` alerts are stored and queued, to go out once a
    broker is configured.
    """
    from edgeagent.pipeline.windows import Windower
    from edgeagent.providers import choose_from_config
    from edgeagent.transport.outbox import OutboxLimits
    from edgeagent.transport.outbox_recover import open_checked

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
    outbox, recovery = open_checked(state, limits, min_free_bytes=cfg.outbox.min_free_bytes)
    reserve = DiskReserve(state, cfg.outbox.reserve_bytes)
    outbox_c = OutboxComponent(outbox, ctx.liveness, reserve=reserve, recovery=recovery)
    if recovery is not None:
        ctx.counters.add("outbox_recovered")
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

    registry, active, fallback = model
    relay = AlertRelay(
        _alert_store(state, ctx),
        outbox_c.outbox,
        topics.alert(cfg.agent.fleet, cfg.agent.box_id),
        cfg.agent.box_id,
        ctx.counters,
        reserve=reserve,
    )
    relay.outbox_recovery = recovery
    outbox_c.checkpoints.append(relay.checkpoint)
    backend = choose_from_config(cfg.detection, state)  # providers + threads sized to the box
    stack = detection_stack(
        registry,
        active,
        relay,
        cfg.learning,
        detector_config=DetectorConfig(
            intra_op_threads=backend.intra_op_threads,
            backend=backend,
            thresholds=dict(cfg.detection.thresholds),
        ),
    )
    detector, learner, manager = stack.detector, stack.learner, stack.manager
    if detector.backend is not None:
        log.info("inference backend: %s", detector.backend.reason)
    lateness = min(5.0, cfg.windows.length_s)

    def make_windower(patient: str) -> Windower:
        return Windower(cfg.windows.length_s, cfg.windows.hop_s, patient=patient,
                        lateness_s=lateness)  # fmt: skip

    detection = DetectionComponent(
        detector, relay, ctx.patient_of, make_windower, ctx.counters,
        manager=manager, learner=learner, fallback=fallback,
    )  # fmt: skip
    ctx.pipeline.add_consumer(detection.consume)
    comps.append(detection)
    if cfg.feedback.enabled:
        feedback = _feedback(ctx, state, detector, learner, transport)
        # candidates are judged on the held-back share of these verdicts (lifecycle.decide)
        manager.labels = feedback.store
        comps.append(feedback)
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
                detection.learner_follows_registry = False  # it follows the fleet's global
                ctx.liveness.register(client.name, cfg.status.stall_after_s)
                comps.append(client)
    return comps


def describe(components: list[Component]) -> list[str]:
    """Names in start order, for logs and tests."""
    return [c.name for c in sorted(components, key=lambda c: getattr(c, "order", 50))]


#: Every factory of the daemon, in one fixed tuple: sources, then detection and the rest.
FACTORIES: tuple[Factory, ...] = (serial_factory, ble_factory, daemon_factory)


def build_supervisor(config: Config, notifier: Notifier | None = None) -> Supervisor:
    """The daemon as configured: the pipeline, then every factory's components."""
    liveness = Liveness()
    counters = Counters()
    bus = BlockBus(counters=counters)
    pipeline = PipelineComponent(bus, liveness, counters)
    liveness.register(pipeline.name, config.status.stall_after_s)
    ctx = Context(config, liveness, counters, bus, pipeline)
    components: list[Component] = [pipeline]
    for factory in FACTORIES:
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
    problems = check_directories(config)
    if problems:
        for line in problems:
            log.error("cannot start: %s", line)
        notifier = Notifier()
        notifier.status(f"start-up failed: {problems[0]}")
        notifier.close()
        return 1
    try:
        sup = build_supervisor(config)
    except EdgeAgentError as exc:
        log.error("cannot start: %s", exc)
        notifier = Notifier()
        notifier.status(f"start-up failed: {exc}")
        notifier.close()
        return 1
    return sup.run()
