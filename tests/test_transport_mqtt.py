"""MQTT transport against a real Mosquitto with the shipped TLS + ACL config.

Canary tests pin the paho/Mosquitto behaviours the facade relies on (PUBACK
reason codes, session resumption, paho's misleading return codes); if an
upgrade changes them these fail first, with a message saying which.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.errors import TransportError
from edgeagent.ops.pki import Pki, TlsFiles
from edgeagent.transport import topics
from edgeagent.transport.mqtt import (
    RC_NO_MATCHING_SUBSCRIBERS,
    RC_NOT_AUTHORIZED,
    Message,
    MqttLink,
    OutboxForwarder,
    is_transient,
)
from edgeagent.transport.outbox import Outbox
from edgelab.broker import Broker, render_config
from tests.plugins.mqtt import TEST_FLEET as FLEET

# --------------------------------------------------------------------------- pure parts


def test_link_backoff_is_the_shared_function_capped_for_a_quick_return() -> None:
    """The link's reconnect ladder is edgeagent.backoff's, topping out at 1.5-3 s (jittered)."""
    import random

    from edgeagent.backoff import backoff_delay
    from edgeagent.transport.mqtt import RECONNECT_MAX_S, RECONNECT_MIN_S

    assert RECONNECT_MAX_S <= 3.0  # recovery within a few seconds of the broker's return
    rng = random.Random(1)
    ladder = [backoff_delay(a, RECONNECT_MIN_S, RECONNECT_MAX_S, None) for a in range(8)]
    assert ladder[:3] == [0.5, 1.0, 2.0] and ladder[-1] == RECONNECT_MAX_S
    delays = [backoff_delay(20, RECONNECT_MIN_S, RECONNECT_MAX_S, rng) for _ in range(200)]
    assert min(delays) >= RECONNECT_MAX_S / 2 and max(delays) <= RECONNECT_MAX_S
    assert len({round(d, 3) for d in delays}) > 150  # spread, not lock-step


def test_transient_codes() -> None:
    assert is_transient(0x97) and is_transient(0x89) and is_transient(-1)
    assert not is_transient(RC_NOT_AUTHORIZED) and not is_transient(0x99)


def test_topic_builders_and_parser_round_trip() -> None:
    assert topics.alert("f1", "box-a") == "edgeagent/v1/f1/node/box-a/alert"
    assert topics.announce("f1", 7) == "edgeagent/v1/f1/round/7/announce"
    assert topics.model_current("f1") == "edgeagent/v1/f1/model/current"
    assert topics.node_filter("f1", "update") == "edgeagent/v1/f1/node/+/update"
    p = topics.parse(topics.update("f1", "box-a"))
    assert (p.area, p.node_id, p.kind) == ("node", "box-a", "update")
    r = topics.parse(topics.round_topic("f1", 3, "shares", "box-b"))
    assert (r.round_id, r.stage, r.to_node) == (3, "shares", "box-b")
    assert topics.parse(topics.model_current("f1")).area == "model"
    assert topics.model_params("f1") == "edgeagent/v1/f1/model/params"
    assert topics.parse(topics.model_params("f1")).kind == "params"


@pytest.mark.parametrize(
    "bad",
    [
        "other/v1/f/node/a/alert",
        "edgeagent/v2/f/node/a/alert",
        "edgeagent/v1/f/node/a",
        "edgeagent/v1/f/round/x/announce",
        "edgeagent/v1/f/model/old",
        "edgeagent/v1/f/node/a b/alert",
        "edgeagent/v1",
    ],
)
def test_topic_parser_rejects_foreign_topics(bad: str) -> None:
    with pytest.raises(TransportError) as ei:
        topics.parse(bad)
    assert ei.value.reason == "bad_topic"


@pytest.mark.parametrize("level", ["a/b", "+", "#", "", "$SYS"])
def test_topic_builders_refuse_wildcards_and_separators(level: str) -> None:
    with pytest.raises(TransportError):
        topics.alert(FLEET, level)


def test_rendered_config_carries_tls_and_acl(pki: Pki, tmp_path: Path) -> None:
    conf = render_config(pki, tmp_path, 18883)
    assert "require_certificate true" in conf
    assert "use_identity_as_username true" in conf
    assert "use_username_as_clientid true" in conf
    assert "listener 18883 127.0.0.1" in conf
    assert "allow_anonymous false" in conf
    assert str(pki.broker_files().cert) in conf


# --------------------------------------------------------------------------- helpers


def _raw_client(files: TlsFiles, client_id: str) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.tls_set(ca_certs=str(files.ca), certfile=str(files.cert), keyfile=str(files.key))
    return c


def _link(broker: Broker, pki: Pki, name: str, **kw: object) -> MqttLink:
    files = pki.client_files(name)
    kw.setdefault("reconnect_min_s", 0.1)
    kw.setdefault("reconnect_max_s", 0.5)
    return MqttLink(name, broker.host, broker.port, files, FLEET, **kw)  # type: ignore[arg-type]


class Inbox:
    """Collects messages from a link callback; wait() blocks until n arrived."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._cv = threading.Condition()

    def __call__(self, m: Message) -> None:
        with self._cv:
            self.messages.append(m)
            self._cv.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> list[Message]:
        with self._cv:
            self._cv.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)


