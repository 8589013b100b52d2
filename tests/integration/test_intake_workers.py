"""Two intake worker processes over real Mosquitto: shared subscription, exact partial sums.

Real parts only: the shipped broker config (mTLS, ACL), worker processes
started as ``python -m edgeagent.federation.intake`` with the aggregator's TLS
identity, boxes with their own certificates publishing signed envelopes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.federation.intake import (
    OP_CLOSE,
    OP_OPEN,
    Partial,
    control_topic,
    decode_partial,
    encode_control,
    partial_topic,
    raw_public,
)
from edgeagent.fl.constants import AGGREGATOR, Key, Stage
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.messages import Message, encode
from edgeagent.fl.privacy import payload_bound
from edgeagent.fl.secagg import RoundConfig
from edgeagent.ops.pki import Pki, intake_id
from edgeagent.transport import topics
from edgeagent.transport.mqtt import MqttLink
from edgelab.broker import Broker
from edgelab.coordinator import Coordinator
from edgelab.fleetsim import FleetProcess, SimSpec, default_payload, issue_boxes
from tests.fl_support import mosquitto_or_skip

FLEET = "intakefleet"
BOXES = tuple(f"box-{i:02d}" for i in range(10))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, Broker, Path]]:
    mosquitto_or_skip()
    root = tmp_path_factory.mktemp("intake")
    pki = Pki.init(root / "pki", fleet=FLEET)
    for b in BOXES:
        pki.issue(b)
    pki.issue_aggregator()
    broker = Broker(pki, root / "broker").start()
    procs = [start_worker(pki, broker, root, f"{i}") for i in range(2)]
    try:
        yield pki, broker, root
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        broker.stop()


def start_worker(pki: Pki, broker: Broker, root: Path, name: str) -> subprocess.Popen:
    """``python -m edgeagent.federation.intake`` as the aggregator; returns once subscribed."""
    agg = pki.client_files(AGGREGATOR)
    files = pki.client_files(intake_id(name))
    if not files.cert.exists():
        pki.issue_intake(name)
    ready = root / f"{name}.ready"
    cmd = [sys.executable, "-m", "edgeagent.federation.intake", "--port", str(broker.port),
           "--fleet", FLEET, "--ca", str(files.ca), "--cert", str(files.cert),
           "--key", str(files.key), "--identity", str(agg.cert), "--worker", name,
           "--flush-every", "3",
           "--ready-file", str(ready)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    end = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < end, f"intake worker {name} did not subscribe"
        assert proc.poll() is None, f"intake worker {name} exited"
        time.sleep(0.05)
    return proc


def _aggregator(pki: Pki, broker: Broker, name: str, on_message=None) -> MqttLink:
    files = pki.client_files(AGGREGATOR)
    return MqttLink(name, broker.host, broker.port, files, FLEET, identity=AGGREGATOR,
                    status=False, on_message=on_message, clean_start=True)  # fmt: skip


def intake_round(
    pki: Pki, broker: Broker, round_id: int, dim: int = 2_000
) -> tuple[list[Partial], dict[str, np.ndarray]]:
    """Open intake, have every box publish a signed vector (box-00 also a forgery), close;
    return the verified partial sums that came back and the vectors sent."""
    agg_key = load_identity(pki.client_files(AGGREGATOR).cert, load_ca(pki.ca_cert), AGGREGATOR)
    nonce = os.urandom(16)
    box_keys = {b: Ed25519PrivateKey.generate() for b in BOXES}
    got: list[bytes] = []
    lock = threading.Lock()

    def on_partial(m) -> None:
        with lock:
            got.append(m.payload)

    rng = np.random.default_rng(4)
    vectors = {b: rng.integers(0, 2**32, dim, dtype=np.uint64).astype(np.uint32) for b in BOXES}
    with _aggregator(pki, broker, "aggregator-test", on_partial) as coord:
        assert coord.subscribe(partial_topic(FLEET)).wait(5) < 0x80
        pubs = {b: k.public_key() for b, k in box_keys.items()}
        ctl = encode_control(OP_OPEN, round_id, nonce, 0, agg_key.key, dim=dim, box_keys=pubs)
        assert coord.publish(control_topic(FLEET), ctl).wait(5) < 0x80
        for b in BOXES:
            files = pki.client_files(b)
            with MqttLink(b, broker.host, broker.port, files, FLEET, status=False) as box:
                body = {Key.MASKED.value: vectors[b].astype("<u4").tobytes()}
                msg = Message(b, AGGREGATOR, round_id, Stage.COLLECT_MASKED, 3, nonce, body)
                topic = topics.node(FLEET, b, Stage.COLLECT_MASKED.value)
                assert box.publish(topic, encode(msg, box_keys[b])).wait(5) < 0x80
                if b == BOXES[0]:  # a forgery: signed with a key that is not box-00's
                    forged = encode(
                        Message(b, AGGREGATOR, round_id, Stage.COLLECT_MASKED, 4, nonce, body),
                        Ed25519PrivateKey.generate(),
                    )
                    assert box.publish(topic, forged).wait(5) < 0x80
        close = encode_control(OP_CLOSE, round_id, nonce, 1, agg_key.key)
        assert coord.publish(control_topic(FLEET), close).wait(5) < 0x80
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with lock:
                parts = [decode_partial(p, agg_key.public_key, round_id, nonce, dim) for p in got]
            if sum(len(p.total.nodes) for p in parts) >= len(BOXES):
                break
            time.sleep(0.05)
    return parts, vectors


def test_two_worker_processes_partial_sums_combine_to_the_exact_masked_sum(
    fleet: tuple[Pki, Broker, Path],
) -> None:
    pki, broker, _ = fleet
    dim = 2_000
    parts, vectors = intake_round(pki, broker, 11, dim)
    workers = {p.worker for p in parts}
    assert workers == {"intake-0", "intake-1"}  # the broker spread the updates
    seen: set[str] = set()
    total = np.zeros(dim, np.uint32)
    for p in parts:
        assert not seen & p.total.nodes and len(p.total.nodes) <= 3  # disjoint, streamed
        seen |= p.total.nodes
        total += p.total.total
    assert seen == set(BOXES)
    exact = np.zeros(dim, np.uint32)
    for v in vectors.values():
        exact += v
    assert np.array_equal(total, exact)


def test_secure_round_with_coordinator_workers_and_simulated_boxes(
    fleet: tuple[Pki, Broker, Path],
) -> None:
    """A whole SecAgg+ round, 16 simulated boxes (2 silent), masked vectors via the workers."""
    pki, broker, _ = fleet
    files = pki.client_files(AGGREGATOR)
    ident = load_identity(files.cert, load_ca(pki.ca_cert), AGGREGATOR)
    names = [f"sim-{i:02d}" for i in range(16)]
    specs = issue_boxes(pki, names)
    sim = FleetProcess(SimSpec(broker.host, broker.port, FLEET, str(pki.ca_cert), tuple(specs),
                               raw_public(ident.public_key), seed=3)).start()  # fmt: skip
    coord = Coordinator(FLEET, ident.key, stage_timeout_s=20.0, idle_close_s=0.5)
    link = _aggregator(pki, broker, "aggregator-coord", coord.enqueue)
    try:
        sim.wait_ready(60)
        coord.start(link)
        # the participant list reaches the boxes as a signed announcement would
        sim.set_drops({"sim-03": Stage.SHARE_KEYS, "sim-07": Stage.COLLECT_MASKED}, tuple(names))
        dim = 501
        cfg = RoundConfig(round_id=21, nonce=os.urandom(16), participants=tuple(names),
                          dim=dim, bound=payload_bound(1.0, 100), clip=1.0, n_cap=100)  # fmt: skip
        rep = coord.run_round(cfg, sim.pubs)
        assert sim.wait_counter("result_ok", 14)  # RESULT reached every box that unmasked
    finally:
        link.close()
        stats = sim.stop()
    assert rep.result is not None, rep.abort
    survivors = set(rep.result.survivors)
    assert survivors == set(names) - {"sim-03", "sim-07"}
    assert set(rep.partials) == {"intake-0", "intake-1"}
    assert sum(rep.partials.values()) == len(survivors)
    want = sum(default_payload(3, b, 50)(dim - 1, 1.0, 100) for b in sorted(survivors))
    np.testing.assert_allclose(rep.result.total, want, atol=1e-3)
    assert stats["counters"].get("silent") == 2  # the two dropouts ignored the rest
    assert stats["bytes_up"] > 14 * 4 * (dim - 1)


def test_a_dead_worker_is_no_longer_given_updates(fleet: tuple[Pki, Broker, Path]) -> None:
    """Workers keep no session: once one dies the broker shares among the living only,
    so no box's update waits in a dead worker's queue."""
    pki, broker, root = fleet
    doomed = start_worker(pki, broker, root, "9")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    time.sleep(0.5)  # the broker sees the closed socket
    parts, _ = intake_round(pki, broker, 31)
    assert sum(len(p.total.nodes) for p in parts) == len(BOXES)
    assert {p.worker for p in parts} <= {"intake-0", "intake-1"}
