"""Box-side federated client: model verification + hot swap, announcements, stage buffering.

Messages are built with the real encoders and signed with real identities
from a fleet PKI; the client's model lifecycle is the real registry, detector
and manager. Nothing here needs the broker: ``FlClient.handle`` is the worker's
entry point and the link is never connected (publishes queue in paho).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest

from edgeagent.daemon.health import Liveness
from edgeagent.errors import ProtocolError
from edgeagent.federation.box_round import BoxPhase
from edgeagent.federation.client import FlClient
from edgeagent.federation.store import AggregatorStore
from edgeagent.fl import seal
from edgeagent.fl.constants import AGGREGATOR, BROADCAST, Key, Stage
from edgeagent.fl.identity import Identity, load_ca, load_identity
from edgeagent.fl.messages import Message, encode
from edgeagent.fl.secagg import RoundConfig, SecAggServer
from edgeagent.fl.secagg.beacon import BeaconBox, BeaconServer
from edgeagent.fl.wire import (
    Announcement,
    ModelPublication,
    announcement_body,
    decode_hello,
    decode_params,
    encode_hello,
    encode_model,
    encode_params,
)
from edgeagent.model.graph import get_params, parse_model, set_params, sha256_hex, to_bytes
from edgeagent.model.registry import ModelRegistry
from edgeagent.model.signing import sign_hash, sign_release
from edgeagent.ops.pki import Pki
from edgeagent.pipeline.alerts import MemoryAlertSink
from edgeagent.pipeline.detect import Detector
from edgeagent.pipeline.lifecycle import ModelManager, ValidationPolicy
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message as MqttMessage
from edgeagent.transport.mqtt import MqttLink
from edgelab.broker import Broker
from tests.fl_support import FixedLearner
from tests.plugins.model import SYN_FEATURES, SYN_MODALITY

FLEET = "clientfleet"
BOX = "box-a"


def _ident(pki: Pki, name: str) -> Identity:
    return load_identity(pki.client_files(name).cert, load_ca(pki.ca_cert), name)


@pytest.fixture
def box(pki: Pki, syn_model: bytes, tmp_state: Path) -> FlClient:
    return _box(pki, syn_model, tmp_state, "127.0.0.1", 1)  # handle() only: nothing connects


def _box(pki: Pki, syn_model: bytes, tmp_state: Path, host: str, port: int) -> FlClient:
    registry = ModelRegistry(tmp_state)
    rec = registry.add(syn_model, "config")
    registry.activate(rec.version, "starting model")
    registry.require_signature = True
    detector = Detector(syn_model, rec.label, MemoryAlertSink(), feature_names=SYN_FEATURES,
                        featurize=lambda w: w, modality_of=SYN_MODALITY)  # fmt: skip
    w0 = get_params(parse_model(syn_model))
    learner = FixedLearner(np.full(w0.size, 0.01, np.float32), 40)
    link = MqttLink(BOX, host, port, pki.client_files(BOX), FLEET, identity=BOX)
    return FlClient(BOX, FLEET, _ident(pki, BOX), load_ca(pki.ca_cert), learner, link,
                    manager=ModelManager(registry, detector), global_sha256=sha256_hex(syn_model),
                    min_samples=10, state_dir=tmp_state)  # fmt: skip


def _model_msg(pub: ModelPublication) -> MqttMessage:
    return MqttMessage(topics.model_current(FLEET), encode_model(pub), 1, True)


def _publication(signer: Identity, data: bytes, version: int, **over: object) -> ModelPublication:
    sha = sha256_hex(data)
    fields = {
        "round_id": version,
        "version": version,
        "sha256": sha,
        "signature": sign_hash(signer.key, sha),
        "cert_der": signer.cert_der,
        "onnx": data,
        "eval": {},
    }
    fields.update(over)
    fields.setdefault(
        "release_sig",
        sign_release(signer.key, FLEET, fields["version"], fields["round_id"], sha),  # type: ignore[arg-type]
    )
    return ModelPublication(**fields)  # type: ignore[arg-type]


def test_signed_global_model_is_verified_then_hot_swapped(
    box: FlClient, pki: Pki, syn_model: bytes, syn_model_other: bytes
) -> None:
    agg = _ident(pki, AGGREGATOR)
    box.handle(_model_msg(_publication(agg, syn_model_other, 1)))
    assert box.global_version == 1 and box.global_sha == sha256_hex(syn_model_other)
    # the learner restarts from the new global vector ...
    learner = box.learner
    np.testing.assert_array_equal(learner.globals[-1], get_params(parse_model(syn_model_other)))  # type: ignore[attr-defined]
    # ... and the lifecycle registered it (signed) and holds it in shadow until judged:
    # the running model keeps raising the alerts
    assert box.manager is not None
    assert box.last_apply is not None and box.last_apply["reason"] == "shadow"
    rec = box.manager.registry.find(sha256_hex(syn_model_other))
    assert rec is not None and rec.signature is not None
    assert box.manager.registry.active().sha256 == sha256_hex(syn_model)
    # once judged (here: a box that asks for no windows in shadow, and the candidate
    # did no worse on none) it goes live
    box.manager.policy = ValidationPolicy(shadow_windows=0)
    judged = box.manager.probation_check()
    assert judged is not None and judged.accepted, judged
    active = box.manager.registry.active()
    assert active.sha256 == sha256_hex(syn_model_other)
    assert box.manager.detector.model_label == active.label
    # the retained copy delivered again is a no-op
    box.handle(_model_msg(_publication(agg, syn_model_other, 1)))
    assert box.counters["models_taken"] == 1


def test_tampered_forged_foreign_and_replayed_models_are_refused(
    box: FlClient, pki: Pki, syn_model: bytes, syn_model_other: bytes, tmp_path: Path
) -> None:
    agg = _ident(pki, AGGREGATOR)
    box.handle(_model_msg(_publication(agg, syn_model_other, 2)))
    other = Pki.init(tmp_path / "other")
    other.issue_aggregator()
    bad = {
        "hash_mismatch": _publication(agg, syn_model, 3, onnx=syn_model_other + b"\x00"),
        "bad_model_signature": _publication(
            agg, syn_model, 3, signature=sign_hash(_ident(pki, "box-b").key, sha256_hex(syn_model))
        ),
        "foreign_ca": _publication(_ident(other, AGGREGATOR), syn_model, 3),
        "wrong_identity": _publication(_ident(pki, "box-b"), syn_model, 3),
        "stale_model": _publication(agg, syn_model, 1),  # validly signed, but older
    }
    for reason, pub in bad.items():
        with pytest.raises(ProtocolError) as err:
            box.handle(_model_msg(pub))
        assert err.value.reason == reason
    assert box.global_version == 2 and box.global_sha == sha256_hex(syn_model_other)
    assert box.manager is not None  # none of them replaced the accepted one (in shadow)
    assert box.manager.shadow is not None
    assert box.manager.shadow[0].sha256 == sha256_hex(syn_model_other)
    assert box.manager.registry.active().sha256 == sha256_hex(syn_model)
    # a restarted box remembers the version: the old model is still refused afterwards
    assert box.state_path is not None
    again = FlClient(BOX, FLEET, box.identity, box.ca, box.learner, box.link,
                     state_dir=box.state_path.parent)  # fmt: skip
    assert again.global_version == 2
    with pytest.raises(ProtocolError, match="stale_model"):
        again.handle(_model_msg(bad["stale_model"]))


def _announce(
    signer: Identity, round_id: int, nonce: bytes, participants: tuple[str, ...], model: str
) -> MqttMessage:
    body = announcement_body(Announcement(participants, model, 5.0, signer.cert_der))
    msg = Message(AGGREGATOR, BROADCAST, round_id, Stage.SETUP, 0, nonce, body)
    return MqttMessage(topics.announce(FLEET, round_id), encode(msg, signer.key), 1, True)


def test_announcements_decide_who_joins(box: FlClient, pki: Pki, syn_model: bytes) -> None:
    agg = _ident(pki, AGGREGATOR)
    sha = sha256_hex(syn_model)
    parts = (BOX, "box-b", "box-c")
    box.handle(_announce(agg, 1, os.urandom(16), ("box-b", "box-c"), sha))
    box.handle(_announce(agg, 2, os.urandom(16), parts, "0" * 64))
    box.learner.n_k = 3  # type: ignore[misc]
    box.handle(_announce(agg, 3, os.urandom(16), parts, sha))
    assert box.counters["not_invited"] == 1
    assert box.counters["stale_model"] == 1
    assert box.counters["not_ready"] == 1
    assert box.current is None
    box.learner.n_k = 40  # type: ignore[misc]
    # forged (box key) and foreign announcements never open a round
    with pytest.raises(ProtocolError):
        box.handle(_announce(_ident(pki, "box-b"), 4, os.urandom(16), parts, sha))
    box.handle(_announce(agg, 5, os.urandom(16), parts, sha))
    assert box.current is not None and box.current.round_id == 5
    box.handle(_announce(agg, 4, os.urandom(16), parts, sha))  # replayed older round
    assert box.counters["stale_round"] == 1 and box.current.round_id == 5
    # withdrawing the announcement ends the round for the box
    box.handle(MqttMessage(topics.announce(FLEET, 5), b"", 1, True))
    assert box.current is None and box.last_round == 5 and box.rounds[-1]["status"] == "abandoned"


def _routed(signer: Identity, round_id: int, nonce: bytes, stage: Stage, seq: int,
            body: dict[str, object]) -> MqttMessage:  # fmt: skip
    msg = Message(AGGREGATOR, BOX, round_id, stage, seq, nonce, body)
    topic = topics.round_topic(FLEET, round_id, str(stage), BOX)
    return MqttMessage(topic, encode(msg, signer.key), 1, False)


def test_commit_before_announcement_is_held_then_the_seed_keys_setup(
    box: FlClient, pki: Pki, syn_model: bytes
) -> None:
    agg = _ident(pki, AGGREGATOR)
    nonce = os.urandom(16)
    parts = (BOX, "box-b", "box-c")
    box.handle(_routed(agg, 7, nonce, Stage.COMMIT, 1, {}))
    assert box.current is None  # held: no announcement yet
    box.handle(_announce(agg, 7, nonce, parts, sha256_hex(syn_model)))
    assert box.phase is BoxPhase.COMMITTED and box.current is not None
    assert box.current.bytes_up > 0  # the commitment went to the link
    beacon = BeaconServer(7, nonce, parts)
    beacon.start()
    beacon.commits[BOX] = box.beacon._commit  # what the box published
    peers = {n: BeaconBox(n) for n in parts if n != BOX}
    for n, b in peers.items():
        beacon.receive(n, Stage.COMMIT, b.commit(7, nonce, parts))
    digests = beacon.advance()
    w0 = get_params(parse_model(syn_model))
    box.handle(_routed(agg, 7, nonce, Stage.REVEAL, 2, digests[BOX]))
    assert box.phase is BoxPhase.REVEALED
    for n, b in peers.items():
        beacon.receive(n, Stage.REVEAL, b.reveal(7, nonce, digests[n]))
    beacon.receive(BOX, Stage.REVEAL, {Key.BEACON_REVEAL.value: box.beacon._r})
    beacon.advance()
    cfg = RoundConfig(7, nonce, parts, dim=w0.size + 1, bound=100.0, n_cap=100, seed=beacon.seed)
    body = {**SecAggServer(cfg).start()[BOX], **beacon.reveals_field()}
    up = box.current.bytes_up
    box.handle(_routed(agg, 7, nonce, Stage.SETUP, 3, body))
    assert box.secagg.stage is Stage.SETUP and box.phase is BoxPhase.MASKING
    assert box.secagg.graph_seed == beacon.seed
    assert box.current.bytes_up > up  # the reply (keys + commitment) went to the link
    # the same SETUP again (QoS 1 redelivery) is acknowledged, not processed twice
    up = box.current.bytes_up
    box.handle(_routed(agg, 7, nonce, Stage.SETUP, 3, body))
    assert box.current.bytes_up == up


def test_forged_reveals_are_refused_and_aborts_after_reveal_stop_the_box(
    pki: Pki, syn_model: bytes, tmp_state: Path
) -> None:
    box = _box(pki, syn_model, tmp_state, "127.0.0.1", 1)
    agg = _ident(pki, AGGREGATOR)
    parts = (BOX, "box-b", "box-c")
    w0 = get_params(parse_model(syn_model))
    for round_id in (1, 2, 3):
        nonce = os.urandom(16)
        box.handle(_announce(agg, round_id, nonce, parts, sha256_hex(syn_model)))
        box.handle(_routed(agg, round_id, nonce, Stage.COMMIT, 1, {}))
        beacon = BeaconServer(round_id, nonce, parts)
        beacon.start()
        beacon.commits[BOX] = box.beacon._commit
        peers = {n: BeaconBox(n) for n in parts if n != BOX}
        for n, b in peers.items():
            beacon.receive(n, Stage.COMMIT, b.commit(round_id, nonce, parts))
        digests = beacon.advance()
        box.handle(_routed(agg, round_id, nonce, Stage.REVEAL, 2, digests[BOX]))
        if round_id == 1:
            # a grinding aggregator swaps a colluder's contribution after seeing the box's
            cfg = RoundConfig(round_id, nonce, parts, dim=w0.size + 1, bound=100.0, n_cap=100)
            reveals = [os.urandom(16), os.urandom(16), os.urandom(16)]
            reveals[parts.index(BOX)] = box.beacon._r
            body = {**SecAggServer(cfg).start()[BOX], Key.BEACON_REVEALS.value: b"".join(reveals)}
            with pytest.raises(ProtocolError) as err:
                box.handle(_routed(agg, round_id, nonce, Stage.SETUP, 3, body))
            assert err.value.reason == "bad_reveal" and box.secagg.stage is None
        else:
            # it saw the seed and did not like it: the round ends without a result
            aborted = {Key.STATUS.value: "aborted", Key.REASON.value: "too_few_boxes"}
            box.handle(_routed(agg, round_id, nonce, Stage.RESULT, 3, aborted))
        assert box.current is None
    assert box.counters["aborted_after_reveal"] == 3
    # the limit (3 per window) is reached: the next round is sat out, and a restart remembers
    box.handle(_announce(agg, 4, os.urandom(16), parts, sha256_hex(syn_model)))
    assert box.current is None and box.counters["grinding_limit"] == 1
    assert box.state_path is not None
    again = FlClient(BOX, FLEET, box.identity, box.ca, box.learner, box.link,
                     state_dir=box.state_path.parent)  # fmt: skip
    again.handle(_announce(agg, 5, os.urandom(16), parts, sha256_hex(syn_model)))
    assert again.current is None and again.counters["grinding_limit"] == 1
    # a round that ends before the box revealed costs the aggregator nothing and counts nothing
    fresh = FlClient(BOX, FLEET, box.identity, box.ca, box.learner, box.link,
                     global_sha256=sha256_hex(syn_model))  # fmt: skip
    fresh.handle(_announce(agg, 6, os.urandom(16), parts, sha256_hex(syn_model)))
    assert fresh.phase is BoxPhase.COMMITTING
    fresh.handle(MqttMessage(topics.announce(FLEET, 6), b"", 1, True))
    assert fresh.counters["aborted_after_reveal"] == 0


def test_hello_round_trip_and_signature(pki: Pki) -> None:
    me = _ident(pki, BOX)
    hello = decode_hello(encode_hello(BOX, 12.5, me.cert_der, me.key))
    assert hello.node == BOX and hello.t == 12.5 and hello.cert_der == me.cert_der
    hello.verify(me.public_key)
    with pytest.raises(ProtocolError) as err:
        hello.verify(_ident(pki, "box-b").public_key)
    assert err.value.reason == "bad_signature"
    for junk in (b"", b"\xa0", b"\xff" * 10, b"x" * 20000):
        with pytest.raises(ProtocolError):
            decode_hello(junk)


def test_liveness_sees_an_idle_worker_as_alive_and_a_dead_one_as_stalled(
    pki: Pki, syn_model: bytes, syn_model_other: bytes, tmp_state: Path, mosquitto_broker: Broker
) -> None:
    box = _box(pki, syn_model, tmp_state, mosquitto_broker.host, mosquitto_broker.port)
    now = [0.0]
    liveness = Liveness(clock=lambda: now[0])
    liveness.register(box.name, 10.0)
    box.liveness = liveness
    box.start()
    try:
        assert box.running
        now[0] = 30.0
        box.tick()  # nothing to do between rounds: idle, not stuck
        assert liveness.check().ok
        box.inbox.put(_model_msg(_publication(_ident(pki, AGGREGATOR), syn_model_other, 1)))
        now[0] = 60.0
        deadline = time.monotonic() + 20
        while liveness.check().components[0].progress_total == 0:
            assert time.monotonic() < deadline, "the worker never handled the model"
            time.sleep(0.02)
            box.tick()  # a handled delivery is progress
        report = liveness.check()
        assert report.ok and report.components[0].state == "active" and box.global_version == 1
    finally:
        box.stop()
    assert not box.running
    now[0] = 100.0
    box.tick()  # a worker that is gone reports nothing: the component stalls
    assert liveness.check().stalled == [box.name]


def test_round_phases_follow_the_table_and_the_other_modes_messages_are_refused(
    box: FlClient, pki: Pki, syn_model: bytes
) -> None:
    agg = _ident(pki, AGGREGATOR)
    sha = sha256_hex(syn_model)
    parts = (BOX, "box-b", "box-c")
    assert box.phase is BoxPhase.IDLE
    nonce = os.urandom(16)
    box.handle(_announce(agg, 5, nonce, parts, sha))
    assert box.phase is BoxPhase.COMMITTING
    with pytest.raises(ProtocolError) as err:  # SETUP before the round seed exists
        box.handle(_routed(agg, 5, nonce, Stage.SETUP, 1, {}))
    assert err.value.reason == "out_of_order"
    with pytest.raises(ProtocolError) as err:  # a plaintext UPDATE body in a SecAgg+ round
        box.handle(_routed(agg, 5, nonce, Stage.UPDATE, 2, {}))
    assert err.value.reason == "wrong_mode"
    assert box.phase is BoxPhase.COMMITTING and box.current is not None  # the round goes on
    box.handle(MqttMessage(topics.announce(FLEET, 5), b"", 1, True))
    assert box.phase is BoxPhase.IDLE and box.rounds[-1]["status"] == "abandoned"

    # a plaintext round: one sealed update, then only RESULT is taken
    box.allow_plaintext = True
    _, enc_pk = seal.round_key()
    nonce = os.urandom(16)
    ann = Announcement(parts, sha, 5.0, agg.cert_der, 0, False, 1.0, 100, enc_pk)
    msg = Message(AGGREGATOR, BROADCAST, 6, Stage.SETUP, 0, nonce, announcement_body(ann))
    box.handle(MqttMessage(topics.announce(FLEET, 6), encode(msg, agg.key), 1, True))
    assert box.phase is BoxPhase.AWAITING_RESULT
    assert box.current is not None and box.current.bytes_up > 0  # the update went out
    with pytest.raises(ProtocolError) as err:  # a SecAgg+ stage in a plaintext round
        box.handle(_routed(agg, 6, nonce, Stage.SETUP, 1, {}))
    assert err.value.reason == "wrong_mode" and box.phase is BoxPhase.AWAITING_RESULT
    done = {Key.STATUS.value: "completed", Key.REASON.value: ""}
    box.handle(_routed(agg, 6, nonce, Stage.RESULT, 2, done))
    assert box.phase is BoxPhase.IDLE and box.current is None
    assert box.last_round == 6 and box.rounds[-1]["status"] == "completed"


# -- the global model as a parameter vector -----------------------------------------------------


def _next_model(base: bytes, seed: int) -> bytes:
    """A new global model exactly as the aggregator makes one: set_params, deterministic bytes."""
    model = parse_model(base)
    w = get_params(model) + np.random.default_rng(seed).normal(0, 0.01, get_params(model).size)
    return to_bytes(set_params(model, w))


def _params_msg(data: bytes | None) -> MqttMessage:
    assert data is not None
    return MqttMessage(topics.model_params(FLEET), data, 1, True)


def _store_params(tmp: Path, agg: Identity, data: bytes, version: int) -> bytes | None:
    """The aggregator store's signed parameter publication of ``data`` as version ``version``."""
    store = AggregatorStore(tmp, 1e-5)
    store.store_model(data, version, version, {"loss": 0.5})
    return store.params_publication(agg, FLEET)


