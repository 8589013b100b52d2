"""Update intake spread over several aggregator workers (MQTT 5 shared subscriptions).

Why: at COLLECT_MASKED every box sends its whole masked vector (4 bytes per
parameter). Checking and summing those envelopes is the one stage whose cost
grows with ``n * dim``; everything else in a SecAgg+ round is O(n log n) small
messages. Masked vectors are additive in Z_2^32, so any worker can add any
subset of them and the coordinator only adds the partial sums
(``MaskedSum.merge`` / ``SecAggServer.absorb``). The broker spreads the
updates: every worker subscribes ``$share/<group>/.../node/+/collect_masked``
and each message goes to exactly one of them.

Topics (all under the aggregator's own ``node/aggregator/`` level, which the
shipped ACL lets only the aggregator identity read and write; boxes never see
partial sums):

* ``node/aggregator/intake``: the coordinator opens and closes a round for the
  workers: a signed envelope (stage ``collect_masked``, destination ``*``)
  carrying the dimension and each participant's Ed25519 public key, so a
  worker checks box signatures without handling hellos itself;
* ``node/aggregator/partial``: a worker's signed partial sum (its id as the
  envelope sender, ``intake-<n>``), flushed every ``flush_every`` updates,
  every ``flush_interval_s`` and when the round closes. Intake is streamed:
  a worker holds one ``dim``-vector per open round, never the vectors.

``IntakeState`` is the sans-I/O core (bytes in, partial-sum envelopes out);
``IntakeWorker`` is the thin MQTT shell and ``python -m edgeagent.federation.intake``
runs one as a process.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeagent.errors import ProtocolError, TransportError
from edgeagent.fl.constants import (
    AGGREGATOR,
    BROADCAST,
    MAX_ENVELOPE_BYTES,
    Key,
    Stage,
)
from edgeagent.fl.messages import (
    EnvelopeReceiver,
    Message,
    Sequencer,
    decode_unverified,
    encode,
    signed_bytes,
)
from edgeagent.fl.secagg import MaskedSum
from edgeagent.transport import topics

log = logging.getLogger(__name__)

#: Kind levels under ``node/aggregator/`` used by the intake protocol.
INTAKE_KIND = "intake"
PARTIAL_KIND = "partial"
#: Worker ids are ``intake-<name>``; the coordinator accepts partials only from such senders.
WORKER_PREFIX = "intake-"
#: Default shared-subscription group name.
DEFAULT_GROUP = "intake"
#: Flush a partial after this many updates: a lost or refused partial then costs
#: at most this many boxes (they count as dropouts, which SecAgg+ recovers from).
DEFAULT_FLUSH_EVERY = 64
#: ... or after this long with unflushed updates, so the coordinator sees progress.
DEFAULT_FLUSH_INTERVAL_S = 0.05
#: Updates of a round not yet opened are held (a box may beat the control message
#: through the broker), but only once verified with a key this worker already
#: knows (from an earlier open), at most one per box, and within these bounds;
#: beyond them they are refused as ``out_of_round``.
MAX_EARLY = 4096
MAX_EARLY_BYTES = 64 * 1024 * 1024
#: Box keys remembered across rounds for checking early updates (bounded).
MAX_KNOWN_KEYS = 100_000


class IKey:
    """Body keys of intake control and partial-sum messages."""

    OP = "op"
    DIM = "d"
    BITS = "bits"  # width of the round's modular sum (absent = 32)
    KEYS = "keys"
    NODES = "nodes"
    SUM = "sum"
    PART = "part"


OP_OPEN = "open"
OP_CLOSE = "close"


def control_topic(fleet: str) -> str:
    """``.../node/aggregator/intake``: coordinator -> every worker (not shared)."""
    return topics.node(fleet, AGGREGATOR, INTAKE_KIND)


def partial_topic(fleet: str) -> str:
    """``.../node/aggregator/partial``: workers -> coordinator."""
    return topics.node(fleet, AGGREGATOR, PARTIAL_KIND)


def shared_filter(fleet: str, group: str = DEFAULT_GROUP) -> str:
    """``$share/<group>/.../node/+/collect_masked``: each masked vector to one worker."""
    return f"$share/{group}/" + topics.node_filter(fleet, Stage.COLLECT_MASKED.value)


def verify_signed(data: bytes, key: Ed25519PublicKey) -> Message:
    """Parse an envelope and check its signature with ``key`` (no round/seq state).

    Used for messages between aggregator processes, which all sign with the
    aggregator's identity; freshness is checked by the caller (round ids and
    sequence numbers only move forward).
    """
    if not isinstance(data, bytes) or len(data) > MAX_ENVELOPE_BYTES:
        raise ProtocolError("oversized", "envelope missing or too large")
    msg = decode_unverified(data)
    try:
        outer = cbor2.loads(data)
        key.verify(outer[Key.SIGNATURE.value], signed_bytes(outer[Key.PAYLOAD.value]))
    except (InvalidSignature, KeyError, TypeError) as exc:
        raise ProtocolError("bad_signature", "not signed by the aggregator identity") from exc
    return msg


def raw_public(key: Ed25519PublicKey) -> bytes:
    """Raw 32-byte Ed25519 public key (how participants' keys travel to workers)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def encode_control(
    op: str,
    round_id: int,
    nonce: bytes,
    seq: int,
    key: Ed25519PrivateKey,
    *,
    dim: int = 0,
    box_keys: Mapping[str, Ed25519PublicKey] | None = None,
    bits: int = 32,
) -> bytes:
    """Signed open/close message for the workers (coordinator side)."""
    body: dict[str, Any] = {IKey.OP: op}
    if op == OP_OPEN:
        if dim < 1 or not box_keys:
            raise ValueError("opening intake needs dim >= 1 and the participants' keys")
        body[IKey.DIM] = dim
        if bits != 32:
            body[IKey.BITS] = bits
        body[IKey.KEYS] = {n: raw_public(k) for n, k in sorted(box_keys.items())}
    elif op != OP_CLOSE:
        raise ValueError(f"unknown intake op {op!r}")
    msg = Message(AGGREGATOR, BROADCAST, round_id, Stage.COLLECT_MASKED, seq, nonce, body)
    return encode(msg, key)


