"""The daemon's wiring: alert relay, status via the outbox, learner persistence,
detection from blocks, registry follow-up, and what the factory builds.

Real parts: SQLite stores in a temp state dir, onnxruntime sessions of the
shipped baseline model, the physiology simulator for blocks. The whole
daemon as a subprocess is tested in ``tests/integration/test_daemon_e2e.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edgeagent.daemon.components import BlockBus, Context, Counters, PipelineComponent
from edgeagent.daemon.detection import DetectionComponent, LearnerComponent
from edgeagent.daemon.health import Liveness
from edgeagent.daemon.outbound import AlertRelay, OutboxComponent, OutboxStatusSink, SharedLink
from edgeagent.daemon.wiring import daemon_factory, describe
from edgeagent.errors import TransportError
from edgeagent.model.graph import get_params, set_params, to_bytes
from edgeagent.model.registry import ModelRegistry
from edgeagent.ops.config import parse_config
from edgeagent.pipeline.alerts import Alert, AlertStore
from edgeagent.pipeline.detect import Detector
from edgeagent.pipeline.learn import LocalLearner
from edgeagent.pipeline.windows import Windower
from edgeagent.streams import Gap, SampleBlock, Stream
from edgeagent.transport.outbox import Outbox
from firmware_sim.physiology import Generator, Label, SimConfig, make_patient
from tests.plugins.ops import REPO

MODEL = REPO / "models" / "baseline.onnx"
TOPIC = "edgeagent/v1/f/node/box/alert"


def _relay(state: Path) -> tuple[AlertRelay, Outbox, Counters]:
    ob = Outbox.in_state_dir(state)
    counters = Counters()
    return AlertRelay(AlertStore(state), ob, TOPIC, "box", counters), ob, counters


def _messages(ob: Outbox) -> list[tuple[str, dict[str, Any]]]:
    return [(r.msg_id, json.loads(r.payload)) for r in ob.peek(limit=100)]


def test_status_sink_keeps_only_the_newest_snapshot_retained(tmp_state: Path) -> None:
    box = OutboxComponent(Outbox.in_state_dir(tmp_state))
    sink = OutboxStatusSink(box, "edgeagent/v1/f/node/box/status", Counters())
    sink({"box_id": "box", "state": "running", "time": 1.0})
    sink({"box_id": "box", "state": "running", "time": 2.0})
    rows = box.outbox.peek(limit=10)
    assert len(rows) == 1 and rows[0].retain and rows[0].kind == "status"
    body = json.loads(rows[0].payload)
    assert body["t"] == 2.0 and body["state"] == "online" and body["daemon_state"] == "running"
    assert box.status()["outbox"].depth == 1
    box.stop()
    sink({"box_id": "box", "state": "stopped", "time": 3.0})  # after close: skipped, no error
    assert sink.queued == 2 and box.status() == {}


def test_shared_link_keeps_lifecycle_with_the_owner() -> None:
    class Link:
        connected = True
        on_message = None

        def __init__(self) -> None:
            self.calls: list[str] = []

        def connect(self, **_k: Any) -> None:
            self.calls.append("connect")

        def close(self, **_k: Any) -> None:
            self.calls.append("close")

        def publish(self, topic: str, payload: bytes) -> str:
            return f"pub {topic}"

    link = Link()
    shared = SharedLink(link)
    shared.on_message = print
    shared.connect()
    shared.close()
    assert link.on_message is print and link.calls == []
    assert shared.publish("t", b"") == "pub t" and shared.connected


def _learner(data: bytes) -> LocalLearner:
    det = Detector(data, "v", _NullSink())
    return LocalLearner(det.meta.spec, get_params(onnx.load_from_string(data)))


class _NullSink:
    def add(self, a: Alert) -> str:
        return a.id

    def extend(self, alert_id: str, end: float, score: float, closed: bool = False) -> None:
        pass


def test_learner_progress_survives_a_restart_only_for_the_same_model(tmp_state: Path) -> None:
    data = MODEL.read_bytes()
    path = tmp_state / "learner_state.npz"
    lr = _learner(data)
    lr.w_local = lr.w_local + np.float32(0.01)
    lr.n_k = 42
    LearnerComponent(lr, Liveness(), path, "sha-a").save()

    again = _learner(data)
    comp = LearnerComponent(again, Liveness(), path, "sha-a")
    assert comp.restore() and again.n_k == 42
    np.testing.assert_array_equal(again.delta(), lr.delta())

    other = _learner(data)
    assert not LearnerComponent(other, Liveness(), path, "sha-b").restore()
    assert other.n_k == 0
    path.write_bytes(b"not a zip")
    assert not LearnerComponent(_learner(data), Liveness(), path, "sha-a").restore()


def _blocks(device: str, seconds: int, kind: str = "fall") -> list[SampleBlock]:
    gen = Generator(make_patient(3, seed=1), SimConfig(episodes=(Label(40.0, 70.0, kind),)))
    out = []
    for i in range(seconds):
        for name, (t, v) in gen.advance(1.0).streams.items():
            if len(t):
                out.append(SampleBlock(device, Stream(name), t, v, i))
    return out


def _detection(tmp_state: Path) -> tuple[DetectionComponent, Outbox, ModelRegistry, Counters]:
    reg = ModelRegistry(tmp_state)
    rec = reg.activate(reg.add(MODEL.read_bytes(), "test").version, "test")
    relay, ob, counters = _relay(tmp_state)
    det = Detector(reg.load_bytes(rec), rec.label, relay)

    from edgeagent.pipeline.lifecycle import ModelManager

    comp = DetectionComponent(
        det,
        relay,
        {"textile-01": "p3"},
        lambda p: Windower(10.0, 2.0, patient=p),
        counters,
        manager=ModelManager(reg, det),
        clock=lambda: 0.0,  # simulated time starts at 0: windows close by watermark
    )
    return comp, ob, reg, counters


def test_detection_turns_blocks_into_a_queued_alert(tmp_state: Path) -> None:
    comp, ob, _reg, _c = _detection(tmp_state)
    comp.start()
    for b in _blocks("textile-01", 100):
        comp.consume(b)
    comp.consume(SampleBlock("stranger", Stream.HR, np.array([1.0]), np.ones((1, 1), "f4"), 0))
    comp.consume(Gap("stranger", None, 1.0, 2.0, "link"))
    comp.tick()
    st = comp.status()
    assert st["counters"]["detection_windows"] >= 40
    assert st["counters"]["detection_unknown_device"] == 2
    assert st["detection"]["patients"] == ["p3"]
    opened = [b for _m, b in _messages(ob) if b["event"] == "opened"]
    assert opened and opened[0]["category"] == "clinical" and opened[0]["patient"] == "p3"
    assert opened[0]["end"] >= 30.0 and opened[0]["start"] <= 80.0  # around the scripted fall
    comp.stop()


def test_detection_follows_a_model_activated_in_the_registry(tmp_state: Path) -> None:
    comp, _ob, reg, _c = _detection(tmp_state)
    first = comp.detector.model_label
    m = onnx.load_from_string(MODEL.read_bytes())
    other = to_bytes(set_params(m, get_params(m) * np.float32(0.999)))
    rec = reg.activate(reg.add(other, "cli").version, "operator")  # `edgeagent model activate`
    comp.check_registry()
    assert comp.detector.model_label == rec.label != first
    assert comp.status()["model_version"] == rec.label
    comp.stop()


def _ctx(tmp_state: Path, short: Path, **sections: Any) -> Context:
    cfg = parse_config(
        {
            "agent": {"box_id": "box-w", "state_dir": str(tmp_state)},
            "control": {"socket_path": str(short / "c.sock")},
            **sections,
        }
    )
    live, counters = Liveness(), Counters()
    bus = BlockBus(counters=counters)
    return Context(cfg, live, counters, bus, PipelineComponent(bus, live, counters))


def test_factory_builds_what_the_config_asks_for(tmp_state: Path, short_dir: Path) -> None:
    ctx = _ctx(tmp_state, short_dir)
    assert daemon_factory(ctx) == []  # no model, no broker: ingestion only
    assert ctx.counters.snapshot() == {"detection_no_model": 1}

    ctx = _ctx(tmp_state, short_dir, detection={"model_path": str(MODEL)})
    comps = daemon_factory(ctx)
    assert describe(comps) == ["outbox", "feedback", "detection", "learner"]
    assert ctx.pipeline.consumers and not ctx.status_sinks
    detection = next(c for c in comps if isinstance(c, DetectionComponent))
    fb = next(c for c in comps if c.name == "feedback")
    # the detector hands alert windows to the store; candidates are judged on its labels
    assert detection.detector.on_alert_window == fb.keep
    assert detection.manager.labels is fb.store
    for c in reversed(comps):
        c.stop()

    ctx = _ctx(
        tmp_state,
        short_dir,
        # threads 0 = size to the box
        detection={"model_path": str(MODEL), "threads": 0, "thresholds": {"clinical": 0.7}},
        learning={"enabled": False},
        feedback={"enabled": False},
    )
    comps = daemon_factory(ctx)
    assert describe(comps) == ["outbox", "detection"]
    det = next(c for c in comps if isinstance(c, DetectionComponent)).detector
    assert det.config.intra_op_threads >= 1
    assert det.calibration("p").thresholds.clinical == 0.7
    for c in reversed(comps):
        c.stop()


def test_factory_refuses_federation_without_mtls(tmp_state: Path, short_dir: Path) -> None:
    ctx = _ctx(
        tmp_state,
        short_dir,
        federation={"enabled": True, "tls": False},
    )
    with pytest.raises(TransportError, match="mTLS"):
        daemon_factory(ctx)


def _other_model(scale: float = 0.999) -> bytes:
    m = onnx.load_from_string(MODEL.read_bytes())
    return to_bytes(set_params(m, get_params(m) * np.float32(scale)))


def test_a_corrupt_active_model_falls_back_to_the_last_good_one(
    tmp_state: Path, short_dir: Path
) -> None:
    """The active model no longer matches its hash: the daemon runs the last good model,
    activates it in the registry, raises a system alert and reports itself degraded."""
    reg = ModelRegistry(tmp_state)
    good = reg.activate(reg.add(MODEL.read_bytes(), "test").version, "test")
    bad = reg.activate(reg.add(_other_model(), "test").version, "newer")
    bad.file.write_bytes(bad.file.read_bytes() + b"tampered")
    ctx = _ctx(tmp_state, short_dir)
    comps = daemon_factory(ctx)
    try:
        det = next(c for c in comps if isinstance(c, DetectionComponent))
        assert det.detector.model_label == good.label
        assert reg.active() == good
        assert ctx.counters.snapshot()["model_fallbacks"] == 1
        det.start()
        status = det.status()
        assert (
            bad.label in status["degraded"][0]
            and "does not match its hash" in status["degraded"][0]
        )
        outbox = next(c for c in comps if isinstance(c, OutboxComponent)).outbox
        alerts = [json.loads(r.payload) for r in outbox.peek(10) if r.kind == "alert"]
        assert [(a["kind"], a["category"], a["event"]) for a in alerts] == [
            ("model_fallback", "system", "opened"), ("model_fallback", "system", "closed")
        ]  # fmt: skip
        assert bad.label in alerts[0]["detail"]["reason"]
    finally:
        for c in reversed(comps):
            c.stop()


def test_a_corrupt_only_model_falls_back_to_the_shipped_baseline(
    tmp_state: Path, short_dir: Path
) -> None:
    from edgeagent.pipeline.lifecycle import SHIPPED_BASELINE

    assert SHIPPED_BASELINE.read_bytes() == MODEL.read_bytes()  # the package ships models/'s
    reg = ModelRegistry(tmp_state)
    only = reg.activate(reg.add(_other_model(), "test").version, "test")
    only.file.write_bytes(b"not a model")
    comps = daemon_factory(_ctx(tmp_state, short_dir))
    try:
        det = next(c for c in comps if isinstance(c, DetectionComponent))
        active = reg.active()
        assert active is not None and active.source == "fallback:baseline.onnx"
        assert det.detector.model_label == active.label and det.fallback is not None
    finally:
        for c in reversed(comps):
            c.stop()


def test_run_and_doctor_with_a_corrupt_active_model(
    tmp_state: Path, short_dir: Path, notify_socket: Any
) -> None:
    """``edgeagent doctor`` fails the model the daemon would load (not model_path) and names
    the fallback; ``edgeagent run`` starts on the fallback and keeps running."""
    import os
    import signal
    import subprocess

    from tests.plugins.ops import CLI, write_toml

    reg = ModelRegistry(tmp_state)
    good = reg.activate(reg.add(MODEL.read_bytes(), "test").version, "test")
    bad = reg.activate(reg.add(_other_model(), "test").version, "newer")
    bad.file.write_bytes(bad.file.read_bytes() + b"tampered")
    cfg = write_toml(
        short_dir / "c.toml",
        {
            "agent": {"box_id": "box-x", "state_dir": str(tmp_state)},
            "control": {"socket_path": str(short_dir / "c.sock")},
            "detection": {"model_path": str(MODEL)},
        },
    )
    doc = subprocess.run([*CLI, "doctor", "-c", str(cfg), "--json"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    checks = [c for c in json.loads(doc.stdout)["checks"] if c["name"] == "model"]
    assert checks[0]["status"] == "fail", checks
    assert bad.label in checks[0]["detail"] and good.label in checks[0]["detail"]
    assert reg.active() == bad  # doctor changes nothing

    env = dict(os.environ, NOTIFY_SOCKET=str(notify_socket.path))
    proc = subprocess.Popen([*CLI, "run", "--config", str(cfg)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        notify_socket.wait_for("READY", "1", timeout=20.0)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "model fallback" in out and good.label in out and "Traceback" not in out
    assert reg.active() == good


def test_every_model_change_restarts_the_learner(tmp_state: Path, short_dir: Path) -> None:
    """A rollback swaps the detector inside the model manager; the learner must restart
    too (n_k 0, outlier history gone), as it does when the registry changes."""
    ctx = _ctx(tmp_state, short_dir, detection={"model_path": str(MODEL)})
    comps = daemon_factory(ctx)
    try:
        det = next(c for c in comps if isinstance(c, DetectionComponent))
        learner, mgr = det.learner, det.manager
        first = mgr.registry.active()
        other = mgr.registry.add(_other_model(0.9), "test")
        mgr.registry.activate(other.version, "operator")
        det.check_registry()  # follows the CLI's activation
        assert det.detector.model_label == other.label
        np.testing.assert_array_equal(learner.w_global, mgr.registry.load_params(other))
        learner.n_k = 7
        learner._recent_err.extend([0.01] * 32)
        mgr.rollback("worse on this box")
        assert det.detector.model_label == first.label
        assert learner.n_k == 0 and len(learner._recent_err) == 0
        np.testing.assert_array_equal(learner.w_global, mgr.registry.load_params(first))
        assert ctx.counters.snapshot()["learner_restarts"] == 2

        det.learner_follows_registry = False  # a box in federated rounds: the fleet's global
        fleet_global = learner.w_global.copy() * np.float32(1.01)
        learner.reset_global(fleet_global)
        learner.n_k = 3
        det._on_model_change(first, "rolled back")
        assert learner.n_k == 0
        np.testing.assert_array_equal(learner.w_global, fleet_global)
    finally:
        for c in reversed(comps):
            c.stop()
