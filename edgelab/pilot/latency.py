"""The latency rig: edge vs centralised alert latency over a real broker and a delaying TCP proxy.

Kept apart from the accuracy experiments: it needs mosquitto, sockets and a cloud
process, and only reads the trained model's bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.pipeline import features
from edgelab.pilot.config import FLEET, PilotConfig


class DelayProxy:
    """A TCP relay adding a fixed one-way delay to each direction (a slow network hop).

    Every chunk read is forwarded ``delay_s`` after it arrived, in order, with
    no bandwidth limit: the link behaves like a WAN path with constant latency.
    Binds 127.0.0.1 only; ``close()`` ends every thread it started.
    """

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target = target
        self.delay_s = float(delay_s)
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(8)
        self._srv.settimeout(0.2)
        self.port = int(self._srv.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._spawn(self._accept)

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name="pilot-delay-proxy")
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
            except OSError:
                client.close()  # the target is down: the client sees a reset, as on a WAN
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.2)
                self._socks.append(s)
            for a, b in ((client, upstream), (upstream, client)):
                q: queue.Queue[tuple[float, bytes]] = queue.Queue()
                self._spawn(self._read, a, q)
                self._spawn(self._write, b, q)

    def _read(self, src: socket.socket, q: queue.Queue[tuple[float, bytes]]) -> None:
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            q.put((time.perf_counter() + self.delay_s, data))
        q.put((0.0, b""))

    def _write(self, dst: socket.socket, q: queue.Queue[tuple[float, bytes]]) -> None:
        while not self._stop.is_set():
            try:
                due, data = q.get(timeout=0.2)
            except queue.Empty:
                continue
            if not data:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._stop.set()
        for s in [self._srv, *self._socks]:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=2.0)


PILOT_ACL = """
# --- pilot only: a "cloud" detector for the centralised latency path ------
pattern read edgeagent/v1/+/cloud/%u/#
user cloud
topic read edgeagent/v1/+/node/#
topic write edgeagent/v1/+/cloud/#
"""


def _pilot_broker(pki: Any, data_dir: Path) -> Any:
    """The shipped broker config + ACL, with the pilot's cloud identity appended to the ACL."""
    from edgelab.broker import Broker

    class _PilotBroker(Broker):
        def write_config(self) -> Path:
            path = super().write_config()
            acl = self.data_dir / "mosquitto.acl"
            acl.write_text(acl.read_text() + PILOT_ACL)
            return path

    return _PilotBroker(pki, data_dir)


def encode_window(w: Any) -> bytes:
    """Raw window bytes for the centralised path: a JSON header, then float arrays."""
    head: dict[str, Any] = {"patient": w.patient, "start": w.start, "end": w.end, "streams": []}
    body = io.BytesIO()
    for s, (t, v) in w.data.items():
        t64 = np.ascontiguousarray(t, np.float64)
        v32 = np.ascontiguousarray(v, np.float32)
        head["streams"].append([str(s), len(t64), v32.shape[1] if v32.ndim == 2 else 1])
        body.write(t64.tobytes())
        body.write(v32.tobytes())
    head["coverage"] = {str(k): float(c) for k, c in w.coverage.items()}
    hb = json.dumps(head).encode()
    return struct.pack("<I", len(hb)) + hb + body.getvalue()


def decode_window(data: bytes) -> Any:
    """Inverse of ``encode_window``: a ``Window`` the cloud can featurise."""
    from edgeagent.pipeline.windows import Window
    from edgeagent.streams import Stream

    (n,) = struct.unpack_from("<I", data)
    head = json.loads(data[4 : 4 + n])
    off = 4 + n
    arrays: dict[Stream, tuple[np.ndarray, np.ndarray]] = {}
    for name, k, ch in head["streams"]:
        t = np.frombuffer(data, np.float64, k, off)
        off += 8 * k
        v = np.frombuffer(data, np.float32, k * ch, off).reshape(k, ch)
        off += 4 * k * ch
        arrays[Stream(name)] = (t, v)
    cov = {Stream(k): float(c) for k, c in head["coverage"].items()}
    return Window(head["patient"], head["start"], head["end"], arrays, cov, frozenset(arrays), ())


