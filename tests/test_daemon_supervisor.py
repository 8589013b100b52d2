"""Supervisor: ordered start/stop, failure handling, liveness-gated watchdog, status.

The supervisor runs in-process on a helper thread with real components
(small classes below, a real bus and pipeline thread, a real serial source on
a pty) and a real notify socket; ``tests/test_cli_ops.py`` runs the daemon
as a subprocess and signals it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeagent.daemon.components import BlockBus, Counters, MqttStatusSink, PipelineComponent
from edgeagent.daemon.control import request
from edgeagent.daemon.health import Liveness
from edgeagent.daemon.sdnotify import Notifier
from edgeagent.daemon.supervisor import Supervisor
from edgeagent.daemon.wiring import build_supervisor
from edgeagent.ops.config import Config, parse_config
from edgeagent.streams import SampleBlock, Stream
from tests.plugins.ops import NotifyListener


class Recorder:
    """A component that logs its lifecycle into a shared list."""

    def __init__(self, name: str, log: list[str], order: int = 50) -> None:
        self.name = name
        self.log = log
        self.order = order
        self.extra: dict[str, Any] = {}

    def start(self) -> None:
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")

    def status(self) -> Mapping[str, Any]:
        return {"counters": {f"{self.name}_n": 1}, **self.extra}


class FailsToStart(Recorder):
    def start(self) -> None:
        raise RuntimeError("port busy")


class HangsOnStop(Recorder):
    def stop(self) -> None:
        time.sleep(30)


class Worker:
    """A component with a real thread that reports progress until told to hang."""

    def __init__(self, liveness: Liveness, stall_after_s: float) -> None:
        self.name = "worker"
        self.liveness = liveness
        self.hang = threading.Event()
        self._stop = threading.Event()
        liveness.register(self.name, stall_after_s)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if not self.hang.is_set():
                self.liveness.progress(self.name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def status(self) -> Mapping[str, Any]:
        return {"hang": self.hang.is_set()}


def _config(tmp_state: Path, short_dir: Path, **status: float) -> Config:
    return parse_config(
        {
            "agent": {"box_id": "box-t", "state_dir": str(tmp_state)},
            "windows": {"length_s": 1.0, "hop_s": 0.2},
            "status": {"interval_s": 1.0, "stall_after_s": 0.5, **status},
            "control": {"socket_path": str(short_dir / "ctl.sock")},
        }
    )


class Running:
    """Runs a supervisor on a helper thread; ``finish()`` stops it and returns the exit code."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.sup.run()

    def finish(self, timeout: float = 10.0) -> int | None:
        self.sup.request_stop("test")
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "supervisor did not stop"
        return self.code


@pytest.fixture
def run_sup() -> Iterator[Callable[[Supervisor], Running]]:
    started: list[Running] = []

    def make(sup: Supervisor) -> Running:
        r = Running(sup)
        started.append(r)
        return r

    yield make
    for r in started:
        if r.thread.is_alive():
            r.finish()


def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_start_in_order_stop_in_reverse_with_notifications(
    tmp_state: Path,
    short_dir: Path,
    notify_socket: NotifyListener,
    run_sup: Callable[[Supervisor], Running],
) -> None:
    log: list[str] = []
    comps = [Recorder("source", log, 60), Recorder("sink", log, 20), Recorder("pipe", log, 40)]
    sup = Supervisor(
        _config(tmp_state, short_dir), comps, notifier=Notifier(str(notify_socket.path))
    )
    r = run_sup(sup)
    ready = notify_socket.wait_for("READY", "1")
    assert ready["STATUS"] == "running 3 components"
    assert log == ["start sink", "start pipe", "start source"]
    assert r.finish() == 0
    assert log[3:] == ["stop source", "stop pipe", "stop sink"]
    notify_socket.wait_for("STOPPING", "1")
    assert not (short_dir / "ctl.sock").exists()
    saved = json.loads((tmp_state / "status.json").read_text())
    assert saved["state"] == "stopped" and saved["box_id"] == "box-t"
    assert saved["counters"]["source_n"] == 1


