"""The box side of federated rounds: a daemon Component that joins rounds over MQTT.

Thin I/O shell around the pure parts (``SecAggClient``, ``EnvelopeReceiver``,
``privacy.fedavg_payload``, ``wire``):

* on connect it publishes a retained, signed **hello** with its identity
  certificate, which is how the aggregator learns it may invite this box;
* a retained **announcement** whose certificate chains to the fleet CA (CN
  ``aggregator``) and whose envelope verifies opens the round for this box if
  it is listed, the announced global model is the one its learner trains
  from, and it has at least ``min_samples`` windows trained on; otherwise the
  box sits the round out (it simply never answers, which SecAgg+ treats as a
  dropout); a SecAgg+ round opens with the round seed's commit-reveal
  (``fl.secagg.beacon``): the box commits to 16 random bytes, reveals them
  once the aggregator has signed the digest of every commitment, and at
  SETUP checks every contribution and derives the seed itself; in a grouped
  round (announcement with ``group_size``, robust aggregation) the box
  computes the groups from public data (``robust.partition_groups`` keyed by
  that seed) and takes part in its own group's SecAgg+ instance only, so the
  aggregator cannot choose who shares a group with whom; every round that
  ends without a result after the box revealed is counted (persisted), and
  past ``max_reveal_aborts`` of them per ``reveal_abort_window_s`` the box
  sits rounds out (``grinding_limit``); a grouped round whose ``group_size`` is below
  this box's floor (``min_group_size``, default 3) is refused
  (``group_too_small``): a malicious aggregator must not shrink groups until a
  group sum is nearly one box's update;
* a **plaintext** announcement (``secagg: false``) is answered only when this
  box allows it (``allow_plaintext``, off by default; otherwise it is refused
  and counted as ``plaintext_refused``, so an aggregator cannot downgrade the
  fleet out of masking): the box sends one signed UPDATE envelope on
  ``node/<box>/update`` with its update clipped to the announced ``clip`` (as
  float32, the model's own dtype) and ``min(n_k, n_cap)``, then waits for RESULT;
* each stage body routed to it (``round/<r>/<stage>/<box>``) is verified,
  handed to ``SecAggClient.handle`` and the reply published on
  ``node/<box>/<stage>``; at SETUP the learner's ``delta`` and ``n_k`` become
  the masked payload ``[n_k * clip(delta), n_k]``; in both modes only the
  coordinates of the announced parameter mask (``groups``) are sent, clipped
  and noised, so every box's update has the same length;
* a **global model** on ``model/current`` is accepted only if its bytes match
  the published SHA-256, the signature over that hash verifies with a key
  from an ``aggregator`` certificate of this fleet's CA, and its version is
  not older than the last one accepted (replayed old models are refused). The
  learner restarts from it (``reset_global``) and the model lifecycle
  (``ModelManager.apply``: validation, hot swap, rollback) decides whether
  detection uses it;
* the same release comes as a **parameter vector** on ``model/params`` (4
  bytes per parameter instead of the file): the box rebuilds the file from
  its current global model (the *base*, kept as ``fl_global.onnx``) and the
  vector, and takes it as above only if the rebuilt bytes hash to the signed
  SHA-256 (``hash_mismatch`` otherwise). A box without a base of the
  publication's frame (first start, a new model shape, or a hash mismatch),
  or that sees an announcement on a model it lacks, subscribes to
  ``model/current`` until it has taken the file (``model_fallback``), so the
  whole file crosses the network only when the vector cannot serve.

Which message may come when is ``federation.box_round``'s transition table:
the client asks it before acting, so a message of the wrong mode or order is
refused with its reason and the round's phase never drifts. MQTT callbacks
only enqueue; one worker thread owns the round state, so a slow Shamir split
never stalls the network thread. Every refusal is logged and counted by
reason in ``counters``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeagent.atomic import write_atomic, write_json_atomic
from edgeagent.errors import EdgeAgentError, ModelError, ProtocolError
from edgeagent.federation.box_round import BoxEvent, BoxPhase, BoxRound, stage_event, transition
from edgeagent.fl import seal
from edgeagent.fl.constants import AGGREGATOR, BROADCAST, Key, Stage
from edgeagent.fl.identity import Identity, verify_identity_cert
from edgeagent.fl.messages import EnvelopeReceiver, Message, Sequencer, decode_unverified, encode
from edgeagent.fl.privacy import fedavg_payload, l2_clip, select
from edgeagent.fl.secagg import SecAggClient
from edgeagent.fl.secagg.auth import RoundSigner
from edgeagent.fl.secagg.beacon import AbortLog
from edgeagent.fl.secagg.client import PrivacyFloor
from edgeagent.fl.secagg.seeded import SeededClient
from edgeagent.fl.wire import (
    Announcement,
    ModelPublication,
    ParamsPublication,
    decode_model,
    decode_params,
    encode_hello,
    parse_announcement,
)
from edgeagent.model.graph import frame_sha256, get_params, parse_model, rebuild, sha256_hex
from edgeagent.model.meta import PARAM_GROUPS, ModelSpec, group_indices
from edgeagent.model.signing import verify_hash, verify_release
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message as MqttMessage
from edgeagent.transport.mqtt import MqttLink

log = logging.getLogger(__name__)

STATE_FILE = "fl_client.json"
#: The current global model's file: the base a parameter vector is rebuilt on.
BASE_FILE = "fl_global.onnx"
#: Stage messages that arrive before their announcement are held (bounded) and replayed.
EARLY_MAX = 16
#: ... and never more than this many bytes of them (a SETUP is about a kilobyte).
EARLY_MAX_BYTES = 256 * 1024
INBOX_MAX = 10_000
_STAGES = {s.value: s for s in Stage}


class UpdateSource(Protocol):
    """What the client needs from local training (``pipeline.learn.LocalLearner``)."""

    n_k: int

    def delta(self) -> np.ndarray: ...

    def reset_global(self, w_global: np.ndarray) -> None: ...


class LivenessSink(Protocol):
    """What the client reports to the daemon's liveness tracker (``daemon.health.Liveness``).

    A protocol, not the class: the daemon sits above federation and passes its tracker in.
    """

    def progress(self, name: str, n: int = 1, backlog: int | None = None) -> None: ...

    def idle(self, name: str, note: str = "") -> None: ...

    def backlog(self, name: str, depth: int) -> None: ...


class ModelSink(Protocol):
    """What the client needs from the model lifecycle (``model.lifecycle.ModelManager``)."""

    registry: Any

    def apply(self, data: bytes, source: str, signature: bytes | None = None) -> Any: ...


class FlClient:
    """Federated client Component (``start``/``stop``/``status``) for one box."""

    name = "federation"
    order = 30  # after the transport sinks, before the pipeline and sources

    def __init__(
        self,
        box_id: str,
        fleet: str,
        identity: Identity,
        ca: Any,
        learner: UpdateSource,
        link: MqttLink,
        *,
        manager: ModelSink | None = None,
        global_sha256: str | None = None,
        min_samples: int = 1,
        state_dir: Path | None = None,
        liveness: LivenessSink | None = None,
        allow_plaintext: bool = False,
        min_group_size: int = 3,
        floor: PrivacyFloor | None = None,
        revoked: frozenset[str] = frozenset(),
        spec: ModelSpec | None = None,
        max_reveal_aborts: int = 3,
        reveal_abort_window_s: float = 86_400.0,
    ) -> None:
        self.box_id = box_id
        #: the model's shapes, to turn an announced mask's group names into coordinates
        self.spec: ModelSpec | None = spec or getattr(learner, "spec", None)
        #: this round's masked coordinates (None: the whole vector)
        self._mask_idx: np.ndarray | None = None
        self.allow_plaintext = allow_plaintext
        self.min_group_size = min_group_size
        self.liveness = liveness
        self._handled = 0  # deliveries the worker finished (progress for the liveness tracker)
        self._handled_seen = 0
        self.fleet = fleet
        self.identity = identity
        self.ca = ca
        self.learner = learner
        self.manager = manager
        self.link = link
        self.min_samples = min_samples
        self.state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
        st = self._load()
        self.last_round = int(st.get("last_round", 0))
        self.global_version = int(st.get("global_version", -1))
        self.global_sha = st.get("global_sha256") or global_sha256
        # rounds aborted after this box revealed: persisted, so a restart does not reset them
        self.reveal_aborts = AbortLog(
            max_reveal_aborts, reveal_abort_window_s, st.get("reveal_aborts", [])
        )
        self.counters: Counter[str] = Counter()
        self.rounds: list[dict[str, Any]] = []
        self.last_apply: dict[str, Any] | None = None
        self.revoked = set(revoked)  # boxes this box refuses as neighbours (revocation)
        self._peer_certs: dict[tuple[str, bytes], Ed25519PublicKey] = {}
        signer = RoundSigner(identity.key, identity.cert_der, self._verify_peer)
        self.secagg = SecAggClient(box_id, signer, floor=floor)
        self.seeded = SeededClient(self.secagg)  # the round seed's commit-reveal, then SecAgg+
        self.beacon = self.seeded.beacon
        self.current: BoxRound | None = None
        self._early: list[tuple[int, MqttMessage]] = []
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        self.inbox: queue.Queue[MqttMessage | None] = queue.Queue(maxsize=INBOX_MAX)
        self._thread: threading.Thread | None = None
        self.link.on_message = self._enqueue
        self.link.on_connect = self._on_connect
        self.model_event = threading.Event()  # set whenever a global model was taken
        self._base: tuple[str, bytes] | None = None  # (sha256, file) of the base
        self._frames: dict[str, str] = {}  # sha256 -> frame of the base (computed on demand)

    # -- persistence ------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self.state_path is None or not self.state_path.exists():
            return {}
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_path, exc)
            return {}

    def _save(self) -> None:
        if self.state_path is not None:
            write_json_atomic(
                self.state_path,
                {
                    "last_round": self.last_round,
                    "global_version": self.global_version,
                    "global_sha256": self.global_sha,
                    "reveal_aborts": self.reveal_aborts.times,
                },
            )

    # -- component --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker, connect and subscribe to announcements, own stages and the model."""
        self._thread = threading.Thread(target=self._run, name="fl-client", daemon=True)
        self._thread.start()
        p = topics.prefix(self.fleet)
        for f in (f"{p}/round/+/announce", f"{p}/round/+/+/{self.box_id}",
                  topics.model_params(self.fleet)):  # fmt: skip
            self.link.subscribe(f)
        if self._base_model() is None:  # hashes only: onnx is not imported until a model comes
            self._want_full("no base model to rebuild parameter vectors on")
        self.link.connect()

    @property
    def running(self) -> bool:
        """True while the worker thread that owns the round state is alive."""
        return self._thread is not None and self._thread.is_alive()

    def tick(self) -> None:
        """Report to the liveness tracker: a dead or stuck worker stops the watchdog pings.

        Rounds come when the aggregator calls them, so an empty inbox is idle, not
        stuck; deliveries waiting while nothing is handled is what a hang looks like.
        """
        if self.liveness is None or not self.running:
            return
        done, waiting = self._handled, self.inbox.qsize()
        if done != self._handled_seen:
            self.liveness.progress(self.name, done - self._handled_seen, backlog=waiting)
            self._handled_seen = done
        elif waiting == 0:
            self.liveness.idle(self.name, "waiting for a round")
        else:
            self.liveness.backlog(self.name, waiting)

    def stop(self) -> None:
        self.link.close()
        if self._thread is not None:
            self.inbox.put(None)
            self._thread.join(5.0)
            self._thread = None

    def status(self) -> Mapping[str, Any]:
        return {
            "last_round": self.last_round,
            "model_version": self.global_version,
            "global_sha256": self.global_sha,
            "rounds": self.rounds[-20:],
            "last_apply": self.last_apply,
            "counters": {f"fl_{k}": v for k, v in self.counters.items()},
        }

    @property
    def phase(self) -> BoxPhase:
        """Where this box is in a round (``IDLE`` between rounds)."""
        return self.current.phase if self.current is not None else BoxPhase.IDLE

    # -- network thread ---------------------------------------------------------------------------

    def _on_connect(self, _session_present: bool) -> None:
        data = encode_hello(self.box_id, time.time(), self.identity.cert_der, self.identity.key)
        self.link.publish(topics.node(self.fleet, self.box_id, "hello"), data, retain=True)

    def _enqueue(self, msg: MqttMessage) -> None:
        try:
            self.inbox.put_nowait(msg)
        except queue.Full:
            self.counters["inbox_dropped"] += 1

    # -- worker -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            msg = self.inbox.get()
            if msg is None:
                return
            try:
                self.handle(msg)
            except EdgeAgentError as exc:  # refused input: counted, never fatal
                self.counters[getattr(exc, "reason", type(exc).__name__)] += 1
                log.warning("federation: refused %s: %s", msg.topic, exc)
            except Exception:
                self.counters["internal_error"] += 1
                log.exception("federation: failed on %s", msg.topic)
            self._handled += 1

    def handle(self, msg: MqttMessage) -> None:
        """Process one delivery (the worker calls this; tests may call it directly)."""
        t = topics.parse(msg.topic)
        if t.fleet != self.fleet:
            return  # a persistent session may still hold another fleet's subscriptions
        if t.area == "model":
            if t.kind == "params":
                self._on_params(msg.payload)
            else:
                self._on_model(msg.payload)
        elif t.area == "round" and t.round_id is not None:
            if t.stage == "announce" and t.to_node is None:
                self._on_announce(t.round_id, msg.payload)
            elif t.to_node == self.box_id and t.stage in _STAGES:
                self._on_stage(t.round_id, _STAGES[t.stage], msg)

    def _verify_peer(self, node: str, cert_der: bytes) -> Ed25519PublicKey:
        """A neighbour's identity key from its fleet certificate (named for it, not revoked)."""
        if node in self.revoked or node == AGGREGATOR:
            raise ProtocolError("revoked", f"{node!r} may not take part in rounds")
        key = self._peer_certs.get((node, cert_der))
        if key is None:
            key = verify_identity_cert(cert_der, self.ca, node)
            if len(self._peer_certs) > 4096:
                self._peer_certs.clear()
            self._peer_certs[(node, cert_der)] = key
        return key

    def _aggregator_key(self, cert_der: bytes) -> Ed25519PublicKey:
        key = self._keys.get(cert_der)
        if key is None:
            key = verify_identity_cert(cert_der, self.ca, AGGREGATOR)
            self._keys[cert_der] = key
        return key

    def _on_announce(self, round_id: int, payload: bytes) -> None:
        if not payload:
            # the aggregator cleared the announcement: the round is over or was abandoned
            if self.current is not None and self.current.round_id == round_id:
                self._end_round(BoxEvent.WITHDRAWN, "abandoned", "announcement withdrawn")
            return
        claimed = decode_unverified(payload)
        if claimed.round != round_id or claimed.dst != BROADCAST or claimed.src != AGGREGATOR:
            raise ProtocolError("malformed", "announcement header does not match its topic")
        ann = parse_announcement(claimed.body)
        key = self._aggregator_key(ann.cert_der)
        check = EnvelopeReceiver(self.box_id, {AGGREGATOR: key})
        check.begin_round(round_id, claimed.nonce)
        try:
            check.receive(payload)
        finally:
            for reason, n in check.counters.items():
                if reason != "accepted":
                    self.counters[reason] += n
        if round_id <= self.last_round or (
            self.current is not None and round_id <= self.current.round_id
        ):
            self.counters["stale_round"] += 1
            return
        if self.box_id not in ann.participants:
            self.counters["not_invited"] += 1
            return
        if not ann.secure_aggregation and not self.allow_plaintext:
            self.counters["plaintext_refused"] += 1
            log.warning("round %d: refused a plaintext round (allow_plaintext = false)", round_id)
            return
        if ann.group_size and ann.group_size < self.min_group_size:
            self.counters["group_too_small"] += 1
            log.warning(
                "round %d: refused groups of %d (this box's min_group_size is %d)",
                round_id,
                ann.group_size,
                self.min_group_size,
            )
            return
        if ann.model_sha256 != self.global_sha:
            self.counters["stale_model"] += 1
            have = (self.global_sha or "none")[:12]
            log.info("round %d is on model %s, this box has %s", round_id, ann.model_sha256, have)
            self._want_full(f"round {round_id} is on a model this box lacks")
            return
        if int(self.learner.n_k) < self.min_samples:
            self.counters["not_ready"] += 1
            log.info("round %d: only %d windows trained on", round_id, self.learner.n_k)
            return
        self._mask_idx = self._mask(ann.groups)
        if ann.secure_aggregation:
            try:
                self.reveal_aborts.check(time.time())
            except ProtocolError as exc:
                self.counters[str(exc.reason)] += 1
                log.warning("round %d: sat out: %s", round_id, exc.detail)
                return
        if self.current is not None:
            # a newer round supersedes the one in flight, which ends without a result
            self._end_round(BoxEvent.WITHDRAWN, "superseded", f"round {round_id} announced")
        rx = EnvelopeReceiver(self.box_id, {AGGREGATOR: key})
        rx.begin_round(round_id, claimed.nonce)
        join = BoxEvent.JOIN_SECAGG if ann.secure_aggregation else BoxEvent.JOIN_PLAIN
        phase = transition(self.phase, join)
        self.current = BoxRound(
            round_id,
            claimed.nonce,
            rx,
            Sequencer(),
            phase=phase,
            bytes_down=len(payload),
        )
        if not ann.secure_aggregation:
            self.counters["joined"] += 1
            self._send_update(ann)
            return
        # the graph is checked at SETUP, once the round seed exists (commit-reveal)
        self.seeded.announce(ann.participants, ann.group_size)
        self.counters["joined"] += 1
        log.info("round %d: joined with %d other boxes", round_id, len(ann.participants) - 1)
        early, self._early = self._early, []
        for r, m in early:
            if r == round_id:
                self.handle(m)

    def _mask(self, groups: tuple[str, ...]) -> np.ndarray | None:
        """The coordinates the announced mask sends; ``bad_mask`` if this box cannot tell.

        Every group named is the whole vector, which needs no layout; a subset
        needs this model's shapes, so that this box sends exactly the
        coordinates every other box sends and the sums line up.
        """
        if not groups or set(groups) == PARAM_GROUPS.keys():
            return None
        if self.spec is None:
            raise ProtocolError("bad_mask", f"groups {list(groups)} need the model's layout")
        try:
            return group_indices(self.spec, groups)
        except ModelError as exc:
            raise ProtocolError("bad_mask", str(exc)) from exc

    def _send_update(self, ann: Announcement) -> None:
        """Plaintext round: the clipped update and capped ``n_k``, sealed to the round key.

        Sealed (``fl.seal``) because TLS ends at the broker; signed like every envelope.
        """
        cur = self.current
        assert cur is not None
        try:
            clipped, _ = l2_clip(select(self.learner.delta(), self._mask_idx), ann.clip)
        except ValueError as exc:
            self._end_round(BoxEvent.REFUSED, "refused", str(exc))
            raise ProtocolError("bad_input", str(exc)) from exc
        cur.phase = transition(cur.phase, BoxEvent.UPDATE_SENT)
        n = min(int(self.learner.n_k), ann.n_cap)
        context = seal.info(cur.round_id, cur.nonce, self.box_id)
        body = {Key.UPDATE.value: seal.seal_update(clipped, n, ann.enc_pk, context)}
        out = Message(self.box_id, AGGREGATOR, cur.round_id, Stage.UPDATE, cur.seq.next(),
                      cur.nonce, body)  # fmt: skip
        data = encode(out, self.identity.key)
        cur.bytes_up += len(data)
        self.link.publish(topics.node(self.fleet, self.box_id, str(Stage.UPDATE)), data)
        log.info("round %d: sent a plaintext update (%d bytes)", cur.round_id, len(data))

    def _on_stage(self, round_id: int, stage: Stage, msg: MqttMessage) -> None:
        cur = self.current
        if cur is None or cur.round_id != round_id:
            if round_id > self.last_round and (cur is None or round_id > cur.round_id):
                held = sum(len(m.payload) for _, m in self._early)
                if held + len(msg.payload) > EARLY_MAX_BYTES:
                    raise ProtocolError("oversized", "early stage messages over the byte bound")
                self._early.append((round_id, msg))
                del self._early[:-EARLY_MAX]
            else:
                self.counters["stale_round"] += 1
            return
        cur.bytes_down += len(msg.payload)
        try:
            got = cur.receiver.receive(msg.payload)
        except ProtocolError:
            self.counters["refused_envelope"] += 1
            raise
        if got.duplicate:
            return
        m = got.message
        if m.stage is not stage:
            raise ProtocolError("topic_mismatch", f"{m.stage} body on a {stage} topic")
        event = stage_event(stage)
        after = transition(cur.phase, event)  # refuses a message of the other mode or order
        if cur.phase is BoxPhase.AWAITING_RESULT:  # plaintext: RESULT is all that comes
            self._end_round(event, str(m.body.get("status", "?")), str(m.body.get("reason", "")))
            return
        try:
            reply = self.seeded.handle(m.round, m.nonce, m.stage, m.body)
            if stage is Stage.SETUP:
                delta = select(self.learner.delta(), self._mask_idx)
                n_k = int(self.learner.n_k)
                payload = fedavg_payload(delta, n_k, self.secagg.clip, self.secagg.n_cap)
                self.secagg.set_input(payload)
        except (ProtocolError, ValueError) as exc:
            # the box cannot take part safely: it goes silent for this round (a dropout)
            self._end_round(BoxEvent.REFUSED, "refused", str(exc))
            raise ProtocolError(getattr(exc, "reason", "bad_input"), str(exc)) from exc
        if event is BoxEvent.RESULT:
            self._end_round(event, str(m.body.get("status", "?")), str(m.body.get("reason", "")))
            return
        cur.phase = after
        out = Message(self.box_id, AGGREGATOR, round_id, stage, cur.seq.next(), cur.nonce, reply)
        data = encode(out, self.identity.key)
        cur.bytes_up += len(data)
        self.link.publish(topics.node(self.fleet, self.box_id, str(stage)), data)
        log.debug("round %d: answered %s (%d bytes)", round_id, stage, len(data))

    def _end_round(self, event: BoxEvent, status: str, reason: str) -> None:
        """Record the round's outcome and return to ``IDLE`` through the table.

        A round that ends without a result after this box revealed its share of
        the seed is one draw the aggregator could have discarded: counted.
        """
        cur = self.current
        assert cur is not None
        if status != "ok" and cur.phase in (BoxPhase.REVEALED, BoxPhase.MASKING):
            self.reveal_aborts.record(time.time())
            self.counters["aborted_after_reveal"] += 1
        cur.phase = transition(cur.phase, event)
        rec = {
            "round": cur.round_id,
            "status": status,
            "reason": reason,
            "bytes_up": cur.bytes_up,
            "bytes_down": cur.bytes_down,
        }
        self.rounds.append(rec)
        del self.rounds[:-100]
        self.counters[f"round_{status}"] += 1
        self.last_round = cur.round_id
        self.current = None
        self._save()
        log.info("round %d ended: %s %s", cur.round_id, status, reason)

    # -- global model -----------------------------------------------------------------------------

    def _base_model(self) -> tuple[str, bytes] | None:
        """``(sha256, file)`` of the current global model, if this box holds its file.

        From memory, else ``fl_global.onnx`` in the state directory, else the
        model registry; only a file whose hash is ``global_sha`` serves.
        """
        sha = self.global_sha
        if sha is None:
            return None
        if self._base is not None and self._base[0] == sha:
            return self._base
        data: bytes | None = None
        if self.state_path is not None:
            path = self.state_path.parent / BASE_FILE
            try:
                data = path.read_bytes()
            except OSError:
                data = None
        if (data is None or sha256_hex(data) != sha) and self.manager is not None:
            reg = self.manager.registry
            rec = reg.find(sha) if hasattr(reg, "find") else None
            try:
                data = reg.load_bytes(rec) if rec is not None else None
            except (OSError, ModelError):
                data = None
        if data is None or sha256_hex(data) != sha:
            return None
        self._base = (sha, data)
        return self._base

    def _frame(self, sha: str, data: bytes) -> str | None:
        """The base's frame (``graph.frame_sha256``), cached; None if the file does not parse."""
        if sha not in self._frames:
            try:
                frame = frame_sha256(parse_model(data))
            except ModelError:
                return None
            self._frames = {sha: frame}  # one base at a time
        return self._frames[sha]

    def _keep_base(self, sha: str, data: bytes) -> None:
        """Remember the taken model's file as the base for the next parameter vector."""
        self._base = (sha, data)
        if self.state_path is not None:
            write_atomic(self.state_path.parent / BASE_FILE, data)

    def _want_full(self, why: str) -> None:
        """Subscribe to the retained full model (once) until one is taken."""
        topic = topics.model_current(self.fleet)
        if self.link.subscribed(topic):
            return
        self.counters["model_fallback"] += 1
        log.info("federation: taking the full model file: %s", why)
        self.link.subscribe(topic)

    def _check_release(self, pub: ModelPublication | ParamsPublication) -> Ed25519PublicKey | None:
        """Verify a publication's signatures and version; the aggregator key, or None when
        it is the model this box already has (nothing more to do)."""
        if pub.sha256 == self.global_sha and pub.version <= self.global_version:
            return None  # the retained copy of what we already have
        key = self._aggregator_key(pub.cert_der)
        try:
            verify_hash([key], pub.sha256, pub.signature)
            # the labels this box acts on (version order, round) must be signed too
            verify_release(key, self.fleet, pub.version, pub.round_id, pub.sha256, pub.release_sig)
        except ModelError as exc:
            raise ProtocolError("bad_model_signature", str(exc)) from exc
        if pub.version < self.global_version:
            raise ProtocolError(
                "stale_model", f"v{pub.version} is older than v{self.global_version}"
            )
        if pub.sha256 == self.global_sha:
            # the model the learner already trains from (e.g. the starting model as v0):
            # keep the local progress (n_k) instead of restarting from the same weights
            self.global_version = pub.version
            self._save()
            return None
        return key

    def _on_model(self, payload: bytes) -> None:
        if not payload:
            return
        self.counters["bytes_model"] += len(payload)
        pub = decode_model(payload)
        key = self._check_release(pub)
        if key is not None:
            self._take(pub.onnx, pub.sha256, pub.version, pub.round_id, pub.signature, key)
        elif pub.sha256 == self.global_sha and self._base_model() is None:
            self._keep_base(pub.sha256, pub.onnx)  # the model it has: its hash is the proof
        if self._base_model() is not None:
            self.link.unsubscribe(topics.model_current(self.fleet))

    def _on_params(self, payload: bytes) -> None:
        """A release as its parameter vector: rebuild on the base, check the signed hash."""
        if not payload:
            return
        self.counters["bytes_params"] += len(payload)
        pub = decode_params(payload)
        key = self._check_release(pub)
        if key is None:
            return
        base = self._base_model()
        if base is None or self._frame(*base) != pub.frame:
            self._want_full(f"v{pub.version} has another frame than this box's model")
            return
        data = rebuild(parse_model(base[1]), pub.vector())
        if sha256_hex(data) != pub.sha256:
            self._want_full(f"v{pub.version} rebuilt to another hash")
            raise ProtocolError(
                "hash_mismatch", f"v{pub.version} rebuilt from its vector does not match its hash"
            )
        self._take(data, pub.sha256, pub.version, pub.round_id, pub.signature, key)
        self.counters["models_rebuilt"] += 1

    def _take(self, onnx: bytes, sha: str, version: int, round_id: int, signature: bytes,
              key: Ed25519PublicKey) -> None:  # fmt: skip
        """Restart the learner from a verified global model and hand it to the lifecycle."""
        w = get_params(parse_model(onnx))
        self.learner.reset_global(w)
        self.global_sha, self.global_version = sha, version
        self._keep_base(sha, onnx)
        if self.manager is not None:
            reg = self.manager.registry
            if all(k.public_bytes_raw() != key.public_bytes_raw() for k in reg.trusted_keys):
                reg.trusted_keys.append(key)
            res = self.manager.apply(onnx, f"fl:round-{round_id}", signature)
            self.last_apply = res.as_dict() if hasattr(res, "as_dict") else {"result": str(res)}
            log.info("global model v%d: %s", version, self.last_apply)
        self.counters["models_taken"] += 1
        self._save()
        self.model_event.set()