def test_parameter_vector_rebuilds_the_signed_model_byte_for_byte(
    box: FlClient, pki: Pki, syn_model: bytes, tmp_path: Path
) -> None:
    agg = _ident(pki, AGGREGATOR)
    v1 = _next_model(syn_model, 1)
    pub = _store_params(tmp_path / "agg", agg, v1, 1)
    assert pub is not None
    decoded = decode_params(pub)
    # the download is the float32 vector, its signatures and labels, and the certificate
    assert len(decoded.params) == 4 * get_params(parse_model(v1)).size
    assert len(pub) < len(encode_model(_publication(agg, v1, 1)))
    box.handle(_params_msg(pub))
    assert box.counters["models_rebuilt"] == 1 and box.counters["models_taken"] == 1
    assert box.global_version == 1 and box.global_sha == sha256_hex(v1)
    # the registry holds exactly the signed file (same hash, signature verified on add)
    assert box.manager is not None
    rec = box.manager.registry.find(sha256_hex(v1))
    assert rec is not None and rec.signature is not None
    assert box.manager.registry.load_bytes(rec) == v1
    # the next release rebuilds on this one (the base is kept), without the full file
    v2 = _next_model(v1, 2)
    box.handle(_params_msg(_store_params(tmp_path / "agg2", agg, v2, 2)))
    assert box.global_sha == sha256_hex(v2) and box.counters["models_rebuilt"] == 2
    assert not box.link.subscribed(topics.model_current(FLEET))
    assert box.counters["model_fallback"] == 0


