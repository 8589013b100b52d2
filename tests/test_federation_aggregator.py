"""Aggregator service against a real Mosquitto broker and real box clients (threads).

Checks the round result against plaintext weighted FedAvg, the restart
behaviour of the state file, and that impersonation, forged and unsigned
messages, a replayed update and a foreign-CA identity injected during a live
round are refused and counted while the round still produces the right model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.errors import ConfigError, TransportError
from edgeagent.federation.aggregator import Aggregator, status_report
from edgeagent.federation.client import FlClient
from edgeagent.fl.aggregate import ClientUpdate, weighted_fedavg
from edgeagent.fl.constants import AGGREGATOR, Stage
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.messages import Message, encode
from edgeagent.model.graph import get_params, parse_model, sha256_hex
from edgeagent.ops.config import parse_config
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import RC_NOT_AUTHORIZED, MqttLink
from edgeagent.transport.mqtt import Message as MqttMessage
from edgelab.broker import Broker
from tests.fl_support import (
    FLEET,
    FixedLearner,
    aggregator_config,
    make_fleet,
    start_broker,
    start_clients,
)

GOOD = ("box-a", "box-b", "box-c", "box-d")
F2 = "fl2"  # each test its own fleet namespace: persistent sessions outlive a test
CLIP, N_CAP = 1.0, 100


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = make_fleet(tmp_path_factory.mktemp("flpki"), (*GOOD, "box-x"))
    # box-x gets a fleet TLS certificate but a signing identity from another CA.
    other = Pki.init(tmp_path_factory.mktemp("otherca"), fleet="elsewhere")
    other.issue("box-x")
    for src, dst in zip(other.identity_files("box-x"), pki.identity_files("box-x"), strict=True):
        dst.write_bytes(src.read_bytes())
    return pki


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(fleet, tmp_path_factory.mktemp("flbroker"))
    yield b
    b.stop()


@pytest.fixture
def model_path(tmp_path: Path, syn_model: bytes) -> Path:
    """The synthetic model as a file: the aggregator's ``initial_model``."""
    path = tmp_path / "m.onnx"
    path.write_bytes(syn_model)
    return path


def _deltas(dim: int) -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(7)
    # norms around 1.2: some updates are clipped, which the reference must reproduce
    return {b: (rng.normal(0, 0.05, dim).astype(np.float32), 20 + 15 * i) for i, b in
            enumerate(GOOD)}  # fmt: skip


def _expected_mean(deltas: dict[str, tuple[np.ndarray, int]]) -> np.ndarray:
    ups = [ClientUpdate(b, d, n) for b, (d, n) in deltas.items()]
    return weighted_fedavg(ups, clip=CLIP, n_cap=N_CAP)


