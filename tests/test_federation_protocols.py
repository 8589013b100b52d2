"""Both round protocols driven in memory: real SecAgg+ clients, real sealed updates, no broker.

The aggregator service only moves bodies between these objects and MQTT, so
what a round computes, records and refuses is decided here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from edgeagent.errors import ProtocolError
from edgeagent.federation.protocols import PlaintextProtocol, SecAggProtocol
from edgeagent.federation.round_record import RoundTraffic
from edgeagent.fl import seal
from edgeagent.fl.constants import Key, Stage
from edgeagent.fl.privacy import fedavg_payload, l2_clip
from edgeagent.fl.secagg import SecAggClient
from edgeagent.fl.secagg.auth import lab_signers
from edgeagent.fl.secagg.seeded import SeededClient
from edgeagent.ops.config import AggregatorSection

BOXES = ("box-a", "box-b", "box-c", "box-d")
DIM = 6  # model parameters
CLIP, N_CAP = 1.0, 100


def _deltas(seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    return {b: (rng.normal(0, 0.2, DIM), 10 * (i + 1)) for i, b in enumerate(BOXES)}


def _fedavg(deltas: dict[str, tuple[np.ndarray, int]]) -> np.ndarray:
    total = np.sum([fedavg_payload(d, n, CLIP, N_CAP) for d, n in deltas.values()], axis=0)
    return total[:-1] / total[-1]


def _clients() -> dict[str, SeededClient]:
    """Boxes with signing identities that trust each other and know the participant list."""
    signers = lab_signers(BOXES)
    clients = {b: SeededClient(SecAggClient(b, signers[b])) for b in BOXES}
    for c in clients.values():
        c.announce(BOXES)
    return clients


def _policy(**kw: Any) -> AggregatorSection:
    base = {"min_boxes": 4, "min_survivors": 2, "n_cap": N_CAP, "update_bits": 32}
    return AggregatorSection(**{**base, **kw})


def test_secagg_round_gives_fedavg_of_the_survivors_and_records_the_dropout() -> None:
    deltas = _deltas()
    nonce = os.urandom(16)
    proto = SecAggProtocol(round_id=3, nonce=nonce, participants=BOXES, params=DIM,
                           policy=_policy(), clip=CLIP, noise_multiplier=0.0)  # fmt: skip
    assert proto.terms().secure_aggregation and proto.terms().group_size == 0
    assert proto.recorded_groups() is None
    clients = _clients()
    for b, (d, n) in deltas.items():
        clients[b].client.set_input(fedavg_payload(d, n, CLIP, N_CAP))
    silent = "box-d"  # goes quiet from COLLECT_MASKED on
    stage, bodies = proto.first_stage, proto.start()
    closed = []
    while True:
        for b, body in sorted(bodies.items()):
            if b == silent and stage in (Stage.COLLECT_MASKED, Stage.CONSISTENCY, Stage.UNMASK):
                continue
            reply = clients[b].handle(3, nonce, stage, body)
            if stage is not Stage.RESULT:
                proto.receive(b, stage, reply)
        if stage is Stage.RESULT:
            break
        assert proto.pending() == ({silent} if stage is Stage.COLLECT_MASKED else set())
        close = proto.close_stage()
        assert not close.drain and close.open_intake is None  # no intake workers
        closed.append(close.closed)
        ((stage, bodies),) = close.sends.items()
    assert close.finished and closed == [Stage.COMMIT, Stage.REVEAL, Stage.SETUP,
                                         Stage.SHARE_KEYS, Stage.COLLECT_MASKED,
                                         Stage.CONSISTENCY, Stage.UNMASK]  # fmt: skip
    # groups and graph are keyed by the commit-reveal seed, not the nonce the aggregator drew
    seed = proto.beacon.seed
    assert proto.servers[0].config.seed == seed and seed != nonce
    assert all(c.client.graph_seed == seed for c in clients.values())
    rec: dict[str, Any] = {"refused": {}}
    assert proto.tally(rec) is True
    assert rec["survivors"] == ["box-a", "box-b", "box-c"] and "status" not in rec
    assert rec["dropped"] == {"collect_masked": [silent]}
    mean, sum_n = proto.mean(rec)
    honest = {b: v for b, v in deltas.items() if b != silent}
    np.testing.assert_allclose(mean, _fedavg(honest), atol=1e-5)
    assert sum_n == pytest.approx(sum(n for _, n in honest.values()))
    assert proto.results(rec) == {}  # SecAgg+ sent RESULT with the last stage


def test_secagg_round_refuses_a_plaintext_update_and_aborts_below_the_floor() -> None:
    nonce = os.urandom(16)
    proto = SecAggProtocol(round_id=4, nonce=nonce, participants=BOXES, params=DIM,
                           policy=_policy(min_survivors=4), clip=CLIP,
                           noise_multiplier=0.0)  # fmt: skip
    bodies = proto.start()
    with pytest.raises(ProtocolError, match="wrong_mode"):
        proto.receive("box-a", Stage.UPDATE, {})
    clients = _clients()
    for stage in (Stage.COMMIT, Stage.REVEAL):
        for b in BOXES:
            proto.receive(b, stage, clients[b].handle(4, nonce, stage, bodies[b]))
        ((_, bodies),) = proto.close_stage().sends.items()
    for b in BOXES[:3]:  # box-d never answers SETUP: 3 < min_survivors 4
        proto.receive(b, Stage.SETUP, clients[b].handle(4, nonce, Stage.SETUP, bodies[b]))
    close = proto.close_stage()
    assert close.finished and set(close.sends) == {Stage.RESULT}
    rec: dict[str, Any] = {"refused": {}}
    assert proto.tally(rec) is False  # nothing unmasked: no privacy spent
    assert rec["status"] == "aborted" and rec["survivors"] == [] and rec["reason"]


def test_a_box_silent_at_commit_is_left_out_before_anything_is_revealed() -> None:
    nonce = os.urandom(16)
    proto = SecAggProtocol(round_id=5, nonce=nonce, participants=BOXES, params=DIM,
                           policy=_policy(), clip=CLIP, noise_multiplier=0.0)  # fmt: skip
    clients = _clients()
    bodies = proto.start()
    for b in BOXES[:3]:  # box-d never commits
        proto.receive(b, Stage.COMMIT, clients[b].handle(5, nonce, Stage.COMMIT, bodies[b]))
    ((stage, bodies),) = proto.close_stage().sends.items()
    assert stage is Stage.REVEAL and set(bodies) == set(BOXES[:3])
    for b in BOXES[:3]:
        proto.receive(b, stage, clients[b].handle(5, nonce, stage, bodies[b]))
    ((stage, bodies),) = proto.close_stage().sends.items()
    # the seed, the groups and the graph are over the committed boxes only
    assert stage is Stage.SETUP and set(bodies) == set(BOXES[:3])
    assert proto.servers[0].config.participants == BOXES[:3]
    for b in BOXES[:3]:
        clients[b].handle(5, nonce, stage, bodies[b])
        assert clients[b].client.neighbours == frozenset(BOXES[:3]) - {b}


def test_a_committed_box_silent_at_reveal_aborts_the_round_with_nothing_drawn() -> None:
    nonce = os.urandom(16)
    proto = SecAggProtocol(round_id=6, nonce=nonce, participants=BOXES, params=DIM,
                           policy=_policy(), clip=CLIP, noise_multiplier=0.0)  # fmt: skip
    clients = _clients()
    bodies = proto.start()
    for b in BOXES:
        proto.receive(b, Stage.COMMIT, clients[b].handle(6, nonce, Stage.COMMIT, bodies[b]))
    ((stage, bodies),) = proto.close_stage().sends.items()
    for b in BOXES[:3]:  # box-d withholds its contribution (or the aggregator drops it)
        proto.receive(b, stage, clients[b].handle(6, nonce, stage, bodies[b]))
    close = proto.close_stage()
    # no redraw from the other three: the round ends, every committed box is told
    assert close.finished and set(close.sends) == {Stage.RESULT}
    assert set(close.sends[Stage.RESULT]) == set(BOXES)
    assert proto.servers == [] and proto.beacon.seed == b""
    rec: dict[str, Any] = {"refused": {}}
    assert proto.tally(rec) is False
    assert rec["status"] == "aborted" and rec["reason"].startswith("missing_reveal")
    assert rec["dropped"] == {"reveal": ["box-d"]}


def _sealed(proto: PlaintextProtocol, box: str, delta: np.ndarray, n: int) -> dict[str, bytes]:
    ctx = seal.info(proto.round_id, proto.nonce, box)
    return {Key.UPDATE.value: seal.seal_update(delta.astype(np.float32), n, proto.enc_pk, ctx)}


def test_plaintext_round_takes_one_sealed_update_per_box_and_refuses_the_rest() -> None:
    deltas = _deltas(1)
    traffic = RoundTraffic()
    book: dict[str, float] = {}
    proto = PlaintextProtocol(round_id=9, nonce=os.urandom(16), participants=BOXES, params=DIM,
                              policy=_policy(secure_aggregation=False), clip=CLIP,
                              noise_multiplier=0.0, traffic=traffic,
                              reputation=lambda: book)  # fmt: skip
    t = proto.terms()
    assert not t.secure_aggregation and t.clip == CLIP and t.n_cap == N_CAP and t.enc_pk
    assert proto.start() == {}  # the boxes answer the announcement itself
    for b in BOXES[:3]:
        d, n = deltas[b]
        proto.receive(b, Stage.UPDATE, _sealed(proto, b, l2_clip(d, CLIP)[0], n))
    refusals = {
        "wrong_mode": ("box-d", Stage.SETUP, {}),
        "replay": ("box-a", Stage.UPDATE, _sealed(proto, "box-a", deltas["box-a"][0], 5)),
        "bad_body": ("box-d", Stage.UPDATE, {Key.UPDATE.value: "not sealed"}),
    }
    for reason, (box, stage, body) in refusals.items():
        with pytest.raises(ProtocolError) as err:
            proto.receive(box, stage, body)
        assert err.value.reason == reason
    with pytest.raises(ProtocolError, match="bad_body"):  # n beyond n_cap
        proto.receive("box-d", Stage.UPDATE, _sealed(proto, "box-d", deltas["box-d"][0], 10**6))
    with pytest.raises(ProtocolError):  # sealed for another box: the context does not match
        proto.receive("box-d", Stage.UPDATE, _sealed(proto, "box-c", deltas["box-d"][0], 5))
    assert proto.pending() == {"box-d"}
    close = proto.close_stage()
    assert close.finished and close.closed is Stage.UPDATE and not close.sends
    rec: dict[str, Any] = {"refused": {}}
    assert proto.tally(rec) is True
    assert rec["survivors"] == list(BOXES[:3]) and rec["dropped"] == {"update": ["box-d"]}
    assert rec["secure_aggregation"] is False
    mean, sum_n = proto.mean(rec)
    np.testing.assert_allclose(mean, _fedavg({b: deltas[b] for b in BOXES[:3]}), atol=1e-6)
    assert sum_n == 10 + 20 + 30
    rec["status"] = "rejected"
    assert proto.results(rec) == {
        b: {Key.STATUS.value: "rejected", Key.REASON.value: ""} for b in BOXES[:3]
    }


def test_plaintext_over_clip_is_counted_and_too_few_updates_abort() -> None:
    traffic = RoundTraffic()
    proto = PlaintextProtocol(round_id=2, nonce=os.urandom(16), participants=BOXES, params=DIM,
                              policy=_policy(secure_aggregation=False, min_survivors=3),
                              clip=CLIP, noise_multiplier=0.0, traffic=traffic,
                              reputation=dict)  # fmt: skip
    big = np.full(DIM, 10.0)  # an honest box clips; this one did not
    proto.receive("box-a", Stage.UPDATE, _sealed(proto, "box-a", big, 5))
    proto.receive("box-b", Stage.UPDATE, _sealed(proto, "box-b", big / 100, 5))
    assert traffic.refused["over_clip"] == 1
    rec: dict[str, Any] = {"refused": {}}
    assert proto.tally(rec) is False
    assert rec["status"] == "aborted" and rec["reason"] == "too_few_updates: 2 < 3"
