"""Fuzzers for every handler the aggregator and the box expose to the network (hypothesis).

Property: whatever arrives, a handler either takes it or refuses it with the
project's own error (``ProtocolError`` / ``EdgeAgentError``), counted; no
other exception escapes. Bounded example counts keep the default run short;
the ``slow`` variant runs many more examples.
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeagent.errors import EdgeAgentError, ProtocolError
from edgeagent.fl.constants import AGGREGATOR, ENVELOPE_VERSION, Key, Stage
from edgeagent.fl.messages import EnvelopeReceiver, signed_bytes
from edgeagent.fl.wire import (
    AKey,
    decode_hello,
    decode_model,
    parse_announcement,
    parse_status,
)
from edgeagent.transport.mqtt import Message as MqttMessage
from tests.fl_support import aggregator_config, make_fleet

FLEET = "fuzz"
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

#: CBOR-able values, including huge integers, deep-ish nesting, NaN and bytes.
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**200), 2**200)
    | st.floats()
    | st.binary(max_size=64)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
keys = st.sampled_from([k.value for k in Key] + [k.value for k in AKey] + ["state", "x"])
maps = st.dictionaries(keys, values, max_size=8)
nested = st.integers(1, 3000).map(lambda d: b"[" * d + b"]" * d)
raw = st.one_of(st.binary(max_size=600), maps.map(cbor2.dumps), nested)


def _envelope(body: dict[str, Any], header: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    inner = {
        Key.SRC.value: "box-a",
        Key.DST.value: AGGREGATOR,
        Key.ROUND.value: 1,
        Key.STAGE.value: "setup",
        Key.SEQ.value: 0,
        Key.NONCE.value: b"n" * 16,
        Key.BODY.value: body,
    } | header
    payload = cbor2.dumps(inner)
    return cbor2.dumps(
        {
            Key.VERSION.value: ENVELOPE_VERSION,
            Key.PAYLOAD.value: payload,
            Key.SIGNATURE.value: key.sign(signed_bytes(payload)),
        }
    )


BOX_KEY = Ed25519PrivateKey.generate()
headers = st.dictionaries(
    st.sampled_from(
        [
            Key.SRC.value,
            Key.DST.value,
            Key.ROUND.value,
            Key.STAGE.value,
            Key.SEQ.value,
            Key.NONCE.value,
        ]
    ),
    values,
    max_size=3,
)


@_SETTINGS
@given(data=st.one_of(raw, st.builds(_envelope, maps, headers, st.just(BOX_KEY))))
def test_envelope_receiver_refuses_or_accepts_only(data: bytes) -> None:
    rx = EnvelopeReceiver(AGGREGATOR, {"box-a": BOX_KEY.public_key()})
    rx.begin_round(1, b"n" * 16)
    try:
        rx.receive(data)
    except ProtocolError:
        assert sum(rx.counters.values()) >= 1


@_SETTINGS
@given(data=raw, body=maps)
def test_wire_parsers_refuse_or_accept_only(data: bytes, body: dict) -> None:
    for parse in (decode_hello, decode_model, parse_status):
        with contextlib.suppress(ProtocolError):
            parse(data)
    with contextlib.suppress(ProtocolError):
        parse_announcement(body)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, syn_model: bytes):
    """A real Aggregator and a real box FlClient, not connected: the handlers alone."""
    from edgeagent.federation.aggregator import Aggregator
    from edgeagent.federation.client import FlClient
    from edgeagent.fl.identity import load_ca, load_identity
    from edgeagent.model.graph import sha256_hex
    from edgeagent.ops.config import parse_config
    from edgeagent.transport.mqtt import MqttLink
    from tests.fl_support import FixedLearner

    root = tmp_path_factory.mktemp("fuzz")
    pki = make_fleet(root / "pki", ("box-a",))
    model = root / "m.onnx"
    model.write_bytes(syn_model)
    where = SimpleNamespace(host="127.0.0.1", port=9)  # never connected
    agg = Aggregator(parse_config(aggregator_config(pki, where, root / "agg", model, FLEET)))
    ca = load_ca(pki.ca_cert)
    files = pki.client_files("box-a")
    link = MqttLink("box-a", "127.0.0.1", 9, files, FLEET, identity="box-a")
    box = FlClient("box-a", FLEET, load_identity(files.cert, ca, "box-a"), ca,
                   FixedLearner(__import__("numpy").zeros(4, "float32"), 10), link,
                   global_sha256=sha256_hex(syn_model))  # fmt: skip
    return agg, box


node_kinds = st.sampled_from(["hello", "status", *[s.value for s in Stage], "intake", "x"])
topics_agg = st.one_of(
    st.builds(
        lambda n, k: f"edgeagent/v1/{FLEET}/node/{n}/{k}",
        st.sampled_from(["box-a", "aggregator", "box-b"]),
        node_kinds,
    ),
    st.text(max_size=40),
)
topics_box = st.one_of(
    st.builds(
        lambda r, s: f"edgeagent/v1/{FLEET}/round/{r}/{s}/box-a",
        st.integers(0, 2**70).map(str),
        node_kinds,
    ),
    st.builds(lambda r: f"edgeagent/v1/{FLEET}/round/{r}/announce", st.integers(0, 2**70)),
    st.just(f"edgeagent/v1/{FLEET}/model/current"),
)


def _payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(raw, st.builds(_envelope, maps, headers, st.just(BOX_KEY)))


@_SETTINGS
@given(topic=topics_agg, payload=_payloads())
def test_aggregator_on_message_never_raises(services, topic: str, payload: bytes) -> None:
    agg, _ = services
    agg.on_message(MqttMessage(topic, payload, 1, False))  # must not raise


@_SETTINGS
@given(topic=topics_box, payload=_payloads())
def test_box_handle_refuses_with_its_own_errors_only(services, topic: str, payload: bytes) -> None:
    _, box = services
    # the worker counts EdgeAgentError per reason; anything else would be internal_error
    with contextlib.suppress(EdgeAgentError):
        box.handle(MqttMessage(topic, payload, 1, False))


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(raw, st.builds(_envelope, maps, headers, st.just(BOX_KEY))))
def test_envelope_receiver_long_fuzz(data: bytes) -> None:
    rx = EnvelopeReceiver(AGGREGATOR, {"box-a": BOX_KEY.public_key()})
    rx.begin_round(1, os.urandom(16))
    with contextlib.suppress(ProtocolError):
        rx.receive(data)
