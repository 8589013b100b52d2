"""The aggregator service: wires scheduler, protocol, store and intake workers to MQTT.

Each part holds one job and this module only moves bodies between them and
the broker:

* ``federation.scheduler``: *when* (round lifecycle table, deadlines on an
  injectable clock) and *who* (up to ``max_boxes`` drawn at random from boxes
  that said a verified hello and are online);
* ``federation.protocols``: *how* a round's replies become a mean, SecAgg+
  (one masked-sum instance per group) or plaintext (sealed single updates),
  behind one interface, so nothing here branches on the mode;
* ``federation.round_record``: the round in flight (identity, envelopes,
  timing, traffic);
* ``federation.store``: ``aggregator.json``, content-addressed model files and
  the signed ``model/current`` publication;
* ``federation.holdout``: the held-out check a candidate model must pass;
* ``federation.intake_workers``: the local intake processes and their control.

A round: the signed announcement goes out retained with the mode's terms and
the first stage's bodies per box on ``round/<r>/<stage>/<box>``; every reply
on ``node/<box>/<stage>`` must come from the topic's box (broker ACL) *and*
carry that box's signature (envelope), refusals are counted per reason and
never reach the protocol; a stage closes when every expected reply is in or
its deadline passes (silent boxes count as dropped); at the end the mean is
applied with the server step, checked on held-out data, versioned, signed and
published, and the round's DP step is accounted.

Each round trains and sends a fixed parameter mask (``aggregator.train_groups``,
named in the signed announcement): boxes send only those coordinates, clipped
and noised, and the mean is scattered back so the other coordinates keep the
global's values. A DP round is started only if epsilon after the planned rounds
stays within ``aggregator.epsilon_budget``; otherwise it is refused, logged,
counted and recorded for ``aggregator status``, and the loop ends.

All MQTT callbacks only enqueue; one thread owns the state.
"""

from __future__ import annotations

import logging
import math
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.errors import ModelError, ProtocolError, TransportError
from edgeagent.federation import holdout
from edgeagent.federation.accountant import SAMPLING, SAMPLING_RATE
from edgeagent.federation.intake import PARTIAL_KIND, partial_topic
from edgeagent.federation.intake_workers import IntakeWorkers
from edgeagent.federation.protocols import PlaintextProtocol, RoundProtocol, SecAggProtocol
from edgeagent.federation.round_record import Round, RoundTiming, RoundTraffic
from edgeagent.federation.scheduler import BoxInfo, Scheduler, choose, eligible
from edgeagent.federation.store import AggregatorStore, read_state, status_report
from edgeagent.fl.aggregate import apply_update
from edgeagent.fl.constants import AGGREGATOR, BROADCAST, NONCE_BYTES, STAGE_ORDER, Stage
from edgeagent.fl.identity import Identity, load_ca, load_identity, verify_identity_cert
from edgeagent.fl.messages import EnvelopeReceiver, Message, decode_unverified, encode
from edgeagent.fl.privacy import scatter
from edgeagent.fl.secagg.auth import CertBook
from edgeagent.fl.wire import Announcement, announcement_body, decode_hello, parse_status
from edgeagent.model.graph import (
    get_params,
    parse_model,
    read_meta,
    set_params,
    sha256_hex,
    to_bytes,
)
from edgeagent.model.meta import PARAM_GROUPS, group_indices
from edgeagent.ops.config import Config
from edgeagent.ops.pki import TlsFiles
from edgeagent.ops.revocation import read_deny_list
from edgeagent.transport import topics
from edgeagent.transport.dedupe import SeenIds
from edgeagent.transport.mqtt import Message as MqttMessage
from edgeagent.transport.mqtt import MqttLink

__all__ = ["Aggregator", "BoxInfo", "read_state", "status_report"]

log = logging.getLogger(__name__)

#: Message ids remembered to drop repeats: days of every box's outbox messages.
SEEN_CAPACITY = 100_000
#: Sampling rate the DP accountant composes rounds with (``accountant.SAMPLING_RATE``).
DP_SAMPLING_RATE = SAMPLING_RATE
#: Seconds before a round the DP budget refused is checked again, for a caller that keeps
#: ticking after ``done`` (the projection cannot change while no round runs).
BUDGET_RECHECK_S = 60.0

