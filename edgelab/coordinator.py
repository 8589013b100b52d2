"""Coordinator for hierarchical secure aggregation: partial sums in, one unmasked total out.

With intake workers (``fl.intake``) taking the masked vectors through a
shared subscription, the process that owns the ``SecAggServer`` never sees a
masked vector itself: it receives the small stage replies (SETUP,
SHARE_KEYS, UNMASK: O(log n) entries each) and the workers' partial sums,
which it folds in with ``SecAggServer.absorb``. Masked vectors are additive
mod 2^32, so the combined partial sums are exactly the masked sum a single
aggregator would have built, and unmasking is unchanged.

Two layers, as everywhere in ``fl``:

* ``PartialCollector`` (pure): verifies a worker's signed partial sum and
  absorbs it. A partial that names a box already counted (a QoS 1
  redelivery that reached another worker), a box not expected, or arrives
  after COLLECT_MASKED closed is refused whole and counted; the boxes in it
  are then treated as dropouts, which SecAgg+ recovers from by
  reconstructing their mask keys, so a refused partial can cost accuracy of
  one round but never correctness or privacy.
* ``Coordinator`` (I/O): drives one ``SecAggServer`` round over MQTT for a
  known set of boxes: draws the round seed by commit-reveal
  (``fl.secagg.beacon``; a silent box there aborts the round), opens
  intake on the workers, routes stage bodies to
  ``round/<r>/<stage>/<box>``, verifies replies, closes stages on
  completion or deadline. The production aggregator (``fl.aggregator``)
  can use ``PartialCollector`` the same way: subscribe everything but
  ``node/+/collect_masked``, open intake with ``intake.encode_control`` and
  feed ``node/aggregator/partial`` payloads to ``PartialCollector.receive``.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeagent.errors import ProtocolError, RoundAborted, TransportError
from edgeagent.federation.intake import (
    OP_CLOSE,
    OP_OPEN,
    PARTIAL_KIND,
    control_topic,
    encode_control,
    partial_topic,
)
from edgeagent.federation.partials import CLOSE_GRACE_S, PartialCollector
from edgeagent.fl.constants import AGGREGATOR, Key, Stage
from edgeagent.fl.identity import known_key_verifier
from edgeagent.fl.messages import EnvelopeReceiver, Message, Sequencer, decode_unverified, encode
from edgeagent.fl.secagg import RoundConfig, RoundResult, SecAggServer
from edgeagent.fl.secagg.auth import CertBook
from edgeagent.fl.secagg.beacon import BeaconServer
from edgeagent.transport import topics

log = logging.getLogger(__name__)

#: A stage may close before its deadline once this fraction of the expected
#: replies is in and nothing new arrived for a while (see ``idle_close_s``):
#: silent boxes then cost a short wait instead of the whole stage timeout.
DEFAULT_QUORUM = 0.8
#: ... "a while" = max(this, a quarter of the time the stage has run so far),
#: so a slow but steady stage is never cut short by a momentary lull.
DEFAULT_IDLE_CLOSE_S = 2.0
#: Stage replies the coordinator takes itself (masked vectors go to the workers).
COORDINATOR_STAGES = (
    Stage.COMMIT,
    Stage.REVEAL,
    Stage.SETUP,
    Stage.SHARE_KEYS,
    Stage.CONSISTENCY,
    Stage.UNMASK,
)


@dataclass
class CoordinatorReport:
    """What one coordinated round did (times in seconds, sizes in bytes)."""

    result: RoundResult | None
    abort: str | None
    wall_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    server_cpu_s: float = 0.0  # SecAggServer + envelope work in the coordinator process
    bytes_out: int = 0  # envelopes the coordinator published (routed stages + control)
    bytes_in: int = 0  # replies and partials it received
    refused: Counter[str] = field(default_factory=Counter)
    partials: Counter[str] = field(default_factory=Counter)  # boxes absorbed per worker


class Coordinator:
    """Runs SecAgg+ rounds over MQTT with the masked-vector intake delegated to workers.

    ``link`` is an ``MqttLink`` (aggregator identity) built with this
    object's ``enqueue`` as its ``on_message``; use ``Coordinator.with_link``.
    """

    def __init__(
        self,
        fleet: str,
        identity_key: Ed25519PrivateKey,
        *,
        stage_timeout_s: float = 30.0,
        quorum: float = DEFAULT_QUORUM,
        idle_close_s: float = DEFAULT_IDLE_CLOSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < quorum <= 1.0 or idle_close_s <= 0:
            raise ValueError("quorum must be in (0, 1] and idle_close_s > 0")
        self.quorum = quorum
        self.idle_close_s = idle_close_s
        self.fleet = fleet
        self.key = identity_key
        self.pub = identity_key.public_key()
        self.stage_timeout_s = stage_timeout_s
        self.clock = clock
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.link: Any = None
        self._control_seq = Sequencer()
        self.cert_book = CertBook()  # certificates each box holds, across rounds

    def enqueue(self, msg: Any) -> None:
        """paho's thread: hand over and return."""
        self.inbox.put(msg)

    def start(self, link: Any, timeout: float = 10.0) -> None:
        """Connect ``link`` and subscribe to stage replies and partial sums."""
        self.link = link
        link.connect(timeout)
        filters = [topics.node_filter(self.fleet, s.value) for s in COORDINATOR_STAGES]
        filters.append(partial_topic(self.fleet))
        for f in filters:
            code = link.subscribe(f).wait(timeout)
            if code >= 0x80:
                raise TransportError("subscribe_refused", f"{f}: {code:#04x}")

    def _publish(self, topic: str, data: bytes, report: CoordinatorReport) -> None:
        report.bytes_out += len(data)
        self.link.publish(topic, data)

    def run_round(
        self, config: RoundConfig, box_keys: Mapping[str, Ed25519PublicKey]
    ) -> CoordinatorReport:
        """One whole round; returns when RESULT went out (completed or aborted)."""
        t0 = self.clock()
        report = CoordinatorReport(result=None, abort=None)
        cpu = time.process_time()
        rx = EnvelopeReceiver(AGGREGATOR, {n: box_keys[n] for n in config.participants})
        rx.begin_round(config.round_id, config.nonce)
        seq = Sequencer()
        keys = {n: box_keys[n] for n in config.participants}
        ctl = encode_control(
            OP_OPEN,
            config.round_id,
            config.nonce,
            self._control_seq.next(),
            self.key,
            dim=config.dim,
            box_keys=keys,
        )
        report.bytes_out += len(ctl)
        self.link.publish(control_topic(self.fleet), ctl).wait(10.0)

        def send(stage: Stage, bodies: Mapping[str, Mapping[str, Any]]) -> None:
            for dst, body in sorted(bodies.items()):
                msg = Message(
                    AGGREGATOR, dst, config.round_id, stage, seq.next(), config.nonce, body
                )
                topic = topics.round_topic(self.fleet, config.round_id, str(stage), dst)
                self._publish(topic, encode(msg, self.key), report)

        # the round seed first (commit-reveal): the graph is keyed by it, not by the nonce
        beacon = BeaconServer(config.round_id, config.nonce, config.participants)
        send(Stage.COMMIT, beacon.start())
        while beacon.stage in (Stage.COMMIT, Stage.REVEAL):
            stage, stage_t0 = beacon.stage, self.clock()
            deadline = stage_t0 + self.stage_timeout_s
            while beacon.pending() and self.clock() < deadline:
                try:
                    msg = self.inbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                self._on_message(msg, beacon, rx, None, report)
            report.stage_s[str(stage)] = round(self.clock() - stage_t0, 4)
            try:
                bodies = beacon.advance()
            except RoundAborted as exc:
                # a silent participant: no seed from a subset, the round ends here
                report.abort = exc.reason
                aborted = {Key.STATUS.value: "aborted", Key.REASON.value: exc.reason}
                send(Stage.RESULT, {n: aborted for n in config.participants})
                self._close_intake(config, report)
                report.server_cpu_s = time.process_time() - cpu
                report.wall_s = self.clock() - t0
                return report
            if bodies:
                send(Stage.REVEAL, bodies)
        # the round is over the committed boxes (a box silent at COMMIT is left out)
        n = len(beacon.committed)
        config = replace(
            config,
            participants=beacon.committed,
            seed=beacon.seed,
            graph={},
            degree=min(config.degree, n - 1),
            threshold=-1 if n - 1 < config.degree else config.threshold,
            min_survivors=min(config.min_survivors, n),
        )
        server = SecAggServer(config, known_key_verifier(box_keys), self.cert_book)
        collector = PartialCollector(server, self.pub)
        reveals = beacon.reveals_field()
        send(Stage.SETUP, {n: {**b, **reveals} for n, b in server.start().items()})
        stage_t0 = self.clock()
        deadline = stage_t0 + self.stage_timeout_s
        closing_at: float | None = None
        expected = len(config.participants)
        last_pending, last_change = expected, stage_t0
        while server.stage is not Stage.RESULT:
            now = self.clock()
            wait = max(0.0, min(0.05, deadline - now))
            try:
                msg = self.inbox.get(timeout=max(wait, 0.001))
            except queue.Empty:
                msg = None
            while msg is not None:
                self._on_message(msg, server, rx, collector, report)
                try:
                    msg = self.inbox.get_nowait()
                except queue.Empty:
                    msg = None
            now = self.clock()
            stage = server.stage
            assert stage is not None
            pending = len(server.pending())
            if pending != last_pending:
                last_pending, last_change = pending, now
            quiet = now - last_change >= max(self.idle_close_s, 0.25 * (now - stage_t0))
            early = quiet and expected - pending >= self.quorum * expected
            if pending and now < deadline and not early:
                continue
            if stage is Stage.COLLECT_MASKED and server.pending():
                # deadline: ask workers to flush what they hold, give it a moment
                if closing_at is None:
                    closing_at = now
                    self._close_intake(config, report)
                if now - closing_at < CLOSE_GRACE_S and server.pending():
                    continue
                now = self.clock()
            report.stage_s[str(stage)] = round(now - stage_t0, 4)
            bodies = server.advance()
            if stage is Stage.COLLECT_MASKED and closing_at is None:
                self._close_intake(config, report)
            send(server.stage, bodies)
            stage_t0 = last_change = now
            deadline = now + self.stage_timeout_s
            expected = last_pending = len(server.pending())
        report.result = server.result
        report.abort = server.abort.reason if server.abort else None
        # envelope and body refusals were counted as they happened; add the partials'
        report.refused += collector.counters
        report.refused.pop("absorbed", None)
        report.partials = collector.by_worker
        report.server_cpu_s = time.process_time() - cpu
        report.wall_s = self.clock() - t0
        return report

    def _close_intake(self, config: RoundConfig, report: CoordinatorReport) -> None:
        ctl = encode_control(
            OP_CLOSE, config.round_id, config.nonce, self._control_seq.next(), self.key
        )
        report.bytes_out += len(ctl)
        self.link.publish(control_topic(self.fleet), ctl)

    def _on_message(
        self,
        msg: Any,
        server: SecAggServer | BeaconServer,
        rx: EnvelopeReceiver,
        collector: PartialCollector | None,
        report: CoordinatorReport,
    ) -> None:
        report.bytes_in += len(msg.payload)
        try:
            t = topics.parse(msg.topic)
        except TransportError:
            report.refused["bad_topic"] += 1
            return
        if t.node_id == AGGREGATOR:
            if t.kind == PARTIAL_KIND and collector is not None:
                collector.receive(msg.payload)
            return
        stages = {s.value: s for s in COORDINATOR_STAGES}
        if t.node_id is None or t.kind not in stages:
            return
        try:
            claimed = decode_unverified(msg.payload)
            if claimed.src != t.node_id:
                raise ProtocolError("impersonation", f"{claimed.src!r} on {t.node_id}'s topic")
            got = rx.receive(msg.payload)
            if got.message.stage.value != t.kind:
                raise ProtocolError("topic_mismatch", f"{got.message.stage} on a {t.kind} topic")
            if got.duplicate:
                return
            server.receive(t.node_id, got.message.stage, got.message.body)
        except ProtocolError as exc:
            report.refused[exc.reason] += 1


__all__ = [
    "CLOSE_GRACE_S",
    "OP_CLOSE",
    "OP_OPEN",
    "Coordinator",
    "CoordinatorReport",
    "PartialCollector",
]