def _run(agg: Aggregator, timeout: float, on_tick: Callable[[], None] | None = None) -> None:
    t = threading.Thread(target=agg.run, kwargs={"on_tick": on_tick}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        agg.request_stop()
        t.join(5)
        pytest.fail(f"aggregator did not finish in {timeout} s: {agg.state['rounds']}")


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_round_equals_plaintext_fedavg_and_state_survives_restart(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, model_path: Path
) -> None:
    w0 = get_params(parse_model(syn_model))
    deltas = _deltas(w0.size)
    expected = _expected_mean(deltas)
    state = tmp_path / "agg"
    cfg = aggregator_config(fleet, broker, state, model_path, "fl1", min_boxes=4, rounds=1)
    clients = start_clients(fleet, broker, syn_model, deltas, "fl1")
    try:
        agg = Aggregator(parse_config(cfg))
        agg.start()
        _run(agg, 60)
        agg.close()
        w1 = get_params(parse_model(agg.model_bytes or b""))
        np.testing.assert_allclose(w1, w0 + expected.astype(np.float32), atol=2e-5)
        rec = agg.state["rounds"][-1]
        assert rec["status"] == "completed" and rec["survivors"] == list(GOOD)
        assert rec["model_version"] == 1 and rec["refused"] == {}
        for c in clients:  # every box verified and took the signed model v1
            assert _wait(lambda c=c: c.global_version == 1, 10), c.status()
            np.testing.assert_array_equal(c.learner.globals[-1], w1)  # type: ignore[attr-defined]

        # a restart between rounds continues with the next round id and model version
        cfg["aggregator"]["rounds"] = 2
        agg2 = Aggregator(parse_config(cfg))
        assert agg2.state["next_round"] == 2 and agg2.model_bytes == agg.model_bytes
        agg2.start()
        _run(agg2, 60)
        w2 = get_params(parse_model(agg2.model_bytes or b""))
        np.testing.assert_allclose(w2, w1 + expected.astype(np.float32), atol=2e-5)
        # a restart in the middle of a round: the round is recorded as interrupted, never resumed
        agg2.start_round(list(GOOD))
        agg2.close()
        agg3 = Aggregator(parse_config(cfg))
        rep = status_report(state)
        assert [r["round"] for r in rep["rounds"]] == [1, 2, 3]
        assert [r["status"] for r in rep["rounds"]] == ["completed", "completed", "interrupted"]
        assert rep["next_round"] == 4 and rep["model"]["version"] == 2
        assert agg3.state["clear_announce"] == [3]
        agg3.start()  # withdraws round 3's retained announcement
        assert agg3.state["clear_announce"] == []
        agg3.close()

        # the operator's view of the same state
        from typer.testing import CliRunner

        from edgeagent.cli import _register, app
        from edgeagent.ops.config import to_toml

        _register()
        toml = tmp_path / "agg.toml"
        toml.write_text(to_toml(cfg))
        out = CliRunner().invoke(app, ["aggregator", "status", "--config", str(toml)])
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert lines[0].startswith("model       v2 ")
        assert any(ln.split()[:2] == ["3", "interrupted"] for ln in lines)
        assert any(ln.split()[:4] == ["2", "completed", "4", "4"] for ln in lines)
        assert "no DP" in out.output
    finally:
        for c in clients:
            c.stop()


def test_forged_replayed_impersonating_and_foreign_messages_leave_the_round_intact(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, model_path: Path
) -> None:
    w0 = get_params(parse_model(syn_model))
    deltas = _deltas(w0.size)
    expected = _expected_mean(deltas).astype(np.float32)
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model_path, F2, min_boxes=4, rounds=2)
    ca = load_ca(fleet.ca_cert)

    # A connection with a certificate from another CA never reaches the broker.
    foreign = Pki.init(tmp_path / "foreign", fleet="elsewhere")
    foreign.issue("box-a")
    with pytest.raises(TransportError):
        MqttLink("box-a-foreign", broker.host, broker.port, foreign.client_files("box-a"),
                 F2, identity="box-a", status=False).connect(timeout=5)  # fmt: skip

    # box-x: valid TLS certificate, signing identity from another CA (its hello is refused)
    xfiles = fleet.client_files("box-x")
    from edgeagent.fl.identity import Identity
    from edgeagent.model.signing import load_private_key

    xkey_path, xcert_path = fleet.identity_files("box-x")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    xcert = x509.load_pem_x509_certificate(xcert_path.read_bytes())
    x_identity = Identity("box-x", load_private_key(xkey_path),
                          xcert.public_bytes(serialization.Encoding.DER))  # fmt: skip
    xlink = MqttLink("box-x", broker.host, broker.port, xfiles, F2, identity="box-x")
    x_client = FlClient("box-x", F2, x_identity, ca, FixedLearner(deltas["box-a"][0], 50),
                        xlink, global_sha256=sha256_hex(syn_model))  # fmt: skip

    # An eavesdropper inside the fleet side (an intake worker's certificate, which may read
    # the masked vectors) records box-a's masked update of round 1.
    captured: list[bytes] = []
    tap = MqttLink("intake-0", broker.host, broker.port, fleet.client_files("intake-0"), F2,
                   status=False, on_message=lambda m: captured.append(m.payload))  # fmt: skip
    tap.connect(timeout=10)
    tap.subscribe(topics.node(F2, "box-a", "collect_masked")).wait(5)
    c_key = load_identity(fleet.client_files("box-c").cert, ca, "box-c").key

    clients = start_clients(fleet, broker, syn_model, deltas, F2)
    # Insiders: compromised box-c and box-a processes publish over their own connections
    # (a second connection would carry the same client id: the broker binds it to the
    # certificate, and it would only take the box's own session over).
    evil_c = next(c for c in clients if c.box_id == "box-c").link
    replay_a = next(c for c in clients if c.box_id == "box-a").link
    x_client.start()
    agg = Aggregator(parse_config(cfg))
    acks: dict[str, int] = {}

    def inject() -> None:
        r = agg.round
        if r is None or r.round_id != 2 or acks:
            return
        setup = {"pk_enc": b"\x01" * 32, "pk_mask": b"\x02" * 32, "commit": b"\x03" * 32}
        # 1. publishing under another box's id: the broker refuses it (PUBACK 0x87)
        msg = Message("box-a", AGGREGATOR, r.round_id, Stage.SETUP, 0, r.nonce, setup)
        acks["acl"] = evil_c.publish(topics.node(F2, "box-a", "setup"),
                                     encode(msg, c_key)).wait(5)  # fmt: skip
        # 2. box-c speaks as box-a on its own topic
        acks["impersonation"] = evil_c.publish(topics.node(F2, "box-c", "setup"),
                                               encode(msg, c_key)).wait(5)  # fmt: skip
        # 3. forged: box-c's name, someone else's key
        forged = Message("box-c", AGGREGATOR, r.round_id, Stage.SETUP, 0, r.nonce, setup)
        acks["forged"] = evil_c.publish(
            topics.node(F2, "box-c", "setup"), encode(forged, Ed25519PrivateKey.generate())
        ).wait(5)
        # 4. unsigned: a well-formed envelope with an empty signature
        env = cbor2.loads(encode(forged, c_key))
        env["sig"] = b""
        acks["unsigned"] = evil_c.publish(topics.node(F2, "box-c", "setup"),
                                          cbor2.dumps(env)).wait(5)  # fmt: skip
        # 5. replay of box-a's genuine masked update from round 1
        assert captured, "the tap saw no round-1 update to replay"
        acks["replay"] = replay_a.publish(topics.node(F2, "box-a", "collect_masked"),
                                          captured[0]).wait(5)  # fmt: skip

    try:
        agg.start()
        _run(agg, 90, on_tick=inject)
        assert acks["acl"] == RC_NOT_AUTHORIZED
        assert all(acks[k] < 0x80 for k in ("impersonation", "forged", "unsigned", "replay"))
        r1, r2 = agg.state["rounds"]
        for rec in (r1, r2):
            assert rec["status"] == "completed"
            assert rec["participants"] == list(GOOD) and rec["survivors"] == list(GOOD)
        refused = r2["refused"]
        assert refused.get("impersonation", 0) >= 1
        assert refused.get("bad_signature", 0) >= 2  # forged + unsigned
        assert refused.get("out_of_round", 0) >= 1  # the replayed round-1 update
        assert agg.refused["foreign_ca"] >= 1 and "box-x" not in agg.boxes
        # ... and the rounds' results are exactly what the honest boxes sent
        w2 = get_params(parse_model(agg.model_bytes or b""))
        np.testing.assert_allclose(w2, w0 + 2 * expected, atol=4e-5)
        assert x_client.global_version == 2  # box-x still receives the public model
        rep = status_report(tmp_path / "agg")
        assert rep["refused"]["foreign_ca"] >= 1 and rep["totals"]["completed"] == 2
    finally:
        agg.close()
        for c in (*clients, x_client):
            c.stop()
        tap.close()


