"""Memory exhaustion: huge publishes at the broker, and unsigned early envelopes at intake.

Over the shipped Mosquitto configuration: a box publishing 64 MiB (and 9 MiB,
just over the limit) on its own topic is cut off by the broker and nothing
reaches the aggregator's subscription, while an ordinary 1 MiB publish does.
At an intake worker: updates for a round not yet open are held only when
their signature checks out with a known key, once per box, and within a byte
bound.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.errors import ProtocolError, TransportError
from edgeagent.federation import intake
from edgeagent.federation.intake import OP_OPEN, IntakeState, encode_control
from edgeagent.fl.constants import AGGREGATOR, Stage
from edgeagent.fl.messages import Message, encode
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import MqttLink
from edgelab.broker import Broker
from tests.fl_support import make_fleet, start_broker

FLEET = "flmem"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_fleet(tmp_path_factory.mktemp("mempki"), ("box-a",))


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(fleet, tmp_path_factory.mktemp("membroker"))
    yield b
    b.stop()


def test_broker_refuses_oversized_publishes(fleet: Pki, broker: Broker) -> None:
    got: list[int] = []
    seen = threading.Event()

    def on_message(m) -> None:
        got.append(len(m.payload))
        seen.set()

    tap = MqttLink("agg-tap", broker.host, broker.port, fleet.client_files("aggregator"), FLEET,
                   identity=AGGREGATOR, status=False, on_message=on_message)  # fmt: skip
    tap.connect(timeout=10)
    tap.subscribe(topics.node(FLEET, "box-a", "collect_masked")).wait(5)
    topic = topics.node(FLEET, "box-a", "collect_masked")
    try:
        for size in (64 * 1024 * 1024, 9 * 1024 * 1024):
            box = MqttLink(f"box-a-{size}", broker.host, broker.port, fleet.client_files("box-a"),
                           FLEET, identity="box-a", status=False).connect(timeout=10)  # fmt: skip
            ack = box.publish(topic, os.urandom(16) * (size // 16))
            with pytest.raises(TransportError):  # no PUBACK: the broker drops the client
                ack.wait(8)
            box.close()
        time.sleep(0.5)
        assert got == []  # nothing oversized was stored or forwarded
        ok = MqttLink("box-a-ok", broker.host, broker.port, fleet.client_files("box-a"), FLEET,
                      identity="box-a", status=False).connect(timeout=10)  # fmt: skip
        assert ok.publish(topic, b"x" * (1024 * 1024)).wait(10) < 0x80
        assert seen.wait(10) and got == [1024 * 1024]
        ok.close()
    finally:
        tap.close()
    assert "max_packet_size" in broker.conf_path.read_text()


def test_intake_holds_only_verified_early_updates_within_bounds(monkeypatch) -> None:
    agg = Ed25519PrivateKey.generate()
    boxes = {f"box{i}": Ed25519PrivateKey.generate() for i in range(4)}
    w = IntakeState("intake-t", agg, agg.public_key())

    def env(node: str, round_id: int, size: int, key=None) -> bytes:
        body = {"masked": b"\x00" * size}
        msg = Message(node, AGGREGATOR, round_id, Stage.COLLECT_MASKED, 0, b"n" * 16, body)
        return encode(msg, key or boxes[node])

    # before any open the worker knows no key: nothing unsigned-for-it is held
    assert w.on_update("box0", env("box0", 2, 100)) == []
    assert w.counters["out_of_round"] == 1 and w.counters["held_early"] == 0
    pubs = {n: k.public_key() for n, k in boxes.items()}
    w.on_control(encode_control(OP_OPEN, 1, b"m" * 16, 0, agg, dim=4, box_keys=pubs))
    # a forged early update (right name, wrong key) is refused before it is held
    w.on_update("box0", env("box0", 2, 100, key=Ed25519PrivateKey.generate()))
    assert w.counters["bad_signature"] == 1 and w.counters["held_early"] == 0
    # one per box; and no more bytes than the bound
    monkeypatch.setattr(intake, "MAX_EARLY_BYTES", 3000)
    w.on_update("box0", env("box0", 2, 1000))
    w.on_update("box0", env("box0", 2, 1000))  # the same box again
    w.on_update("box1", env("box1", 2, 1000))
    w.on_update("box2", env("box2", 2, 1000))  # over the byte bound
    assert w.counters["held_early"] == 2
    assert w._early_bytes <= 3000


def test_box_holds_early_stage_messages_within_a_byte_bound(fleet: Pki, syn_model: bytes) -> None:
    """Stage messages before their announcement are held (unverifiable yet), but bounded."""
    import numpy as np

    from edgeagent.federation import client as fl_client
    from edgeagent.federation.client import FlClient
    from edgeagent.fl.identity import load_ca, load_identity
    from edgeagent.transport.mqtt import Message as MqttMessage
    from tests.fl_support import FixedLearner

    ca = load_ca(fleet.ca_cert)
    files = fleet.client_files("box-a")
    link = MqttLink("box-a", "127.0.0.1", 9, files, FLEET, identity="box-a")  # never connected
    box = FlClient("box-a", FLEET, load_identity(files.cert, ca, "box-a"), ca,
                   FixedLearner(np.zeros(3, np.float32), 5), link)  # fmt: skip
    topic = topics.round_topic(FLEET, 5, "setup", "box-a")
    box.handle(MqttMessage(topic, b"x" * 1000, 1, False))
    assert len(box._early) == 1
    with pytest.raises(ProtocolError, match="oversized"):
        box.handle(MqttMessage(topic, b"x" * fl_client.EARLY_MAX_BYTES, 1, False))
    assert len(box._early) == 1
