"""Ward feedback over a real Mosquitto with the shipped ACL: only the ward's signed verdicts train.

The box runs the daemon's ``FeedbackComponent`` on its own mTLS link; the ward
system connects with the ``ward`` certificate (``pki issue-consumer --role
ward``) and signs with its Ed25519 identity. Accepted: a signed ward verdict on
the box's topic. Refused by the box, each with a counter and nothing trained:
a box's own certificate, an unsigned, forged or replayed message, one from
another fleet's CA, one addressed to another box, one too old. Refused by the
broker (PUBACK 0x87): another box or the alerts consumer writing into the box's
feedback topic.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.daemon.components import Counters
from edgeagent.daemon.feedback import FeedbackComponent
from edgeagent.fl.identity import Identity, load_ca, load_identity
from edgeagent.ops.pki import CONSUMER_ID, WARD_ID, Pki
from edgeagent.pipeline.detect import ValidatedWindow
from edgeagent.pipeline.feedback import TRAIN, AckRequest, FeedbackStore, split_of
from edgeagent.pipeline.feedback_wire import encode_feedback
from edgeagent.transport import topics
from edgeagent.transport.mqtt import RC_NOT_AUTHORIZED, Message, MqttLink
from edgelab.broker import Broker
from tests.fl_support import make_fleet, mosquitto_or_skip

FLEET = "fbfleet"
CLASSES = ("normal", "tachycardia", "fall")


class RecordingLearner:
    def __init__(self) -> None:
        self.got: list[ValidatedWindow] = []

    def offer_labelled(self, w: ValidatedWindow) -> bool:
        self.got.append(w)
        return True


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = make_fleet(tmp_path_factory.mktemp("fbpki"), ("box-a", "box-b"))
    pki.issue_consumer(role="ward")
    pki.issue_consumer()
    return pki


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    mosquitto_or_skip()
    b = Broker(fleet, tmp_path_factory.mktemp("fbbroker"), fleet=FLEET).start()
    yield b
    b.stop()


def _link(fleet: Pki, broker: Broker, name: str, on_message: Any = None) -> MqttLink:
    link = MqttLink(name, broker.host, broker.port, fleet.client_files(name), FLEET,
                    identity=name, status=False, on_message=on_message)  # fmt: skip
    return link.connect(timeout=10)


def _identity(pki: Pki, name: str) -> Identity:
    return load_identity(pki.client_files(name).cert, load_ca(pki.ca_cert), name)


def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _alert_ids(n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        a = f"{i:08x}" + "c0ffee" * 4
        if split_of(a, 0.25) == TRAIN:
            out.append(a)
        i += 1
    return out


@pytest.fixture
def box(fleet: Pki, broker: Broker, tmp_path: Path) -> Iterator[tuple[FeedbackComponent, list]]:
    """Box-a's feedback component on its own link, one alert of patient p1 per id below."""
    store = FeedbackStore(tmp_path, classes=lambda: CLASSES, served=lambda: {"p1"})
    others: list[Message] = []
    link = _link(fleet, broker, "box-a", on_message=others.append)
    comp = FeedbackComponent(store, RecordingLearner(), Counters(), box_id="box-a",
                             fleet=FLEET, link=link, ca=load_ca(fleet.ca_cert))  # fmt: skip
    for a in _alert_ids(4):
        for i in range(3):
            comp.keep(a, "p1", ValidatedWindow(np.full(3, i, np.float32), np.zeros((1, 3)),
                                               np.ones((1, 3)), "tachycardia"))  # fmt: skip
    comp.start()
    assert link.subscribe(topics.feedback(FLEET, "box-a")).wait(5) < 0x80
    try:
        yield comp, others
    finally:
        comp.stop()
        link.close()


def _msg(ident: Identity, alert: str, *, box: str = "box-a", t: float | None = None,
         key: Ed25519PrivateKey | None = None) -> bytes:  # fmt: skip
    req = AckRequest(alert, False, None, "nurse-3", "p1")
    return encode_feedback(box, req, time.time() if t is None else t, os.urandom(16),
                           key or ident.key, ident.cert_der)  # fmt: skip


def _refused(comp: FeedbackComponent, reason: str, n: int = 1) -> bool:
    return comp.counters.snapshot().get(f"feedback_refused_{reason}", 0) >= n


def test_a_signed_ward_verdict_is_accepted_and_trains(
    fleet: Pki, broker: Broker, box: tuple[FeedbackComponent, list]
) -> None:
    comp, others = box
    results: list[Message] = []
    ward = _link(fleet, broker, WARD_ID, on_message=results.append)
    a = _alert_ids(1)[0]
    try:
        assert ward.subscribe(topics.feedback_result(FLEET, "box-a")).wait(5) < 0x80
        assert ward.publish(topics.feedback(FLEET, "box-a"), _msg(_identity(fleet, WARD_ID), a)
                            ).wait(5) < 0x80  # fmt: skip
        assert _wait(lambda: comp.counters.snapshot().get("feedback_accepted") == 1)
        assert ward.publish(topics.feedback(FLEET, "box-a"), b"junk").wait(5) < 0x80
        assert _wait(lambda: len(results) == 2)
    finally:
        ward.close()
    first, second = (json.loads(m.payload) for m in results)
    assert first["accepted"] and first["alert"] == a and first["label"] == "normal"
    assert len(first["nonce"]) == 32
    assert not second["accepted"] and second["reason"] == "malformed"
    v = comp.store.verdict(a)
    assert v is not None and v["label"] == "normal" and v["source"] == "ward:nurse-3"
    assert [w.label for w in comp.learner.got] == ["normal"] * 3
    assert not others  # the feedback topic is not passed on to the federation client