def test_outside_rounds_and_garbage_are_counted_not_fatal(
    fleet: Pki, broker: Broker, tmp_path: Path, model_path: Path
) -> None:
    """Messages that arrive with no round open, bad topics and bad hellos never crash the loop."""
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model_path)
    agg = Aggregator(parse_config(cfg))
    node = topics.node(FLEET, "box-a", "setup")
    agg.on_message(MqttMessage(node, b"\xff\x00junk", 1, False))
    agg.on_message(MqttMessage(topics.node(FLEET, "box-a", "hello"), b"junk", 1, False))
    agg.on_message(MqttMessage(topics.node(FLEET, "box-a", "status"), b"{not json", 1, False))
    agg.on_message(MqttMessage("elsewhere/x", b"", 1, False))
    assert agg.refused["out_of_round"] == 1
    assert agg.refused["malformed"] == 2
    assert agg.refused["bad_topic"] == 1
    assert agg.boxes == {}
    agg.tick()  # no eligible boxes: no round
    assert agg.round is None


def test_repeats_are_dropped_by_message_id_before_any_round_sees_them(
    fleet: Pki, broker: Broker, tmp_path: Path, model_path: Path
) -> None:
    """At-least-once delivery: a redelivered outbox message (same msg-id, whatever its
    bytes) is counted as a duplicate, not as a refusal; messages without a msg-id
    (round replies) are left to the envelope's replay checks."""
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model_path)
    agg = Aggregator(parse_config(cfg))
    alert = topics.node(FLEET, "box-a", "alert")
    for body in (b"{}", b"{}", b'{"other": 1}'):
        agg.on_message(MqttMessage(alert, body, 1, False, (("msg-id", "a1.opened"),)))
    assert agg.duplicates == 2
    node = topics.node(FLEET, "box-a", "setup")
    agg.on_message(MqttMessage(node, b"\xff\x00junk", 1, False))
    agg.on_message(MqttMessage(node, b"\xff\x00junk", 1, False))  # no msg-id: judged again
    assert agg.refused["out_of_round"] == 2 and agg.duplicates == 2


