"""Robust aggregation in the live aggregator: grouped SecAgg+ over a real Mosquitto broker.

Each round's groups come from the round nonce, so the reference is computed
from the groups the aggregator recorded: per group the plaintext sum of the
payloads the boxes submit (``sum_payloads``), then ``robust.grouped_aggregate``
over those sums. A box that boosts its update x100 pulls plain FedAvg far away
while the grouped median stays with the honest boxes; a silent box costs its
group, and below the groups the rule needs the round aborts with a reason.

Plaintext mode (``secure_aggregation = false``) runs the same rules over single
updates: FedAvg equals ``weighted_fedavg`` of the clipped updates, the median
ignores the boosted box, and boxes refuse what their own config forbids
(plaintext rounds without ``allow_plaintext``, groups below ``min_group_size``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeagent.errors import ConfigError, ProtocolError
from edgeagent.federation.accountant import DpAccountant
from edgeagent.federation.aggregator import Aggregator, status_report
from edgeagent.federation.box_round import BoxPhase
from edgeagent.federation.client import FlClient
from edgeagent.fl import robust, seal
from edgeagent.fl.aggregate import ClientUpdate, sum_payloads, weighted_fedavg
from edgeagent.fl.constants import AGGREGATOR, BROADCAST, Key, Stage
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.messages import Message, decode_unverified, encode
from edgeagent.fl.privacy import l2_clip
from edgeagent.fl.secagg import RoundConfig, SecAggServer
from edgeagent.fl.secagg.beacon import BeaconBox, BeaconServer
from edgeagent.fl.wire import Announcement, announcement_body
from edgeagent.model.graph import get_params, parse_model, sha256_hex
from edgeagent.ops.config import parse_config
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message as MqttMessage
from edgeagent.transport.mqtt import MqttLink
from edgelab.broker import Broker
from tests.fl_support import (
    FixedLearner,
    aggregator_config,
    make_fleet,
    start_broker,
    start_clients,
)

BOXES = tuple(f"r{i}" for i in range(8))
CLIP, N_CAP = 100.0, 100  # clip wide enough that clipping alone does not stop the boost
BOOST = 100.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_fleet(tmp_path_factory.mktemp("robpki"), BOXES)


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(fleet, tmp_path_factory.mktemp("robbroker"))
    yield b
    b.stop()


def _deltas(dim: int, boxes: tuple[str, ...]) -> dict[str, tuple[np.ndarray, int]]:
    """Honest boxes agree on a direction (plus small personal noise), as a converging fleet does."""
    rng = np.random.default_rng(11)
    common = rng.normal(0, 0.05, dim)
    return {
        b: ((common + rng.normal(0, 0.004, dim)).astype(np.float32), 20 + 10 * i)
        for i, b in enumerate(boxes)
    }


def _config(
    fleet: Pki, broker: Broker, tmp: Path, model: Path, name: str, **policy: Any
) -> dict[str, Any]:
    cfg = aggregator_config(fleet, broker, tmp / name, model, name, **{"rounds": 1, **policy})
    cfg["federation"]["clip_norm"] = CLIP
    cfg["aggregator"]["stage_timeout_s"] = 2.0
    return cfg


def _clients(
    fleet: Pki,
    broker: Broker,
    model: bytes,
    deltas: dict[str, tuple[np.ndarray, int]],
    name: str,
    **kw: Any,
) -> list[FlClient]:
    """Groups of 2 and plaintext allowed (the boxes' floors are tested on their own)."""
    kw.setdefault("allow_plaintext", True)
    return start_clients(fleet, broker, model, deltas, name, min_group_size=2, **kw)


def _run_round(cfg: dict[str, Any], clients: list[FlClient], timeout: float = 30) -> Aggregator:
    agg = Aggregator(parse_config(cfg))
    try:
        agg.start()
        t = threading.Thread(target=agg.run, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            agg.request_stop()
            t.join(5)
            pytest.fail(f"aggregator did not finish in {timeout} s: {agg.state['rounds']}")
        return agg
    finally:
        agg.close()
        for c in clients:
            c.stop()


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _status_cli(cfg: dict[str, Any], tmp: Path) -> list[str]:
    from typer.testing import CliRunner

    from edgeagent.cli import _register, app
    from edgeagent.ops.config import to_toml

    _register()
    toml = tmp / "agg.toml"
    toml.write_text(to_toml(cfg))
    res = CliRunner().invoke(app, ["aggregator", "status", "--config", str(toml)])
    assert res.exit_code == 0, res.output
    return res.output.splitlines()


def _group_reference(
    groups: list[list[str]], deltas: dict[str, tuple[np.ndarray, int]], rule: str
) -> np.ndarray:
    ups = {b: ClientUpdate(b, d, n) for b, (d, n) in deltas.items()}
    totals = [sum_payloads([ups[b] for b in g], clip=CLIP, n_cap=N_CAP) for g in groups]
    return robust.grouped_aggregate(totals, rule)


def _honest_mean(deltas: dict[str, tuple[np.ndarray, int]]) -> np.ndarray:
    return weighted_fedavg([ClientUpdate(b, d, n) for b, (d, n) in deltas.items()])


def _assert_reference_near_honest(
    agg: Aggregator, w0: np.ndarray, want: np.ndarray, honest: dict, atol: float
) -> None:
    """The published model is ``w0 + want`` and lands near the honest boxes' mean."""
    w1 = get_params(parse_model(agg.model_bytes or b""))
    np.testing.assert_allclose(w1, w0 + want.astype(np.float32), atol=atol)
    ref = _honest_mean(honest)
    got = w1.astype(np.float64) - w0
    assert np.linalg.norm(got - ref) < 0.25 * np.linalg.norm(ref)


@pytest.fixture
def scenario(syn_model: bytes, tmp_path: Path) -> tuple[Path, np.ndarray, dict, dict]:
    """Six boxes, the last one boosting its update x100."""
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(syn_model)
    w0 = get_params(parse_model(syn_model))
    honest = _deltas(w0.size, BOXES[:6])
    attacked = dict(honest)
    d5, n5 = honest[BOXES[5]]
    attacked[BOXES[5]] = ((d5 * BOOST).astype(np.float32), n5)
    honest.pop(BOXES[5])
    return model_path, w0, honest, attacked


def test_grouped_median_equals_reference_and_ignores_a_boosted_box(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, scenario: tuple
) -> None:
    model_path, w0, honest, attacked = scenario
    cfg = _config(fleet, broker, tmp_path, model_path, "flr1", min_boxes=6, robust="median",
                  group_size=2)  # fmt: skip
    clients = _clients(fleet, broker, syn_model, attacked, "flr1")
    agg = _run_round(cfg, clients)
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    rob = rec["robust"]
    assert rob["rule"] == "median" and rob["group_size"] == 2
    assert len(rob["groups"]) == 3
    assert sorted(b for g in rob["groups"] for b in g) == list(BOXES[:6])
    assert rob["used_groups"] == [0, 1, 2] and rob["dropped_groups"] == []
    assert rob["tolerated_bad_groups"] == 1
    assert rec["survivors"] == list(BOXES[:6])
    # the groups are the public, nonce-keyed partition (boxes checked the same)
    want = _group_reference(rob["groups"], attacked, "median")
    _assert_reference_near_honest(agg, w0, want, honest, atol=2e-5)
    # the operator's view names rule and groups
    rep = status_report(tmp_path / "flr1")
    assert rep["rounds"][-1]["robust"]["groups"] == rob["groups"]
    out = _status_cli(cfg, tmp_path)
    assert any(ln.split()[:2] == ["1", "completed"] and "median 3/3" in ln for ln in out)


def test_plain_fedavg_is_pulled_away_by_the_same_boosted_box(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, scenario: tuple
) -> None:
    model_path, w0, honest, attacked = scenario
    cfg = _config(fleet, broker, tmp_path, model_path, "flr2", min_boxes=6)
    clients = _clients(fleet, broker, syn_model, attacked, "flr2")
    agg = _run_round(cfg, clients)
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed" and "robust" not in rec
    w1 = get_params(parse_model(agg.model_bytes or b""))
    ups = [ClientUpdate(b, d, n) for b, (d, n) in attacked.items()]
    want = weighted_fedavg(ups, clip=CLIP, n_cap=N_CAP)
    np.testing.assert_allclose(w1, w0 + want.astype(np.float32), atol=2e-5)
    ref = _honest_mean(honest)
    assert np.linalg.norm(w1.astype(np.float64) - w0 - ref) > 5 * np.linalg.norm(ref)


def test_a_silent_box_is_left_out_at_commit_and_too_few_boxes_abort(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path
) -> None:
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(syn_model)
    w0 = get_params(parse_model(syn_model))
    # 8 boxes announced; the last sits the round out (no windows trained on): it never
    # commits, so the seed and the groups (3 of 2-3 boxes) are over the 7 others
    deltas = _deltas(w0.size, BOXES)
    deltas[BOXES[7]] = (deltas[BOXES[7]][0], 0)
    cfg = _config(fleet, broker, tmp_path, model_path, "flr3", min_boxes=8, robust="median",
                  group_size=2)  # fmt: skip
    agg = _run_round(cfg, _clients(fleet, broker, syn_model, deltas, "flr3"))
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    rob = rec["robust"]
    assert rob["dropped_groups"] == [] and rec["dropped"] == {"commit": [BOXES[7]]}
    assert sorted(b for g in rob["groups"] for b in g) == sorted(BOXES[:7])
    assert len(rob["groups"]) == 3 and rob["used_groups"] == [0, 1, 2]
    used = [rob["groups"][i] for i in rob["used_groups"]]
    w1 = get_params(parse_model(agg.model_bytes or b""))
    want = _group_reference(used, deltas, "median")
    np.testing.assert_allclose(w1, w0 + want.astype(np.float32), atol=2e-5)

    # 6 boxes, groups of 2, one silent: 5 committed cannot fill the 3 groups a median
    # needs -> abort before any box reveals (nothing drawn, nothing unmasked, no model)
    six = {b: deltas[b] for b in BOXES[:5]} | {BOXES[7]: deltas[BOXES[7]]}
    cfg = _config(fleet, broker, tmp_path, model_path, "flr4", min_boxes=6, robust="median",
                  group_size=2, rounds=0)  # fmt: skip
    clients = _clients(fleet, broker, syn_model, six, "flr4")
    agg = Aggregator(parse_config(cfg))
    try:
        agg.start()
        t = threading.Thread(target=agg.run, daemon=True)
        t.start()
        assert _wait(lambda: len(agg.state["rounds"]) >= 1, 30), agg.state
        agg.request_stop()
        t.join(5)
        rec = agg.state["rounds"][0]
        assert rec["status"] == "aborted", rec
        assert rec["reason"] == "too_few_boxes: 5 committed < 6"
        assert rec["robust"]["groups"] == [] and rec["robust"]["used_groups"] == []
        assert rec["survivors"] == [] and agg.state["model"]["version"] == 0
        # stopped groups got RESULT, not the next stage: no box answered into the closed round
        time.sleep(0.5)
        agg.step()
        assert agg.state["refused"] == {} and rec["refused"] == {}, agg.state["refused"]
        out = _status_cli(cfg, tmp_path)
        assert any(ln.split()[:2] == ["1", "aborted"] for ln in out), out
        assert "      reason: too_few_boxes: 5 committed < 6" in out
        # every box that took part was told the round is over (RESULT: aborted)
        joined = [c for c in clients if c.box_id != BOXES[7]]
        assert _wait(lambda: all(c.counters["round_aborted"] == 1 for c in joined), 10), [
            c.status() for c in joined
        ]
    finally:
        agg.close()
        for c in clients:
            c.stop()


def _agg_cfg(**policy: Any) -> dict[str, Any]:
    return {"agent": {"box_id": "aggregator", "fleet": "f"}, "aggregator": policy}


@pytest.mark.parametrize(
    ("policy", "key", "words"),
    [
        ({"robust": "krum"}, "aggregator.robust", "choose one of none, median, trimmed_mean"),
        ({"robust": "trimmed_mean", "beta": 0.5}, "aggregator.beta", "less than 0.5"),
        ({"robust": "multi_krum", "f": 0}, "aggregator.f", "greater than or equal to 1"),
        ({"robust": "median", "group_size": 1}, "aggregator.group_size", "greater than or"),
        ({"robust": "norm_bound", "max_norm": 0}, "aggregator.max_norm", "greater than 0"),
        (
            {"robust": "median", "min_boxes": 8},
            "aggregator.min_boxes",
            "needs at least 3 groups of group_size = 3, so min_boxes must be >= 9",
        ),
        (
            {"robust": "multi_krum", "f": 2, "group_size": 2, "min_boxes": 12},
            "aggregator.min_boxes",
            "at least 7 groups",
        ),
        (
            {"robust": "trimmed_mean", "beta": 0.25, "group_size": 2, "min_boxes": 6},
            "aggregator.min_boxes",
            "at least 4 groups",
        ),
        (
            {"robust": "median", "group_size": 3, "min_boxes": 9, "min_survivors": 4},
            "aggregator.min_survivors",
            "must not exceed group_size (3)",
        ),
    ],
)
def test_robust_config_errors_name_the_key_and_the_fix(
    policy: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_agg_cfg(**policy))
    assert info.value.key == key, str(info.value)
    assert words in info.value.problem, str(info.value)


def test_robust_config_accepts_a_consistent_choice() -> None:
    agg = parse_config(_agg_cfg(robust="median", group_size=3, min_boxes=9)).aggregator
    assert agg.rule_params() == {} and agg.robust == "median"
    agg = parse_config(
        _agg_cfg(robust="multi_krum", f=1, group_size=2, min_boxes=10, max_boxes=40)
    ).aggregator
    assert agg.rule_params() == {"f": 1}
    assert parse_config(_agg_cfg()).aggregator.robust == "none"  # default: FedAvg


def test_box_takes_part_in_its_public_group_only(fleet: Pki, syn_model: bytes) -> None:
    """With ``group_size`` announced the box derives its group from the round seed itself.

    A SETUP whose neighbours come from the whole participant list, or from a
    group keyed by the aggregator's nonce instead of the commit-reveal seed
    (any graph but the one over the box's own group) is refused as ``bad_graph``,
    so the aggregator cannot pick who shares a group with whom. No broker:
    deliveries are handed to the client directly.
    """
    ca = load_ca(fleet.ca_cert)
    me, name = BOXES[0], "flbox"
    agg = load_identity(fleet.client_files(AGGREGATOR).cert, ca, AGGREGATOR)
    files = fleet.client_files(me)
    link = MqttLink(me, "127.0.0.1", 1, files, name, identity=me)  # never connected
    dim = get_params(parse_model(syn_model)).size + 1
    box = FlClient(me, name, load_identity(files.cert, ca, me), ca,
                   FixedLearner(np.zeros(dim - 1, np.float32), 5), link,
                   global_sha256=sha256_hex(syn_model), min_group_size=2)  # fmt: skip
    parts = BOXES[:4]

    def announce(round_id: int, nonce: bytes, group_size: int) -> MqttMessage:
        ann = Announcement(parts, sha256_hex(syn_model), 5.0, agg.cert_der, group_size)
        msg = Message(AGGREGATOR, BROADCAST, round_id, Stage.SETUP, 0, nonce,
                      announcement_body(ann))  # fmt: skip
        return MqttMessage(topics.announce(name, round_id), encode(msg, agg.key), 1, True)

    def routed(round_id: int, nonce: bytes, stage: Stage, seq: int, body: dict) -> MqttMessage:
        msg = Message(AGGREGATOR, me, round_id, stage, seq, nonce, body)
        return MqttMessage(topics.round_topic(name, round_id, str(stage), me),
                           encode(msg, agg.key), 1, False)  # fmt: skip

    def seeded(round_id: int, nonce: bytes) -> BeaconServer:
        """The round seed's commit-reveal with this box and three simulated peers."""
        beacon = BeaconServer(round_id, nonce, parts)
        peers = {n: BeaconBox(n) for n in parts if n != me}
        beacon.start()
        box.handle(routed(round_id, nonce, Stage.COMMIT, 1, {}))
        beacon.commits[me] = box.beacon._commit  # what the box published
        for n, b in peers.items():
            beacon.receive(n, Stage.COMMIT, b.commit(round_id, nonce, parts))
        reqs = beacon.advance()
        box.handle(routed(round_id, nonce, Stage.REVEAL, 2, reqs[me]))
        for n, b in peers.items():
            beacon.receive(n, Stage.REVEAL, b.reveal(round_id, nonce, reqs[n]))
        beacon.receive(me, Stage.REVEAL, {Key.BEACON_REVEAL.value: box.beacon._r})
        beacon.advance()
        return beacon

    def setup(round_id: int, nonce: bytes, members: tuple[str, ...], beacon: BeaconServer,
              key: bytes) -> MqttMessage:  # fmt: skip
        cfg = RoundConfig(round_id, nonce, members, dim, 100.0, n_cap=100, seed=key)
        body = {**SecAggServer(cfg).start()[me], **beacon.reveals_field()}
        return routed(round_id, nonce, Stage.SETUP, 3, body)

    for round_id, wrong in ((1, "whole round"), (2, "nonce-keyed group")):
        nonce = os.urandom(16)
        box.handle(announce(round_id, nonce, 2))
        assert box.current is not None
        beacon = seeded(round_id, nonce)
        if wrong == "whole round":  # the whole round's graph, not the box's group
            msg = setup(round_id, nonce, parts, beacon, beacon.seed)
        else:  # a group the aggregator ground for: keyed by a nonce of its own choice
            fair = next(g for g in robust.partition_groups(parts, 2, beacon.seed) if me in g)
            for i in range(100):
                key = i.to_bytes(16, "little")
                group = next(g for g in robust.partition_groups(parts, 2, key) if me in g)
                if group != fair:
                    break
            msg = setup(round_id, nonce, group, beacon, key)
        with pytest.raises(ProtocolError) as err:
            box.handle(msg)
        assert err.value.reason == "bad_graph" and box.current is None, wrong
    nonce = os.urandom(16)
    box.handle(announce(3, nonce, 2))
    beacon = seeded(3, nonce)
    mine = next(g for g in robust.partition_groups(parts, 2, beacon.seed) if me in g)
    box.handle(setup(3, nonce, mine, beacon, beacon.seed))
    assert box.secagg.stage is Stage.SETUP and box.current is not None
    assert box.secagg.neighbours == frozenset(mine) - {me}
    # a group size no partition of the participants can have is refused outright
    with pytest.raises(ProtocolError) as err:
        box.handle(announce(4, os.urandom(16), 5))
    assert err.value.reason == "bad_body"
    link.close()


# -- plaintext mode -------------------------------------------------------------------------------


def test_plaintext_fedavg_equals_weighted_fedavg_and_a_box_may_refuse(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, scenario: tuple
) -> None:
    model_path, w0, honest, _ = scenario
    no = BOXES[4]  # its config keeps allow_plaintext = false
    cfg = _config(fleet, broker, tmp_path, model_path, "flp1", min_boxes=5,
                  secure_aggregation=False)  # fmt: skip
    clients = _clients(fleet, broker, syn_model, honest, "flp1", allow_plaintext=lambda b: b != no)
    agg = _run_round(cfg, clients)
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    assert rec["secure_aggregation"] is False and "robust" not in rec
    took = [b for b in honest if b != no]
    assert rec["survivors"] == took and rec["dropped"] == {"update": [no]}
    assert rec["refused"] == {} and set(rec["stage_seconds"]) == {"update"}
    w1 = get_params(parse_model(agg.model_bytes or b""))
    want = weighted_fedavg([ClientUpdate(b, *honest[b]) for b in took], clip=CLIP, n_cap=N_CAP)
    np.testing.assert_allclose(w1, w0 + want.astype(np.float32), atol=2e-6)
    by = {c.box_id: c for c in clients}
    assert by[no].counters["plaintext_refused"] == 1 and by[no].counters["joined"] == 0
    assert all(by[b].counters["round_completed"] == 1 for b in took), [by[b].status() for b in took]
    assert agg.epsilon() is None  # noise_multiplier 0: no DP claim


def test_plaintext_updates_are_sealed_and_a_tampered_seal_is_refused(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, scenario: tuple
) -> None:
    """What the broker relays is sealed; a validly signed envelope whose seal does not open
    (tampered, or copied from another box or round) is refused and costs only that box."""
    model_path, w0, honest, _ = scenario
    cfg = _config(fleet, broker, tmp_path, model_path, "flp4", min_boxes=5,
                  secure_aggregation=False)  # fmt: skip
    clients = _clients(fleet, broker, syn_model, honest, "flp4")
    by = {c.box_id: c for c in clients}
    bad, good = BOXES[1], BOXES[2]
    bad_key = load_identity(fleet.client_files(bad).cert, load_ca(fleet.ca_cert), bad).key
    relayed: dict[str, bytes] = {}

    def capture(box: str, tamper: bool) -> None:
        publish = by[box].link.publish

        def wrapped(topic: str, data: bytes, **kw: Any) -> Any:
            if topic.endswith("/update"):
                if tamper:
                    msg = decode_unverified(data)
                    sealed = bytearray(msg.body["update"])
                    sealed[-1] ^= 1
                    data = encode(dataclasses.replace(msg, body={"update": bytes(sealed)}),
                                  bad_key)  # fmt: skip
                relayed[box] = data
            return publish(topic, data, **kw)

        by[box].link.publish = wrapped  # type: ignore[method-assign]

    capture(bad, tamper=True)
    capture(good, tamper=False)
    agg = _run_round(cfg, clients)
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    assert rec["refused"] == {"undecryptable": 1}
    took = [b for b in honest if b != bad]
    assert rec["survivors"] == took and rec["dropped"] == {"update": [bad]}
    w1 = get_params(parse_model(agg.model_bytes or b""))
    want = weighted_fedavg([ClientUpdate(b, *honest[b]) for b in took], clip=CLIP, n_cap=N_CAP)
    np.testing.assert_allclose(w1, w0 + want.astype(np.float32), atol=2e-6)
    # the bytes the broker relayed for an honest box hold neither its update nor n_k in clear
    clipped = l2_clip(honest[good][0].astype(np.float64), CLIP)[0].astype("<f4").tobytes()
    body = decode_unverified(relayed[good]).body
    assert set(body) == {"update"} and clipped[:32] not in relayed[good]


def test_plaintext_median_ignores_a_boosted_box(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, scenario: tuple
) -> None:
    model_path, w0, honest, attacked = scenario
    cfg = _config(fleet, broker, tmp_path, model_path, "flp2", min_boxes=6, robust="median",
                  secure_aggregation=False)  # fmt: skip
    agg = _run_round(cfg, _clients(fleet, broker, syn_model, attacked, "flp2"))
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    rob = rec["robust"]
    assert rob["mode"] == "plaintext" and rob["updates"] == 6
    assert rob["min_updates"] == 3 and rob["tolerated_bad_boxes"] == 2
    rows = [l2_clip(attacked[b][0].astype(np.float64), CLIP)[0] for b in BOXES[:6]]
    want = np.median(np.stack(rows), axis=0)
    _assert_reference_near_honest(agg, w0, want, honest, atol=2e-6)
    out = _status_cli(cfg, tmp_path)
    assert any(ln.split()[:2] == ["1", "completed"] and "median plain 6" in ln for ln in out)


def _last_box_flipped(honest: dict, w0: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """The five honest boxes' updates and a sixth box's honest update sent as -3x."""
    flipped = dict(honest)
    d5, n5 = _deltas(w0.size, BOXES[:6])[BOXES[5]]
    flipped[BOXES[5]] = ((-3.0 * d5).astype(np.float32), n5)
    return flipped


def test_plaintext_cosine_cluster_drops_a_sign_flipped_box(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, scenario: tuple
) -> None:
    model_path, w0, honest, _ = scenario
    flipped = _last_box_flipped(honest, w0)
    cfg = _config(fleet, broker, tmp_path, model_path, "flp5", min_boxes=6,
                  robust="cosine_cluster", secure_aggregation=False)  # fmt: skip
    agg = _run_round(cfg, _clients(fleet, broker, syn_model, flipped, "flp5"))
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    assert rec["robust"]["min_updates"] == 3 and rec["robust"]["tolerated_bad_boxes"] == 0
    rows = [l2_clip(flipped[b][0].astype(np.float64), CLIP)[0] for b in BOXES[:6]]
    want, kept = robust.cosine_cluster(rows)
    assert set(kept) <= {0, 1, 2, 3, 4} and len(kept) >= 4  # a majority, the flipped box out
    _assert_reference_near_honest(agg, w0, want, honest, atol=2e-6)
    # plain FedAvg with the same box moves against the honest direction
    ups = [ClientUpdate(b, *flipped[b]) for b in BOXES[:6]]
    assert (
        np.dot(weighted_fedavg(ups), _honest_mean(honest)) < 0 < np.dot(want, _honest_mean(honest))
    )


def test_plaintext_reputation_remembers_a_sign_flipped_box_across_a_restart(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, scenario: tuple
) -> None:
    """Round 1: a box sends -3x its update and is dropped; its score goes to the state
    file. Round 2, after a restart: its update now agrees (cosine ~0.86), and the
    remembered score still keeps it out, which the same round judged alone would not."""
    model_path, w0, honest, _ = scenario
    flipped = _last_box_flipped(honest, w0)
    cfg = _config(fleet, broker, tmp_path, model_path, "flp6", min_boxes=6,
                  robust="reputation", secure_aggregation=False)  # fmt: skip
    agg = _run_round(cfg, _clients(fleet, broker, syn_model, flipped, "flp6"))
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    assert rec["robust"]["min_updates"] == 3 and rec["robust"]["dropped"] == [BOXES[5]]
    rows = [l2_clip(flipped[b][0].astype(np.float64), CLIP)[0] for b in BOXES[:6]]
    want, kept, scores = robust.reputation_filter(rows)
    assert kept.tolist() == [0, 1, 2, 3, 4]
    _assert_reference_near_honest(agg, w0, want, honest, atol=2e-6)
    book = status_report(tmp_path / "flp6")["reputation"]
    assert book == pytest.approx(dict(zip(BOXES[:6], scores.tolist(), strict=True)))
    assert book[BOXES[5]] < -0.9
    assert f"distrusted  {BOXES[5]}" in _status_cli(cfg, tmp_path)

    w1 = get_params(parse_model(agg.model_bytes or b""))
    rng = np.random.default_rng(3)
    late = dict(honest)
    d5, n5 = _deltas(w0.size, BOXES[:6])[BOXES[5]]
    late[BOXES[5]] = ((d5 + rng.normal(0, 0.03, d5.size)).astype(np.float32), n5)
    cfg["aggregator"]["rounds"] = 2
    agg = _run_round(cfg, _clients(fleet, broker, syn_model, late, "flp6"))
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    rows = [l2_clip(late[b][0].astype(np.float64), CLIP)[0] for b in BOXES[:6]]
    assert 5 in robust.reputation_filter(rows)[1]  # alone, round 2 would keep it
    want, kept, _ = robust.reputation_filter(rows, [book[b] for b in BOXES[:6]])
    assert kept.tolist() == [0, 1, 2, 3, 4] and rec["robust"]["dropped"] == [BOXES[5]]
    w2 = get_params(parse_model(agg.model_bytes or b""))
    np.testing.assert_allclose(w2, w1 + want.astype(np.float32), atol=2e-6)


def test_plaintext_median_noise_covers_the_rule_and_is_accounted(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, scenario: tuple
) -> None:
    """Central noise on a robust rule's output: std z * 2 * output_radius, one (z, q) event."""
    model_path, w0, _, attacked = scenario
    z = 0.25
    cfg = _config(fleet, broker, tmp_path, model_path, "flp3", min_boxes=6, robust="median",
                  secure_aggregation=False, noise="central")  # fmt: skip
    cfg["federation"]["noise_multiplier"] = z
    cfg["aggregator"]["epsilon_budget"] = float("inf")  # one round at z = 0.25 costs ~30
    agg = _run_round(cfg, _clients(fleet, broker, syn_model, attacked, "flp3"))
    rec = agg.state["rounds"][-1]
    assert rec["status"] == "completed", rec
    std = z * 2.0 * np.sqrt(2.0) * CLIP  # the median's output stays within sqrt(2) * clip
    assert rec["noise_std"] == pytest.approx(std)
    rows = [l2_clip(attacked[b][0].astype(np.float64), CLIP)[0] for b in BOXES[:6]]
    resid = get_params(parse_model(agg.model_bytes or b"")) - w0 - np.median(rows, axis=0)
    assert w0.size >= 200 and abs(float(np.std(resid)) / std - 1.0) < 0.2, np.std(resid)
    want = DpAccountant(cfg["aggregator"].get("dp_delta", 1e-5))
    want.step(z, 1.0)  # all 6 boxes of a 6-box fleet invited: q = 1
    assert rec["epsilon"] == pytest.approx(want.epsilon()) and agg.state["dp_events"] == [[z, 1.0]]


def test_box_floors_refuse_plaintext_and_small_groups(fleet: Pki, syn_model: bytes) -> None:
    """Downgrade protection on the box, without a broker (deliveries handed in directly)."""
    ca = load_ca(fleet.ca_cert)
    agg = load_identity(fleet.client_files(AGGREGATOR).cert, ca, AGGREGATOR)
    name, parts = "flfloor", BOXES[:6]
    dim = get_params(parse_model(syn_model)).size
    delta = np.full(dim, 1.0, np.float32)  # norm sqrt(dim) > clip: the box must clip it

    def box(me: str, **kw: Any) -> FlClient:
        files = fleet.client_files(me)
        link = MqttLink(me, "127.0.0.1", 1, files, name, identity=me)  # never connected
        return FlClient(me, name, load_identity(files.cert, ca, me), ca,
                        FixedLearner(delta, 500), link, global_sha256=sha256_hex(syn_model),
                        **kw)  # fmt: skip

    nonce = os.urandom(16)

    def announce(round_id: int, **kw: Any) -> MqttMessage:
        ann = Announcement(parts, sha256_hex(syn_model), 5.0, agg.cert_der, **kw)
        msg = Message(AGGREGATOR, BROADCAST, round_id, Stage.SETUP, 0, nonce,
                      announcement_body(ann))  # fmt: skip
        return MqttMessage(topics.announce(name, round_id), encode(msg, agg.key), 1, True)

    round_key, enc_pk = seal.round_key()
    plain = {"secure_aggregation": False, "clip": 2.0, "n_cap": 100, "enc_pk": enc_pk}
    strict, lax = box(BOXES[0]), box(BOXES[1], allow_plaintext=True, min_group_size=2)
    sent: list[tuple[str, bytes]] = []
    lax.link.publish = lambda topic, data, **_: sent.append((topic, data))  # type: ignore[method-assign]
    try:
        strict.handle(announce(1, group_size=2))  # default floor: 3
        assert strict.counters["group_too_small"] == 1 and strict.current is None
        strict.handle(announce(2, **plain))
        assert strict.counters["plaintext_refused"] == 1 and strict.current is None
        strict.handle(announce(3, group_size=3))
        assert strict.current is not None and strict.counters["joined"] == 1
        lax.handle(announce(1, group_size=2))
        assert lax.current is not None and lax.current.round_id == 1
        lax.current = None
        lax.handle(announce(2, **plain))
        assert lax.current is not None and lax.phase is BoxPhase.AWAITING_RESULT
        ((topic, data),) = sent
        assert topic == topics.node(name, BOXES[1], "update")
        body = decode_unverified(data).body
        assert set(body) == {"update"}  # n_k travels sealed with the update
        context = seal.info(2, nonce, BOXES[1])
        upd, n = seal.open_update(body["update"], round_key, context, dim)
        assert n == 100 and upd.size == dim
        assert np.linalg.norm(upd) == pytest.approx(2.0, rel=1e-6)
        # plaintext with a group size, without clip or without a sealing key is not usable:
        # the box never sends an update the broker could read
        for bad in (
            {**plain, "group_size": 3},
            {**plain, "clip": 0.0},
            {**plain, "enc_pk": b""},
            {**plain, "enc_pk": enc_pk[:31]},
        ):
            with pytest.raises(ProtocolError) as err:
                lax.handle(announce(9, **bad))
            assert err.value.reason == "bad_body"
    finally:
        strict.link.close()
        lax.link.close()


@pytest.mark.parametrize(
    ("policy", "key", "words"),
    [
        ({"secure_aggregation": False, "noise": "distributed"}, "aggregator.noise", "central"),
        (
            {"secure_aggregation": False, "robust": "median", "min_boxes": 2},
            "aggregator.min_boxes",
            "needs at least 3 updates",
        ),
    ],
)
def test_plaintext_config_errors(policy: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_agg_cfg(**policy))
    assert info.value.key == key and words in info.value.problem, str(info.value)


def test_plaintext_config_defaults_to_central_noise_and_boxes_refuse() -> None:
    cfg = parse_config(_agg_cfg(secure_aggregation=False, robust="median", min_boxes=3))
    assert cfg.aggregator.noise_mode == "central" and cfg.aggregator.noise == "distributed"
    assert parse_config(_agg_cfg()).aggregator.noise_mode == "distributed"
    fed = cfg.federation
    assert fed.allow_plaintext is False and fed.min_group_size == 3