def test_a_subscribe_racing_the_connect_is_not_lost(mosquitto_broker: Broker, pki: Pki) -> None:
    """A subscription made while the link is connecting, after it re-subscribed what it
    knew but before it counts as connected, must still reach the broker (a daemon's
    components subscribe while the transport is already connecting)."""
    late = topics.model_current(FLEET)
    acks: list[Any] = []

    class RacingLink(MqttLink):
        def _status_payload(self, state: str) -> bytes:
            # the "online" status goes out inside that window: subscribe from there
            if state == "online" and not acks:
                acks.append(self.subscribe(late))
            return super()._status_payload(state)

    inbox = Inbox()
    files = pki.client_files("box-a")
    box = RacingLink("box-a", mosquitto_broker.host, mosquitto_broker.port, files, FLEET,
                     on_message=inbox)  # fmt: skip
    with box, _link(mosquitto_broker, pki, "aggregator", status=False) as agg:
        assert acks and acks[0].wait(5) in (0, 1), "the late subscription was never sent"
        agg.publish(late, b"model", qos=1).wait(5)
        assert [m.payload for m in inbox.wait(1, 5) if m.topic == late] == [b"model"]


# --------------------------------------------------------------------------- canaries


def test_canary_puback_reason_codes_with_mqtt5_qos1(
    mosquitto_broker_module: Broker, pki: Pki
) -> None:
    """Mosquitto answers an ACL violation with PUBACK 0x87 (MQTT 5 + QoS 1 only)."""
    c = _raw_client(pki.client_files("box-a"), "canary-puback")
    acks: dict[int, int] = {}
    done = threading.Event()

    def on_publish(client: paho.Client, ud: object, mid: int, rc: object, props: object) -> None:
        acks[mid] = rc.value  # type: ignore[attr-defined]
        if len(acks) == 2:
            done.set()

    c.on_publish = on_publish
    c.connect(mosquitto_broker_module.host, mosquitto_broker_module.port)
    c.loop_start()
    try:
        own = c.publish(topics.alert(FLEET, "box-a"), b"x", qos=1).mid
        other = c.publish(topics.alert(FLEET, "box-b"), b"x", qos=1).mid
        assert done.wait(5), "no PUBACKs"
    finally:
        c.disconnect()
        c.loop_stop()
    assert acks[own] == RC_NO_MATCHING_SUBSCRIBERS
    assert acks[other] == RC_NOT_AUTHORIZED, "paho/mosquitto no longer report 0x87 for ACL denial"


def test_canary_paho_publish_while_disconnected_is_queued_not_failed(pki: Pki) -> None:
    """paho returns MQTT_ERR_NO_CONN yet keeps the message: never trust the rc alone."""
    c = _raw_client(pki.client_files("box-a"), "canary-noconn")
    info = c.publish(topics.alert(FLEET, "box-a"), b"x", qos=1)
    assert info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
    assert len(c._out_messages) == 1  # queued for after the connect
    with pytest.raises(RuntimeError):
        info.is_published()


