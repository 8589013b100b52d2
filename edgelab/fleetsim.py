"""Many lightweight simulated boxes per process, for scale tests and benchmarks.

Each simulated box is what a box is on the wire: its own mutual-TLS MQTT 5
connection (its own client certificate, so the broker ACL holds it to
``node/<id>/``), its own Ed25519 identity, a real ``SecAggClient`` and
``EnvelopeReceiver``, and signed CBOR envelopes routed exactly as the box
daemon routes them (``round/<r>/<stage>/<id>`` in, ``node/<id>/<stage>`` out).
What it leaves out is everything that is not the federated protocol: no
sensors, no outbox, no announcement or model download (the parent hands each
process the announced participant list, which the boxes' commit-reveal of the
round seed and their graph check use), and by default no learner (a fixed update
per box). With ``SimSpec.train_fraction`` that share of the boxes trains for real
before each round: the agent's own ``LocalLearner`` (``edgeagent.pipeline.learn``)
on simulated feature windows, starting from ``SimSpec.model``'s parameters, and
sends its real update, so the box side's CPU and memory are measured rather than
assumed (``TrainingBox``).

Why a multiplexer: one paho network thread per box (``MqttLink``) is right
for a daemon but a thousand of them polling every 50 ms would measure the
simulator, not the aggregator. Here one thread drives all of a process's
paho clients through their external-loop API (``loop_read``/``loop_write``/
``loop_misc``) over one ``selectors`` selector.

``run_process`` is the body of a simulator process; the parent talks to it
over a ``multiprocessing`` pipe (``FleetProcess`` wraps that).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import selectors
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from edgeagent.errors import ProtocolError, TransportError
from edgeagent.federation.intake import raw_public
from edgeagent.fl.constants import AGGREGATOR, STAGE_ORDER, Stage
from edgeagent.fl.identity import Identity, load_ca, load_identity, verify_identity_cert
from edgeagent.fl.messages import EnvelopeReceiver, Message, Sequencer, decode_unverified, encode
from edgeagent.fl.privacy import fedavg_payload
from edgeagent.fl.secagg import SecAggClient
from edgeagent.fl.secagg.auth import PeerVerifier, RoundSigner
from edgeagent.fl.secagg.seeded import SeededClient
from edgeagent.transport import topics

#: How often every client's keepalive bookkeeping (``loop_misc``) runs.
MISC_INTERVAL_S = 1.0


@dataclass(frozen=True)
class BoxSpec:
    """One simulated box: id and the TLS files of its own client certificate."""

    node: str
    cert: str
    key: str


@dataclass(frozen=True)
class SimSpec:
    """What a simulator process needs (picklable; sent over the pipe)."""

    host: str
    port: int
    fleet: str
    ca: str
    boxes: tuple[BoxSpec, ...]
    aggregator_pub: bytes
    seed: int = 0
    clip: float = 1.0
    n_k: int = 50
    #: Share of the boxes that train for real (``TrainingBox``); 0 = fixed updates only.
    train_fraction: float = 0.0
    #: Windows each training box trains on before a round (a 10 s window every 2 s: 64 is
    #: about two minutes of one wearable).
    train_windows: int = 64
    #: ONNX model whose parameters the training boxes' learners start from.
    model: str = ""


class TrainingBox:
    """The update of a box that trains: the agent's ``LocalLearner`` on simulated windows.

    Each window is a feature vector around the model's population means (a per-box shift
    and a within-box spread, so boxes differ), offered as the detector offers a window it
    judged normal; the learner trains on it in batches as on a box, and ``n_k * delta`` is
    the round's input (``fedavg_payload``). Training happens before the round
    (``train``), as on a box, where it runs between rounds on the box's own CPU; its CPU
    time is kept apart from the protocol's. The learner's vector is zero-padded or cut to
    the round's dimension when the bench runs rounds of another size.
    """

    def __init__(self, node: str, seed: int, windows: int, model: Any) -> None:
        from edgeagent.pipeline.learn import LocalLearner

        spec, w0, pop_mu, pop_sigma = model
        self.learner = LocalLearner(spec, w0)
        self.windows = windows
        self.rng = np.random.default_rng([seed, int.from_bytes(node.encode()[-8:], "little")])
        self.mu = (pop_mu + self.rng.normal(0.0, 0.3, pop_mu.shape) * pop_sigma)[None]
        self.sigma = (pop_sigma * self.rng.uniform(0.7, 1.3, pop_sigma.shape))[None]
        self.delta = np.zeros(w0.shape, np.float32)
        self.n_k = 0
        self.cpu_s = 0.0
        self.rounds = 0
        self.last: np.ndarray | None = None

    def train(self) -> None:
        """One round's local training from the global model (none arrives here: the same)."""
        t0 = time.process_time()
        self.learner.restart()
        f = self.mu.shape[1]
        xs = self.mu + self.rng.normal(0.0, 0.5, (self.windows, f)) * self.sigma
        for x in xs.astype(np.float32):
            self.learner.offer(x, self.mu, self.sigma, True)
        while self.learner.pending:
            self.learner.step(8)
        self.delta, self.n_k = self.learner.delta(), int(self.learner.n_k)
        self.cpu_s += time.process_time() - t0
        self.rounds += 1

    def __call__(self, dim: int, clip: float, n_cap: int) -> np.ndarray:
        d = np.zeros(dim, np.float64)
        k = min(dim, self.delta.size)
        d[:k] = self.delta[:k]
        self.last = fedavg_payload(d, max(self.n_k, 1), clip, n_cap)
        return self.last