def test_tampered_forged_and_replayed_vectors_are_refused(
    box: FlClient, pki: Pki, syn_model: bytes, tmp_path: Path
) -> None:
    agg = _ident(pki, AGGREGATOR)
    v1 = _next_model(syn_model, 1)
    good = _store_params(tmp_path / "agg", agg, v1, 1)
    assert good is not None
    pub = decode_params(good)
    vec = pub.vector().copy()
    vec[3] += 1e-3  # one parameter changed in flight: the rebuilt file hashes differently
    tampered = dataclasses.replace(pub, params=vec.astype("<f4").tobytes())
    with pytest.raises(ProtocolError) as err:
        box.handle(_params_msg(encode_params(tampered)))
    assert err.value.reason == "hash_mismatch"
    assert box.global_sha == sha256_hex(syn_model) and box.counters["models_taken"] == 0
    # ... and the box turns to the signed file for this release
    assert box.link.subscribed(topics.model_current(FLEET))
    forged = dataclasses.replace(pub, signature=sign_hash(_ident(pki, "box-b").key, pub.sha256))
    with pytest.raises(ProtocolError, match="bad_model_signature"):
        box.handle(_params_msg(encode_params(forged)))
    relabelled = dataclasses.replace(pub, version=7)  # release signature is over version 1
    with pytest.raises(ProtocolError, match="bad_model_signature"):
        box.handle(_params_msg(encode_params(relabelled)))
    box.handle(_params_msg(good))
    assert box.global_version == 1
    old = _store_params(tmp_path / "agg0", agg, _next_model(syn_model, 9), 0)
    with pytest.raises(ProtocolError, match="stale_model"):
        box.handle(_params_msg(old))
    assert box.global_sha == sha256_hex(v1)