@dataclass(frozen=True, slots=True)
class Partial:
    """A verified partial sum from one worker."""

    worker: str
    round_id: int
    part: int
    total: MaskedSum


def decode_partial(
    data: bytes, key: Ed25519PublicKey, round_id: int, nonce: bytes, dim: int, bits: int = 32
) -> Partial:
    """Verify a worker's partial-sum envelope for this round; ``ProtocolError`` otherwise."""
    msg = verify_signed(data, key)
    if not msg.src.startswith(WORKER_PREFIX) or msg.dst != AGGREGATOR:
        raise ProtocolError("unexpected_sender", f"partial from {msg.src!r} to {msg.dst!r}")
    if msg.round != round_id or msg.nonce != nonce:
        raise ProtocolError("out_of_round", f"partial for round {msg.round}")
    nodes, blob, part = (msg.body.get(k) for k in (IKey.NODES, IKey.SUM, IKey.PART))
    if (
        not isinstance(nodes, list)
        or not all(isinstance(n, str) for n in nodes)
        or len(set(nodes)) != len(nodes)
        or not isinstance(blob, bytes)
        or len(blob) != 4 * dim
        or type(part) is not int
    ):
        raise ProtocolError("bad_body", "partial must carry distinct nodes and a dim-sized sum")
    total = MaskedSum(dim, bits)  # a partial is a uint32 sum whatever the boxes' width
    total.total = np.frombuffer(blob, dtype="<u4").astype(np.uint32)
    total.nodes = set(nodes)
    return Partial(msg.src, msg.round, part, total)