def test_intake_workers_take_the_masked_vectors_and_the_sum_is_unchanged(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, model_path: Path
) -> None:
    """Two worker processes share COLLECT_MASKED (``$share/...``); the aggregator folds
    their partial sums and gets exactly the FedAvg of one aggregator, round after round."""
    w0 = get_params(parse_model(syn_model))
    deltas = _deltas(w0.size)
    expected = _expected_mean(deltas).astype(np.float32)
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model_path, "fl3", min_boxes=4,
                            rounds=2, intake_workers=2)  # fmt: skip
    clients = start_clients(fleet, broker, syn_model, deltas, "fl3")
    agg = Aggregator(parse_config(cfg))
    try:
        agg.start()
        workers = list(agg.workers.procs)
        assert len(workers) == 2 and all(p.poll() is None for p in workers)
        _run(agg, 90)
        w2 = get_params(parse_model(agg.model_bytes or b""))
        np.testing.assert_allclose(w2, w0 + 2 * expected, atol=4e-5)
        for rec in agg.state["rounds"]:
            assert rec["status"] == "completed" and rec["survivors"] == list(GOOD), rec
            intake = rec["intake"]
            assert intake["refused_partials"] == {}
            # every masked vector went through a worker, none through the aggregator
            assert sum(intake["boxes_by_worker"].values()) == len(GOOD)
            assert set(intake["boxes_by_worker"]) <= {"intake-0", "intake-1"}
    finally:
        agg.close()
        for c in clients:
            c.stop()
    assert all(p.poll() is not None for p in workers)  # close() stops them


def test_intake_workers_need_one_plain_secure_sum() -> None:
    base = {"agent": {"box_id": "aggregator", "fleet": "f", "state_dir": "/tmp/x"}}
    for extra in ({"robust": "median", "min_boxes": 9}, {"secure_aggregation": False}):
        with pytest.raises(ConfigError, match="intake_workers"):
            parse_config({**base, "aggregator": {"intake_workers": 2, **extra}})