def test_a_box_without_the_base_takes_the_full_model_then_vectors(
    pki: Pki, syn_model: bytes, tmp_state: Path, tmp_path: Path
) -> None:
    agg = _ident(pki, AGGREGATOR)
    w0 = get_params(parse_model(syn_model))
    link = MqttLink(BOX, "127.0.0.1", 1, pki.client_files(BOX), FLEET, identity=BOX)
    # no registry, no stored file: the box knows its model's hash but holds no file of it
    box = FlClient(BOX, FLEET, _ident(pki, BOX), load_ca(pki.ca_cert),
                   FixedLearner(np.zeros(w0.size, np.float32), 40), link,
                   global_sha256=sha256_hex(syn_model), state_dir=tmp_state)  # fmt: skip
    v1 = _next_model(syn_model, 1)
    box.handle(_params_msg(_store_params(tmp_path / "agg", agg, v1, 1)))
    assert box.global_sha == sha256_hex(syn_model)  # nothing to rebuild on: not taken ...
    assert box.counters["model_fallback"] == 1
    assert link.subscribed(topics.model_current(FLEET))  # ... it asks for the file instead
    box.handle(_model_msg(_publication(agg, v1, 1)))
    assert box.global_sha == sha256_hex(v1)
    assert not link.subscribed(topics.model_current(FLEET))  # one file, then vectors again
    assert (tmp_state / "fl_global.onnx").read_bytes() == v1
    v2 = _next_model(v1, 2)
    box.handle(_params_msg(_store_params(tmp_path / "agg2", agg, v2, 2)))
    assert box.global_sha == sha256_hex(v2) and box.counters["models_rebuilt"] == 1
    # a restarted box finds its base in the state directory
    again = FlClient(BOX, FLEET, box.identity, box.ca, box.learner, link, state_dir=tmp_state)
    assert again._base_model() is not None
    v3 = _next_model(v2, 3)
    again.handle(_params_msg(_store_params(tmp_path / "agg3", agg, v3, 3)))
    assert again.global_sha == sha256_hex(v3) and again.counters["model_fallback"] == 0


def test_a_vector_of_another_frame_falls_back_to_the_file(
    box: FlClient, pki: Pki, syn_model: bytes, tmp_path: Path
) -> None:
    agg = _ident(pki, AGGREGATOR)
    v1 = _next_model(syn_model, 1)
    pub = decode_params(_store_params(tmp_path / "agg", agg, v1, 1) or b"")
    other_frame = dataclasses.replace(pub, frame="0" * 64)  # e.g. a new model shape
    box.handle(_params_msg(encode_params(other_frame)))
    assert box.global_sha == sha256_hex(syn_model) and box.counters["model_fallback"] == 1
    box.handle(_model_msg(_publication(agg, v1, 1)))
    assert box.global_sha == sha256_hex(v1)
