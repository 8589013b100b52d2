"""Broker outage: a box keeps producing alerts and updates while Mosquitto is down.

Real broker (shipped TLS + ACL config), real paho, real SQLite outbox. After
the restart every alert and update arrives exactly once by id (receiver
dedupes on the ``msg-id`` user property, as the aggregator does), and what was
queued during the outage arrives in priority order: all alerts, then updates,
each oldest first.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message, MqttLink, OutboxForwarder
from edgeagent.transport.outbox import Outbox
from edgelab.broker import Broker
from tests.plugins.mqtt import TEST_FLEET as FLEET

BOX = "box-a"


@dataclass
class Receiver:
    """The aggregator side: records arrival order and dedupes by msg-id."""

    order: list[str] = field(default_factory=list)
    copies: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, m: Message) -> None:
        mid = m.msg_id
        if mid is None:
            return
        with self.lock:
            self.copies[mid] = self.copies.get(mid, 0) + 1
            if self.copies[mid] == 1:
                self.order.append(mid)


@dataclass
class Produced:
    ids: list[str] = field(default_factory=list)
    phase: dict[str, str] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)


def _producer(
    ob: Outbox, out: Produced, stop: threading.Event, phase: Callable[[], str], seed: int
) -> None:
    rnd = random.Random(seed)
    n = 0
    while not stop.is_set():
        kind = "alert" if rnd.random() < 0.4 else "update"
        mid = f"{kind[0]}{n:05d}"
        topic = topics.alert(FLEET, BOX) if kind == "alert" else topics.update(FLEET, BOX)
        ph = phase()  # read before put: "outage" only if the link was already down
        ob.put(topic, rnd.randbytes(rnd.randint(50, 2000)), kind, msg_id=mid)
        out.ids.append(mid)
        out.phase[mid] = ph
        out.kind[mid] = kind
        n += 1
        time.sleep(0.01)


def run_outage(broker: Broker, pki: Pki, state: Path, outage_s: float) -> None:
    recv = Receiver()
    ob = Outbox.in_state_dir(state)
    agg = MqttLink(
        "aggregator-1", broker.host, broker.port, pki.client_files("aggregator"), FLEET,
        identity="aggregator", status=False, on_message=recv,
        reconnect_min_s=0.1, reconnect_max_s=1.0,
    )  # fmt: skip
    box = MqttLink(
        BOX, broker.host, broker.port, pki.client_files(BOX), FLEET,
        reconnect_min_s=0.1, reconnect_max_s=1.0,
    )  # fmt: skip
    agg.connect()
    assert agg.subscribe(topics.node_filter(FLEET, "alert")).wait(5) < 0x80
    assert agg.subscribe(topics.node_filter(FLEET, "update")).wait(5) < 0x80
    box.connect()
    fw = OutboxForwarder(ob, box).start()

    state_flag = {"phase": "before"}
    produced = Produced()
    stop = threading.Event()
    prod = threading.Thread(
        target=_producer, args=(ob, produced, stop, lambda: state_flag["phase"], 1), daemon=True
    )
    try:
        prod.start()
        time.sleep(1.0)
        broker.stop()
        deadline = time.monotonic() + 5
        while box.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not box.connected, "box did not notice the outage"
        state_flag["phase"] = "outage"
        time.sleep(outage_s)
        state_flag["phase"] = "after"
        broker.start()
        assert box.wait_connected(10) and agg.wait_connected(10)
        time.sleep(1.0)
        stop.set()
        prod.join(5)
        assert fw.drain(30), f"outbox not drained: {ob.count()} rows left"
        deadline = time.monotonic() + 10
        while len(recv.order) < len(produced.ids) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        fw.stop()
        box.close()
        agg.close()
        ob.close()

    # Exactly once by id: nothing missing, nothing the box never sent.
    assert set(recv.order) == set(produced.ids)
    assert len(recv.order) == len(produced.ids)
    during = [m for m in produced.ids if produced.phase[m] == "outage"]
    assert len(during) >= 10, "too little produced during the outage to judge ordering"
    assert {produced.kind[m] for m in during} == {"alert", "update"}
    # Queued during the outage: alerts first, then updates, each oldest first.
    arrived = [m for m in recv.order if produced.phase[m] == "outage"]
    expected = [m for m in during if produced.kind[m] == "alert"] + [
        m for m in during if produced.kind[m] == "update"
    ]
    assert arrived == expected
    # Duplicates can only come from re-sends of messages in flight at the cut.
    dupes = sum(c - 1 for c in recv.copies.values())
    assert dupes <= 32, f"{dupes} duplicate deliveries"


def test_outbox_survives_short_broker_outage(
    mosquitto_broker: Broker, pki: Pki, tmp_state: Path
) -> None:
    run_outage(mosquitto_broker, pki, tmp_state, outage_s=5.0)


@pytest.mark.slow
def test_outbox_survives_60s_broker_outage(
    mosquitto_broker: Broker, pki: Pki, tmp_state: Path
) -> None:
    run_outage(mosquitto_broker, pki, tmp_state, outage_s=60.0)