def test_start_failure_stops_what_started_and_never_reports_ready(
    tmp_state: Path, short_dir: Path, notify_socket: NotifyListener
) -> None:
    log: list[str] = []
    comps = [Recorder("a", log), FailsToStart("b", log), Recorder("c", log)]
    sup = Supervisor(
        _config(tmp_state, short_dir), comps, notifier=Notifier(str(notify_socket.path))
    )
    assert sup.run() == 1
    assert log == ["start a", "stop a"]
    msgs = notify_socket.drain(0.2)
    assert not any("READY" in m for m in msgs)
    assert any("port busy" in m.get("STATUS", "") for m in msgs)


def test_a_hung_stop_is_abandoned_in_bounded_time(
    tmp_state: Path, short_dir: Path, run_sup: Callable[[Supervisor], Running]
) -> None:
    log: list[str] = []
    comps = [Recorder("a", log), HangsOnStop("b", log), Recorder("c", log)]
    sup = Supervisor(_config(tmp_state, short_dir), comps, stop_timeout_s=0.3, control=False)
    r = run_sup(sup)
    _wait(lambda: sup.state == "running")
    t0 = time.monotonic()
    assert r.finish() == 1  # not a clean stop: systemd should record it
    assert time.monotonic() - t0 < 3
    assert log[-2:] == ["stop c", "stop a"]


