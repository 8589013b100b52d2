"""Envelope encode/verify and the receiver's refusals: each reason counted, never a crash."""

from __future__ import annotations

import hashlib
import os

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import ProtocolError
from edgeagent.fl.constants import (
    AGGREGATOR,
    BROADCAST,
    ENVELOPE_VERSION,
    SIGNATURE_CONTEXT,
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

NONCE = bytes(range(16))


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {"box1": Ed25519PrivateKey.generate(), "box2": Ed25519PrivateKey.generate()}


@pytest.fixture
def rx(keys: dict[str, Ed25519PrivateKey]) -> EnvelopeReceiver:
    r = EnvelopeReceiver(AGGREGATOR, {n: k.public_key() for n, k in keys.items()})
    r.begin_round(7, NONCE)
    return r


def msg(src: str = "box1", seq: int = 0, body: dict | None = None, **kw: object) -> Message:
    fields = {"dst": AGGREGATOR, "round": 7, "stage": Stage.SETUP, "nonce": NONCE}
    fields.update(kw)
    return Message(src=src, seq=seq, body=body or {"x": b"\x01"}, **fields)  # type: ignore[arg-type]


def test_roundtrip_preserves_every_field(rx, keys) -> None:
    m = msg(body={"a": [1, 2], "b": b"\x00" * 40}, stage=Stage.UNMASK)
    got = rx.receive(encode(m, keys["box1"]))
    assert got.message == m and not got.duplicate
    assert rx.counters["accepted"] == 1


def test_redelivery_is_idempotent_and_counted(rx, keys) -> None:
    data = encode(msg(), keys["box1"])
    assert not rx.receive(data).duplicate
    again = rx.receive(data)
    assert again.duplicate and again.message.seq == 0
    assert rx.counters["duplicate"] == 1 and rx.counters["accepted"] == 1


def refused(rx: EnvelopeReceiver, data: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        rx.receive(data)
    assert rx.counters[info.value.reason] >= 1
    return info.value.reason


def test_forged_signature_refused(rx, keys) -> None:
    # box2 signs a message claiming to be box1: keys are bound to identities
    assert refused(rx, encode(msg(src="box1"), keys["box2"])) == "bad_signature"


def test_unsigned_and_truncated_signature_refused(rx, keys) -> None:
    outer = cbor2.loads(encode(msg(), keys["box1"]))
    outer[Key.SIGNATURE.value] = b""
    assert refused(rx, cbor2.dumps(outer)) == "bad_signature"
    del outer[Key.SIGNATURE.value]
    assert refused(rx, cbor2.dumps(outer)) == "malformed"


def test_tampered_payload_refused(rx, keys) -> None:
    outer = cbor2.loads(encode(msg(body={"n": 1}), keys["box1"]))
    inner = cbor2.loads(outer[Key.PAYLOAD.value])
    inner[Key.BODY.value] = {"n": 2}
    outer[Key.PAYLOAD.value] = cbor2.dumps(inner, canonical=True)
    assert refused(rx, cbor2.dumps(outer)) == "bad_signature"


def test_signature_is_domain_separated(rx, keys) -> None:
    outer = cbor2.loads(encode(msg(), keys["box1"]))
    payload = outer[Key.PAYLOAD.value]
    digest = hashlib.sha256(payload).digest()
    for signed in (
        digest,  # no context
        SIGNATURE_CONTEXT + payload,  # the payload itself, not its digest
        b"edgeagent/fl/envelope/v1\x00" + payload,  # what a version-1 box signed
    ):
        outer[Key.SIGNATURE.value] = keys["box1"].sign(signed)
        assert refused(rx, cbor2.dumps(outer)) == "bad_signature"
    assert (
        SIGNATURE_CONTEXT.endswith(b"\x00") and signed_bytes(payload) == SIGNATURE_CONTEXT + digest
    )


def test_a_version_1_envelope_is_refused_by_version(rx, keys) -> None:
    outer = cbor2.loads(encode(msg(), keys["box1"]))
    outer[Key.VERSION.value] = 1
    assert ENVELOPE_VERSION == 2 and refused(rx, cbor2.dumps(outer)) == "bad_version"


def test_replay_with_old_seq_refused(rx, keys) -> None:
    rx.receive(encode(msg(seq=5), keys["box1"]))
    assert refused(rx, encode(msg(seq=5, body={"other": 1}), keys["box1"])) == "replay"
    assert refused(rx, encode(msg(seq=3), keys["box1"])) == "replay"
    rx.receive(encode(msg(seq=6), keys["box1"]))  # the sender carries on normally


def test_out_of_round_and_stale_nonce_refused(rx, keys) -> None:
    assert refused(rx, encode(msg(round=6), keys["box1"])) == "out_of_round"
    assert refused(rx, encode(msg(nonce=os.urandom(16)), keys["box1"])) == "stale_nonce"


def test_previous_round_message_refused_after_new_round(rx, keys) -> None:
    old = encode(msg(), keys["box1"])
    rx.receive(old)
    rx.begin_round(8, os.urandom(16))
    assert refused(rx, old) == "out_of_round"


def test_unknown_sender_wrong_destination_version_size(rx, keys) -> None:
    stranger = Ed25519PrivateKey.generate()
    assert refused(rx, encode(msg(src="box9"), stranger)) == "unknown_sender"
    assert refused(rx, encode(msg(dst="box2"), keys["box1"])) == "wrong_destination"
    outer = cbor2.loads(encode(msg(), keys["box1"]))
    outer[Key.VERSION.value] = 99
    assert refused(rx, cbor2.dumps(outer)) == "bad_version"
    small = EnvelopeReceiver(AGGREGATOR, {"box1": keys["box1"].public_key()}, max_bytes=200)
    small.begin_round(7, NONCE)
    assert refused(small, encode(msg(body={"v": b"\x00" * 500}), keys["box1"])) == "oversized"


def test_broadcast_accepted(keys) -> None:
    box = EnvelopeReceiver("box1", {AGGREGATOR: keys["box2"].public_key()})
    box.begin_round(7, NONCE)
    m = msg(src=AGGREGATOR, dst=BROADCAST)
    assert box.receive(encode(m, keys["box2"])).message == m


def test_no_round_yet_refuses_everything(keys) -> None:
    r = EnvelopeReceiver(AGGREGATOR, {"box1": keys["box1"].public_key()})
    assert refused(r, encode(msg(), keys["box1"])) == "out_of_round"


@pytest.mark.parametrize(
    "payload",
    [
        {"src": "box1"},  # keys missing
        {"src": 1, "dst": "a", "round": 7, "stage": "setup", "seq": 0, "nonce": NONCE, "body": {}},
        {
            "src": "b",
            "dst": "a",
            "round": -1,
            "stage": "setup",
            "seq": 0,
            "nonce": NONCE,
            "body": {},
        },
        {"src": "b", "dst": "a", "round": 7, "stage": "nope", "seq": 0, "nonce": NONCE, "body": {}},
        {"src": "b", "dst": "a", "round": 7, "stage": "setup", "seq": 0, "nonce": b"x", "body": {}},
        {
            "src": "b",
            "dst": "a",
            "round": 7,
            "stage": "setup",
            "seq": 0,
            "nonce": NONCE,
            "body": [],
        },
        {
            "src": "b",
            "dst": "a",
            "round": True,
            "stage": "setup",
            "seq": 0,
            "nonce": NONCE,
            "body": {},
        },
    ],
)
def test_schema_violations_are_malformed(rx, keys, payload) -> None:
    p = cbor2.dumps(payload)
    data = cbor2.dumps({"v": ENVELOPE_VERSION, "p": p, "sig": keys["box1"].sign(signed_bytes(p))})
    assert refused(rx, data) == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_crashes(data: bytes) -> None:
    r = EnvelopeReceiver(AGGREGATOR, {})
    r.begin_round(7, NONCE)
    with pytest.raises(ProtocolError):
        r.receive(data)


def test_decode_unverified_and_sequencer(keys) -> None:
    seq = Sequencer()
    assert [seq.next() for _ in range(3)] == [0, 1, 2]
    assert decode_unverified(encode(msg(seq=2), keys["box1"])).seq == 2
    with pytest.raises(ProtocolError):
        decode_unverified(b"\xff\xff")
    with pytest.raises(ProtocolError):
        msg(src="")
