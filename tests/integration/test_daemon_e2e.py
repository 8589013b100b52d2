"""The whole box as systemd runs it: ``edgeagent run --config`` in a subprocess.

Real parts only: a simulated textile wearable on a real pty (firmware_sim,
physiology with a scripted fall), the shipped baseline ONNX model, a real
Mosquitto broker with mTLS and the shipped ACL, and an aggregator-identity
subscriber. Three daemon runs on one state directory:

1. broker up: the fall becomes an alert that reaches the subscriber over
   MQTT, the retained status is the full snapshot, SIGTERM exits 0 with the
   outbox drained;
2. broker down: a second fall is stored and queued; SIGTERM exits 0 with the
   alert persisted in the outbox (nothing lost);
3. broker back: the restarted daemon delivers the queued alert and empties
   the outbox.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message, MqttLink
from edgelab.broker import Broker
from firmware_sim.physiology import Generator, Label, SimConfig, make_patient
from firmware_sim.serialdev import PtyDevice
from tests.plugins.mqtt import TEST_FLEET
from tests.plugins.ops import CLI, REPO, NotifyListener, write_toml

BOX = "box-a"
DEVICE = "textile-01"
PATIENT = "p3"
MODEL = REPO / "models" / "baseline.onnx"


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Subscriber:
    """The fleet side: an aggregator-identity client collecting alerts and statuses."""

    def __init__(self, pki: Pki, broker: Broker) -> None:
        self.lock = threading.Lock()
        self.alerts: dict[str, dict[str, Any]] = {}  # msg-id -> body (receivers dedupe)
        self.statuses: list[tuple[bool, dict[str, Any]]] = []
        self.link = MqttLink(
            "fleet-watch",
            broker.host,
            broker.port,
            pki.client_files("aggregator"),
            TEST_FLEET,
            status=False,
            on_message=self._on_message,
        )

    def _on_message(self, m: Message) -> None:
        body = json.loads(m.payload)
        with self.lock:
            if m.topic == topics.alert(TEST_FLEET, BOX):
                self.alerts[m.msg_id or body["id"]] = body
            elif m.topic == topics.status(TEST_FLEET, BOX):
                self.statuses.append((m.retain, body))

    def opened(self) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.alerts.values() if a["event"] == "opened"]


def _device(link: Path, seed: int) -> PtyDevice:
    """A textile wearable whose patient falls 40-70 s into its recording (fast mode)."""
    gen = Generator(make_patient(3, seed=seed), SimConfig(episodes=(Label(40.0, 70.0, "fall"),)))
    return PtyDevice(link, gen, device_id=DEVICE, seed=seed, duration_s=110.0).start()


def _start(cfg: Path, notify: NotifyListener) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="5000000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        notify.received.clear()
        notify.wait_for("READY", "1", timeout=30.0)
    except AssertionError:
        proc.kill()
        raise AssertionError(f"daemon not ready: {proc.communicate()[0][-3000:]}") from None
    return proc


def _sigterm(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str]:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out


def _rows(state: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(state / "outbox.sqlite3" if "messages" in sql else state / "alerts.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _status(state: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_alert_over_mqtt_retained_status_clean_stop_and_resume(
    pki: Pki,
    mosquitto_broker: Broker,
    tmp_state: Path,
    tmp_path: Path,
    short_dir: Path,
    notify_socket: NotifyListener,
    procs: list[subprocess.Popen[str]],
) -> None:
    port = tmp_path / "ttyTEXTILE0"
    files = pki.client_files(BOX)
    cfg = write_toml(
        tmp_path / "config.toml",
        {
            "agent": {"box_id": BOX, "fleet": TEST_FLEET, "state_dir": str(tmp_state)},
            "devices": {"serial": [{"port": str(port), "device_id": DEVICE, "patient": PATIENT}]},
            "detection": {"model_path": str(MODEL)},
            "learning": {"min_samples": 10},
            "federation": {
                "enabled": True,
                "broker_host": mosquitto_broker.host,
                "broker_port": mosquitto_broker.port,
                "ca_file": str(files.ca),
                "cert_file": str(files.cert),
                "key_file": str(files.key),
            },
            "status": {"interval_s": 1.0, "stall_after_s": 10.0},
            "control": {"socket_path": str(short_dir / "ctl.sock")},
        },
    )
    sub = Subscriber(pki, mosquitto_broker)
    sub.link.connect()
    try:
        sub.link.subscribe(topics.node_filter(TEST_FLEET, "alert")).wait(5)

        # -- run 1: broker up ---------------------------------------------------------------
        dev = _device(port, seed=1)
        procs.append(proc := _start(cfg, notify_socket))
        _wait(lambda: bool(sub.opened()), 40, "an alert over MQTT")
        alert = sub.opened()[0]
        assert alert["category"] == "clinical" and alert["patient"] == PATIENT
        assert alert["box_id"] == BOX and alert["device"] == DEVICE
        assert alert["model"].startswith("v1-")

        # A late subscriber gets the retained status: the full snapshot, not just presence.
        sub.link.subscribe(topics.status(TEST_FLEET, BOX)).wait(5)

        def full_status() -> bool:
            with sub.lock:
                return any("links" in b and b.get("state") == "online" for _r, b in sub.statuses)

        _wait(full_status, 15, "a retained full status snapshot")
        with sub.lock:
            assert any(r and "links" in b for r, b in sub.statuses), "status is not retained"

        def scored_status() -> dict[str, Any] | None:
            with sub.lock:
                for _r, b in reversed(sub.statuses):
                    if b.get("counters", {}).get("detection_windows", 0) > 0:
                        return b
            return None

        _wait(lambda: scored_status() is not None, 10, "a status after scored windows")
        snap = scored_status()
        assert snap is not None
        assert snap["model_version"] == alert["model"]
        assert snap["links"][DEVICE]["state"] in ("open", "connecting", "backoff")
        for key in ("version", "uptime_s", "outbox", "counters", "process", "last_round"):
            assert key in snap
        assert snap["process"]["rss_bytes"] > 0
        watched = {c["name"] for c in snap["liveness"]["components"]}
        assert watched == {"pipeline", "transport", "learner", "federation", f"serial:{DEVICE}"}
        assert snap["counters"]["detection_windows"] > 0
        assert snap["last_round"] == 0  # the federated client runs (no round joined yet)
        assert snap["liveness"]["ok"] and snap["counters"]["watchdog_withheld"] == 0, (
            snap["liveness"],
            [b.get("liveness", {}).get("summary") for _r, b in sub.statuses],
        )
        assert snap["counters"]["watchdog_pings"] > 0  # WATCHDOG_USEC is set: pings gated on it
        parts = snap["components"]
        assert parts["transport"]["transport"]["connected"] is True
        assert parts["detection"]["detection"]["patients"] == [PATIENT]
        assert "n_k" in parts["learner"]["learner"] and "rounds" in parts["federation"]
        assert 0 < snap["counters"]["learn_offered"] <= snap["counters"]["detection_scored"]

        # A nurse dismisses the alert through the running daemon's control socket: the
        # windows the daemon kept behind it become labelled examples.
        args = ["alerts", "ack", alert["id"][:12], "--false", "-c", str(cfg), "--json"]
        ack = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
        assert ack.returncode == 0, ack.stdout + ack.stderr
        verdict = json.loads(ack.stdout)
        assert verdict["accepted"] and verdict["label"] == "normal" and verdict["windows"] > 0
        again = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and json.loads(again.stdout)["reason"] == "already_acked"

        dev.stop()
        code, out = _sigterm(proc)
        assert code == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert _rows(tmp_state, "SELECT COUNT(*) FROM messages WHERE kind='alert'") == [(0,)]
        stored = _rows(tmp_state, "SELECT id, sent FROM alerts")
        # Every episode closed by the stop at the latest, its closed message queued and sent.
        assert stored and all(sent == 2 for _id, sent in stored)
        assert _rows(tmp_state, "SELECT COUNT(*) FROM alerts WHERE closed=0") == [(0,)]
        assert alert["id"] in {i for i, _s in stored}
        first_ids = {i for i, _s in stored}
        assert (tmp_state / "learner_state.npz").exists()

        # -- run 2: broker down -------------------------------------------------------------
        mosquitto_broker.stop()
        dev = _device(port, seed=2)
        t2 = time.time()
        procs.append(proc := _start(cfg, notify_socket))

        def raised() -> bool:
            st = _status(tmp_state)  # counters are per process: only this run's count
            return st.get("time", 0) > t2 and st["counters"].get("alerts_raised", 0) >= 1

        _wait(
            raised,
            40,
            "an alert raised while the broker is down",
        )
        dev.stop()
        assert _status(tmp_state)["components"]["learner"]["learner"]["restored"] is True
        code, out = _sigterm(proc)
        assert code == 0 and "Traceback" not in out, out[-3000:]
        new_ids = {i for (i,) in _rows(tmp_state, "SELECT id FROM alerts")} - first_ids
        assert new_ids
        queued = _rows(tmp_state, "SELECT msg_id FROM messages WHERE kind='alert'")
        assert {m.split(".")[0] for (m,) in queued} >= new_ids, "an alert was lost at shutdown"

        # -- run 3: broker back, the queued alert goes out ---------------------------------
        mosquitto_broker.start()
        procs.append(proc := _start(cfg, notify_socket))
        _wait(
            lambda: new_ids <= {a["id"] for a in sub.opened()},
            30,
            "the alert queued during the outage",
        )
        _wait(
            lambda: _rows(tmp_state, "SELECT COUNT(*) FROM messages WHERE kind='alert'") == [(0,)],
            10,
            "the outbox to drain",
        )
        code, out = _sigterm(proc)
        assert code == 0 and "Traceback" not in out, out[-3000:]
    finally:
        sub.link.close()