def test_canary_session_resumes_with_clean_start_false(mosquitto_broker: Broker, pki: Pki) -> None:
    """clean_start=False + SessionExpiryInterval: queued QoS 1 reaches a returning client."""
    got: list[bytes] = []
    present: list[bool] = []
    received = threading.Event()

    def mk() -> paho.Client:
        c = _raw_client(pki.client_files("aggregator"), "canary-session")
        c.on_message = lambda cl, ud, m: (got.append(m.payload), received.set())
        c.on_connect = lambda cl, ud, flags, rc, p: present.append(flags.session_present)
        return c

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    sub = mk()
    sub.connect(mosquitto_broker.host, mosquitto_broker.port, clean_start=False, properties=props)
    sub.loop_start()
    topic = topics.alert(FLEET, "box-a")
    rc, _mid = sub.subscribe(topic, qos=1)
    assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()

    with _link(mosquitto_broker, pki, "box-a") as box:
        assert box.publish(topic, b"while-away").wait(5) == 0  # 0x00: a (sleeping) subscriber

    sub2 = mk()
    sub2.connect(mosquitto_broker.host, mosquitto_broker.port, clean_start=False, properties=props)
    sub2.loop_start()
    try:
        assert received.wait(5), "queued message not delivered on session resumption"
    finally:
        sub2.disconnect()
        sub2.loop_stop()
    assert present[-1] is True
    assert got == [b"while-away"]


# --------------------------------------------------------------------------- security


def test_box_publishing_under_another_id_is_refused(
    mosquitto_broker_module: Broker, pki: Pki
) -> None:
    with _link(mosquitto_broker_module, pki, "box-a") as box:
        assert box.publish(topics.alert(FLEET, "box-b"), b"forged").wait(5) == RC_NOT_AUTHORIZED
        assert box.publish(topics.model_current(FLEET), b"forged").wait(5) == RC_NOT_AUTHORIZED
        assert box.publish(topics.alert(FLEET, "box-a"), b"mine").wait(5) < 0x80
        assert box.counters.refusals == {RC_NOT_AUTHORIZED: 2}


def test_another_boxs_certificate_cannot_take_over_a_session(
    mosquitto_broker: Broker, pki: Pki
) -> None:
    """box-b's certificate with client id ``box-a`` must not kick box-a off the broker.

    The broker binds the client id to the certificate's CN
    (``use_username_as_clientid``), so the intruder connects as ``box-b``.
    """
    with _link(mosquitto_broker, pki, "box-a", status=False) as victim:
        before = victim.counters.disconnects
        intruder = _raw_client(pki.client_files("box-b"), "box-a")
        connected = threading.Event()
        intruder.on_connect = lambda *_a: connected.set()
        intruder.connect(mosquitto_broker.host, mosquitto_broker.port)
        intruder.loop_start()
        try:
            assert connected.wait(5), "box-b's certificate could not connect at all"
            time.sleep(1.0)  # a takeover would have disconnected the victim by now
            assert victim.connected and victim.counters.disconnects == before
            assert victim.publish(topics.alert(FLEET, "box-a"), b"still me").wait(5) < 0x80
        finally:
            intruder.disconnect()
            intruder.loop_stop()
    assert "box-b" in mosquitto_broker.log_tail(50)


def test_certificate_from_another_ca_cannot_connect(
    mosquitto_broker_module: Broker, foreign_pki: Pki
) -> None:
    link = MqttLink(
        "box-a",
        mosquitto_broker_module.host,
        mosquitto_broker_module.port,
        foreign_pki.client_files("box-a"),
        FLEET,
    )
    with pytest.raises(TransportError) as ei:
        link.connect(timeout=2.0)
    assert ei.value.reason == "connect_failed"
    assert link.counters.connects == 0


def test_client_that_distrusts_the_broker_ca_refuses_it(
    mosquitto_broker_module: Broker, pki: Pki, foreign_pki: Pki
) -> None:
    """Mutual TLS both ways: a box pinned to another CA does not talk to this broker."""
    own = pki.client_files("box-a")
    files = TlsFiles(foreign_pki.ca_cert, own.cert, own.key)
    link = MqttLink(
        "box-a", mosquitto_broker_module.host, mosquitto_broker_module.port, files, FLEET
    )
    with pytest.raises(TransportError):
        link.connect(timeout=2.0)
    assert "CERTIFICATE_VERIFY_FAILED" in link.counters.last_error


