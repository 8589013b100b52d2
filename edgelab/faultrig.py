"""A box under fault, as a field engineer tests one: the real daemon, broker, wearables, consumer.

``edgeagent run`` runs as a subprocess with mTLS to a real Mosquitto, two
simulated serial wearables on ptys (firmware_sim, scripted falls), and the
documented alert consumer (``edgeagent alerts follow``, persistent session,
drops repeats by msg-id) as a second subprocess. Beside it a raw subscriber
counts every delivery on the wire, so duplicates the consumer dropped are
measured too. The fault tests (``tests/faults/``) and ``bench/faults.py`` drive
the same rig: broker kills, ``kill -9``, a full disk, a corrupt or truncated
outbox, a read-only state directory; :meth:`FaultRig.account` then compares,
alert id by alert id, what the box stored with what the consumer got.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeagent.ops.config import to_toml
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message, MqttLink
from edgelab.broker import Broker
from firmware_sim.physiology import Generator, Label, SimConfig, make_patient
from firmware_sim.serialdev import PtyDevice

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "baseline.onnx"
CLI = [sys.executable, "-c", "from edgeagent.cli import main; main()"]
BOX = "box-a"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    """Poll ``cond`` until true; returns the seconds it took, or raises AssertionError."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def falls(every_s: float = 30.0, length_s: float = 14.0, until_s: float = 3600.0) -> tuple:
    """A fall every ``every_s`` simulated seconds: one alert episode each, opened and closed.

    The first comes after 12 s, once the windower has its first full windows.
    """
    out, t = [], 12.0
    while t + length_s < until_s:
        out.append(Label(t, t + length_s, "fall"))
        t += every_s
    return tuple(out)


@dataclass
class Accounting:
    """What happened to every alert the box raised, by alert id."""

    raised: int = 0
    closed_in_store: int = 0
    never_closed: list[str] = field(default_factory=list)
    delivered_opened: int = 0
    delivered_closed: int = 0
    lost_opened: list[str] = field(default_factory=list)
    lost_closed: list[str] = field(default_factory=list)
    consumer_repeats: int = 0
    consumer_max_per_id: int = 0
    wire_duplicates: int = 0
    box_faults: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "alerts_raised": self.raised,
            "closed_in_store": self.closed_in_store,
            "never_closed": len(self.never_closed),
            "delivered_opened": self.delivered_opened,
            "delivered_closed": self.delivered_closed,
            "lost_opened": len(self.lost_opened),
            "lost_closed": len(self.lost_closed),
            "duplicates_on_wire": self.wire_duplicates,
            "repeats_dropped_by_consumer": self.consumer_repeats,
            "max_deliveries_per_id_at_consumer": self.consumer_max_per_id,
            "box_fault_alerts": self.box_faults,
        }