@dataclass
class _Open:
    round_id: int
    nonce: bytes
    dim: int
    receiver: EnvelopeReceiver
    partial: MaskedSum
    last_flush: float
    bits: int = 32


class IntakeState:
    """One worker's intake, sans I/O: verified masked vectors in, signed partial sums out.

    ``clock`` is only used to decide time-based flushes (``due``). Every
    refusal is counted by reason in ``counters`` and never raises to the caller.
    """

    def __init__(
        self,
        worker_id: str,
        signing_key: Ed25519PrivateKey,
        aggregator_key: Ed25519PublicKey,
        *,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not worker_id.startswith(WORKER_PREFIX):
            raise ValueError(f"worker ids start with {WORKER_PREFIX!r}")
        if flush_every < 1 or flush_interval_s <= 0:
            raise ValueError("flush_every must be >= 1 and flush_interval_s > 0")
        self.worker_id = worker_id
        self._key = signing_key
        self._agg = aggregator_key
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.round: _Open | None = None
        self._last_control = (-1, -1)  # (round, seq) of the newest control message
        self._seq = Sequencer()
        self._parts = 0
        self._early: list[tuple[str, bytes]] = []
        self._early_bytes = 0
        self._known: dict[str, Ed25519PublicKey] = {}

    # -- control ------------------------------------------------------------------------------

    def on_control(self, data: bytes) -> list[bytes]:
        """Open or close a round; returns partial envelopes to publish (the final flush)."""
        try:
            msg = verify_signed(data, self._agg)
            if msg.src != AGGREGATOR or msg.stage is not Stage.COLLECT_MASKED:
                raise ProtocolError("unexpected_sender", f"control from {msg.src!r}")
            if (msg.round, msg.seq) <= self._last_control:
                raise ProtocolError("replay", f"control round {msg.round} seq {msg.seq} is old")
            op = msg.body.get(IKey.OP)
            out: list[bytes] = []
            if op == OP_OPEN:
                dim, raw = msg.body.get(IKey.DIM), msg.body.get(IKey.KEYS)
                bits = msg.body.get(IKey.BITS, 32)
                if type(dim) is not int or dim < 1 or not isinstance(raw, dict) or not raw:
                    raise ProtocolError("bad_body", "open needs dim and participant keys")
                if type(bits) is not int or not 2 <= bits <= 32:
                    raise ProtocolError("bad_body", f"open with a {bits!r}-bit sum")
                try:
                    keys = {str(n): Ed25519PublicKey.from_public_bytes(k) for n, k in raw.items()}
                except (ValueError, TypeError) as exc:
                    raise ProtocolError("bad_body", f"participant key: {exc}") from exc
                out = self._close_current()
                if len(self._known) + len(keys) > MAX_KNOWN_KEYS:
                    self._known.clear()
                self._known.update(keys)
                # boxes address the aggregator; this worker reads on its behalf
                rx = EnvelopeReceiver(AGGREGATOR, keys)
                rx.begin_round(msg.round, msg.nonce)
                self.round = _Open(msg.round, msg.nonce, dim, rx, MaskedSum(dim, bits),
                                   self.clock(), bits)  # fmt: skip
                self._parts = 0
                early, self._early, self._early_bytes = self._early, [], 0
                for node, env in early:
                    out += self.on_update(node, env)
            elif op == OP_CLOSE:
                if self.round is not None and self.round.round_id == msg.round:
                    out = self._close_current()
            else:
                raise ProtocolError("bad_body", f"unknown op {op!r}")
            self._last_control = (msg.round, msg.seq)
            self.counters[f"control_{op}"] += 1
            return out
        except ProtocolError as exc:
            self.counters[f"control_{exc.reason}"] += 1
            log.warning("intake %s: refused control message: %s", self.worker_id, exc)
            return []

    def _close_current(self) -> list[bytes]:
        out = self.flush()
        self.round = None
        return out

    # -- updates ------------------------------------------------------------------------------

    def on_update(self, node: str, data: bytes) -> list[bytes]:
        """One masked vector from ``node/<node>/collect_masked``; returns partials to publish."""
        r = self.round
        try:
            if len(data) > MAX_ENVELOPE_BYTES:  # size first, before any decoding
                raise ProtocolError("oversized", f"{len(data)} bytes")
            claimed = decode_unverified(data)
            if claimed.src != node:
                raise ProtocolError("impersonation", f"{claimed.src!r} on {node}'s topic")
            if r is None or claimed.round != r.round_id:
                if r is not None and claimed.round < r.round_id:
                    raise ProtocolError("out_of_round", f"round {claimed.round} is over")
                self._hold_early(node, data, claimed.round, claimed.nonce)
                return []
            got = r.receiver.receive(data)
            if got.message.stage is not Stage.COLLECT_MASKED:
                raise ProtocolError("topic_mismatch", f"{got.message.stage} on collect topic")
            if got.duplicate:
                self.counters["duplicate"] += 1
                return []
            masked = got.message.body.get(Key.MASKED.value)
            if not isinstance(masked, bytes):
                raise ProtocolError("bad_body", "masked vector missing")
            r.partial.add(node, masked)
        except ProtocolError as exc:
            self.counters[exc.reason] += 1
            log.debug("intake %s: refused update from %s: %s", self.worker_id, node, exc)
            return []
        self.counters["accepted"] += 1
        if len(r.partial.nodes) >= self.flush_every:
            return self.flush()
        return []

    def _hold_early(self, node: str, data: bytes, round_id: int, nonce: bytes) -> None:
        """Hold a verified update of a round not open yet (bounded in count and bytes)."""
        key = self._known.get(node)
        if key is None:
            raise ProtocolError("out_of_round", "no such round open (sender not verifiable yet)")
        check = EnvelopeReceiver(AGGREGATOR, {node: key})
        check.begin_round(round_id, nonce)
        check.receive(data)  # signature verified before anything is held
        if (
            len(self._early) >= MAX_EARLY
            or self._early_bytes + len(data) > MAX_EARLY_BYTES
            or any(n == node for n, _ in self._early)
        ):
            raise ProtocolError("out_of_round", "no such round open (early hold full)")
        self._early.append((node, data))
        self._early_bytes += len(data)
        self.counters["held_early"] += 1

    def due(self) -> bool:
        """True when unflushed updates are older than ``flush_interval_s``."""
        r = self.round
        return (
            r is not None
            and bool(r.partial.nodes)
            and self.clock() - r.last_flush >= self.flush_interval_s
        )

    def flush(self) -> list[bytes]:
        """Sign and hand over the current partial sum (if any) and start a fresh one."""
        r = self.round
        if r is None:
            return []
        r.last_flush = self.clock()
        if not r.partial.nodes:
            return []
        body = {
            IKey.NODES: sorted(r.partial.nodes),
            IKey.SUM: r.partial.total.astype("<u4").tobytes(),
            IKey.PART: self._parts,
        }
        self._parts += 1
        msg = Message(
            self.worker_id,
            AGGREGATOR,
            r.round_id,
            Stage.COLLECT_MASKED,
            self._seq.next(),
            r.nonce,
            body,
        )
        r.partial = MaskedSum(r.dim, r.bits)
        self.counters["partials"] += 1
        return [encode(msg, self._key)]


class IntakeWorker:
    """An intake worker process: ``IntakeState`` behind one MQTT connection.

    Connects with the aggregator's TLS identity (the ACL lets only it read
    every box's ``node/<id>/...``) under its own client id, subscribes the
    shared filter and the control topic, and publishes partial sums. MQTT
    callbacks only enqueue; one thread owns the state.
    """

    def __init__(
        self,
        state: IntakeState,
        link_factory: Callable[[Callable[[Any], None]], Any],
        fleet: str,
        *,
        group: str = DEFAULT_GROUP,
    ) -> None:
        self.state = state
        self.fleet = fleet
        self.group = group
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.link = link_factory(self.inbox.put)
        self.published = 0
        self._stop = threading.Event()

    def start(self, timeout: float = 10.0) -> None:
        self.link.connect(timeout)
        for f in (control_topic(self.fleet), shared_filter(self.fleet, self.group)):
            code = self.link.subscribe(f).wait(timeout)
            if code >= 0x80:
                raise TransportError("subscribe_refused", f"{f}: {code:#04x}")

    def request_stop(self) -> None:
        self._stop.set()

    def _send(self, envs: list[bytes]) -> None:
        for env in envs:
            self.link.publish(partial_topic(self.fleet), env)
            self.published += 1

    def step(self, wait_s: float = 0.01) -> None:
        """Process queued messages (waiting at most ``wait_s``) and flush when due."""
        try:
            msg = self.inbox.get(timeout=wait_s)
        except queue.Empty:
            msg = None
        while msg is not None:
            self._handle(msg)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                msg = None
        if self.state.due():
            self._send(self.state.flush())

    def _handle(self, msg: Any) -> None:
        try:
            t = topics.parse(msg.topic)
        except TransportError:
            self.state.counters["bad_topic"] += 1
            return
        if t.node_id == AGGREGATOR and t.kind == INTAKE_KIND:
            self._send(self.state.on_control(msg.payload))
        elif t.kind == Stage.COLLECT_MASKED.value and t.node_id is not None:
            self._send(self.state.on_update(t.node_id, msg.payload))

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()

    def close(self) -> None:
        self.link.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeagent.federation.intake``: run one intake worker until SIGTERM/SIGINT."""
    from edgeagent.fl.identity import load_ca, load_identity
    from edgeagent.ops.pki import TlsFiles
    from edgeagent.transport.mqtt import MqttLink

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fleet", required=True)
    ap.add_argument("--ca", type=Path, required=True)
    ap.add_argument("--cert", type=Path, required=True, help="this worker's TLS certificate")
    ap.add_argument("--key", type=Path, required=True, help="this worker's TLS key")
    ap.add_argument(
        "--identity", type=Path, required=True,
        help="the aggregator's TLS certificate (its signing identity lies beside it)",
    )  # fmt: skip
    ap.add_argument("--worker", required=True, help="worker name (id becomes intake-<name>)")
    ap.add_argument("--group", default=DEFAULT_GROUP)
    ap.add_argument("--flush-every", type=int, default=DEFAULT_FLUSH_EVERY)
    ap.add_argument("--flush-interval", type=float, default=DEFAULT_FLUSH_INTERVAL_S)
    ap.add_argument("--ready-file", type=Path, help="touched once subscribed")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    ca = load_ca(a.ca)
    ident = load_identity(a.identity, ca, AGGREGATOR)
    wid = WORKER_PREFIX + a.worker
    state = IntakeState(
        wid,
        ident.key,
        ident.public_key,
        flush_every=a.flush_every,
        flush_interval_s=a.flush_interval,
    )
    tls = TlsFiles(a.ca, a.cert, a.key)

    def factory(on_message: Callable[[Any], None]) -> MqttLink:
        return MqttLink(
            wid,  # the broker uses the certificate's CN (intake-<name>) as client id
            a.host,
            a.port,
            tls,
            a.fleet,
            identity=AGGREGATOR,
            status=False,
            on_message=on_message,
            clean_start=True,
            # No session after a disconnect: the broker must stop routing shared
            # updates to a dead worker (they would wait in its queue until the
            # round is over); what was in flight to it becomes dropouts.
            session_expiry_s=0,
        )

    worker = IntakeWorker(state, factory, a.fleet, group=a.group)
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    signal.signal(signal.SIGINT, lambda *_: worker.request_stop())
    worker.start()
    if a.ready_file is not None:
        a.ready_file.write_text(wid)
    try:
        worker.run()
    finally:
        worker.close()
        log.warning("intake %s stopped: %s", wid, dict(state.counters))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