def latency_windows(seed: int, n: int = 40) -> list[Any]:
    """``n`` real windows of a test patient (the wearable's data the paths carry)."""
    from edgeagent.pipeline.windows import Windower
    from edgeagent.streams import SampleBlock, Stream
    from firmware_sim.physiology import Generator, SimConfig, make_patient

    prof = make_patient(2000, seed)
    gen = Generator(prof, SimConfig())
    win = Windower(10.0, 2.0, patient=prof.patient_id)
    out: list[Any] = []
    while len(out) < n:
        ch = gen.advance(2.0)
        for name, (tt, vv) in ch.streams.items():
            if len(tt):
                win.push(SampleBlock(prof.patient_id, Stream(name), tt, vv))
        out.extend(win.pop_ready())
    return out[:n]


def _pcts(v: Sequence[float]) -> dict[str, float | int | None]:
    if not v:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None}
    a = np.asarray(v) * 1000.0
    return {
        "n": len(v),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
    }


def _cloud_side(
    conn: Any,
    host: str,
    port: int,
    files: Any,
    model: bytes,
    alert_topic: str,
    raw_topic: str,
    back_topic: str,
) -> None:
    """The WAN and the cloud, in a process of their own (they are other machines).

    Run in the hub's process, the relay's and the cloud client's threads took
    the GIL from the on-box detector exactly when it ran (the previous
    window's delayed bytes arrive one spacing later), which charged the
    network's emulation to the box. Here: the cloud's MQTT client records
    when edge alerts arrive and runs the cloud detector on raw windows; the
    ``DelayProxy`` the hub connects through lives here too. Commands over
    ``conn``: ``("proxy", delay_s)`` -> port, ``("count", None)`` -> edge alerts
    arrived, ``("take", None)`` -> {window: arrival perf_counter} (and clears),
    ``("stop", None)``. ``perf_counter`` is CLOCK_MONOTONIC, shared by processes.
    """
    from edgeagent.pipeline.alerts import MemoryAlertSink
    from edgeagent.pipeline.detect import Detector, DetectorConfig
    from edgeagent.transport.mqtt import MqttLink

    det = Detector(model, "pilot", MemoryAlertSink(), DetectorConfig())
    arrived: dict[int, float] = {}  # edge alerts; centralised answers arrive at the hub
    link: MqttLink | None = None

    def on_cloud(msg: Any) -> None:
        now = time.perf_counter()
        if msg.topic == alert_topic:
            arrived[int(json.loads(msg.payload)["i"])] = now
        elif msg.topic == raw_topic:
            (n,) = struct.unpack_from("<I", msg.payload)
            i = int(json.loads(msg.payload[4 : 4 + n])["i"])
            w = decode_window(msg.payload)
            x = features.extract(w)
            d = det.process_features(w.patient, w.start, w.end, x)
            assert link is not None
            link.publish(back_topic, json.dumps({"i": i, "score": d.score}).encode())

    proxy: DelayProxy | None = None
    try:
        link = MqttLink("cloud", host, port, files, FLEET, identity="cloud", status=False,
                        on_message=on_cloud, clean_start=True)  # fmt: skip
        link.connect(timeout=10.0)
        link.subscribe(alert_topic).wait(5.0)
        link.subscribe(raw_topic).wait(5.0)
        conn.send(("ready", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "proxy":
                if proxy is not None:
                    proxy.close()
                proxy = DelayProxy((host, port), float(arg))
                conn.send(proxy.port)
            elif cmd == "count":
                conn.send(len(arrived))
            elif cmd == "take":
                conn.send(dict(arrived))
                arrived.clear()
            else:
                break
    except Exception as exc:  # the parent reads this instead of waiting forever
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        if proxy is not None:
            proxy.close()
        if link is not None:
            link.close()


def measure_latency(cfg: PilotConfig, model: bytes, workdir: Path) -> dict[str, Any]:
    """Edge vs centralised alert latency over a real broker, per added one-way delay.

    This process is the hub: it cuts features, runs the detector and publishes
    over its own MQTT link. The WAN relay and the cloud run in another process
    (``_cloud_side``), so only the hub's own work is timed on the hub.
    """
    from edgeagent.ops.pki import Pki
    from edgeagent.pipeline.alerts import MemoryAlertSink
    from edgeagent.pipeline.detect import Detector, DetectorConfig
    from edgeagent.transport import topics
    from edgeagent.transport.mqtt import MqttLink

    pki = Pki.init(workdir / "pki", fleet=FLEET)
    pki.issue("hub-00")
    pki.issue("cloud")
    broker = _pilot_broker(pki, workdir / "broker")
    broker.start()
    windows = latency_windows(cfg.seed)
    box_det = Detector(model, "pilot", MemoryAlertSink(), DetectorConfig())
    alert_topic = topics.alert(FLEET, "hub-00")
    raw_topic = topics.node(FLEET, "hub-00", "raw")
    back_topic = f"{topics.prefix(FLEET)}/cloud/hub-00/alert"
    results: dict[str, Any] = {}
    back: dict[int, float] = {}

    def on_box(msg: Any) -> None:
        if msg.topic == back_topic:
            back[int(json.loads(msg.payload)["i"])] = time.perf_counter()

    # fork, like the training pool: no re-import of the caller's __main__ (spawn would need
    # an ``if __name__ == "__main__"`` guard in every script that runs a pilot)
    ctx = get_context("fork")
    conn, child_conn = ctx.Pipe()
    cloud = ctx.Process(
        target=_cloud_side,
        args=(
            child_conn,
            broker.host,
            broker.port,
            pki.client_files("cloud"),
            model,
            alert_topic,
            raw_topic,
            back_topic,
        ),
        daemon=True,
        name="pilot-cloud",
    )

    def ask(cmd: str, arg: Any = None) -> Any:
        conn.send((cmd, arg))
        if not conn.poll(60.0):
            raise RuntimeError(f"the pilot's cloud process did not answer {cmd!r}")
        got = conn.recv()
        if isinstance(got, tuple) and got and got[0] == "error":
            raise RuntimeError(f"the pilot's cloud process failed: {got[1]}")
        return got

    try:
        cloud.start()
        hello = conn.recv() if conn.poll(120.0) else ("error", "no answer in 120 s")
        if hello != ("ready", None):
            raise RuntimeError(f"the pilot's cloud process did not come up: {hello[1]}")
        for delay_ms in cfg.latency_delays_ms:
            port = ask("proxy", delay_ms / 1000.0)
            box = MqttLink(f"hub-00-{int(delay_ms)}", "127.0.0.1", port,
                           pki.client_files("hub-00"), FLEET, identity="hub-00", status=False,
                           on_message=on_box, clean_start=True)  # fmt: skip
            try:
                box.connect(timeout=15.0)
                box.subscribe(back_topic).wait(10.0)
                local: list[float] = []
                sent: dict[str, dict[int, float]] = {"edge": {}, "central": {}}
                got: dict[str, dict[int, float]] = {}
                for path in ("edge", "central"):
                    ask("take")  # drop what a previous delay left behind
                    back.clear()
                    for i in range(cfg.latency_windows):
                        w = windows[i % len(windows)]
                        t0 = time.perf_counter()
                        sent[path][i] = t0
                        if path == "edge":
                            x = features.extract(w)
                            det = box_det.process_features(w.patient, w.start, w.end, x)
                            local.append(time.perf_counter() - t0)
                            box.publish(
                                alert_topic, json.dumps({"i": i, "score": det.score}).encode()
                            )
                        else:
                            raw = encode_window(w)
                            (n,) = struct.unpack_from("<I", raw)
                            head = json.loads(raw[4 : 4 + n])
                            head["i"] = i
                            hb = json.dumps(head).encode()
                            box.publish(raw_topic, struct.pack("<I", len(hb)) + hb + raw[4 + n :])
                        time.sleep(cfg.latency_spacing_s)
                    deadline = time.monotonic() + 10.0 + 4 * delay_ms / 1000.0
                    while time.monotonic() < deadline:
                        n = ask("count") if path == "edge" else len(back)
                        if n >= cfg.latency_windows:
                            break
                        time.sleep(0.01)
                    got[path] = ask("take") if path == "edge" else dict(back)
                lat = {
                    p: [got[p][i] - sent[p][i] for i in sent[p] if i in got[p]]
                    for p in ("edge", "central")
                }
                results[f"{delay_ms:g}"] = {
                    "added_one_way_delay_ms": delay_ms,
                    "edge_on_box_decision": _pcts(local),
                    "edge": _pcts(lat["edge"]),
                    "central": _pcts(lat["central"]),
                    "lost": {p: cfg.latency_windows - len(lat[p]) for p in lat},
                    "raw_window_bytes": len(encode_window(windows[0])),
                }
            finally:
                box.close()
    finally:
        if cloud.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("stop", None))
            cloud.join(15.0)
            if cloud.is_alive():
                cloud.kill()
        broker.stop()
    return results