#: Messages queued from the network thread; beyond this the oldest are dropped (counted).
INBOX_MAX = 100_000
#: Box topics the aggregator reads itself when intake workers take the masked vectors.
_OWN_KINDS = (
    "hello",
    "status",
    Stage.COMMIT.value,
    Stage.REVEAL.value,
    Stage.SETUP.value,
    Stage.SHARE_KEYS.value,
    Stage.CONSISTENCY.value,
    Stage.UNMASK.value,
)
_STAGES = {s.value: s for s in Stage}


class Aggregator:
    """Schedules rounds, routes their stages over MQTT and publishes signed global models.

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
        self.identity: Identity = load_identity(
            fed.cert_file, self.ca, AGGREGATOR, fed.signing_key_file
        )
        #: revoked boxes (``edgeagent pki revoke``): hellos refused, never invited
        self.revoked = read_deny_list(fed.revoked_file)
        self.clip = float(fed.clip_norm)
        self.noise_multiplier = float(fed.noise_multiplier)
        if not agg.secure_aggregation and agg.noise == "distributed":
            log.info(
                "plaintext rounds (secure_aggregation = false): DP noise is added centrally "
                "by the aggregator; distributed noise needs masking"
            )
        self.boxes: dict[str, BoxInfo] = {}
        # which identity certificates each box already holds, across rounds (SecAgg+
        # sends those as fingerprints)
        self.cert_book = CertBook()
        self.refused: Counter[str] = Counter()  # outside rounds (hello, topics)
        self.round: Round | None = None
        self.inbox: queue.Queue[MqttMessage] = queue.Queue(maxsize=INBOX_MAX)
        self.inbox_dropped = 0
        #: Boxes send what leaves their outbox at least once, each message with a msg-id;
        #: a repeat is dropped here, before any round sees it, and counted apart from
        #: refusals (a redelivery is not an attack). Round replies carry no msg-id: the
        #: envelope's round, nonce and sequence number refuse their repeats (``replay``).
        self.seen = SeenIds(capacity=SEEN_CAPACITY)
        self.duplicates = 0
        self.bytes_in_total = 0
        self.bytes_out_total = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self.store = AggregatorStore(self.state_dir, agg.dp_delta)
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
        self.workers: IntakeWorkers | None = None
        if agg.intake_workers:
            self.workers = IntakeWorkers(config, self.state_dir, self.identity, self.link)
        self.scheduler = Scheduler(agg, self.clock())
        #: this round's parameter mask: (group names, indices or None = all, model size)
        self.mask: tuple[tuple[str, ...], np.ndarray | None, int] | None = None
        self._record_dp()

    # -- views kept for callers: the state dict, the model, the next start ------------------------

    @property
    def state(self) -> dict[str, Any]:
        return self.store.state

    @property
    def model_bytes(self) -> bytes | None:
        return self.store.model_bytes

    @property
    def next_round_at(self) -> float:
        return self.scheduler.next_round_at

    @next_round_at.setter
    def next_round_at(self, t: float) -> None:
        self.scheduler.next_round_at = t

    def epsilon(self) -> float | None:
        """Privacy spent so far at ``dp_delta`` (None when rounds ran without noise)."""
        return self.store.epsilon()

    def eligible(self) -> list[str]:
        """Boxes with a verified identity that are online now."""
        return eligible(self.boxes)

    # -- model ------------------------------------------------------------------------------------

    def _publish_model(self) -> None:
        self.bytes_out_total += self.store.publish(self.link, self.fleet, self.identity)

    def ensure_model(self) -> None:
        """Make sure a global model exists (round 0 from ``initial_model``) and is published."""
        if self.store.model_bytes is None:
            path = self.policy.initial_model
            if path is None:
                raise ModelError("no global model yet: set aggregator.initial_model (ONNX)")
            data = Path(path).read_bytes()
            parse_model(data)
            self.store.store_model(data, 0, 0, self.evaluate(data))
            self.store.save()
        self._publish_model()

    def evaluate(self, data: bytes) -> dict[str, Any]:
        """Loss of a model on the held-out windows (``aggregator.holdout``), if configured."""
        return holdout.evaluate(self.policy.holdout, data)

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
        if self.workers is not None:
            self.workers.start()
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
        self.store.save()
        dp = self.state["dp"]
        if self.noise_multiplier > 0:
            log.info("DP: z = %g, %s; epsilon spent %s at delta %g, budget %s, %s round(s) fit",
                     self.noise_multiplier, SAMPLING, dp["epsilon_spent"], dp["delta"],
                     dp["epsilon_budget"], dp["rounds_left"])  # fmt: skip
        else:
            log.info("DP off (federation.noise_multiplier = 0): rounds carry no epsilon claim")

    def close(self) -> None:
        if self.round is not None:
            log.warning("stopping during round %d; it is abandoned", self.round.round_id)
        self.link.close()
        if self.workers is not None:
            self.workers.stop()

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
        try:
            msg: MqttMessage | None = self.inbox.get(timeout=self.scheduler.wait(self.clock()))
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
        """Dispatch one message; whatever it holds, it can only be refused, never crash us.

        Hellos and statuses are retained and partly unsigned: an exception that
        escaped here would come back at every restart. So every handler's
        failure is a counted refusal of that one message. A message id seen
        before (an outbox resend after a kill) is dropped and counted first.
        """
        mid = msg.msg_id
        if mid is not None and not self.seen.first(mid):
            self.duplicates += 1
            return
        try:
            self._dispatch(msg)
        except ProtocolError as exc:
            self._refuse_outside(exc.reason, f"{msg.topic}: {exc.detail}")
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
            self._refuse_outside("malformed", f"{msg.topic}: {type(exc).__name__}: {exc}")

    def _dispatch(self, msg: MqttMessage) -> None:
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
        self.store.count_refused(reason)
        log.warning("aggregator refused %s: %s", reason, detail)

    def _on_hello(self, node: str, payload: bytes) -> None:
        if not payload:  # retained hello cleared: the box left the fleet
            self.boxes.pop(node, None)
            return
        if node in self.revoked:
            self.boxes.pop(node, None)
            self._refuse_outside("revoked", f"hello from revoked box {node}")
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
            self.boxes[node] = BoxInfo(key, True, hello.t, hello.cert_der)
        else:
            info.key, info.online, info.hello_t = key, True, hello.t
            info.cert = hello.cert_der

    def _on_status(self, node: str, payload: bytes) -> None:
        try:
            state = parse_status(payload)  # bounded: unsigned and retained
        except ProtocolError as exc:
            self._refuse_outside(exc.reason, f"status of {node}: {exc.detail}")
            return
        info = self.boxes.get(node)
        if info is not None:
            info.online = state != "offline"

    def _on_partial(self, payload: bytes) -> None:
        r = self.round
        partials = r.protocol.partials if r is not None else None
        if r is None or partials is None:
            self._refuse_outside("late_partial", "partial sum with no collect stage open")
            return
        self.bytes_in_total += len(payload)
        t0 = time.perf_counter()
        partials.receive(payload)  # refusals are counted by the collector
        r.traffic.server_seconds += time.perf_counter() - t0

    def _on_reply(self, node: str, stage: Stage, payload: bytes) -> None:
        r = self.round
        if r is None:
            self._refuse_outside("out_of_round", f"{stage} from {node} with no round open")
            return
        r.traffic.bytes_in[node] += len(payload)
        self.bytes_in_total += len(payload)
        t0 = time.perf_counter()
        try:
            if len(payload) > r.receiver.max_bytes:  # size first, before any decoding
                raise ProtocolError("oversized", f"{len(payload)} bytes")
            claimed = decode_unverified(payload)
            if claimed.src != node:
                # relayed or forged under another box's name: the topic is the broker's word
                raise ProtocolError("impersonation", f"{claimed.src!r} on {node}'s topic")
            got = r.receiver.receive(payload)
            if got.message.stage is not stage:
                raise ProtocolError("topic_mismatch", f"{got.message.stage} on a {stage} topic")
            if got.duplicate:
                return
            r.protocol.receive(node, stage, got.message.body)
            log.debug("round %d: %s from %s accepted", r.round_id, stage, node)
        except ProtocolError as exc:
            r.traffic.refused[exc.reason] += 1
            log.warning("round %d: refused %s from %s: %s", r.round_id, stage, node, exc)
        finally:
            r.traffic.server_seconds += time.perf_counter() - t0

    def _publish(self, topic: str, msg: Message, retain: bool = False) -> None:
        data = encode(msg, self.identity.key)
        assert self.round is not None
        if msg.dst != BROADCAST:
            self.round.traffic.bytes_out[msg.dst] += len(data)
        self.bytes_out_total += len(data)
        self.link.publish(topic, data, retain=retain)

    # -- privacy budget and parameter mask ---------------------------------------------------

    def _round_mask(self, model_bytes: bytes) -> tuple[tuple[str, ...], np.ndarray | None, int]:
        """The round's mask from ``train_groups``: names, indices (None = all), model size.

        Derived from the global model's own layout, the same layout every box
        derives the indices from, so each box sends the same coordinates.
        """
        model = parse_model(model_bytes)
        spec = read_meta(model).spec
        size = int(get_params(model).size)
        groups = tuple(sorted(self.policy.train_groups))
        if set(groups) == PARAM_GROUPS.keys():
            return groups, None, size
        return groups, group_indices(spec, groups), size

    def _planned_rounds(self) -> int:
        """Rounds the budget must still cover: those left of ``aggregator.rounds``, else one."""
        limit = self.policy.rounds
        return max(1, limit - self.store.completed()) if limit else 1

    def _budget_refuses(self, now: float) -> bool:
        """True (logged, counted, recorded) if the next DP round would break the budget.

        A round with noise is refused when epsilon after the planned rounds
        would exceed ``aggregator.epsilon_budget`` at ``dp_delta``, and also
        after any round released without noise: no epsilon holds after one.
        Rounds without noise (``noise_multiplier = 0``) are no DP rounds: the
        status says so, and they run. A refusal ends the run loop: epsilon only
        changes when rounds run, so only a new configuration can change it.
        """
        z, budget = self.noise_multiplier, self.policy.epsilon_budget
        if z <= 0 or math.isinf(budget):
            return False
        planned = self._planned_rounds()
        if self.store.epsilon() is None:
            projected = math.inf
            why = "a round was released without noise before: no epsilon claim holds"
        else:
            projected = self.store.accountant.epsilon_after(z, DP_SAMPLING_RATE, planned)
            if projected <= budget:
                self.state.setdefault("dp", {}).pop("refused", None)
                return False
            fit = self.store.accountant.rounds_within(budget, z, DP_SAMPLING_RATE)
            why = (
                f"epsilon after {planned} more round(s) at z = {z:g} would be {projected:.2f} > "
                f"budget {budget:g} (delta {self.policy.dp_delta:g}); {fit} more round(s) fit: "
                "lower aggregator.rounds, raise federation.noise_multiplier or "
                "aggregator.epsilon_budget"
            )
        dp = self.state.setdefault("dp", {})
        dp["refusals"] = int(dp.get("refusals", 0)) + 1
        dp["refused"] = {
            "round": int(self.state["next_round"]),
            "at": time.time(),
            "projected_epsilon": None if math.isinf(projected) else projected,
            "reason": why,
        }
        self._record_dp()
        log.error("round %d not started (DP budget): %s; the aggregator stops starting rounds",
                  self.state["next_round"], why)  # fmt: skip
        self.scheduler.next_round_at = now + max(self.policy.round_interval_s, BUDGET_RECHECK_S)
        # nothing can change the projection until the configuration does: the loop ends
        # (``aggregator run`` exits 0, so systemd's on-failure restart does not loop on it)
        self.done.set()
        return True

    def _record_dp(self) -> None:
        """Persist what ``aggregator status`` shows about privacy: spent, budget, rounds left."""
        z, budget = self.noise_multiplier, self.policy.epsilon_budget
        eps = self.store.epsilon()
        dp = self.state.setdefault("dp", {})
        dp.update(
            noise_multiplier=z,
            sampling_rate=DP_SAMPLING_RATE,
            sampling=SAMPLING,
            delta=self.policy.dp_delta,
            epsilon_budget=None if math.isinf(budget) else budget,
            epsilon_spent=eps,
            planned_rounds=self.policy.rounds or None,
            train_groups=list(self.policy.train_groups),
        )
        if z <= 0 or eps is None or math.isinf(budget):
            dp["budget_left"] = dp["rounds_left"] = None
        else:
            dp["budget_left"] = max(0.0, budget - eps)
            dp["rounds_left"] = self.store.accountant.rounds_within(budget, z, DP_SAMPLING_RATE)
        self.store.save()

    # -- rounds -----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Open a round when due, close a stage when complete or past its deadline."""
        now = self.clock()
        if self.workers is not None and self.workers.procs:
            self.workers.check()
        r = self.round
        if r is None:
            if self.scheduler.limit_reached(self.store.completed()):
                self.done.set()
                return
            if now >= self.scheduler.next_round_at:
                ready = self.eligible()
                if self.scheduler.due(now, len(ready)) and not self._budget_refuses(now):
                    self.start_round(ready)
            return
        if self.scheduler.stage_closes(now, bool(r.pending())):
            self._close_stage(r, now)

    def _protocol(self, round_id: int, nonce: bytes, chosen: tuple[str, ...], params: int,
                  traffic: RoundTraffic) -> RoundProtocol:  # fmt: skip
        """The round's mode, fixed by ``aggregator.secure_aggregation`` for the round's life."""
        common: dict[str, Any] = {
            "round_id": round_id,
            "nonce": nonce,
            "participants": chosen,
            "params": params,
            "policy": self.policy,
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
        }
        if not self.policy.secure_aggregation:
            return PlaintextProtocol(traffic=traffic, reputation=self.store.reputation, **common)
        take_partials = self.workers is not None and bool(self.workers.procs)
        key = self.identity.public_key if take_partials else None
        keys = {n: self.boxes[n].key for n in chosen}
        certs = {n: self.boxes[n].cert for n in chosen if self.boxes[n].cert}
        return SecAggProtocol(intake_key=key, box_keys=keys, box_certs=certs,
                              cert_book=self.cert_book, **common)  # fmt: skip

    def start_round(self, ready: list[str]) -> None:
        """Select participants, announce the round (retained) and send each box its first stage."""
        assert self.store.model_bytes is not None
        p = self.policy
        chosen = tuple(choose(ready, p.max_boxes))
        round_id = int(self.state["next_round"])
        nonce = secrets.token_bytes(NONCE_BYTES)
        groups, idx, size = self.mask = self._round_mask(self.store.model_bytes)
        params = size if idx is None else int(idx.size)  # what every box sends
        traffic = RoundTraffic()
        protocol = self._protocol(round_id, nonce, chosen, params, traffic)
        rx = EnvelopeReceiver(AGGREGATOR, {n: self.boxes[n].key for n in chosen})
        rx.begin_round(round_id, nonce)
        now = self.clock()
        self.scheduler.start(now)
        r = self.round = Round(
            round_id=round_id,
            nonce=nonce,
            participants=chosen,
            receiver=rx,
            timing=RoundTiming(
                started=now,
                started_wall=time.time(),
                stage_started=now,
            ),
            traffic=traffic,
            protocol=protocol,
        )
        self.store.begin_round(round_id, list(chosen), time.time(), protocol.recorded_groups())
        log.info("round %d: announcing to %d boxes in %s", round_id, len(chosen),
                 protocol.describe())  # fmt: skip
        terms = protocol.terms()
        ann = Announcement(
            participants=chosen,
            model_sha256=sha256_hex(self.store.model_bytes),
            stage_timeout_s=p.stage_timeout_s,
            cert_der=self.identity.cert_der,
            group_size=terms.group_size,
            secure_aggregation=terms.secure_aggregation,
            clip=terms.clip,
            n_cap=terms.n_cap,
            enc_pk=terms.enc_pk,
            groups=groups,
        )
        body = announcement_body(ann)
        msg = Message(AGGREGATOR, BROADCAST, round_id, Stage.SETUP, r.seq.next(), nonce, body)
        self._publish(topics.announce(self.fleet, round_id), msg, retain=True)
        t0 = time.perf_counter()
        bodies = protocol.start()
        r.traffic.server_seconds += time.perf_counter() - t0
        if bodies:
            self._send_stage(protocol.first_stage, bodies)

    def _send_stage(self, stage: Stage, bodies: dict[str, dict[str, Any]]) -> None:
        r = self.round
        assert r is not None
        for dst, body in sorted(bodies.items()):
            t0 = time.perf_counter()
            msg = Message(AGGREGATOR, dst, r.round_id, stage, r.seq.next(), r.nonce, body)
            r.traffic.server_seconds += time.perf_counter() - t0
            self._publish(topics.round_topic(self.fleet, r.round_id, str(stage), dst), msg)

    def _close_stage(self, r: Round, now: float) -> None:
        """Close the open stage: drain the intake workers, or send the next stage, or finish."""
        t0 = time.perf_counter()
        close = r.protocol.close_stage()
        r.traffic.server_seconds += time.perf_counter() - t0
        if close.close_intake:
            assert self.workers is not None
            self.workers.close(r.round_id, r.nonce)
        if close.drain:
            self.scheduler.drain(now)
            return
        assert close.closed is not None
        r.timing.close_stage(str(close.closed), now)
        if not close.finished:
            self.scheduler.advance(now)
        if close.open_intake is not None:  # before the boxes get their COLLECT_MASKED bodies
            assert self.workers is not None
            keys = {n: r.receiver.keys[n] for n in close.open_intake.participants}
            self.workers.open(r.round_id, r.nonce, close.open_intake.dim, keys,
                              close.open_intake.bits)  # fmt: skip
        for stage in sorted(close.sends, key=STAGE_ORDER.index):
            self._send_stage(stage, close.sends[stage])
        if close.finished:
            self._finish(r)

    def _finish(self, r: Round) -> None:
        """Tally the round, apply its mean (evaluate, version, sign, publish), record it."""
        rec = r.base_record()
        if self.mask is not None:
            groups, idx, size = self.mask
            rec["mask"] = {"groups": list(groups), "sent": size if idx is None else int(idx.size),
                           "params": size}  # fmt: skip
        released = r.protocol.tally(rec)
        if "status" not in rec:
            try:
                mean, sum_n = r.protocol.mean(rec)
                rec["sum_n"] = sum_n
                rec["update_norm"] = float(np.linalg.norm(mean))
                self._apply(r.round_id, mean, rec)
            except (ValueError, ModelError) as exc:
                rec.update(status="aborted", reason=f"bad_sum: {exc}")
                log.warning("round %d: cannot apply the %s: %s", r.round_id, r.protocol.inputs,
                            exc)  # fmt: skip
        elif rec["status"] == "aborted":
            log.warning("round %d aborted: %s", r.round_id, rec["reason"])
        results = r.protocol.results(rec)
        if results:
            self._send_stage(Stage.RESULT, results)
        self._conclude(r, rec, released)

    def _conclude(self, r: Round, rec: dict[str, Any], released: bool) -> None:
        """Account privacy if anything was released, persist the record, end the round."""
        if released:
            # q = 1: the participants are a fixed-size draw from the boxes online now (all of
            # them when there are at most max_boxes) and their list is published, which is no
            # Poisson sampling of the fleet; amplification by sampling is not claimed
            self.store.account(self.noise_multiplier, DP_SAMPLING_RATE)
        eps = self.store.epsilon()
        rec["epsilon"] = eps
        self._record_dp()
        rec["seconds"] = round(self.clock() - r.timing.started, 4)  # incl. model build + publish
        rec.setdefault("status", "completed")
        self.store.end_round(rec)
        # The round is over: its retained announcement must not lure boxes back in.
        self.link.publish(topics.announce(self.fleet, r.round_id), b"", retain=True)
        self.round = None
        self.scheduler.finish(self.clock())
        log.info("round %d %s (eps=%s)", r.round_id, rec["status"], eps)

    def _apply(self, round_id: int, mean: np.ndarray, rec: dict[str, Any]) -> None:
        """Server step, held-out check, then a new version stored, signed and published."""
        assert self.store.model_bytes is not None
        model = parse_model(self.store.model_bytes)
        w = get_params(model)
        idx = self.mask[1] if self.mask is not None else None
        # the coordinates the round did not send keep the global's values exactly
        w_new = apply_update(w, scatter(mean, idx, int(w.size)), self.policy.server_lr)
        candidate = to_bytes(set_params(model, w_new))
        ev = self.evaluate(candidate)
        rec["eval"] = ev
        why = holdout.rejection(ev, self.store.current_eval(), self.policy.eval_tolerance)
        if why is not None:
            rec.update(status="rejected", reason=why)
            log.warning("round %d: candidate rejected on held-out data", round_id)
            return
        version = self.store.version() + 1
        self.store.store_model(candidate, version, round_id, ev)
        rec["model_version"] = version
        rec["model_sha256"] = self.state["model"]["sha256"]
        self.store.save()
        self._publish_model()
