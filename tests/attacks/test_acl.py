"""The shipped ACL: a box reads only its own stage messages and writes only in its own fleet.

Over a real Mosquitto with the shipped ACL rendered for one fleet: box-b
subscribed to every round topic receives the announcement and its own stage
messages but none of box-a's; box-a publishing into another fleet is refused
(PUBACK 0x87), in its own fleet accepted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from edgeagent.fl.constants import AGGREGATOR
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import RC_NOT_AUTHORIZED, MqttLink
from edgelab.broker import Broker, render_acl
from tests.fl_support import make_fleet, mosquitto_or_skip

FLEET = "flacl"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_fleet(tmp_path_factory.mktemp("aclpki"), ("box-a", "box-b"))


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    mosquitto_or_skip()
    b = Broker(fleet, tmp_path_factory.mktemp("aclbroker"), fleet=FLEET).start()
    yield b
    b.stop()


def _link(fleet: Pki, broker: Broker, name: str, identity: str, on_message=None) -> MqttLink:
    link = MqttLink(name, broker.host, broker.port, fleet.client_files(identity), FLEET,
                    identity=identity, status=False, on_message=on_message)  # fmt: skip
    return link.connect(timeout=10)


def test_box_reads_only_its_own_stage_messages(fleet: Pki, broker: Broker) -> None:
    got: list[str] = []
    lock = threading.Lock()

    def on_message(m) -> None:
        with lock:
            got.append(m.topic)

    b = _link(fleet, broker, "box-b", "box-b", on_message)
    p = topics.prefix(FLEET)
    b.subscribe(f"{p}/round/#").wait(5)  # granted, but deliveries are filtered by the ACL
    agg = _link(fleet, broker, "aggregator", AGGREGATOR)
    sent = [
        topics.announce(FLEET, 3),
        topics.round_topic(FLEET, 3, "setup", "box-a"),
        topics.round_topic(FLEET, 3, "unmask", "box-a"),
        topics.round_topic(FLEET, 3, "setup", "box-b"),
    ]
    for t in sent:
        assert agg.publish(t, b"x").wait(5) < 0x80
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(got) < 2:
        time.sleep(0.05)
    time.sleep(0.3)
    assert sorted(got) == sorted([sent[0], sent[3]])
    b.close()
    agg.close()


def test_box_cannot_write_into_another_fleet(fleet: Pki, broker: Broker) -> None:
    a = _link(fleet, broker, "box-a", "box-a")
    other = topics.node("otherfleet", "box-a", "update")
    assert a.publish(other, b"x").wait(5) == RC_NOT_AUTHORIZED
    assert a.publish(topics.node(FLEET, "box-b", "update"), b"x").wait(5) == RC_NOT_AUTHORIZED
    assert a.publish(topics.node(FLEET, "box-a", "update"), b"x").wait(5) < 0x80
    a.close()


def test_lab_acl_keeps_any_fleet_level() -> None:
    assert "edgeagent/v1/+/round/+/+/%u" in render_acl()
    assert "edgeagent/v1/f1/round/+/+/%u" in render_acl("f1")
    lines = render_acl("f1").splitlines()
    assert not any(ln.startswith("pattern read") and ln.endswith("/round/#") for ln in lines)
