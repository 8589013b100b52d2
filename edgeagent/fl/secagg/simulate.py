"""Run whole SecAgg+ rounds in memory: k boxes + an aggregator, every message signed and verified.

This is the protocol exactly as it will run over MQTT, minus the broker: each
body is wrapped in a real Ed25519-signed CBOR envelope, checked by a real
``EnvelopeReceiver`` on the other side, and its size is counted. Tests use it
for the equality-with-plaintext check under dropouts; ``bench/fl_round.py``
uses it for in-memory timings and bytes per box.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.errors import ProtocolError, RoundAborted
from edgeagent.fl.constants import AGGREGATOR, STAGE_ORDER, Stage
from edgeagent.fl.messages import EnvelopeReceiver, Message, Sequencer, encode
from edgeagent.fl.secagg.auth import RoundSigner, lab_cert, trust_map
from edgeagent.fl.secagg.beacon import BeaconServer
from edgeagent.fl.secagg.client import PrivacyFloor, SecAggClient
from edgeagent.fl.secagg.seeded import SeededClient
from edgeagent.fl.secagg.server import SecAggServer
from edgeagent.fl.secagg.state import RoundConfig, RoundResult

#: Hook to tamper with bytes in flight: (src, dst, stage, envelope) -> envelope(s) to deliver.
Wire = Callable[[str, str, Stage, bytes], list[bytes]]


@dataclass
class SimReport:
    """What one simulated round produced, and what it cost."""

    result: RoundResult | None
    abort: RoundAborted | None
    bytes_up: Counter[str] = field(default_factory=Counter)  # box -> bytes sent
    bytes_down: Counter[str] = field(default_factory=Counter)  # box -> bytes received
    client_seconds: Counter[str] = field(default_factory=Counter)
    server_seconds: float = 0.0
    wall_seconds: float = 0.0
    refused: Counter[str] = field(default_factory=Counter)  # envelope + body refusals, by reason
    duplicates: int = 0  # byte-identical redeliveries acknowledged without processing
    stage_bytes: Counter[str] = field(default_factory=Counter)  # stage -> bytes, both ways
    stage_seconds: Counter[str] = field(default_factory=Counter)  # stage -> box + server CPU


def simulate_round(
    config: RoundConfig,
    payloads: Mapping[str, np.ndarray],
    *,
    drop: Mapping[str, Stage] | None = None,
    wire: Wire | None = None,
    identities: Mapping[str, Ed25519PrivateKey] | None = None,
    floor: PrivacyFloor | None = None,
    seeded: bool = False,
) -> SimReport:
    """Run one round; ``drop[box] = stage`` makes that box go silent from that stage on.

    ``seeded`` runs the round as the aggregator does: COMMIT and REVEAL first
    (``beacon``), the graph keyed by their seed (``config.seed`` is replaced),
    and the boxes' certificates known from their hellos (so SETUP replies
    leave them out).
    """
    t0 = time.perf_counter()
    drop = dict(drop or {})
    ids = dict(identities or {})
    for node in (*config.participants, AGGREGATOR):
        ids.setdefault(node, Ed25519PrivateKey.generate())
    pubs = {n: k.public_key() for n, k in ids.items()}
    verify = trust_map(pubs)
    beacon = BeaconServer(config.round_id, config.nonce, config.participants) if seeded else None
    server_rx = EnvelopeReceiver(AGGREGATOR, {n: pubs[n] for n in config.participants})
    server_rx.begin_round(config.round_id, config.nonce)
    server_seq = Sequencer()
    clients: dict[str, SecAggClient | SeededClient] = {}
    client_rx: dict[str, EnvelopeReceiver] = {}
    client_seq: dict[str, Sequencer] = {}
    for node in config.participants:
        signer = RoundSigner(ids[node], lab_cert(pubs[node]), verify)
        box = SecAggClient(node, signer, floor=floor)
        box.set_input(payloads[node])
        if seeded:
            clients[node] = SeededClient(box)
            clients[node].announce(config.participants)
        else:
            box.expect_participants(config.participants)
            clients[node] = box
        client_rx[node] = EnvelopeReceiver(node, {AGGREGATOR: pubs[AGGREGATOR]})
        client_rx[node].begin_round(config.round_id, config.nonce)
        client_seq[node] = Sequencer()
    report = SimReport(result=None, abort=None)

    def silent(node: str, stage: Stage) -> bool:
        gone = drop.get(node)
        return gone is not None and STAGE_ORDER.index(stage) >= STAGE_ORDER.index(gone)

    def deliver(src: str, dst: str, stage: Stage, data: bytes) -> list[bytes]:
        return wire(src, dst, stage, data) if wire else [data]

    ts = time.perf_counter()
    machine: SecAggServer | BeaconServer
    if beacon is not None:
        machine, outgoing = beacon, beacon.start()
    else:
        machine = server = SecAggServer(config, verify)
        outgoing = server.start()
    report.server_seconds += time.perf_counter() - ts
    while True:
        stage = machine.stage
        assert stage is not None
        for dst, body in sorted(outgoing.items()):
            msg = Message(
                AGGREGATOR, dst, config.round_id, stage, server_seq.next(), config.nonce, body
            )
            env = encode(msg, ids[AGGREGATOR])
            report.bytes_down[dst] += len(env)
            report.stage_bytes[str(stage)] += len(env)
            if silent(dst, stage):
                continue
            for data in deliver(AGGREGATOR, dst, stage, env):
                tc = time.perf_counter()
                try:
                    got = client_rx[dst].receive(data)
                    if got.duplicate:
                        continue
                    reply = clients[dst].handle(
                        got.message.round, got.message.nonce, got.message.stage, got.message.body
                    )
                except ProtocolError as exc:
                    report.refused[f"box:{exc.reason}"] += 1
                    continue
                finally:
                    report.client_seconds[dst] += time.perf_counter() - tc
                    report.stage_seconds[str(stage)] += time.perf_counter() - tc
                if stage is Stage.RESULT:
                    continue
                up = Message(
                    dst,
                    AGGREGATOR,
                    config.round_id,
                    stage,
                    client_seq[dst].next(),
                    config.nonce,
                    reply,
                )
                tc = time.perf_counter()
                up_env = encode(up, ids[dst])
                report.client_seconds[dst] += time.perf_counter() - tc
                report.stage_seconds[str(stage)] += time.perf_counter() - tc
                report.bytes_up[dst] += len(up_env)
                report.stage_bytes[str(stage)] += len(up_env)
                for up_data in deliver(dst, AGGREGATOR, stage, up_env):
                    ts = time.perf_counter()
                    try:
                        rec = server_rx.receive(up_data)
                        if rec.duplicate:
                            report.duplicates += 1
                        else:
                            machine.receive(rec.message.src, rec.message.stage, rec.message.body)
                    except ProtocolError as exc:
                        report.refused[f"server:{exc.reason}"] += 1
                    finally:
                        report.server_seconds += time.perf_counter() - ts
                        report.stage_seconds[str(stage)] += time.perf_counter() - ts
        if stage is Stage.RESULT:
            break
        ts = time.perf_counter()
        if beacon is not None and machine is beacon:
            try:
                outgoing = beacon.advance()
            except RoundAborted as exc:
                report.abort = exc
                report.wall_seconds = time.perf_counter() - t0
                return report
            if beacon.stage is Stage.SETUP:  # the seed is drawn: the SecAgg+ round on it
                config = replace(config, participants=beacon.committed, seed=beacon.seed, graph={})
                hellos = {n: lab_cert(pubs[n]) for n in config.participants}
                machine = server = SecAggServer(config, verify, None, hellos)
                reveals = beacon.reveals_field()
                outgoing = {n: {**b, **reveals} for n, b in server.start().items()}
        else:
            outgoing = machine.advance()
        report.server_seconds += time.perf_counter() - ts
        report.stage_seconds[str(stage)] += time.perf_counter() - ts
    report.result, report.abort = server.result, server.abort
    report.wall_seconds = time.perf_counter() - t0
    return report