def load_model_params(path: str) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(spec, flat parameters, population means, population spreads) of an ONNX model."""
    import onnx

    from edgeagent.model.graph import get_params, read_meta

    proto = onnx.load(path)
    meta = read_meta(proto)
    return (meta.spec, get_params(proto), np.asarray(meta.pop_mu, np.float64),
            np.asarray(meta.pop_sigma, np.float64))  # fmt: skip


def training_boxes(nodes: list[str], fraction: float) -> set[str]:
    """Which boxes of a process train: every k-th, so they spread over the id range."""
    if fraction <= 0:
        return set()
    step = max(1, round(1 / fraction))
    return {n for i, n in enumerate(nodes) if i % step == 0}


class SimBox:
    """The protocol side of one box: envelope in -> (topic, envelope) out, or nothing."""

    def __init__(
        self,
        node: str,
        fleet: str,
        aggregator_key: Ed25519PublicKey,
        payload: Callable[[int, float, int], np.ndarray],
        identity: Identity,
        verify_peer: PeerVerifier,
    ) -> None:
        self.node = node
        self.fleet = fleet
        self.key: Ed25519PrivateKey = identity.key
        self._agg = aggregator_key
        self._payload = payload
        self.client = SecAggClient(node, RoundSigner(identity.key, identity.cert_der, verify_peer))
        self.seeded = SeededClient(self.client)  # the round seed's commit-reveal, then SecAgg+
        self.rx: EnvelopeReceiver | None = None
        self.seq = Sequencer()
        self.drop_at: Stage | None = None
        self.counters: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0

    def _silent(self, stage: Stage) -> bool:
        return self.drop_at is not None and STAGE_ORDER.index(stage) >= STAGE_ORDER.index(
            self.drop_at
        )

    def on_message(self, round_id: int, stage: Stage, data: bytes) -> tuple[str, bytes] | None:
        """Handle one routed stage message; returns the reply to publish, if any."""
        self.bytes_down += len(data)
        if self._silent(stage):
            self.counters["silent"] += 1
            return None
        try:
            if stage is Stage.COMMIT and (self.rx is None or self.rx.round != round_id):
                # a new round: start a fresh receiver, but only keep it if the COMMIT verifies
                rx = EnvelopeReceiver(self.node, {AGGREGATOR: self._agg})
                rx.begin_round(round_id, decode_unverified(data).nonce)
                got = rx.receive(data)
                self.rx = rx
            elif self.rx is None:
                raise ProtocolError("out_of_round", "no round joined")
            else:
                got = self.rx.receive(data)
            if got.duplicate:
                return None
            m = got.message
            if m.stage is not stage:
                raise ProtocolError("topic_mismatch", f"{m.stage} on a {stage} topic")
            reply = self.seeded.handle(m.round, m.nonce, m.stage, m.body)
            if stage is Stage.SETUP:
                self.client.set_input(
                    self._payload(self.client.dim - 1, self.client.clip, self.client.n_cap)
                )
        except (ProtocolError, ValueError) as exc:
            self.counters[getattr(exc, "reason", "bad_input")] += 1
            return None
        if stage is Stage.RESULT:
            self.counters[f"result_{m.body.get('status')}"] += 1
            return None
        env = encode(
            Message(self.node, AGGREGATOR, m.round, stage, self.seq.next(), m.nonce, reply),
            self.key,
        )
        self.bytes_up += len(env)
        return topics.node(self.fleet, self.node, stage.value), env


class Mux:
    """One thread driving many paho clients through one selector (external loop)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: dict[str, paho.Client] = {}
        self.connected: set[str] = set()
        self.subscribed: set[str] = set()
        self.on_message: Callable[[str, Any], None] | None = None
        self._last_misc = time.monotonic()

    def add(
        self, name: str, host: str, port: int, ca: str, cert: str, key: str, subscribe: str | None
    ) -> None:
        """Connect one client (TLS handshake now; CONNACK later in ``poll``)."""
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        ctx.load_cert_chain(cert, key)
        c.tls_set_context(ctx)
        c.max_inflight_messages_set(64)

        def on_connect(cl: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
            if not rc.is_failure:
                self.connected.add(name)
                if subscribe is not None:
                    cl.subscribe(subscribe, qos=1)

        def on_subscribe(_c: paho.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
            if all(not r.is_failure for r in codes):
                self.subscribed.add(name)

        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            if self.on_message is not None:
                self.on_message(name, msg)

        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_message = on_message
        c.connect(host, port, keepalive=120, clean_start=True)
        sock = c.socket()
        if sock is None:
            raise TransportError("connect_failed", f"{name}: no socket")
        self.sel.register(sock, selectors.EVENT_READ, name)
        self.clients[name] = c

    def poll(self, timeout: float) -> None:
        """One pass: read what is readable, write what is queued, keepalives."""
        for key, _ in self.sel.select(timeout):
            c = self.clients[key.data]
            c.loop_read()
            sock = c.socket()
            while sock is not None and hasattr(sock, "pending") and sock.pending():
                c.loop_read()
        self.flush()
        now = time.monotonic()
        if now - self._last_misc >= MISC_INTERVAL_S:
            self._last_misc = now
            for c in self.clients.values():
                c.loop_misc()

    def flush(self, budget_s: float = 5.0) -> None:
        """Write every client's queued output (blocking writes retried up to ``budget_s``)."""
        end = time.monotonic() + budget_s
        todo = [c for c in self.clients.values() if c.want_write()]
        while todo and time.monotonic() < end:
            for c in todo:
                c.loop_write()
            todo = [c for c in todo if c.want_write()]

    def wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                return False
            self.poll(0.02)
        return True

    def close(self) -> None:
        for c in self.clients.values():
            try:
                c.disconnect()
                c.loop_write()
            except (OSError, ValueError):
                pass


def default_payload(seed: int, node: str, n_k: int) -> Callable[[int, float, int], np.ndarray]:
    """A fixed, per-box (non-IID) update: Gaussian with a box-specific mean and scale."""

    def make(dim: int, clip: float, n_cap: int) -> np.ndarray:
        rng = np.random.default_rng([seed, int.from_bytes(node.encode()[-8:], "little")])
        delta = rng.normal(rng.normal(0, 0.05), rng.uniform(0.005, 0.05), dim)
        return fedavg_payload(delta, n_k, clip, n_cap)

    return make


def _stage_of(topic: str) -> tuple[int, Stage] | None:
    try:
        t = topics.parse(topic)
        if t.round_id is None or t.stage is None:
            return None
        return t.round_id, Stage(t.stage)
    except (TransportError, ValueError):
        return None


def run_process(conn: Any, spec: SimSpec) -> None:
    """Body of a simulator process: connect every box, then answer rounds until told to stop.

    Pipe protocol (dicts): child sends ``{"ready", "pubs", "connect_s"}``; the
    parent may send ``{"drop": {node: stage}}`` before a round and
    ``{"stop": True}``, answered with ``{"stats": ...}``.
    """
    agg = Ed25519PublicKey.from_public_bytes(spec.aggregator_pub)
    mux = Mux()
    boxes: dict[str, SimBox] = {}
    t0 = time.perf_counter()
    ca = load_ca(Path(spec.ca))
    verified: dict[tuple[str, bytes], Ed25519PublicKey] = {}

    def verify_peer(node: str, cert: bytes) -> Ed25519PublicKey:
        # what a box does: the neighbour's identity certificate against the fleet CA
        key = verified.get((node, cert))
        if key is None:
            key = verified[(node, cert)] = verify_identity_cert(cert, ca, node)
        return key

    import psutil

    me = psutil.Process()
    rss_before_learners = me.memory_info().rss
    trainers: dict[str, TrainingBox] = {}
    if spec.train_fraction > 0:
        model = load_model_params(spec.model)
        rss_before_learners = me.memory_info().rss  # the model's import and parse excluded
        for n in sorted(training_boxes([b.node for b in spec.boxes], spec.train_fraction)):
            trainers[n] = TrainingBox(n, spec.seed, spec.train_windows, model)
            trainers[n].train()  # the first round's update, and every array allocated
    rss_after_learners = me.memory_info().rss
    for b in spec.boxes:
        boxes[b.node] = SimBox(
            b.node,
            spec.fleet,
            agg,
            trainers.get(b.node) or default_payload(spec.seed, b.node, spec.n_k),
            load_identity(Path(b.cert), ca, b.node),
            verify_peer,
        )
        sub = f"{topics.prefix(spec.fleet)}/round/+/+/{b.node}"
        mux.add(b.node, spec.host, spec.port, spec.ca, b.cert, b.key, sub)
        mux.poll(0)

    def on_message(name: str, msg: paho.MQTTMessage) -> None:
        rs = _stage_of(msg.topic)
        if rs is None:
            return
        out = boxes[name].on_message(rs[0], rs[1], bytes(msg.payload))
        if out is not None:
            mux.clients[name].publish(out[0], out[1], qos=1)

    mux.on_message = on_message
    ok = mux.wait(lambda: len(mux.subscribed) == len(boxes), 120.0)
    conn.send(
        {
            "ready": ok,
            "pubs": {n: raw_public(b.key.public_key()) for n, b in boxes.items()},
            "connect_s": time.perf_counter() - t0,
            "missing": sorted(set(boxes) - mux.subscribed),
        }
    )
    cpu0 = time.process_time()

    def counters() -> Counter[str]:
        total: Counter[str] = Counter()
        for b in boxes.values():
            total += b.counters
        return total

    while True:
        if conn.poll():
            cmd = conn.recv()
            if cmd.get("stop"):
                break
            if cmd.get("counters"):
                conn.send(dict(counters()))
                continue
            if cmd.get("payloads"):  # what each training box sent in the last round
                conn.send({n: t.last for n, t in trainers.items() if t.last is not None})
                continue
            if cmd.get("train"):  # between rounds, as a box trains between rounds
                for t in trainers.values():
                    t.train()
                conn.send({"ok": True})
                continue
            for b in boxes.values():
                b.drop_at = None
            for node, stage in (cmd.get("drop") or {}).items():
                boxes[node].drop_at = Stage(stage)
            participants = cmd.get("participants")
            for b in boxes.values():
                # what the signed announcement tells a real box: who is in the round
                b.seeded.announce(participants or ())
            conn.send({"ok": True})
        mux.poll(0.01)
    conn.send(
        {
            "stats": {
                "boxes": len(boxes),
                "cpu_s": time.process_time() - cpu0,
                "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "bytes_up": sum(b.bytes_up for b in boxes.values()),
                "bytes_down": sum(b.bytes_down for b in boxes.values()),
                "counters": dict(counters()),
                "training_boxes": len(trainers),
                "train_cpu_s": sum(t.cpu_s for t in trainers.values()),
                "train_rounds": sum(t.rounds for t in trainers.values()),
                "train_n_k": [t.n_k for t in trainers.values()],
                "train_rss_added_bytes": rss_after_learners - rss_before_learners,
                "learner_bytes": _learner_bytes(next(iter(trainers.values()), None)),
            }
        }
    )
    mux.close()


def _learner_bytes(t: TrainingBox | None) -> int:
    """The arrays one learner holds: its two vectors, Adam's two moments, the outlier history."""
    if t is None:
        return 0
    lr = t.learner
    return int(lr.w_local.nbytes + lr.w_global.nbytes + lr.opt.m.nbytes + lr.opt.v.nbytes)


@dataclass
class FleetProcess:
    """Parent-side handle on one simulator process."""

    spec: SimSpec
    proc: Any = None
    conn: Any = None
    pubs: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    connect_s: float = 0.0

    def start(self) -> FleetProcess:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=run_process, args=(child, self.spec), daemon=True)
        self.proc.start()
        return self

    def wait_ready(self, timeout: float = 300.0) -> None:
        if not self.conn.poll(timeout):
            raise TransportError("sim_timeout", "simulator process did not get ready")
        msg = self.conn.recv()
        if not msg["ready"]:
            raise TransportError("sim_not_ready", f"boxes not subscribed: {msg['missing'][:5]}")
        self.pubs = {n: Ed25519PublicKey.from_public_bytes(raw) for n, raw in msg["pubs"].items()}
        self.connect_s = msg["connect_s"]

    def set_drops(
        self, drops: Mapping[str, Stage], participants: tuple[str, ...] | None = None
    ) -> None:
        """Before a round: who drops where, and the round's public participant list."""
        mine = {n: str(s) for n, s in drops.items() if n in self.pubs}
        self.conn.send({"drop": mine, "participants": participants})
        self.conn.recv()

    def train(self) -> None:
        """Every training box of this process trains for the next round (no-op without)."""
        self.conn.send({"train": True})
        self.conn.recv()

    def payloads(self) -> dict[str, np.ndarray]:
        """The inputs the training boxes sent in the last round (to check the sum)."""
        self.conn.send({"payloads": True})
        return dict(self.conn.recv())

    def counters(self) -> dict[str, int]:
        """The boxes' protocol counters so far (``result_ok``, refusals by reason, ...)."""
        self.conn.send({"counters": True})
        return dict(self.conn.recv())

    def wait_counter(self, name: str, value: int, timeout: float = 10.0) -> bool:
        """Wait until counter ``name`` reaches ``value`` (e.g. every box saw RESULT)."""
        end = time.monotonic() + timeout
        while self.counters().get(name, 0) < value:
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        self.conn.send({"stop": True})
        stats: dict[str, Any] = {}
        if self.conn.poll(timeout):
            stats = self.conn.recv()["stats"]
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
        return stats


def issue_boxes(pki: Any, names: list[str]) -> list[BoxSpec]:
    """TLS client certificates for simulated boxes (reused when already issued)."""
    out = []
    for n in names:
        files = pki.client_files(n)
        if not Path(files.cert).exists():
            pki.issue(n)
        out.append(BoxSpec(n, str(files.cert), str(files.key)))
    return out