class FaultRig:
    """One box, its wearables, the broker and the consumer, under ``root``."""

    def __init__(
        self,
        root: Path,
        pki: Pki,
        broker: Broker,
        *,
        fleet: str = "default",
        state_dir: Path | None = None,
        devices: int = 2,
        seed: int = 0,
        outbox: dict[str, Any] | None = None,
        fall_every_s: float = 30.0,
        control_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.pki = pki
        self.broker = broker
        self.fleet = fleet
        self.state = state_dir or root / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "daemon.log"
        self.seed = seed
        self.ports = [root / f"ttyW{i}" for i in range(devices)]
        self.devices: list[PtyDevice] = []
        self.fall_every_s = fall_every_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.consumer: subprocess.Popen[str] | None = None
        self.got: dict[str, dict[str, Any]] = {}
        self.consumer_lines: Counter[str] = Counter()
        self.consumer_repeats = 0
        self.wire: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._raw: MqttLink | None = None
        ctl = control_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.socket = ctl / f"ea-ctl-{os.getpid()}-{id(self) % 100000}.sock"
        files = pki.client_files(BOX)
        self.config = root / "config.toml"
        self.config.write_text(
            to_toml(
                {
                    "agent": {"box_id": BOX, "fleet": fleet, "state_dir": str(self.state)},
                    "devices": {
                        "serial": [
                            {"port": str(p), "device_id": f"w{i}", "patient": f"p{i}"}
                            for i, p in enumerate(self.ports)
                        ]
                    },
                    "detection": {"model_path": str(MODEL)},
                    "learning": {"enabled": False},
                    "federation": {
                        "enabled": True,
                        "broker_host": broker.host,
                        "broker_port": broker.port,
                        "ca_file": str(files.ca),
                        "cert_file": str(files.cert),
                        "key_file": str(files.key),
                    },
                    "outbox": outbox or {},
                    "status": {"interval_s": 1.0, "stall_after_s": 30.0},
                    "control": {"socket_path": str(self.socket)},
                }
            )
        )

    # -- the wearables ---------------------------------------------------------------
    def start_devices(self, duration_s: float = 3600.0) -> None:
        """Two (or more) textiles on ptys, fast mode: they wait for a reader, never drop."""
        for i, port in enumerate(self.ports):
            gen = Generator(
                make_patient(3 + i, seed=self.seed + i),
                SimConfig(episodes=falls(self.fall_every_s, until_s=duration_s)),
            )
            dev = PtyDevice(port, gen, device_id=f"w{i}", seed=self.seed + i,
                            duration_s=duration_s)  # fmt: skip
            self.devices.append(dev.start())

    # -- the consumer ----------------------------------------------------------------
    def start_consumer(self) -> None:
        """``edgeagent alerts follow`` (persistent session, --seen file) and a raw wire counter."""
        files = self.pki.client_files("aggregator")
        if not self.pki.client_files("alerts").cert.exists():
            self.pki.issue_consumer()
        self.consumer = subprocess.Popen(
            [*CLI, "alerts", "follow", "--host", self.broker.host, "--port",
             str(self.broker.port), "--pki-dir", str(self.pki.root), "--fleet", self.fleet,
             "--client-id", f"consumer-{os.getpid()}", "--seen", str(self.root / "seen.sqlite")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read_consumer, daemon=True).start()
        threading.Thread(target=self._read_consumer_err, daemon=True).start()
        self._raw = MqttLink(
            f"wire-{os.getpid()}", self.broker.host, self.broker.port, files, self.fleet,
            identity="aggregator", status=False, on_message=self._on_wire,
            reconnect_min_s=0.1, reconnect_max_s=1.0,
        )  # fmt: skip
        self._raw.connect()
        self._raw.subscribe(topics.node_filter(self.fleet, "alert")).wait(5)
        # The consumer is subscribed once the broker knows its session.
        time.sleep(1.5)

    def _read_consumer(self) -> None:
        assert self.consumer is not None and self.consumer.stdout is not None
        for line in self.consumer.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.consumer_lines[doc["msg_id"]] += 1
                self.got[doc["msg_id"]] = doc

    def _read_consumer_err(self) -> None:
        assert self.consumer is not None and self.consumer.stderr is not None
        for line in self.consumer.stderr:
            if line.startswith("repeat dropped: "):
                with self._lock:
                    self.consumer_repeats += 1

    def _on_wire(self, m: Message) -> None:
        if m.msg_id:
            with self._lock:
                self.wire[m.msg_id] += 1

    def delivered(self) -> set[str]:
        with self._lock:
            return set(self.got)

    # -- the daemon ------------------------------------------------------------------
    def start_daemon(self, wait_ready: bool = True, timeout: float = 40.0) -> subprocess.Popen:
        """``edgeagent run``; with ``wait_ready``, until its status.json says running."""
        log = open(self.log_path, "ab")  # noqa: SIM115  (the child keeps it)
        log.write(f"\n=== start {time.time():.3f}\n".encode())
        log.flush()
        t0 = time.time()
        self.proc = subprocess.Popen(
            [*CLI, "run", "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait_ready:
            proc = self.proc

            def running() -> bool:
                st = self.status()
                return (st.get("time", 0) > t0 and st.get("state") == "running") or (
                    proc.poll() is not None
                )

            wait_for(running, timeout, "the daemon to run")
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log_tail()}")
        return self.proc

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def sigterm(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return -9

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # -- the stores ------------------------------------------------------------------
    def _query(self, name: str, sql: str) -> list[tuple]:
        path = self.state / name
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql).fetchall()
        except sqlite3.DatabaseError:
            return []
        finally:
            db.close()

    def alerts(self) -> list[tuple[str, int, str]]:
        """``(id, closed, category)`` of every alert the box stored."""
        return self._query("alerts.sqlite", "SELECT id, closed, category FROM alerts")

    def queued_alert_rows(self) -> int:
        rows = self._query("outbox.sqlite3", "SELECT COUNT(*) FROM messages WHERE kind='alert'")
        return int(rows[0][0]) if rows else 0

    def settle(self, timeout: float = 40.0) -> None:
        """Run the daemon (broker up) until every stored alert's messages reached the consumer."""
        if self.proc is None or self.proc.poll() is not None:
            self.start_daemon()

        def done() -> bool:
            want = {f"{a}.{e}" for a, _c, _k in self.alerts() for e in ("opened", "closed")}
            return bool(want) and want <= self.delivered()

        with contextlib.suppress(AssertionError):
            wait_for(done, timeout, "every alert message at the consumer", step=0.25)

    def account(self) -> Accounting:
        """Every stored alert against the consumer's deliveries, by alert id."""
        acc = Accounting()
        got = self.delivered()
        for aid, closed, category in self.alerts():
            acc.raised += 1
            acc.closed_in_store += int(bool(closed))
            if not closed:
                acc.never_closed.append(aid)
            if category == "box_fault":
                acc.box_faults.append(aid)
            if f"{aid}.opened" in got:
                acc.delivered_opened += 1
            else:
                acc.lost_opened.append(aid)
            if f"{aid}.closed" in got:
                acc.delivered_closed += 1
            else:
                acc.lost_closed.append(aid)
        with self._lock:
            acc.consumer_max_per_id = max(self.consumer_lines.values(), default=0)
            acc.consumer_repeats = self.consumer_repeats
            acc.wire_duplicates = sum(n - 1 for n in self.wire.values())
        return acc

    def close(self) -> None:
        """Stop everything this rig started (daemon, devices, consumer, wire subscriber)."""
        self.sigterm(timeout=20)
        for dev in self.devices:
            dev.stop()
        if self._raw is not None:
            self._raw.close(timeout=2)
        if self.consumer is not None and self.consumer.poll() is None:
            self.consumer.send_signal(signal.SIGTERM)
            try:
                self.consumer.wait(10)
            except subprocess.TimeoutExpired:
                self.consumer.kill()
        with contextlib.suppress(OSError):
            self.socket.unlink()