def test_box_cannot_read_another_boxs_alerts(mosquitto_broker_module: Broker, pki: Pki) -> None:
    spy, agg = Inbox(), Inbox()
    with (
        _link(mosquitto_broker_module, pki, "box-b", on_message=spy, status=False) as b,
        _link(mosquitto_broker_module, pki, "aggregator", on_message=agg, status=False) as a,
        _link(mosquitto_broker_module, pki, "box-a", status=False) as box,
    ):
        assert b.subscribe(topics.node_filter(FLEET, "alert")).wait(5) < 0x80  # granted...
        assert a.subscribe(topics.node_filter(FLEET, "alert")).wait(5) < 0x80
        box.publish(topics.alert(FLEET, "box-a"), b"private").wait(5)
        assert [m.payload for m in agg.wait(1)] == [b"private"]
        time.sleep(0.2)
    assert spy.messages == []  # ...but deliveries are filtered by the ACL


# --------------------------------------------------------------------------- link behaviour


def test_status_is_retained_online_and_offline_on_clean_close(
    mosquitto_broker: Broker, pki: Pki
) -> None:
    with _link(mosquitto_broker, pki, "box-a"):
        pass
    seen = Inbox()
    with _link(mosquitto_broker, pki, "aggregator", on_message=seen, status=False) as agg:
        agg.subscribe(topics.status(FLEET, "box-a")).wait(5)
        msgs = seen.wait(1)
    assert msgs and msgs[0].retain
    assert json.loads(msgs[0].payload)["state"] == "offline"


_VANISH = """
import sys, time
from pathlib import Path
from edgeagent.ops.pki import TlsFiles
from edgeagent.transport.mqtt import MqttLink
ca, cert, key, port, fleet = sys.argv[1:]
link = MqttLink("box-c", "127.0.0.1", int(port), TlsFiles(Path(ca), Path(cert), Path(key)),
                fleet, keepalive_s=5)
link.connect(timeout=5)
print("up", flush=True)
time.sleep(30)
"""


