"""One box taking the aggregator down: the four crashes of the review, refused and counted.

The pure checks show each input refused with a ``ProtocolError``; the last
test plays them over a real Mosquitto against a running aggregator, retained
where the attack was retained, and shows rounds complete before and after a
restart (a retained crash would come back at every start).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import numpy as np
import pytest

from edgeagent.errors import ProtocolError, TransportError
from edgeagent.federation.aggregator import Aggregator
from edgeagent.fl.constants import (
    AGGREGATOR,
    ENVELOPE_VERSION,
    SHAMIR_CHUNK,
    Key,
    Stage,
)
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.messages import EnvelopeReceiver, signed_bytes
from edgeagent.fl.wire import (
    HELLO_CONTEXT,
    MAX_STATUS_BYTES,
    WIRE_VERSION,
    AKey,
    decode_hello,
    parse_status,
)
from edgeagent.model.graph import get_params, parse_model
from edgeagent.ops.config import parse_config
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import MqttLink
from edgelab.broker import Broker
from tests.attacks.secagg_rig import rig
from tests.fl_support import aggregator_config, make_fleet, start_broker, start_clients

HONEST = ("box-a", "box-b", "box-c")
EVIL = "box-evil"
FLEET = "fldos"


def evil_hello(key) -> bytes:
    """A signed-looking hello whose time is an integer no float can hold."""
    payload = cbor2.dumps({AKey.ID.value: EVIL, AKey.TIME.value: 10**300, AKey.CERT.value: b"x"})
    return cbor2.dumps(
        {
            AKey.VERSION.value: WIRE_VERSION,
            AKey.PAYLOAD.value: payload,
            AKey.SIG.value: key.sign(HELLO_CONTEXT + payload),
        }
    )


#: Under the size bound, but nested deep enough for ``json.loads`` to recurse badly.
NESTED_STATUS = b'{"state":' + b"[" * 500 + b"]" * 500 + b"}"


def huge_round_envelope(src: str, key, nonce: bytes = b"n" * 16) -> bytes:
    """A correctly signed envelope whose round id is 2^70 (Message() itself refuses to build it)."""
    payload = cbor2.dumps(
        {
            Key.SRC.value: src,
            Key.DST.value: AGGREGATOR,
            Key.ROUND.value: 2**70,
            Key.STAGE.value: "setup",
            Key.SEQ.value: 0,
            Key.NONCE.value: nonce,
            Key.BODY.value: {},
        },
        canonical=True,
    )
    return cbor2.dumps(
        {
            Key.VERSION.value: ENVELOPE_VERSION,
            Key.PAYLOAD.value: payload,
            Key.SIGNATURE.value: key.sign(signed_bytes(payload)),
        }
    )


def test_each_crash_input_is_a_protocol_refusal() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    data = evil_hello(key)
    assert len(data) < 512
    with pytest.raises(ProtocolError, match="malformed"):
        decode_hello(data)
    with pytest.raises(ProtocolError, match="malformed"):
        parse_status(NESTED_STATUS)
    with pytest.raises(ProtocolError, match="oversized"):
        parse_status(b'{"state": "' + b"x" * MAX_STATUS_BYTES + b'"}')
    assert parse_status(b'{"state": "online", "t": 1.5}') == "online"
    rx = EnvelopeReceiver(AGGREGATOR, {"box-a": key.public_key()})
    rx.begin_round(1, b"n" * 16)
    with pytest.raises(ProtocolError, match="malformed"):
        rx.receive(huge_round_envelope("box-a", key))
    with pytest.raises(TransportError):
        topics.parse(f"edgeagent/v1/f/round/{'9' * 5000}/setup/box-a")


def test_duplicate_share_index_is_refused_and_the_round_completes() -> None:
    from edgeagent.fl import seal
    from edgeagent.fl.secagg.client import unmask_context

    r = rig(5)
    r.run_to(Stage.UNMASK)
    cfg = r.config
    replies = {n: r.handle(n, Stage.UNMASK, b) for n, b in r.out.items()}
    evil = "box001"
    ctx = unmask_context(1, cfg.nonce, evil)
    opened = cbor2.loads(
        seal.open_bytes(replies[evil][Key.SEALED.value], r.server._seal_key, ctx, 1 << 20)
    )
    seeds = opened[Key.SEED_SHARES.value]
    owners = sorted(seeds)
    # every share claims index 1 (someone else's index for most owners)
    for o in owners:
        seeds[o] = [1, seeds[o][1]]
    forged = {Key.SEALED.value: seal.seal_bytes(cbor2.dumps(opened), r.server.enc_pk, ctx)}
    with pytest.raises(ProtocolError, match="bad_share_index"):
        r.server.receive(evil, Stage.UNMASK, forged)
    assert r.server.rejected["bad_share_index"] == 1
    for n, reply in replies.items():
        r.server.receive(n, Stage.UNMASK, reply)  # the genuine reply is still taken
    r.server.advance()
    assert r.server.result is not None
    assert len(seeds[owners[0]][1]) == SHAMIR_CHUNK


# -- over a real broker, against the running aggregator ------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_fleet(tmp_path_factory.mktemp("dospki"), (*HONEST, EVIL))


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(fleet, tmp_path_factory.mktemp("dosbroker"))
    yield b
    b.stop()


def _run(agg: Aggregator, timeout: float) -> None:
    t = threading.Thread(target=agg.run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        agg.request_stop()
        t.join(5)
        pytest.fail(f"aggregator did not finish in {timeout} s: {agg.state['rounds']}")


def test_retained_crash_inputs_do_not_stop_rounds_across_restarts(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(syn_model)
    dim = get_params(parse_model(syn_model)).size
    rng = np.random.default_rng(1)
    deltas = {b: (rng.normal(0, 0.05, dim).astype(np.float32), 30) for b in HONEST}
    ca = load_ca(fleet.ca_cert)
    evil_key = load_identity(fleet.client_files(EVIL).cert, ca, EVIL).key
    a_key = load_identity(fleet.client_files("box-a").cert, ca, "box-a").key
    evil = MqttLink(EVIL, broker.host, broker.port, fleet.client_files(EVIL), FLEET,
                    identity=EVIL, status=False).connect(timeout=10)  # fmt: skip
    a2 = MqttLink("box-a-2", broker.host, broker.port, fleet.client_files("box-a"), FLEET,
                  identity="box-a", status=False).connect(timeout=10)  # fmt: skip
    assert evil.publish(topics.node(FLEET, EVIL, "hello"), evil_hello(evil_key),
                        retain=True).wait(5) < 0x80  # fmt: skip
    assert evil.publish(topics.node(FLEET, EVIL, "status"), NESTED_STATUS,
                        retain=True).wait(5) < 0x80  # fmt: skip
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model, FLEET, min_boxes=3, rounds=1)
    clients = start_clients(fleet, broker, syn_model, deltas, FLEET)
    try:
        agg = Aggregator(parse_config(cfg))
        agg.start()
        # a signed envelope with a 2^70 round id, from a genuine box, during the round
        a2.publish(topics.node(FLEET, "box-a", "setup"), huge_round_envelope("box-a", a_key))
        _run(agg, 60)
        agg.close()
        assert agg.state["rounds"][-1]["status"] == "completed"
        assert agg.refused["malformed"] >= 2  # the hello and the status, each counted
        assert EVIL not in agg.boxes
        # restart: the retained hello and status come again, and are refused again
        cfg["aggregator"]["rounds"] = 2
        again = Aggregator(parse_config(cfg))
        again.start()
        _run(again, 60)
        again.close()
        assert again.state["rounds"][-1]["status"] == "completed"
        assert again.refused["malformed"] >= 2
    finally:
        for c in clients:
            c.stop()
        for kind in ("hello", "status"):  # clear the retained attack for other tests
            evil.publish(topics.node(FLEET, EVIL, kind), b"", retain=True).wait(5)
        evil.close()
        a2.close()