def test_intake_workers_a_box_silent_at_collect_is_a_dropout(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, model_path: Path
) -> None:
    """At the COLLECT_MASKED deadline the aggregator closes intake, takes the workers'
    last partials, and SecAgg+ removes the silent box's masks: FedAvg of the rest."""
    w0 = get_params(parse_model(syn_model))
    deltas = _deltas(w0.size)
    silent = GOOD[-1]
    expected = _expected_mean({b: v for b, v in deltas.items() if b != silent})
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model_path, "fl4", min_boxes=4,
                            rounds=1, intake_workers=2, stage_timeout_s=3.0)  # fmt: skip
    clients = start_clients(fleet, broker, syn_model, deltas, "fl4")
    box = next(c for c in clients if c.box_id == silent)
    send = box.link.publish

    def drop_masked(topic: str, data: bytes, **kw: Any) -> Any:
        if topic.endswith("/collect_masked"):  # the box goes quiet after SHARE_KEYS
            return send(topic.replace("/collect_masked", "/test-dropped"), b"", **kw)  # no reader
        return send(topic, data, **kw)

    box.link.publish = drop_masked  # type: ignore[method-assign]
    agg = Aggregator(parse_config(cfg))
    try:
        agg.start()
        _run(agg, 60)
        rec = agg.state["rounds"][-1]
        assert rec["status"] == "completed", rec
        assert rec["survivors"] == list(GOOD[:-1])
        assert rec["dropped"].get("collect_masked") == [silent]
        assert sum(rec["intake"]["boxes_by_worker"].values()) == len(GOOD) - 1
        w1 = get_params(parse_model(agg.model_bytes or b""))
        np.testing.assert_allclose(w1, w0 + expected.astype(np.float32), atol=2e-5)
    finally:
        agg.close()
        for c in clients:
            c.stop()


def test_an_intake_worker_without_its_own_certificate_is_a_clear_error(
    fleet: Pki, broker: Broker, tmp_path: Path, model_path: Path
) -> None:
    """The broker binds client ids to certificates: workers sharing the aggregator's would
    disconnect each other, so a missing clients/intake-<n>.crt stops the start, saying how."""
    cfg = aggregator_config(
        fleet, broker, tmp_path / "agg", model_path, "fl6", intake_workers=3
    )  # fmt: skip  (the fleet has intake-0 and -1)
    agg = Aggregator(parse_config(cfg))
    try:
        with pytest.raises(ConfigError, match="pki issue-intake 2"):
            agg.start()
    finally:
        agg.close()


def test_a_dead_intake_worker_stops_the_aggregator_with_a_reason(
    fleet: Pki, broker: Broker, tmp_path: Path, model_path: Path
) -> None:
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model_path, "fl5",
                            intake_workers=1)  # fmt: skip
    agg = Aggregator(parse_config(cfg))
    try:
        agg.start()
        agg.tick()  # healthy: nothing happens
        (worker,) = agg.workers.procs
        worker.kill()
        worker.wait(10)
        with pytest.raises(TransportError, match="intake worker 0 exited"):
            agg.tick()
        assert agg.workers.procs == []
    finally:
        agg.close()


def test_quantised_updates_and_vector_downloads_end_to_end(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, model_path: Path
) -> None:
    """``update_bits = 8``: boxes send 8-bit rotated updates in a field sized for the round,
    the aggregator's mean stays close to plaintext FedAvg, and every box takes each new
    model by rebuilding it from the signed parameter vector, not by downloading the file."""
    w0 = get_params(parse_model(syn_model))
    deltas = _deltas(w0.size)
    expected = _expected_mean(deltas).astype(np.float32)
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model_path, "fl8", min_boxes=4,
                            rounds=2, update_bits=8)  # fmt: skip
    clients = start_clients(fleet, broker, syn_model, deltas, "fl8")
    agg = Aggregator(parse_config(cfg))
    try:
        agg.start()
        _run(agg, 90)
        w2 = get_params(parse_model(agg.model_bytes or b""))
        assert [r["status"] for r in agg.state["rounds"]] == ["completed", "completed"]
        err = np.linalg.norm(w2 - w0 - 2 * expected) / np.linalg.norm(2 * expected)
        assert 0 < err < 0.15, err  # quantised, so not exact; unbiased, so close
        for c in clients:
            assert _wait(lambda c=c: c.global_version == 2, 10), c.status()
            np.testing.assert_array_equal(c.learner.globals[-1], w2)  # type: ignore[attr-defined]
            assert c.counters["models_rebuilt"] == 2, c.counters
            assert not c.link.subscribed(topics.model_current("fl8"))
    finally:
        agg.close()
        for c in clients:
            c.stop()