def test_forged_replayed_foreign_and_misaddressed_messages_train_nothing(
    fleet: Pki, broker: Broker, box: tuple[FeedbackComponent, list], tmp_path: Path
) -> None:
    comp, _ = box
    a, b, c, d = _alert_ids(4)
    ward_id = _identity(fleet, WARD_ID)
    topic = topics.feedback(FLEET, "box-a")
    other = Pki.init(tmp_path / "other", fleet="elsewhere")
    other.issue_consumer(role="ward")
    foreign = _identity(other, WARD_ID)
    good = _msg(ward_id, a)
    unsigned = cbor2.dumps({"v": 1, "p": cbor2.loads(good)["p"], "sig": b"", "cert": b""})
    cases = [
        (_msg(ward_id, b, key=Ed25519PrivateKey.generate()), "bad_signature"),  # forged
        (unsigned, "bad_certificate"),
        (b"\xff not cbor", "malformed"),
        (_msg(foreign, b), "foreign_ca"),  # a ward certificate of another fleet's CA
        (_msg(ward_id, c, box="box-b"), "wrong_destination"),  # box-b's verdict replayed here
        (_msg(ward_id, d, t=time.time() - 3600), "out_of_window"),
    ]
    ward = _link(fleet, broker, WARD_ID)
    try:
        for payload, reason in cases:
            assert ward.publish(topic, payload).wait(5) < 0x80
            assert _wait(lambda r=reason: _refused(comp, r)), (reason, comp.counters.snapshot())
        assert ward.publish(topic, good).wait(5) < 0x80
        assert _wait(lambda: comp.counters.snapshot().get("feedback_accepted") == 1)
        assert ward.publish(topic, good).wait(5) < 0x80  # the same bytes again
        assert _wait(lambda: _refused(comp, "replay"))
    finally:
        ward.close()
    assert len(comp.learner.got) == 3  # only the one good verdict's windows
    for alert in (b, c, d):
        assert comp.store.verdict(alert) is None


def test_a_box_certificate_cannot_give_feedback(
    fleet: Pki, broker: Broker, box: tuple[FeedbackComponent, list]
) -> None:
    """Box-a may write under its own id (the ACL's pattern), but it is not the ward."""
    comp, _ = box
    a = _alert_ids(1)[0]
    box_signed = _msg(_identity(fleet, "box-a"), a)
    assert comp.link.publish(topics.feedback(FLEET, "box-a"), box_signed).wait(5) < 0x80
    assert _wait(lambda: _refused(comp, "wrong_identity"))
    b_link = _link(fleet, broker, "box-b")
    consumer = _link(fleet, broker, CONSUMER_ID)
    try:
        signed_b = _msg(_identity(fleet, "box-b"), a)
        assert b_link.publish(topics.feedback(FLEET, "box-a"), signed_b).wait(5) == \
            RC_NOT_AUTHORIZED  # fmt: skip
        assert consumer.publish(topics.feedback(FLEET, "box-a"), signed_b).wait(5) == \
            RC_NOT_AUTHORIZED  # fmt: skip
        ward_signed = _msg(_identity(fleet, WARD_ID), a)  # even a ward-signed message
        assert b_link.publish(topics.feedback(FLEET, "box-a"), ward_signed).wait(5) == \
            RC_NOT_AUTHORIZED  # fmt: skip
    finally:
        b_link.close()
        consumer.close()
    time.sleep(0.3)
    assert comp.counters.snapshot().get("feedback_accepted") is None
    assert comp.store.verdict(a) is None and comp.learner.got == []


def test_a_verdict_on_another_box_s_topic_never_reaches_this_box(
    fleet: Pki, broker: Broker, box: tuple[FeedbackComponent, list]
) -> None:
    comp, others = box
    a = _alert_ids(1)[0]
    # Box-a asks for every box's feedback: granted, but the broker filters deliveries.
    assert comp.link.subscribe(f"{topics.prefix(FLEET)}/node/+/feedback").wait(5) < 0x80
    ward = _link(fleet, broker, WARD_ID)
    try:
        msg = _msg(_identity(fleet, WARD_ID), a)  # addressed to box-a, sent on box-b's topic
        assert ward.publish(topics.feedback(FLEET, "box-b"), msg).wait(5) < 0x80
    finally:
        ward.close()
    time.sleep(0.5)
    assert comp.store.verdict(a) is None and not others
    # Were it delivered (a broker without the ACL), the component takes only its own topic.
    comp.on_message(Message(topics.feedback(FLEET, "box-b"), msg, 1, False))
    assert comp.store.verdict(a) is None and [m.topic for m in others] == [
        topics.feedback(FLEET, "box-b")
    ]


def test_other_messages_still_reach_the_link_s_previous_consumer(
    fleet: Pki, broker: Broker, box: tuple[FeedbackComponent, list]
) -> None:
    comp, others = box
    comp.link.subscribe(topics.model_current(FLEET)).wait(5)
    agg = _link(fleet, broker, "aggregator")
    try:
        assert agg.publish(topics.model_current(FLEET), b"model").wait(5) < 0x80
        assert _wait(lambda: bool(others))
    finally:
        agg.close()
    assert others[0].topic == topics.model_current(FLEET)