def test_watchdog_pings_only_while_alive(
    tmp_state: Path,
    short_dir: Path,
    notify_socket: NotifyListener,
    monkeypatch: pytest.MonkeyPatch,
    run_sup: Callable[[Supervisor], Running],
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    liveness = Liveness()
    worker = Worker(liveness, stall_after_s=0.4)
    sup = Supervisor(
        _config(tmp_state, short_dir),
        [worker],
        notifier=Notifier(str(notify_socket.path)),
        liveness=liveness,
        control=False,
    )
    r = run_sup(sup)
    notify_socket.wait_for("READY", "1")
    _wait(lambda: sup.watchdog_pings >= 5)
    notify_socket.wait_for("WATCHDOG", "1")

    worker.hang.set()  # the worker's thread is wedged: no progress, no idle report
    notify_socket.wait_for("STATUS", "stalled: worker")
    pings_at_stall = sup.watchdog_pings
    time.sleep(0.6)
    assert sup.watchdog_pings == pings_at_stall
    assert sup.watchdog_withheld >= 3

    worker.hang.clear()  # it recovers: pings resume
    _wait(lambda: sup.watchdog_pings > pings_at_stall)
    assert r.finish() == 0


def _block(n: int = 10) -> SampleBlock:
    t = np.arange(n, dtype=np.float64) / 250
    return SampleBlock("dev", Stream.ECG, t, np.zeros((n, 1), np.float32))


def test_pipeline_backlog_without_progress_stalls_and_recovers() -> None:
    liveness = Liveness()
    counters = Counters()
    bus = BlockBus(maxsize=8, counters=counters)
    pipe = PipelineComponent(bus, liveness, counters)
    liveness.register(pipe.name, 0.3)
    gate = threading.Event()
    seen: list[Any] = []

    def slow_consumer(item: Any) -> None:
        gate.wait(10)
        seen.append(item)

    pipe.add_consumer(slow_consumer)
    pipe.start()
    try:
        for _ in range(20):
            bus.put(_block())
        _wait(lambda: not liveness.check().ok)  # consumer wedged with a backlog
        assert liveness.check().stalled == ["pipeline"]
        assert counters.snapshot()["bus_dropped"] >= 20 - 8 - 1  # oldest dropped, counted
        gate.set()
        _wait(lambda: bus.depth() == 0 and liveness.check().ok)
    finally:
        gate.set()
        pipe.stop()
    assert counters.snapshot()["bus_in"] == 20
    assert len(seen) + counters.snapshot()["bus_dropped"] == 20


def test_a_crashing_consumer_is_counted_not_fatal() -> None:
    liveness = Liveness()
    counters = Counters()
    bus = BlockBus(counters=counters)
    pipe = PipelineComponent(bus, liveness, counters)
    liveness.register(pipe.name, 5)
    good: list[Any] = []
    pipe.add_consumer(lambda _i: 1 / 0)
    pipe.add_consumer(good.append)
    pipe.start()
    try:
        for _ in range(3):
            bus.put(_block())
        _wait(lambda: len(good) == 3)
    finally:
        pipe.stop()
    assert pipe.status()["counters"]["pipeline_consumer_errors"] == 3


def test_status_over_control_socket_and_sinks(
    tmp_state: Path, short_dir: Path, run_sup: Callable[[Supervisor], Running]
) -> None:
    log: list[str] = []
    comp = Recorder("tx", log)
    comp.extra = {
        "outbox": {"depth": 3, "dropped": 1},
        "model_version": "v7",
        "last_round": 12,
        "links": {"t1": {"kind": "serial", "state": "open", "counters": {"frames_ok": 9}}},
    }
    sup = Supervisor(_config(tmp_state, short_dir), [comp])
    published: list[dict[str, Any]] = []
    sup.status_sinks.append(published.append)
    sup.status_sinks.append(lambda _s: 1 / 0)  # a broken sink must not matter
    r = run_sup(sup)
    _wait(lambda: sup.state == "running")
    snap = request(short_dir / "ctl.sock", "status")
    assert snap["state"] == "running"
    assert snap["outbox"] == {"depth": 3, "bytes": 0, "dropped": 1, "oldest_age_s": None}
    assert snap["model_version"] == "v7" and snap["last_round"] == 12
    assert snap["links"]["t1"]["counters"]["frames_ok"] == 9
    assert snap["process"]["rss_bytes"] > 0
    counters = request(short_dir / "ctl.sock", "counters")
    assert counters["tx_n"] == 1
    _wait(lambda: len(published) >= 1)
    assert r.finish() == 0
    assert published[-1]["state"] == "stopped"
    assert sup.counters.snapshot()["status_sink_errors"] >= 1


def test_configured_serial_device_flows_into_the_pipeline(
    tmp_state: Path,
    short_dir: Path,
    serial_link: Path,
    pty_device: Callable[..., Any],
    run_sup: Callable[[Supervisor], Running],
) -> None:
    """A real pty device configured under [[devices.serial]] reaches the pipeline."""
    pty_device()
    cfg = parse_config(
        {
            "agent": {"box_id": "box-s", "state_dir": str(tmp_state)},
            "devices": {
                "serial": [{"port": str(serial_link), "device_id": "tex-1", "patient": "p1"}]
            },
            "control": {"socket_path": str(short_dir / "ctl.sock")},
        }
    )
    sup = build_supervisor(cfg)
    assert [c.name for c in sup.components] == ["pipeline", "serial:tex-1"]
    r = run_sup(sup)

    def flowing() -> bool:
        snap = sup.snapshot()
        link = snap["links"].get("tex-1", {})
        return (
            link.get("state") == "open"
            and link["counters"]["samples_ok"] > 0
            and snap["counters"]["pipeline_processed"] > 0
        )

    _wait(flowing, timeout=15)
    report = sup.liveness.check()
    assert report.ok
    assert {c.name for c in report.components} == {"pipeline", "serial:tex-1"}
    assert r.finish() == 0


def test_mqtt_status_sink_publishes_retained_snapshot(
    tmp_state: Path,
    short_dir: Path,
    pki: Any,
    mosquitto_broker: Any,
    run_sup: Callable[[Supervisor], Running],
) -> None:
    """Through the transport's real MqttLink and a real broker, read back by the aggregator."""
    from edgeagent.transport import topics
    from edgeagent.transport.mqtt import MqttLink
    from tests.plugins.mqtt import TEST_FLEET

    box = MqttLink(
        "box-a", mosquitto_broker.host, mosquitto_broker.port, pki.client_files("box-a"), TEST_FLEET
    )
    got: list[Any] = []
    arrived = threading.Event()

    def on_message(m: Any) -> None:
        body = json.loads(m.payload)
        if "daemon_state" in body:
            got.append((m, body))
            arrived.set()

    agg = MqttLink(
        "aggregator",
        mosquitto_broker.host,
        mosquitto_broker.port,
        pki.client_files("aggregator"),
        TEST_FLEET,
        status=False,
        on_message=on_message,
    )
    sink = MqttStatusSink(box)
    sink({"state": "running"})  # not connected yet: skipped, not queued
    assert sink.skipped == 1
    box.connect()
    try:
        cfg = parse_config(
            {
                "agent": {"box_id": "box-a", "fleet": TEST_FLEET, "state_dir": str(tmp_state)},
                "control": {"socket_path": str(short_dir / "ctl.sock")},
            }
        )
        sup = Supervisor(cfg, [], control=False)
        sup.status_sinks.append(sink)
        r = run_sup(sup)
        _wait(lambda: sink.published >= 1)
        agg.connect()
        agg.subscribe(topics.status(TEST_FLEET, "box-a")).wait(5)
        assert arrived.wait(10), "no retained status delivered"
        msg, body = got[0]
        assert msg.topic == topics.status(TEST_FLEET, "box-a") and msg.retain
        assert body["id"] == "box-a" and body["state"] == "online"
        assert body["daemon_state"] == "running" and body["schema"] == 1
        assert r.finish() == 0
    finally:
        agg.close()
        box.close()


def test_configured_ble_wearable_flows_with_device_ids(
    tmp_state: Path,
    short_dir: Path,
    bluez_sim: Any,
    run_sup: Callable[[Supervisor], Running],
) -> None:
    """bleak's real BlueZ backend against the simulator on a private bus, via the config."""
    from firmware_sim.bluez import CHEST_STRAP, Peripheral

    strap = "AA:00:00:00:00:01"
    bluez_sim.call(bluez_sim.sim.add, Peripheral(strap, "Polar H10 S1", CHEST_STRAP))
    bluez_sim.call(bluez_sim.sim.add, Peripheral("AA:00:00:00:00:09", "Other", CHEST_STRAP))
    cfg = parse_config(
        {
            "agent": {"box_id": "box-b", "state_dir": str(tmp_state)},
            "devices": {
                "ble": {
                    "enabled": True,
                    "scan_timeout_s": 0.5,
                    "name_prefixes": ["Polar"],
                    "device": [{"address": strap, "device_id": "chest-01", "patient": "p1"}],
                }
            },
            "control": {"socket_path": str(short_dir / "ctl.sock")},
        }
    )
    sup = build_supervisor(cfg)
    pipeline = sup.components[0]
    assert isinstance(pipeline, PipelineComponent)
    devices: set[str] = set()
    pipeline.add_consumer(lambda item: devices.add(item.device))
    r = run_sup(sup)

    def streaming() -> bool:
        link = sup.snapshot()["links"].get("chest-01", {})
        return link.get("state") == "streaming" and link["counters"]["samples_ok"] > 0

    _wait(streaming, timeout=20)
    _wait(lambda: bool(devices))
    assert devices == {"chest-01"}  # relabelled from the address; the other device filtered
    assert sup.liveness.check().ok
    assert r.finish() == 0


def test_total_stop_time_is_budgeted(
    tmp_state: Path, short_dir: Path, run_sup: Callable[[Supervisor], Running]
) -> None:
    """Several hung stops share one budget, so the daemon exits before TimeoutStopSec."""
    log: list[str] = []
    comps = [HangsOnStop(f"h{i}", log) for i in range(4)] + [Recorder("first", log)]
    sup = Supervisor(
        _config(tmp_state, short_dir), comps, stop_timeout_s=5, stop_budget_s=0.5, control=False
    )
    r = run_sup(sup)
    _wait(lambda: sup.state == "running")
    t0 = time.monotonic()
    assert r.finish() == 1
    assert time.monotonic() - t0 < 2.5
    assert "stop first" in log
    assert json.loads((tmp_state / "status.json").read_text())["state"] == "stopped"
