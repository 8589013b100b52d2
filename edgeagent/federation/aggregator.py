"""The aggregator service: a thin I/O shell that runs SecAgg+ rounds over MQTT.

Round logic lives in the pure state machines (``fl.secagg.SecAggServer``,
``fl.messages.EnvelopeReceiver``, ``fl.privacy``, ``fl.aggregate``); this
module only decides *when* (a scheduler driven by an injectable clock), *who*
(participants chosen from boxes that said a verified hello and are online) and
moves bodies between the broker and the state machine:

1. idle -> enough verified, online boxes and the pause is over: pick up to
   ``max_boxes`` at random, publish the signed announcement (retained) and
   each box's SETUP body on ``round/<r>/setup/<box>``;
2. every reply on ``node/<box>/<stage>`` must come from the topic's box
   (broker ACL) *and* carry that box's signature (envelope); refusals are
   counted per reason and never reach the state machine;
3. a stage closes when every expected reply is in or its deadline passes
   (silent boxes count as dropped); the next stage's bodies go out routed
   per box;
4. after UNMASK: mean from the unmasked sum, server step, optional central
   noise, DP accountant step, evaluation on held-out windows, then a new
   model version, signed (Ed25519 over its SHA-256) and published retained
   on ``model/current``.

With ``aggregator.robust`` set to a rule, step 1 splits the participants into
groups from the round nonce (``robust.partition_groups``) and runs one
SecAgg+ instance per group, all in lock-step (one body per box per stage, on
the same topics, same round id and nonce; each box derives its group from the
announcement). A group that cannot finish is dropped and recorded; if fewer
groups remain than the rule needs, the others are stopped before anything
more is unmasked and the round aborts. Otherwise the rule runs over the
group means (``robust.grouped_aggregate``) in place of FedAvg.

With ``aggregator.secure_aggregation = false`` (plaintext mode) a round is one
stage: the announcement says ``secagg: false`` with the clip, ``n_cap`` and
the round's sealing key, each invited box that allows it
(``federation.allow_plaintext``) answers with one signed UPDATE envelope
holding its clipped update and ``n_k`` sealed to that key (``fl.seal``: the
broker cannot read them; the key lives only as long as the round), and at the
deadline (or when all are in) the rule runs over the single updates
(``robust.unweighted_aggregate``; n_k-weighted FedAvg for ``robust = "none"``;
``reputation`` also reads and updates each box's score in the state file)
with central DP noise scaled to what that rule can move (``_finish_plain``).

State (next round id, model versions, DP events, round history) is one JSON
file written atomically after every state change, so a restart between
rounds continues where it stopped; a round cut by a restart is recorded as
``interrupted`` and its id is never reused (boxes refuse stale rounds).
All MQTT callbacks only enqueue; one thread owns the state.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgeagent.atomic import write_atomic, write_json_atomic
from edgeagent.errors import ConfigError, ModelError, ProtocolError, TransportError
from edgeagent.federation.accountant import DpAccountant
from edgeagent.federation.intake import (
    OP_CLOSE,
    OP_OPEN,
    PARTIAL_KIND,
    control_topic,
    encode_control,
    partial_topic,
)
from edgeagent.federation.partials import CLOSE_GRACE_S, PartialCollector
from edgeagent.fl import robust, seal
from edgeagent.fl.aggregate import apply_update, mean_from_total
from edgeagent.fl.constants import AGGREGATOR, BROADCAST, NONCE_BYTES, STAGE_ORDER, Key, Stage
from edgeagent.fl.identity import Identity, load_ca, load_identity, verify_identity_cert
from edgeagent.fl.messages import EnvelopeReceiver, Message, Sequencer, decode_unverified, encode
from edgeagent.fl.privacy import (
    add_gaussian_noise,
    distributed_std,
    fedavg_payload,
    gaussian_std,
    l2_clip,
    payload_bound,
)
from edgeagent.fl.secagg import RoundConfig, SecAggServer
from edgeagent.fl.wire import (
    Announcement,
    ModelPublication,
    announcement_body,
    decode_hello,
    encode_model,
)
from edgeagent.model.graph import get_params, parse_model, set_params, sha256_hex, to_bytes
from edgeagent.model.signing import sign_hash
from edgeagent.ops.config import Config
from edgeagent.ops.pki import TlsFiles, intake_id
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message as MqttMessage
from edgeagent.transport.mqtt import MqttLink

log = logging.getLogger(__name__)

STATE_FILE = "aggregator.json"
MODELS_DIR = "models"
#: Round records kept in the state file (older ones are summarised in totals only).
HISTORY = 500
#: Upper bound of one wait in the loop: how fast a deadline or stop is noticed.
MAX_WAIT_S = 0.25
#: Messages queued from the network thread; beyond this the oldest are dropped (counted).
INBOX_MAX = 100_000
#: Seconds the local intake workers get to connect and subscribe at start.
WORKER_START_S = 30.0
#: Box topics the aggregator reads itself when intake workers take the masked vectors.
_OWN_KINDS = ("hello", "status", Stage.SETUP.value, Stage.SHARE_KEYS.value, Stage.UNMASK.value)
_STAGES = {s.value: s for s in Stage}


def read_state(state_dir: Path) -> dict[str, Any]:
    """The aggregator's persisted state (empty dict before the first start)."""
    p = Path(state_dir) / STATE_FILE
    try:
        return dict(json.loads(p.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"aggregator state {p} is unreadable: {exc}") from exc


@dataclass
class BoxInfo:
    """A box the aggregator may invite: its verified signing key and its last known status."""

    key: Any
    online: bool = True
    hello_t: float = 0.0


@dataclass
class _Round:
    """One round in flight (the I/O side; the protocol state is in ``servers``).

    ``servers[i]`` runs the SecAgg+ instance of ``groups[i]``; a plain round
    has one group holding every participant. A plaintext round has no
    servers; ``plain`` collects each box's ``(update, n_k)`` instead.
    """

    round_id: int
    nonce: bytes
    participants: tuple[str, ...]
    groups: list[tuple[str, ...]]
    servers: list[SecAggServer]
    receiver: EnvelopeReceiver
    seq: Sequencer
    deadline: float
    started: float
    started_wall: float
    stage_started: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    bytes_in: Counter[str] = field(default_factory=Counter)
    bytes_out: Counter[str] = field(default_factory=Counter)
    server_seconds: float = 0.0
    silent: dict[str, list[str]] = field(default_factory=dict)  # at the last stage closed
    group_of: dict[str, int] = field(default_factory=dict)
    #: group index -> (stage, boxes silent when that group's instance aborted at its close)
    abort_silent: dict[int, tuple[str, list[str]]] = field(default_factory=dict)
    #: plaintext mode: box -> (update as sent, capped n_k); None in a SecAgg+ round
    plain: dict[str, tuple[np.ndarray, int]] | None = None
    #: plaintext mode: this round's key updates are sealed to (``fl.seal``; never stored)
    seal_key: X25519PrivateKey | None = None
    #: model parameters (an UPDATE must carry exactly this many float32)
    dim: int = 0
    #: intake workers: partial sums folded into the (single) SecAgg+ instance
    collector: PartialCollector | None = None
    intake_closing: bool = False

    def __post_init__(self) -> None:
        self.group_of = {b: i for i, g in enumerate(self.groups) for b in g}

    def live(self) -> list[SecAggServer]:
        """The instances still running (not yet at RESULT); they share one stage."""
        return [s for s in self.servers if s.stage is not Stage.RESULT]

    def pending(self) -> frozenset[str]:
        """Boxes whose reply to the current stage has not arrived, over all live groups."""
        if self.plain is not None:
            return frozenset(self.participants) - self.plain.keys()
        return frozenset().union(*(s.pending() for s in self.live()))


class Aggregator:
    """Schedules rounds, routes SecAgg+ stages over MQTT and publishes signed global models.

    ``clock`` (monotonic seconds) drives deadlines and pauses; tests pass a
    fake one to step through stage timeouts without sleeping. ``run`` owns the
    loop; ``step`` does one iteration and is what tests drive directly.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        link: MqttLink | None = None,
    ) -> None:
        fed, agg = config.federation, config.aggregator
        if fed.ca_file is None or fed.cert_file is None or fed.key_file is None:
            raise ModelError(
                "the aggregator needs federation.ca_file, cert_file and key_file "
                "(issue them with `edgeagent pki init`)"
            )
        self.config = config
        self.policy = agg
        self.fleet = config.agent.fleet
        self.state_dir = Path(config.agent.state_dir)
        self.clock = clock
        self.ca = load_ca(fed.ca_file)
        self.identity: Identity = load_identity(fed.cert_file, self.ca, AGGREGATOR)
        self.clip = float(fed.clip_norm)
        self.noise_multiplier = float(fed.noise_multiplier)
        if not agg.secure_aggregation and agg.noise == "distributed":
            log.info(
                "plaintext rounds (secure_aggregation = false): DP noise is added centrally "
                "by the aggregator; distributed noise needs masking"
            )
        self.boxes: dict[str, BoxInfo] = {}
        self.refused: Counter[str] = Counter()  # outside rounds (hello, topics)
        self.round: _Round | None = None
        self.inbox: queue.Queue[MqttMessage] = queue.Queue(maxsize=INBOX_MAX)
        self.inbox_dropped = 0
        self.bytes_in_total = 0
        self.bytes_out_total = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._workers: list[subprocess.Popen[bytes]] = []
        self._control_seq = Sequencer()
        self.state = read_state(self.state_dir)
        self._restore()
        self.link = link or MqttLink(
            AGGREGATOR,
            fed.broker_host,
            fed.broker_port,
            TlsFiles(fed.ca_file, fed.cert_file, fed.key_file),
            self.fleet,
            identity=AGGREGATOR,
            status=False,
            on_message=self._enqueue,
            keepalive_s=fed.keepalive_s,
        )
        self.next_round_at = self.clock()

    # -- state ------------------------------------------------------------------------------------

    def _restore(self) -> None:
        s = self.state
        s.setdefault("next_round", 1)
        s.setdefault("rounds", [])
        s.setdefault("dp_events", [])
        s.setdefault("totals", {"completed": 0, "aborted": 0, "interrupted": 0, "rejected": 0})
        s.setdefault("refused", {})
        s.setdefault("clear_announce", [])
        cut = s.pop("in_progress", None)
        if cut is not None:
            log.warning("round %s was interrupted by a restart; it will not resume", cut["round"])
            self._record(
                {
                    "round": cut["round"],
                    "status": "interrupted",
                    "participants": cut.get("participants", []),
                    "started": cut.get("started"),
                    "survivors": [],
                    "dropped": {},
                    "refused": {},
                }
            )
            s["clear_announce"].append(cut["round"])
        self.accountant = DpAccountant(self.policy.dp_delta)
        for z, q in s["dp_events"]:
            self.accountant.step(z, q)
        model = s.get("model")
        self.model_bytes: bytes | None = None
        if model is not None:
            data = (self.state_dir / model["file"]).read_bytes()
            if sha256_hex(data) != model["sha256"]:
                raise ModelError(f"global model file {model['file']} does not match its hash")
            self.model_bytes = data
        self._save()

    def _save(self) -> None:
        write_json_atomic(self.state_dir / STATE_FILE, self.state)

    def _record(self, rec: dict[str, Any]) -> None:
        s = self.state
        s["rounds"].append(rec)
        del s["rounds"][:-HISTORY]
        s["totals"][rec["status"]] = s["totals"].get(rec["status"], 0) + 1

    def epsilon(self) -> float | None:
        """Privacy spent so far at ``dp_delta`` (None when rounds ran without noise)."""
        if self.state.get("unnoised_rounds"):
            return None
        return self.accountant.epsilon()

    # -- model ------------------------------------------------------------------------------------

    def _store_model(self, data: bytes, version: int, round_id: int, ev: dict[str, Any]) -> None:
        sha = sha256_hex(data)
        rel = f"{MODELS_DIR}/{sha}.onnx"
        path = self.state_dir / rel
        write_atomic(path, data)
        self.state["model"] = {
            "version": version,
            "sha256": sha,
            "file": rel,
            "round": round_id,
            "eval": ev,
        }
        self.model_bytes = data

    def _publish_model(self) -> None:
        """Sign the current global model and publish it retained on ``model/current``."""
        m = self.state["model"]
        assert self.model_bytes is not None
        pub = ModelPublication(
            round_id=int(m["round"]),
            version=int(m["version"]),
            sha256=m["sha256"],
            signature=sign_hash(self.identity.key, m["sha256"]),
            cert_der=self.identity.cert_der,
            onnx=self.model_bytes,
            eval=dict(m.get("eval") or {}),
        )
        data = encode_model(pub)
        self.bytes_out_total += len(data)
        ack = self.link.publish(topics.model_current(self.fleet), data, retain=True)
        try:
            code = ack.wait(10.0)
        except TransportError as exc:
            log.error("model v%s: no PUBACK for model/current: %s", m["version"], exc)
            return
        if code >= 0x80:
            log.error("model v%s refused by the broker: %#04x", m["version"], code)
        else:
            log.info("published global model v%s (%s)", m["version"], m["sha256"][:12])

    def ensure_model(self) -> None:
        """Make sure a global model exists (round 0 from ``initial_model``) and is published."""
        if self.model_bytes is None:
            path = self.policy.initial_model
            if path is None:
                raise ModelError("no global model yet: set aggregator.initial_model (ONNX)")
            data = Path(path).read_bytes()
            parse_model(data)
            ev = self.evaluate(data)
            self._store_model(data, 0, 0, ev)
            self._save()
        self._publish_model()

    def evaluate(self, data: bytes) -> dict[str, Any]:
        """Loss of a model on the held-out windows (``aggregator.holdout``), if configured."""
        path = self.policy.holdout
        if path is None:
            return {}
        from edgeagent.pipeline.detect import ValidatedWindow
        from edgeagent.pipeline.lifecycle import validation_loss

        with np.load(path, allow_pickle=False) as z:
            x, mu, sg, y = z["x"], z["mu"], z["sigma"], z["y"]
        windows = [
            ValidatedWindow(x[i], mu[i : i + 1], sg[i : i + 1], str(y[i])) for i in range(len(y))
        ]
        return {"holdout_loss": float(validation_loss(data, windows)), "holdout_n": len(windows)}

    # -- network side -----------------------------------------------------------------------------

    def _enqueue(self, msg: MqttMessage) -> None:
        """paho's thread: hand the message to the loop, never block, never lose silently."""
        try:
            self.inbox.put_nowait(msg)
        except queue.Full:
            self.inbox_dropped += 1

    def start(self) -> None:
        """Connect, subscribe to the boxes' topics, publish the current global model.

        With ``intake_workers``, start them first and subscribe to everything
        but ``node/+/collect_masked``: a plain subscription matching it would
        hand this process every masked vector too, beside the workers' shared
        subscription.
        """
        self.link.connect()
        if self.policy.intake_workers:
            self._start_workers()
            filters = [topics.node_filter(self.fleet, k) for k in _OWN_KINDS]
            filters.append(partial_topic(self.fleet))
        else:
            filters = [topics.node_filter(self.fleet, "+")]
        for f in filters:
            self.link.subscribe(f).wait(10.0)
        for r in self.state["clear_announce"]:
            self.link.publish(topics.announce(self.fleet, r), b"", retain=True)
        self.state["clear_announce"] = []
        self.ensure_model()
        self._save()

    def close(self) -> None:
        if self.round is not None:
            log.warning("stopping during round %d; it is abandoned", self.round.round_id)
        self.link.close()
        self._stop_workers()

    # -- intake workers ---------------------------------------------------------------------------

    def _start_workers(self) -> None:
        """Run ``intake_workers`` × ``python -m edgeagent.federation.intake`` on this host and wait
        until each has subscribed (a worker on another host runs the same command)."""
        fed = self.config.federation
        ready_dir = self.state_dir / "intake"
        ready_dir.mkdir(parents=True, exist_ok=True)
        ready = [ready_dir / f"{i}.ready" for i in range(self.policy.intake_workers)]
        assert fed.cert_file is not None
        for i, flag in enumerate(ready):
            flag.unlink(missing_ok=True)
            cert = fed.cert_file.parent / f"{intake_id(i)}.crt"
            key = cert.with_suffix(".key")
            if not cert.is_file() or not key.is_file():
                raise ConfigError(
                    "aggregator.intake_workers",
                    self.policy.intake_workers,
                    f"worker {i} needs {cert} and {key} (the broker binds client ids to "
                    f"certificates); issue them with `edgeagent pki issue-intake {i}`",
                )
            cmd = [sys.executable, "-m", "edgeagent.federation.intake", "--host", fed.broker_host,
                   "--port", str(fed.broker_port), "--fleet", self.fleet,
                   "--ca", str(fed.ca_file), "--cert", str(cert), "--key", str(key),
                   "--identity", str(fed.cert_file), "--worker", str(i),
                   "--ready-file", str(flag)]  # fmt: skip
            self._workers.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + WORKER_START_S
        for i, (proc, flag) in enumerate(zip(self._workers, ready, strict=True)):
            while not flag.exists():
                problem = None
                if proc.poll() is not None:
                    problem = f"exited with status {proc.returncode} before subscribing"
                elif time.monotonic() > deadline:
                    problem = f"not subscribed after {WORKER_START_S:.0f} s"
                if problem:
                    self._stop_workers()
                    raise TransportError("intake_worker", f"intake worker {i} {problem}")
                time.sleep(0.05)
        log.info("%d intake workers subscribed", len(self._workers))

    def _check_workers(self) -> None:
        """A dead worker takes the service down (systemd restarts it); the round in
        progress is then recorded as interrupted, like any restart mid-round."""
        for i, proc in enumerate(self._workers):
            if proc.poll() is not None:
                code = proc.returncode
                self._stop_workers()
                raise TransportError("intake_worker", f"intake worker {i} exited ({code})")

    def _stop_workers(self) -> None:
        for proc in self._workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._workers:
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._workers = []

    def _open_intake(self, r: _Round) -> None:
        """COLLECT_MASKED opens: tell the workers the round, its size and the box keys."""
        server = r.servers[0]
        c = server.config
        ctl = encode_control(OP_OPEN, r.round_id, r.nonce, self._control_seq.next(),
                             self.identity.key, dim=c.dim,
                             box_keys={n: r.receiver.keys[n] for n in c.participants})  # fmt: skip
        self.bytes_out_total += len(ctl)
        self.link.publish(control_topic(self.fleet), ctl)
        r.collector = PartialCollector(server, self.identity.public_key)

    def _close_intake(self, r: _Round) -> None:
        """Ask the workers to flush what they hold for this round and let it go."""
        ctl = encode_control(OP_CLOSE, r.round_id, r.nonce, self._control_seq.next(),
                             self.identity.key)  # fmt: skip
        self.bytes_out_total += len(ctl)
        self.link.publish(control_topic(self.fleet), ctl)
        r.intake_closing = True

    def _on_partial(self, payload: bytes) -> None:
        r = self.round
        if r is None or r.collector is None:
            self._refuse_outside("late_partial", "partial sum with no collect stage open")
            return
        self.bytes_in_total += len(payload)
        t0 = time.perf_counter()
        r.collector.receive(payload)  # refusals are counted by the collector
        r.server_seconds += time.perf_counter() - t0

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, on_tick: Callable[[], None] | None = None) -> None:
        """Loop until ``request_stop`` or the configured number of rounds is done."""
        while not self._stop.is_set() and not self.done.is_set():
            self.step()
            if on_tick is not None:
                on_tick()

    def step(self) -> None:
        """Handle queued messages (waiting at most until the next deadline), then tick."""
        wait = MAX_WAIT_S
        if self.round is not None:
            wait = min(wait, max(0.0, self.round.deadline - self.clock()))
        try:
            msg: MqttMessage | None = self.inbox.get(timeout=max(wait, 0.001))
        except queue.Empty:
            msg = None
        while msg is not None:
            self.on_message(msg)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                msg = None
        self.tick()

    def on_message(self, msg: MqttMessage) -> None:
        """Dispatch one message from ``node/<id>/<kind>`` (the only topics subscribed)."""
        try:
            t = topics.parse(msg.topic)
        except TransportError:
            self._refuse_outside("bad_topic", msg.topic)
            return
        if t.fleet != self.fleet or t.area != "node" or t.node_id is None:
            return
        if t.node_id == AGGREGATOR:  # only the aggregator identity may write here (ACL)
            if t.kind == PARTIAL_KIND:
                self._on_partial(msg.payload)
            return
        if t.kind == "hello":
            self._on_hello(t.node_id, msg.payload)
        elif t.kind == "status":
            self._on_status(t.node_id, msg.payload)
        elif t.kind in _STAGES:
            self._on_reply(t.node_id, _STAGES[t.kind], msg.payload)

    def _refuse_outside(self, reason: str, detail: str) -> None:
        self.refused[reason] += 1
        self.state["refused"][reason] = self.state["refused"].get(reason, 0) + 1
        log.warning("aggregator refused %s: %s", reason, detail)

    def _on_hello(self, node: str, payload: bytes) -> None:
        if not payload:  # retained hello cleared: the box left the fleet
            self.boxes.pop(node, None)
            return
        try:
            hello = decode_hello(payload)
            if hello.node != node:
                raise ProtocolError("impersonation", f"hello for {hello.node!r} on {node}'s topic")
            key = verify_identity_cert(hello.cert_der, self.ca, node)
            hello.verify(key)
        except ProtocolError as exc:
            self._refuse_outside(exc.reason, f"hello from {node}: {exc.detail}")
            return
        info = self.boxes.get(node)
        if info is None:
            log.info("box %s joined the fleet (verified identity)", node)
            self.boxes[node] = BoxInfo(key, True, hello.t)
        else:
            info.key, info.online, info.hello_t = key, True, hello.t

    def _on_status(self, node: str, payload: bytes) -> None:
        try:
            state = json.loads(payload.decode()).get("state") if payload else "offline"
        except (ValueError, UnicodeDecodeError, AttributeError):
            self._refuse_outside("malformed", f"status of {node}")
            return
        info = self.boxes.get(node)
        if info is not None:
            info.online = state != "offline"

    def _on_reply(self, node: str, stage: Stage, payload: bytes) -> None:
        r = self.round
        if r is None:
            self._refuse_outside("out_of_round", f"{stage} from {node} with no round open")
            return
        r.bytes_in[node] += len(payload)
        self.bytes_in_total += len(payload)
        t0 = time.perf_counter()
        try:
            claimed = decode_unverified(payload)
            if claimed.src != node:
                # relayed or forged under another box's name: the topic is the broker's word
                raise ProtocolError("impersonation", f"{claimed.src!r} on {node}'s topic")
            got = r.receiver.receive(payload)
            if got.message.stage is not stage:
                raise ProtocolError("topic_mismatch", f"{got.message.stage} on a {stage} topic")
            if got.duplicate:
                return
            if r.plain is not None:
                self._take_update(r, node, stage, got.message.body)
                return
            if stage is Stage.UPDATE:
                raise ProtocolError("wrong_mode", "a plaintext update in a SecAgg+ round")
            r.servers[r.group_of[node]].receive(node, stage, got.message.body)
            log.debug("round %d: %s from %s accepted", r.round_id, stage, node)
        except ProtocolError as exc:
            r.refused[exc.reason] += 1
            log.warning("round %d: refused %s from %s: %s", r.round_id, stage, node, exc)
        finally:
            r.server_seconds += time.perf_counter() - t0

    def _take_update(self, r: _Round, node: str, stage: Stage, body: Any) -> None:
        """Check one plaintext UPDATE body; keep ``(update, n_k)`` for ``_finish_plain``."""
        assert r.plain is not None
        if stage is not Stage.UPDATE:
            raise ProtocolError("wrong_mode", f"{stage} in a plaintext round")
        if node in r.plain:
            raise ProtocolError("replay", "a second update in the same round")
        sealed = body.get(Key.UPDATE.value)
        if not isinstance(sealed, bytes) or r.seal_key is None:
            raise ProtocolError("bad_body", "update must be a sealed byte string")
        u, n = seal.open_update(sealed, r.seal_key, seal.info(r.round_id, r.nonce, node), r.dim)
        if not 1 <= n <= self.policy.n_cap:
            raise ProtocolError("bad_body", f"n must be in 1..{self.policy.n_cap}, got {n}")
        if not np.all(np.isfinite(u)):
            raise ProtocolError("bad_body", "update contains NaN or infinity")
        if float(np.linalg.norm(u)) > self.clip * (1 + 1e-5):
            # an honest box clips; the aggregator clips again below, so DP holds either way
            r.refused["over_clip"] += 1
        r.plain[node] = (u, n)

    def _publish(self, topic: str, msg: Message, retain: bool = False) -> None:
        data = encode(msg, self.identity.key)
        assert self.round is not None
        if msg.dst != BROADCAST:
            self.round.bytes_out[msg.dst] += len(data)
        self.bytes_out_total += len(data)
        self.link.publish(topic, data, retain=retain)

    # -- scheduling -------------------------------------------------------------------------------

    def eligible(self) -> list[str]:
        """Boxes with a verified identity that are online now."""
        return sorted(n for n, b in self.boxes.items() if b.online)

    def tick(self) -> None:
        """Open a round when due, close a stage when complete or past its deadline."""
        now = self.clock()
        r = self.round
        if self._workers:
            self._check_workers()
        if r is None:
            limit = self.policy.rounds
            if limit and self.state["totals"].get("completed", 0) >= limit:
                self.done.set()
                return
            if now >= self.next_round_at:
                ready = self.eligible()
                if len(ready) >= self.policy.min_boxes:
                    self.start_round(ready)
            return
        if not r.pending() or now >= r.deadline:
            if r.plain is not None:
                r.stage_seconds[str(Stage.UPDATE)] = round(now - r.stage_started, 4)
                self._finish_plain()
            elif r.collector is not None and not r.intake_closing and r.pending():
                # COLLECT_MASKED deadline with boxes missing: the workers may still hold
                # some of them in an unflushed partial; ask for it, wait a moment
                self._close_intake(r)
                r.deadline = now + CLOSE_GRACE_S
            else:
                self._advance()

    def start_round(self, ready: list[str]) -> None:
        """Select participants, announce the round (retained) and send each box its SETUP."""
        assert self.model_bytes is not None
        p = self.policy
        rng = secrets.SystemRandom()
        chosen = sorted(rng.sample(ready, min(len(ready), p.max_boxes)))
        round_id = int(self.state["next_round"])
        nonce = secrets.token_bytes(NONCE_BYTES)
        dim = int(get_params(parse_model(self.model_bytes)).size) + 1
        total_std = gaussian_std(self.noise_multiplier, self.clip, p.n_cap)
        plain = not p.secure_aggregation
        grouped = p.robust != "none" and not plain
        groups = (
            robust.partition_groups(chosen, p.group_size, nonce) if grouped else [tuple(chosen)]
        )
        servers = []
        for group in groups if not plain else ():
            # grouped: a group sum is unmasked only with >= group_size survivors (the
            # anonymity set); each group sum carries the full DP noise on its own
            floor = p.group_size if grouped else min(p.min_survivors, len(group))
            box_std = distributed_std(total_std, floor) if p.noise == "distributed" else 0.0
            cfg = RoundConfig(
                round_id=round_id,
                nonce=nonce,
                participants=group,
                dim=dim,
                bound=payload_bound(self.clip, p.n_cap, box_std),
                min_survivors=floor,
                clip=self.clip,
                n_cap=p.n_cap,
                noise_std=box_std,
            )
            servers.append(SecAggServer(cfg))
        seal_key, enc_pk = seal.round_key() if plain else (None, b"")
        rx = EnvelopeReceiver(AGGREGATOR, {n: self.boxes[n].key for n in chosen})
        rx.begin_round(round_id, nonce)
        now = self.clock()
        self.round = _Round(
            round_id,
            nonce,
            tuple(chosen),
            groups,
            servers,
            rx,
            Sequencer(),
            now + p.stage_timeout_s,
            now,
            time.time(),
            now,
            plain={} if plain else None,
            seal_key=seal_key,
            dim=dim - 1,
        )
        self.state["next_round"] = round_id + 1
        self.state["in_progress"] = {
            "round": round_id,
            "participants": list(chosen),
            "started": time.time(),
        }
        if grouped:
            self.state["in_progress"]["groups"] = [list(g) for g in groups]
        self._save()
        if plain:
            rule = p.robust if p.robust != "none" else "fedavg"
            log.info("round %d: announcing to %d boxes in plaintext (rule %s)", round_id,
                     len(chosen), rule)  # fmt: skip
        else:
            c0 = servers[0].config
            log.info(
                "round %d: announcing to %d boxes in %d group(s) (rule %s, degree %d, t=%d)",
                round_id,
                len(chosen),
                len(groups),
                p.robust if grouped else "fedavg",
                c0.degree,
                c0.threshold,
            )
        sha = sha256_hex(self.model_bytes)
        ann = Announcement(
            tuple(chosen),
            sha,
            p.stage_timeout_s,
            self.identity.cert_der,
            p.group_size if grouped else 0,
            not plain,
            self.clip if plain else 0.0,
            p.n_cap if plain else 0,
            enc_pk,
        )
        r = self.round
        self._publish(
            topics.announce(self.fleet, round_id),
            Message(
                AGGREGATOR,
                BROADCAST,
                round_id,
                Stage.SETUP,
                r.seq.next(),
                nonce,
                announcement_body(ann),
            ),
            retain=True,
        )
        if plain:
            return  # the boxes answer the announcement itself
        t0 = time.perf_counter()
        bodies: dict[str, dict[str, Any]] = {}
        for server in servers:
            bodies.update(server.start())
        r.server_seconds += time.perf_counter() - t0
        self._send_stage(Stage.SETUP, bodies)

    def _send_stage(self, stage: Stage, bodies: dict[str, dict[str, Any]]) -> None:
        r = self.round
        assert r is not None
        for dst, body in sorted(bodies.items()):
            t0 = time.perf_counter()
            msg = Message(AGGREGATOR, dst, r.round_id, stage, r.seq.next(), r.nonce, body)
            r.server_seconds += time.perf_counter() - t0
            self._publish(topics.round_topic(self.fleet, r.round_id, str(stage), dst), msg)

    def _advance(self) -> None:
        r = self.round
        assert r is not None
        now = self.clock()
        live = r.live()
        closing = live[0].stage  # lock-step: every live instance is in the same stage
        assert closing is not None
        r.stage_seconds[str(closing)] = round(now - r.stage_started, 4)
        r.silent = {str(closing): sorted(r.pending())}
        t0 = time.perf_counter()
        per_group: dict[int, tuple[Stage, dict[str, dict[str, Any]]]] = {}
        for i, server in enumerate(r.servers):
            if server.stage is Stage.RESULT:
                continue
            silent = sorted(server.pending())
            bodies = server.advance()
            assert server.stage is not None
            if server.abort is not None and silent:
                r.abort_silent[i] = (str(closing), silent)
            per_group[i] = (server.stage, bodies)
        if self.policy.robust != "none":
            need = robust.min_groups(self.policy.robust, **self.policy.rule_params())
            ok = [s for s in r.servers if s.abort is None]
            if len(ok) < need:
                # the rule cannot run: stop the rest before their sums are unmasked; their
                # boxes get RESULT instead of the next stage (no replies into a closed round)
                reason = f"too_few_groups: {len(ok)} of {len(r.servers)} left < {need}"
                for i, server in enumerate(r.servers):
                    if server.stage is not Stage.RESULT:
                        per_group[i] = (Stage.RESULT, server.cancel(reason))
        out: dict[Stage, dict[str, dict[str, Any]]] = {}
        for stage, bodies in per_group.values():
            out.setdefault(stage, {}).update(bodies)
        r.server_seconds += time.perf_counter() - t0
        r.stage_started = now
        r.deadline = now + self.policy.stage_timeout_s
        if r.collector is not None and closing is Stage.COLLECT_MASKED and not r.intake_closing:
            self._close_intake(r)
        if self._workers and Stage.COLLECT_MASKED in out:
            self._open_intake(r)  # before the boxes get their COLLECT_MASKED bodies
        for stage in sorted(out, key=STAGE_ORDER.index):
            self._send_stage(stage, out[stage])
        if not r.live():
            self._finish()

    def _finish(self) -> None:
        """Apply the round's mean, evaluate, version, sign and publish; persist the record."""
        r = self.round
        assert r is not None and self.model_bytes is not None
        p = self.policy
        grouped = p.robust != "none"
        dropped: dict[str, list[str]] = {}
        refused = Counter(r.refused)
        for server in r.servers:
            for stage, nodes in server.dropped().items():
                if nodes:
                    dropped.setdefault(str(stage), []).extend(nodes)
            refused += server.rejected
        for stage_name, silent in r.abort_silent.values():
            # an instance that aborts at a stage's close never records who went silent
            have = dropped.setdefault(stage_name, [])
            have.extend(b for b in silent if b not in have)
        rec = self._base_record(r, dropped, refused)
        if r.collector is not None:
            rec["intake"] = {
                "workers": self.policy.intake_workers,
                "boxes_by_worker": dict(sorted(r.collector.by_worker.items())),
                "refused_partials": {
                    k: v for k, v in r.collector.counters.items() if k != "absorbed"
                },
            }
        done = [(i, s.result) for i, s in enumerate(r.servers) if s.result is not None]
        need = robust.min_groups(p.robust, **p.rule_params()) if grouped else 1
        if grouped:
            used = [i for i, _ in done]
            rec["robust"] = {
                "rule": p.robust,
                "params": {k: v for k, v in p.rule_params().items() if v is not None},
                "group_size": p.group_size,
                "groups": [list(g) for g in r.groups],
                "used_groups": used,
                "dropped_groups": [
                    {
                        "group": i,
                        "boxes": list(r.groups[i]),
                        "stage": s.abort.stage,
                        "reason": s.abort.reason,
                    }
                    for i, s in enumerate(r.servers)
                    if s.abort is not None
                ],
                "min_groups": need,
                "tolerated_bad_groups": (
                    robust.grouping_tradeoff(
                        len(used) * p.group_size, p.group_size, p.robust, **p.rule_params()
                    )["tolerated_bad_groups"]
                    if used
                    else 0
                ),
            }
        if not done or len(done) < need:
            if grouped:
                aborts = [s.abort.reason for s in r.servers if s.abort is not None]
                cancelled = [a for a in aborts if a.startswith("too_few_groups")]
                reason = (
                    cancelled[0]
                    if cancelled
                    else (f"too_few_groups: {len(done)} of {len(r.servers)} finished < {need}")
                )
            else:
                ab = r.servers[0].abort
                reason = ab.reason if ab else "unknown"
            rec.update(status="aborted", reason=reason, survivors=[])
            if not rec["dropped"]:
                rec["dropped"] = {k: v for k, v in r.silent.items() if v}
            log.warning("round %d aborted: %s", r.round_id, reason)
        else:
            rec["survivors"] = sorted(b for _, res in done for b in res.survivors)
            totals = [np.asarray(res.total, dtype=np.float64) for _, res in done]
            if p.noise == "central" and self.noise_multiplier > 0:
                # one noised release per group: disjoint groups compose in parallel
                std = gaussian_std(self.noise_multiplier, self.clip, p.n_cap)
                totals = [add_gaussian_noise(t, std) for t in totals]
            try:
                if grouped:
                    mean = robust.grouped_aggregate(totals, p.robust, **p.rule_params())
                else:
                    mean = mean_from_total(totals[0])
                rec["sum_n"] = float(sum(t[-1] for t in totals))
                rec["update_norm"] = float(np.linalg.norm(mean))
                self._apply(r.round_id, mean, rec)
            except (ValueError, ModelError) as exc:
                rec.update(status="aborted", reason=f"bad_sum: {exc}")
                log.warning("round %d: cannot apply the sum: %s", r.round_id, exc)
        # something was unmasked (even if a grouped round then aborted): it counts
        self._conclude(r, rec, released=bool(done))

    @staticmethod
    def _base_record(
        r: _Round, dropped: dict[str, list[str]], refused: Counter[str]
    ) -> dict[str, Any]:
        return {
            "round": r.round_id,
            "participants": list(r.participants),
            "started": r.started_wall,
            "stage_seconds": r.stage_seconds,
            "dropped": {k: sorted(v) for k, v in dropped.items()},
            "refused": dict(refused),
            "bytes_in": sum(r.bytes_in.values()),
            "bytes_out": sum(r.bytes_out.values()),
            "server_seconds": round(r.server_seconds, 4),
        }

    def _finish_plain(self) -> None:
        """Plaintext round: rule over the single updates, central noise, then as ``_finish``.

        FedAvg (``robust = "none"``) sums the boxes' ``fedavg_payload`` vectors and
        noises the sum exactly as a central-noise SecAgg+ round does (sensitivity
        ``n_cap * sqrt(clip^2 + 1)``). A robust rule's output has no such per-box
        bound that shrinks with the fleet, so its noise covers the rule's whole output
        range: std ``z * 2 * robust.output_radius(rule, clip)`` on the mean update.
        Either way one Gaussian release at multiplier ``z`` per round, which is what
        the accountant composes.
        """
        r = self.round
        assert r is not None and r.plain is not None and self.model_bytes is not None
        p = self.policy
        got = sorted(r.plain)
        silent = sorted(r.pending())
        rec = self._base_record(r, {str(Stage.UPDATE): silent} if silent else {}, r.refused)
        rec["secure_aggregation"] = False
        params = p.rule_params()
        need = p.min_survivors
        if p.robust != "none":
            need = max(need, robust.min_groups(p.robust, **params))
            rec["robust"] = {
                "rule": p.robust,
                "mode": "plaintext",
                "params": {k: v for k, v in params.items() if v is not None},
                "updates": len(got),
                "min_updates": need,
                "tolerated_bad_boxes": robust.tolerated_rows(p.robust, len(got), **params),
            }
        released = len(got) >= need
        if not released:
            reason = f"too_few_updates: {len(got)} < {need}"
            rec.update(status="aborted", reason=reason, survivors=[])
            log.warning("round %d aborted: %s", r.round_id, reason)
        else:
            rec["survivors"] = got
            z = self.noise_multiplier
            t0 = time.perf_counter()
            try:
                if p.robust == "none":
                    total = np.sum(
                        [fedavg_payload(u, n, self.clip, p.n_cap) for u, n in r.plain.values()],
                        axis=0,
                    )
                    total = add_gaussian_noise(total, gaussian_std(z, self.clip, p.n_cap))
                    mean = mean_from_total(total)
                else:
                    rows = [l2_clip(r.plain[b][0], self.clip)[0] for b in got]
                    if p.robust == "reputation":
                        mean = self._reputation_mean(got, rows, rec)
                    else:
                        mean = robust.unweighted_aggregate(rows, p.robust, **params)
                    std = z * 2.0 * robust.output_radius(p.robust, self.clip, **params)
                    mean = add_gaussian_noise(mean, std)
                    rec["noise_std"] = std
                r.server_seconds += time.perf_counter() - t0
                rec["server_seconds"] = round(r.server_seconds, 4)
                rec["sum_n"] = float(sum(n for _, n in r.plain.values()))
                rec["update_norm"] = float(np.linalg.norm(mean))
                self._apply(r.round_id, mean, rec)
            except (ValueError, ModelError) as exc:
                rec.update(status="aborted", reason=f"bad_sum: {exc}")
                log.warning("round %d: cannot apply the updates: %s", r.round_id, exc)
        status = str(rec.get("status", "completed"))
        self._send_stage(
            Stage.RESULT,
            {b: {Key.STATUS.value: status, Key.REASON.value: str(rec.get("reason", ""))}
             for b in got},
        )  # fmt: skip
        self._conclude(r, rec, released)

    def _reputation_mean(
        self, boxes: list[str], rows: list[np.ndarray], rec: dict[str, Any]
    ) -> np.ndarray:
        """The ``reputation`` rule over single updates, remembering each box's score.

        The scores live in the state file, so a restart does not hand a box
        that earned distrust a clean slate; the round record names the boxes
        dropped, which is what an operator needs to go and look at them.
        """
        book: dict[str, float] = self.state.setdefault("reputation", {})
        mean, kept, scores = robust.reputation_by_box(rows, boxes, book)
        book.update(scores)
        rec["robust"]["dropped"] = [b for b in boxes if b not in kept]
        return mean

    def _conclude(self, r: _Round, rec: dict[str, Any], released: bool) -> None:
        """Account privacy if anything was released, persist the record, end the round."""
        p = self.policy
        if released:
            if self.noise_multiplier > 0:
                fleet = max(len(self.boxes), len(r.participants))
                q = min(1.0, len(r.participants) / fleet)
                self.accountant.step(self.noise_multiplier, q)
                self.state["dp_events"].append([self.noise_multiplier, q])
            else:
                self.state["unnoised_rounds"] = self.state.get("unnoised_rounds", 0) + 1
        eps = self.epsilon()
        rec["epsilon"] = eps
        rec["seconds"] = round(self.clock() - r.started, 4)  # incl. model build + publish
        rec.setdefault("status", "completed")
        self.state.pop("in_progress", None)
        self._record(rec)
        for reason, n in rec["refused"].items():
            self.state["refused"][reason] = self.state["refused"].get(reason, 0) + n
        self._save()
        # The round is over: its retained announcement must not lure boxes back in.
        self.link.publish(topics.announce(self.fleet, r.round_id), b"", retain=True)
        self.round = None
        self.next_round_at = self.clock() + p.round_interval_s
        log.info("round %d %s (eps=%s)", r.round_id, rec["status"], eps)

    def _apply(self, round_id: int, mean: np.ndarray, rec: dict[str, Any]) -> None:
        assert self.model_bytes is not None
        model = parse_model(self.model_bytes)
        w = get_params(model)
        w_new = apply_update(w, mean, self.policy.server_lr)
        candidate = to_bytes(set_params(model, w_new))
        ev = self.evaluate(candidate)
        rec["eval"] = ev
        cur = (self.state.get("model") or {}).get("eval") or {}
        new_loss, old_loss = ev.get("holdout_loss"), cur.get("holdout_loss")
        if (
            new_loss is not None
            and old_loss is not None
            and (
                not np.isfinite(new_loss) or new_loss > old_loss * (1 + self.policy.eval_tolerance)
            )
        ):
            rec.update(status="rejected", reason=f"holdout loss {new_loss:.4f} > {old_loss:.4f}")
            log.warning("round %d: candidate rejected on held-out data", round_id)
            return
        version = int(self.state["model"]["version"]) + 1
        self._store_model(candidate, version, round_id, ev)
        rec["model_version"] = version
        rec["model_sha256"] = self.state["model"]["sha256"]
        self._save()
        self._publish_model()


def status_report(state_dir: Path) -> dict[str, Any]:
    """What ``edgeagent aggregator status`` shows, read from the state file alone."""
    s = read_state(state_dir)
    rounds = s.get("rounds", [])
    dropouts = sum(sum(len(v) for v in r.get("dropped", {}).values()) for r in rounds)
    return {
        "state_dir": str(state_dir),
        "next_round": s.get("next_round", 1),
        "model": s.get("model"),
        "totals": s.get("totals", {}),
        "dropouts": dropouts,
        "refused": s.get("refused", {}),
        "epsilon": rounds[-1].get("epsilon") if rounds else None,
        "in_progress": s.get("in_progress"),
        "reputation": s.get("reputation", {}),
        "rounds": rounds,
    }
