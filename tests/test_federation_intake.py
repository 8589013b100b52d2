"""Intake workers and partial-sum collection, in memory (no broker).

The property that matters: masked vectors split across any number of
workers, flushed in any pieces, combine into exactly the masked sum one
aggregator would have built, so the unmasked round result is unchanged. Bad
input (forged, impersonated, replayed, late, overlapping) is counted and
refused; refused boxes become ordinary dropouts.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.federation.intake import (
    OP_CLOSE,
    OP_OPEN,
    IntakeState,
    control_topic,
    decode_partial,
    encode_control,
    partial_topic,
    shared_filter,
)
from edgeagent.federation.partials import PartialCollector
from edgeagent.fl.constants import AGGREGATOR, Key, Stage
from edgeagent.fl.messages import Message, Sequencer, decode_unverified, encode
from edgeagent.fl.privacy import payload_bound
from edgeagent.fl.quantize import field_bits, packed_bytes
from edgeagent.fl.secagg import RoundConfig, SecAggClient, SecAggServer
from edgeagent.fl.secagg.auth import lab_signers

DIM = 33


class Fleet:
    """n boxes and an aggregator identity, driven up to COLLECT_MASKED in memory."""

    def __init__(self, n: int, seed: int = 0, round_id: int = 7, **round_kw: Any) -> None:
        rng = np.random.default_rng(seed)
        self.agg = Ed25519PrivateKey.generate()
        self.nodes = [f"box{i:03d}" for i in range(n)]
        self.keys = {b: Ed25519PrivateKey.generate() for b in self.nodes}
        self.pubs = {b: k.public_key() for b, k in self.keys.items()}
        self.payloads = {b: rng.uniform(-1, 1, DIM) for b in self.nodes}
        self.config = RoundConfig(
            round_id=round_id,
            nonce=os.urandom(16),
            participants=tuple(self.nodes),
            dim=DIM,
            bound=payload_bound(1.0, 1),
            **round_kw,
        )
        self.server = SecAggServer(self.config)
        signers = lab_signers(self.nodes)
        self.clients = {b: SecAggClient(b, signers[b]) for b in self.nodes}
        for cl in self.clients.values():
            cl.expect_participants(self.nodes)
        self.seq = {b: Sequencer() for b in self.nodes}
        c = self.config
        bodies = self.server.start()
        for stage in (Stage.SETUP, Stage.SHARE_KEYS):
            for b, body in bodies.items():
                reply = self.clients[b].handle(c.round_id, c.nonce, stage, body)
                self.server.receive(b, stage, reply)
                self.seq[b].next()
            bodies = self.server.advance()
        self.collect_bodies = bodies  # COLLECT_MASKED bodies per box
        self.ctl_seq = Sequencer()
        self.replies: dict[str, dict] = {}

    def masked_envelope(self, b: str, *, src: str | None = None, key=None) -> bytes:
        c = self.config
        if b not in self.replies:  # a box masks once per round; resend the same vector
            cl = self.clients[b]
            cl.set_input(self.payloads[b])
            self.replies[b] = cl.handle(
                c.round_id, c.nonce, Stage.COLLECT_MASKED, self.collect_bodies[b]
            )
        reply = self.replies[b]
        msg = Message(
            src or b, AGGREGATOR, c.round_id, Stage.COLLECT_MASKED, self.seq[b].next(), c.nonce,
            reply,
        )  # fmt: skip
        return encode(msg, key or self.keys[b])

    def open(self) -> bytes:
        c = self.config
        return encode_control(OP_OPEN, c.round_id, c.nonce, self.ctl_seq.next(), self.agg,
                              dim=DIM, box_keys=self.pubs, bits=c.bits)  # fmt: skip

    def close(self) -> bytes:
        c = self.config
        return encode_control(OP_CLOSE, c.round_id, c.nonce, self.ctl_seq.next(), self.agg)

    def worker(self, name: str, **kw) -> IntakeState:
        return IntakeState(f"intake-{name}", self.agg, self.agg.public_key(), **kw)

    def finish(self) -> np.ndarray:
        """Run UNMASK with the survivors and return the unmasked total."""
        c = self.config
        bodies = self.server.advance()
        for stage in (Stage.CONSISTENCY, Stage.UNMASK):
            for b, body in bodies.items():
                self.server.receive(b, stage, self.clients[b].handle(
                    c.round_id, c.nonce, stage, body))  # fmt: skip
            bodies = self.server.advance()
        assert self.server.result is not None, self.server.abort
        return self.server.result.total


def test_topics_are_the_aggregators_own_and_the_filter_is_shared() -> None:
    assert control_topic("f").endswith("/node/aggregator/intake")
    assert partial_topic("f").endswith("/node/aggregator/partial")
    assert shared_filter("f", "g") == "$share/g/edgeagent/v1/f/node/+/collect_masked"


@pytest.mark.parametrize("workers,flush_every", [(1, 64), (2, 3), (3, 1)])
def test_partials_from_several_workers_give_the_exact_round_result(
    workers: int, flush_every: int
) -> None:
    fleet = Fleet(12, seed=workers)
    states = [fleet.worker(str(i), flush_every=flush_every) for i in range(workers)]
    collector = PartialCollector(fleet.server, fleet.agg.public_key())
    partials: list[bytes] = []
    for s in states:
        assert s.on_control(fleet.open()) == []
    exact = np.zeros(DIM, np.uint32)
    for i, b in enumerate(fleet.nodes):  # the broker's round robin
        env = fleet.masked_envelope(b)
        exact += np.frombuffer(decode_unverified(env).body[Key.MASKED.value], "<u4")
        partials += states[i % workers].on_update(b, env)
    close = fleet.close()
    for s in states:
        partials += s.on_control(close)
        assert s.round is None and s.counters["accepted"] >= 1
    # each partial holds at most flush_every boxes: intake is streamed
    for p in partials:
        part = decode_partial(p, fleet.agg.public_key(), 7, fleet.config.nonce, DIM)
        assert 1 <= len(part.total.nodes) <= flush_every
    assert sum(collector.receive(p) for p in partials) == 12
    assert not fleet.server.pending()
    assert len(collector.by_worker) == workers
    # bit-exact: the combined partials are the single-aggregator masked sum
    assert np.array_equal(fleet.server._sum.total, exact)
    total = fleet.finish()
    want = sum(fleet.payloads.values())
    np.testing.assert_allclose(total, want, atol=12 / fleet.server.quantizer.scale)


def test_quantised_masked_vectors_through_two_workers() -> None:
    """Workers learn the round's width from the open message, unpack b-bit vectors and hand
    on uint32 partial sums; the unmasked total is the 8-bit quantised sum."""
    bits = field_bits(8, 12)
    fleet = Fleet(12, seed=9, bits=bits, headroom_bits=0)
    states = [fleet.worker(str(i), flush_every=4) for i in range(2)]
    collector = PartialCollector(fleet.server, fleet.agg.public_key())
    for s in states:
        assert s.on_control(fleet.open()) == []
        assert s.round is not None and s.round.partial.bits == bits
    partials: list[bytes] = []
    for i, b in enumerate(fleet.nodes):
        env = fleet.masked_envelope(b)
        assert len(decode_unverified(env).body[Key.MASKED.value]) == packed_bytes(DIM, bits)
        partials += states[i % 2].on_update(b, env)
    close = fleet.close()
    for s in states:
        partials += s.on_control(close)
    assert sum(collector.receive(p) for p in partials) == 12
    total = fleet.finish()
    want = sum(fleet.payloads.values())
    np.testing.assert_allclose(total, want, atol=12 / fleet.server.quantizer.scale)
    assert fleet.server.quantizer.scale < 2**8  # 8-bit steps, not the 32-bit field's


def test_refusals_are_counted_and_refused_boxes_become_dropouts() -> None:
    fleet = Fleet(10, seed=3)
    w = fleet.worker("a")
    # an update before the round is opened is held only once its signature checks out with
    # a key the worker knows: a worker that has never seen box000 refuses it
    early = fleet.masked_envelope("box000")
    assert w.on_update("box000", early) == [] and w.counters["out_of_round"] == 1
    c = fleet.config
    prev = encode_control(OP_OPEN, c.round_id - 1, os.urandom(16), 0, fleet.agg, dim=DIM,
                          box_keys=fleet.pubs)  # fmt: skip
    w.on_control(prev)  # an earlier round: the worker now knows the boxes' keys
    forged_early = fleet.masked_envelope("box001", key=Ed25519PrivateKey.generate())
    assert w.on_update("box001", forged_early) == [] and w.counters["bad_signature"] == 1
    assert w.on_update("box000", early) == [] and w.counters["held_early"] == 1
    w.on_control(fleet.open())
    assert w.counters["accepted"] == 1
    # the same bytes again (QoS 1 redelivery): acknowledged, not added twice
    w.on_update("box000", early)
    assert w.counters["duplicate"] == 1
    # box001's vector posted under box002's topic; a forgery signed by another key
    w.on_update("box002", fleet.masked_envelope("box001"))
    forged = fleet.masked_envelope("box003", key=Ed25519PrivateKey.generate())
    w.on_update("box003", forged)
    w.on_update("box004", b"\xff not cbor")
    assert w.counters["impersonation"] == 1
    assert w.counters["bad_signature"] == 2
    assert w.counters["malformed"] == 1
    for b in fleet.nodes[5:]:
        w.on_update(b, fleet.masked_envelope(b))
    # a control message signed by someone else, and a replayed old one
    w.on_control(encode_control(OP_CLOSE, 7, fleet.config.nonce, 99, Ed25519PrivateKey.generate()))
    assert w.round is not None and w.counters["control_bad_signature"] == 1
    partials = w.flush()
    assert len(partials) == 1
    collector = PartialCollector(fleet.server, fleet.agg.public_key())
    assert collector.receive(partials[0]) == 6  # box000 + box005..box009
    # the same partial twice, and a partial overlapping what was absorbed: refused whole
    assert collector.receive(partials[0]) == 0
    assert collector.counters["duplicate_partial"] == 1
    w2 = fleet.worker("b")
    w2.on_control(fleet.open())
    w2.on_update("box000", early)
    assert collector.receive(w2.flush()[0]) == 0
    assert collector.counters["bad_partial"] == 1
    # a partial signed by another key
    other = IntakeState("intake-x", Ed25519PrivateKey.generate(), fleet.agg.public_key())
    other.on_control(fleet.open())
    other.on_update("box009", fleet.masked_envelope("box009"))
    assert collector.receive(other.flush()[0]) == 0
    assert collector.counters["bad_signature"] == 1
    # boxes 1..4 never made it: the round unmasks as with dropouts
    total = fleet.finish()
    kept = ["box000", *fleet.nodes[5:]]
    want = sum(fleet.payloads[b] for b in kept)
    np.testing.assert_allclose(total, want, atol=6 / fleet.server.quantizer.scale)
    assert fleet.server.result is not None
    assert fleet.server.result.survivors == tuple(kept)


def test_late_partial_and_old_round_updates_are_refused() -> None:
    fleet = Fleet(4, seed=5)
    w = fleet.worker("a", flush_every=100)
    w.on_control(fleet.open())
    for b in fleet.nodes[:3]:
        w.on_update(b, fleet.masked_envelope(b))
    late = fleet.masked_envelope("box003")
    collector = PartialCollector(fleet.server, fleet.agg.public_key())
    assert collector.receive(w.flush()[0]) == 3
    fleet.finish()
    w.on_update("box003", late)
    assert collector.receive(w.flush()[0]) == 0
    assert collector.counters["late_partial"] == 1
    # a newer round opens; a straggler from round 7 is refused as out of round
    nxt = encode_control(OP_OPEN, 8, os.urandom(16), 50, fleet.agg, dim=DIM, box_keys=fleet.pubs)
    w.on_control(nxt)
    assert w.round is not None and w.round.round_id == 8
    w.on_update("box003", late)
    assert w.counters["out_of_round"] == 1
    # control of the older round is a replay now
    w.on_control(fleet.close())
    assert w.counters["control_replay"] == 1 and w.round is not None


def test_time_based_flush_uses_the_injected_clock() -> None:
    fleet = Fleet(3, seed=9)
    now = [100.0]
    w = fleet.worker("a", flush_every=1000, flush_interval_s=0.5, clock=lambda: now[0])
    w.on_control(fleet.open())
    assert not w.due()
    w.on_update("box000", fleet.masked_envelope("box000"))
    assert not w.due()
    now[0] += 0.6
    assert w.due() and len(w.flush()) == 1
    assert not w.due() and w.flush() == []


def test_bad_settings_are_refused() -> None:
    k = Ed25519PrivateKey.generate()
    with pytest.raises(ValueError):
        IntakeState("worker-1", k, k.public_key())
    with pytest.raises(ValueError):
        IntakeState("intake-1", k, k.public_key(), flush_every=0)
    with pytest.raises(ValueError):
        encode_control(OP_OPEN, 1, os.urandom(16), 0, k, dim=0, box_keys={})
    with pytest.raises(ValueError):
        encode_control("reopen", 1, os.urandom(16), 0, k)