def test_last_will_marks_a_vanished_box_offline(mosquitto_broker: Broker, pki: Pki) -> None:
    f = pki.client_files("box-c")
    proc = subprocess.Popen(
        [sys.executable, "-c", _VANISH, str(f.ca), str(f.cert), str(f.key),
         str(mosquitto_broker.port), FLEET],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        states = Inbox()
        with _link(mosquitto_broker, pki, "aggregator", on_message=states, status=False) as agg:
            agg.subscribe(topics.status(FLEET, "box-c")).wait(5)
            first = states.wait(1)
            assert json.loads(first[0].payload)["state"] == "online"
            proc.kill()  # no DISCONNECT: the broker publishes the will
            later = states.wait(2, timeout=5)
        assert json.loads(later[-1].payload)["state"] == "offline"
    finally:
        proc.kill()
        proc.wait(5)


def test_link_reconnects_after_broker_restart_and_resubscribes(
    mosquitto_broker: Broker, pki: Pki
) -> None:
    inbox = Inbox()
    with (
        _link(mosquitto_broker, pki, "aggregator", on_message=inbox, status=False) as agg,
        _link(mosquitto_broker, pki, "box-a") as box,
    ):
        agg.subscribe(topics.node_filter(FLEET, "alert")).wait(5)
        mosquitto_broker.stop()
        deadline = time.monotonic() + 5
        while box.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not box.connected
        pending = box.publish(topics.alert(FLEET, "box-a"), b"during-outage")
        time.sleep(0.5)
        assert not pending.done()  # no PUBACK, no pretend success
        mosquitto_broker.start()
        assert pending.wait(10) < 0x80
        assert box.counters.connects == 2 and box.counters.disconnects == 1
        assert [m.payload for m in inbox.wait(1)] == [b"during-outage"]


def test_unsubscribe_stops_deliveries_and_leaves_the_reconnect_list(
    mosquitto_broker_module: Broker, pki: Pki
) -> None:
    """A box listens to the retained full model only while it needs it (FlClient); the link
    re-subscribes what ``subscribed`` reports at every connect, so that must drop it too."""
    inbox = Inbox()
    with (
        _link(mosquitto_broker_module, pki, "aggregator", status=False) as agg,
        _link(mosquitto_broker_module, pki, "box-a", on_message=inbox, status=False) as box,
    ):
        model = topics.model_current(FLEET)
        assert agg.publish(model, b"v1", retain=True).wait(5) < 0x80
        assert box.subscribe(model).wait(5) < 0x80
        assert [m.payload for m in inbox.wait(1)] == [b"v1"]  # the retained copy
        assert box.subscribed(model)
        box.unsubscribe(model)
        assert not box.subscribed(model)
        time.sleep(0.2)
        assert agg.publish(model, b"v2", retain=True).wait(5) < 0x80
        time.sleep(0.3)
        assert [m.payload for m in inbox.messages] == [b"v1"]
        box.unsubscribe(model)  # unsubscribing twice is harmless
        agg.publish(model, b"", retain=True).wait(5)


def test_subscribe_before_connect_resolves_after_connack(
    mosquitto_broker_module: Broker, pki: Pki
) -> None:
    link = _link(mosquitto_broker_module, pki, "aggregator", status=False)
    ack = link.subscribe(topics.round_filter(FLEET))
    assert not ack.done()
    try:
        link.connect()
        assert ack.wait(5) in (0, 1)
    finally:
        link.close()


def test_publish_after_close_and_bad_topic_raise(mosquitto_broker_module: Broker, pki: Pki) -> None:
    link = _link(mosquitto_broker_module, pki, "box-a", status=False).connect()
    with pytest.raises(TransportError) as ei:
        link.publish("edgeagent/v1/f/node/+/alert", b"x")
    assert ei.value.reason == "bad_publish"
    link.close()
    with pytest.raises(TransportError) as ei:
        link.publish(topics.alert(FLEET, "box-a"), b"x")
    assert ei.value.reason == "closed"


def test_consumer_callback_errors_are_counted_not_fatal(
    mosquitto_broker_module: Broker, pki: Pki
) -> None:
    good = Inbox()
    calls = {"n": 0}

    def flaky(m: Message) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("consumer bug")
        good(m)

    with (
        _link(mosquitto_broker_module, pki, "aggregator", on_message=flaky, status=False) as agg,
        _link(mosquitto_broker_module, pki, "box-b", status=False) as box,
    ):
        agg.subscribe(topics.node_filter(FLEET, "update")).wait(5)
        box.publish(topics.update(FLEET, "box-b"), b"1").wait(5)
        box.publish(topics.update(FLEET, "box-b"), b"2").wait(5)
        assert [m.payload for m in good.wait(1)] == [b"2"]
        assert agg.counters.callback_errors == 1


def test_forwarder_sets_msg_id_and_expiry_and_keeps_rows_refused_for_authorisation(
    mosquitto_broker_module: Broker, pki: Pki, tmp_state: Path
) -> None:
    """A 0x87 says the box's identity is wrong, not the message: the row stays, the
    forwarder holds and says why; a later accepted publish clears the refusal."""
    inbox = Inbox()
    ob = Outbox.in_state_dir(tmp_state)
    ob.put(topics.update(FLEET, "box-a"), b"upd", "update", msg_id="u-1")
    ob.put(topics.alert(FLEET, "box-b"), b"forged", "alert", msg_id="a-forged")
    ob.put(topics.alert(FLEET, "box-a"), b"alert", "alert", msg_id="a-1")
    with (
        _link(mosquitto_broker_module, pki, "aggregator", on_message=inbox, status=False) as agg,
        _link(mosquitto_broker_module, pki, "box-a", status=False) as box,
    ):
        agg.subscribe(topics.node_filter(FLEET, "alert")).wait(5)
        agg.subscribe(topics.node_filter(FLEET, "update")).wait(5)
        fw = OutboxForwarder(ob, box)
        t0 = time.monotonic()
        assert not fw.drain(10)  # held by the refusal, not waiting out the timeout
        assert time.monotonic() - t0 < 5
        msgs = inbox.wait(2)
        time.sleep(0.2)  # a duplicate would arrive by now
        msgs = list(inbox.messages)
        assert fw.refusal is not None and fw.refusal["code"] == RC_NOT_AUTHORIZED
        assert fw.pump_once() == 0  # held: the same refusal would come back
    assert sorted(m.msg_id for m in msgs) == ["a-1", "u-1"]
    # Expiry comes from the outbox age bound (7 days by default), minus the time stored.
    assert all(m.expiry_s is not None and 7 * 86400 - 60 < m.expiry_s <= 7 * 86400 for m in msgs)
    assert fw.delivered == 2 and fw.rejected == 0 and fw.refused_kept == 1
    assert [r.msg_id for r in ob.peek(10)] == ["a-forged"]
    c = ob.counters()
    assert "rejected.alert" not in c and c["delivered.alert"] == 1
    ob.close()


def test_shared_subscription_spreads_updates_across_aggregator_workers(
    mosquitto_broker_module: Broker, pki: Pki
) -> None:
    """DESIGN §5 scale-out: the ACL admits $share subscriptions for the intake workers,
    each connected with its own certificate (the broker binds client ids to CNs)."""
    w1, w2 = Inbox(), Inbox()
    shared = "$share/aggs/" + topics.node_filter(FLEET, "collect_masked")
    host, port = mosquitto_broker_module.host, mosquitto_broker_module.port
    with (
        MqttLink("intake-0", host, port, pki.client_files("intake-0"), FLEET, status=False,
                 on_message=w1) as a1,
        MqttLink("intake-1", host, port, pki.client_files("intake-1"), FLEET, status=False,
                 on_message=w2) as a2,
        _link(mosquitto_broker_module, pki, "box-c", status=False) as box,
    ):  # fmt: skip
        assert a1.subscribe(shared).wait(5) < 0x80 and a2.subscribe(shared).wait(5) < 0x80
        for i in range(10):
            topic = topics.node(FLEET, "box-c", "collect_masked")
            assert box.publish(topic, b"%d" % i).wait(5) < 0x80
        time.sleep(0.3)
        assert a1.counters.disconnects == 0 and a2.counters.disconnects == 0
    got1 = {m.payload for m in w1.messages}
    got2 = {m.payload for m in w2.messages}
    assert got1 | got2 == {b"%d" % i for i in range(10)}
    assert not got1 & got2 and got1 and got2  # each update to exactly one worker


def test_unreadable_tls_material_is_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    own = pki.client_files("box-a")
    with pytest.raises(TransportError) as ei:
        MqttLink("box-a", "127.0.0.1", 1, TlsFiles(own.ca, own.cert, bad_key), FLEET)
    assert ei.value.reason == "bad_tls_files"


def test_forwarder_reoffers_rows_whose_puback_never_came(
    mosquitto_broker: Broker, pki: Pki, tmp_state: Path
) -> None:
    """A frozen broker (TCP up, no PUBACK): rows are re-offered after ack_timeout_s and
    delivered once the broker thaws; the receiver sees the copies and dedupes by msg-id."""
    import os
    import signal

    inbox = Inbox()
    ob = Outbox.in_state_dir(tmp_state)
    with (
        _link(mosquitto_broker, pki, "aggregator", on_message=inbox, status=False) as agg,
        _link(mosquitto_broker, pki, "box-a", status=False) as box,
    ):
        agg.subscribe(topics.node_filter(FLEET, "alert")).wait(5)
        fw = OutboxForwarder(ob, box, ack_timeout_s=0.3)
        pid = mosquitto_broker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            ob.put(topics.alert(FLEET, "box-a"), b"stalled", "alert", msg_id="a-stall")
            assert fw.pump_once() == 1
            time.sleep(0.5)
            assert fw.pump_once() == 1  # offered again: no PUBACK within the timeout
            assert fw.reoffered == 1 and ob.count() == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        assert fw.drain(10)
        time.sleep(0.3)
    ids = [m.msg_id for m in inbox.messages]
    assert set(ids) == {"a-stall"} and 1 <= len(ids) <= 2
    assert ob.counters()["delivered.alert"] == 1
    ob.close()


def test_outage_is_said_once_when_lost_and_once_when_back(
    mosquitto_broker: Broker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="edgeagent.transport.mqtt")
    link = _link(mosquitto_broker, pki, "box-a").connect()
    try:
        assert link.down_for_s() is None
        mosquitto_broker.stop()
        deadline = time.monotonic() + 10
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.5)  # several failed attempts: still one line
        down = link.down_for_s()
        assert down is not None and down >= 1.0
        mosquitto_broker.start()
        assert link.wait_connected(10)
        lost = [r.getMessage() for r in caplog.records if "lost the broker" in r.getMessage()]
        back = [r.getMessage() for r in caplog.records if "back after" in r.getMessage()]
        assert len(lost) == 1 and len(back) == 1, caplog.text
        assert "unreachable" in back[0] and "failed attempt" in back[0]
        assert link.down_for_s() is None and link.counters.outages == 1
        assert link.counters.last_outage_s is not None and link.counters.last_outage_s >= down
    finally:
        link.close()
