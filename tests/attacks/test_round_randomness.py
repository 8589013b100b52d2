"""A grinding aggregator tries to choose the round seed (neighbour graph and robust groups).

The seed comes from a commit-reveal over every committed box's contribution
(``fl.secagg.beacon``). The aggregator below plays the adversary by hand
against the real box classes (``SeededClient`` over ``SecAggClient``, and the
daemon's ``FlClient`` for the abort count): it tries other nonces, other seeds,
other subsets of the contributions, swapped contributions, and aborting after
it has seen the seed. Each try is refused, or costs an abort every box counts.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeagent.errors import ProtocolError
from edgeagent.federation.client import FlClient
from edgeagent.federation.protocols import SecAggProtocol
from edgeagent.fl.constants import AGGREGATOR, BROADCAST, Key, Stage
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.messages import Message, encode
from edgeagent.fl.robust import partition_groups
from edgeagent.fl.secagg import RoundConfig, SecAggClient, SecAggServer
from edgeagent.fl.secagg.auth import lab_signers
from edgeagent.fl.secagg.beacon import BeaconServer
from edgeagent.fl.secagg.seeded import SeededClient
from edgeagent.fl.wire import Announcement, announcement_body
from edgeagent.model.graph import get_params, parse_model, sha256_hex
from edgeagent.ops.config import AggregatorSection
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message as MqttMessage
from edgeagent.transport.mqtt import MqttLink
from tests.fl_support import FixedLearner

N, GROUP = 20, 3
BOXES = tuple(f"box{i:02d}" for i in range(N))
VICTIM = BOXES[0]
COLLUDERS = frozenset(BOXES[-4:])  # 20 % of the fleet


def _boxes(group_size: int = GROUP) -> dict[str, SeededClient]:
    signers = lab_signers(BOXES)
    boxes = {b: SeededClient(SecAggClient(b, signers[b])) for b in BOXES}
    for c in boxes.values():
        c.announce(BOXES, group_size)
    return boxes


def _committed_and_revealed(
    boxes: dict[str, SeededClient], round_id: int, nonce: bytes
) -> BeaconServer:
    """The honest part of the beacon: every box commits, the set is fixed, every box reveals."""
    beacon = BeaconServer(round_id, nonce, BOXES)
    for b, body in beacon.start().items():
        beacon.receive(b, Stage.COMMIT, boxes[b].handle(round_id, nonce, Stage.COMMIT, body))
    for b, body in beacon.advance().items():
        beacon.receive(b, Stage.REVEAL, boxes[b].handle(round_id, nonce, Stage.REVEAL, body))
    beacon.advance()
    return beacon


def _isolated(seed: bytes) -> bool:
    """The aggregator's goal: the victim's group of 3 holds 2 colluders."""
    group = next(g for g in partition_groups(BOXES, GROUP, seed) if VICTIM in g)
    return len(COLLUDERS & set(group)) >= 2


def _setup(round_id: int, nonce: bytes, seed: bytes, reveals: list[bytes]) -> dict[str, Any]:
    """The victim's SETUP for the groups and graph keyed by ``seed``."""
    group = next(g for g in partition_groups(BOXES, GROUP, seed) if VICTIM in g)
    cfg = RoundConfig(round_id, nonce, group, dim=4, bound=10.0, n_cap=10, seed=seed)
    return {**SecAggServer(cfg).start()[VICTIM], Key.BEACON_REVEALS.value: b"".join(reveals)}


def _contributions(beacon: BeaconServer) -> list[bytes]:
    """The contributions SETUP carries (16 bytes each, committed-set order), one by one."""
    blob = beacon.reveals_field()[Key.BEACON_REVEALS.value]
    return [blob[i : i + 16] for i in range(0, len(blob), 16)]


def test_a_nonce_the_aggregator_picks_is_grindable_the_beacon_seed_is_not() -> None:
    # the threat: with groups keyed by its own nonce, a few tries isolate the victim
    tries = next(i for i in itertools.count(1) if _isolated(i.to_bytes(16, "little")))
    assert tries < 200
    # the defence: once every commitment is fixed, the aggregator holds one seed the victim
    # accepts; ground seeds, ground nonces and reshuffled contributions are all refused
    boxes = _boxes()
    nonce = os.urandom(16)
    beacon = _committed_and_revealed(boxes, 1, nonce)
    honest = _contributions(beacon)
    victim = boxes[VICTIM]
    refused: dict[str, str] = {}
    fair = next(g for g in partition_groups(BOXES, GROUP, beacon.seed) if VICTIM in g)
    for i in range(200):
        ground = i.to_bytes(16, "little")
        mine = next(g for g in partition_groups(BOXES, GROUP, ground) if VICTIM in g)
        if not _isolated(ground) or mine == fair:
            continue
        # (a) the groups and graph of a ground seed, honest contributions beside them
        with pytest.raises(ProtocolError) as err:
            victim.handle(1, nonce, Stage.SETUP, _setup(1, nonce, ground, honest))
        refused[f"seed {i}"] = err.value.reason
        victim.client.stage = None  # the box stays in the round for the next try
    assert refused and set(refused.values()) == {"bad_graph"}
    # (b) a colluder's contribution swapped for one that makes the seed isolate the victim
    j = BOXES.index(sorted(COLLUDERS)[0])
    for _ in range(50):
        forged = list(honest)
        forged[j] = os.urandom(16)
        with pytest.raises(ProtocolError) as err:
            victim.handle(1, nonce, Stage.SETUP, _setup(1, nonce, beacon.seed, forged))
        assert err.value.reason == "bad_reveal"
    # (c) the seed redrawn from a subset (a dropped contribution), with each box left out once
    for k in range(1, N):
        subset = honest[:k] + honest[k + 1 :]
        with pytest.raises(ProtocolError) as err:
            victim.handle(1, nonce, Stage.SETUP, _setup(1, nonce, beacon.seed, subset))
        assert err.value.reason == "bad_reveal"
    # the one seed that is accepted is the commit-reveal seed, whatever the aggregator wanted
    victim.handle(1, nonce, Stage.SETUP, _setup(1, nonce, beacon.seed, honest))
    mine = next(g for g in partition_groups(BOXES, GROUP, beacon.seed) if VICTIM in g)
    assert victim.client.graph_seed == beacon.seed
    assert victim.client.neighbours == frozenset(mine) - {VICTIM}


def test_a_colluder_cannot_change_its_contribution_after_seeing_the_others() -> None:
    boxes = _boxes()
    nonce = os.urandom(16)
    beacon = BeaconServer(1, nonce, BOXES)
    for b, body in beacon.start().items():
        beacon.receive(b, Stage.COMMIT, boxes[b].handle(1, nonce, Stage.COMMIT, body))
    requests = beacon.advance()
    colluder = sorted(COLLUDERS)[0]
    with pytest.raises(ProtocolError) as err:  # another contribution than it committed to
        beacon.receive(colluder, Stage.REVEAL, {Key.BEACON_REVEAL.value: os.urandom(16)})
    assert err.value.reason == "bad_reveal"
    # a box refuses to reveal into a set that leaves it out, or a malformed one
    victim = boxes[VICTIM]
    body = dict(requests[VICTIM])
    body[Key.BEACON_SET.value] = b"\x00" * len(body[Key.BEACON_SET.value])
    with pytest.raises(ProtocolError) as err:
        victim.handle(1, nonce, Stage.REVEAL, body)
    assert err.value.reason == "bad_reveal" and not victim.revealed
    # shown another digest than the one it revealed against, the box refuses the seed
    victim.handle(1, nonce, Stage.REVEAL, requests[VICTIM])
    for b in BOXES:
        if b != VICTIM:
            beacon.receive(b, Stage.REVEAL, boxes[b].handle(1, nonce, Stage.REVEAL, requests[b]))
    beacon.receive(VICTIM, Stage.REVEAL, {Key.BEACON_REVEAL.value: victim.beacon._r})
    beacon.advance()
    honest = _contributions(beacon)
    mine = list(honest)
    mine[0] = os.urandom(16)  # the victim's own contribution replaced
    with pytest.raises(ProtocolError) as err:
        victim.handle(1, nonce, Stage.SETUP, _setup(1, nonce, beacon.seed, mine))
    assert err.value.reason == "bad_reveal"


def test_boxes_shown_different_commitment_lists_refuse_each_others_keys() -> None:
    """Equivocation: two views give two seeds; key signatures bind the seed, so they fail."""
    nodes = ("a", "b", "c")
    signers = lab_signers(nodes)
    nonce = os.urandom(16)
    seeds = {"a": os.urandom(32), "b": os.urandom(32), "c": os.urandom(32)}
    clients = {n: SecAggClient(n, signers[n]) for n in nodes}
    replies = {}
    for n in nodes:
        clients[n].expect_participants(nodes, seeds[n])
        cfg = RoundConfig(1, nonce, nodes, dim=4, bound=10.0, n_cap=10, seed=seeds[n])
        replies[n] = clients[n].handle(1, nonce, Stage.SETUP, SecAggServer(cfg).start()[n])
    keys = {
        n: [r[Key.PK_ENC.value], r[Key.PK_MASK.value], r[Key.COMMIT.value],
            r[Key.KEY_SIG.value], r[Key.CERT.value]]
        for n, r in replies.items()
    }  # fmt: skip
    with pytest.raises(ProtocolError) as err:
        clients["a"].handle(1, nonce, Stage.SHARE_KEYS, {Key.KEYS.value: {"b": keys["b"]}})
    assert err.value.reason == "bad_signature"


def test_a_dropped_reveal_aborts_the_round_and_never_redraws() -> None:
    policy = AggregatorSection(min_boxes=N, min_survivors=2, n_cap=10, robust="median",
                               group_size=GROUP)  # fmt: skip
    nonce = os.urandom(16)
    proto = SecAggProtocol(round_id=2, nonce=nonce, participants=BOXES, params=3, policy=policy,
                           clip=1.0, noise_multiplier=0.0)  # fmt: skip
    boxes = _boxes()
    bodies = proto.start()
    for b in BOXES:
        proto.receive(b, Stage.COMMIT, boxes[b].handle(2, nonce, Stage.COMMIT, bodies[b]))
    ((_, bodies),) = proto.close_stage().sends.items()
    for b in BOXES:
        reply = boxes[b].handle(2, nonce, Stage.REVEAL, bodies[b])
        if b != BOXES[5]:  # the aggregator "loses" one honest box's contribution
            proto.receive(b, Stage.REVEAL, reply)
    close = proto.close_stage()
    assert close.finished and set(close.sends) == {Stage.RESULT}
    assert proto.beacon.seed == b"" and proto.servers == [] and proto.groups == []
    rec: dict[str, Any] = {"refused": {}}
    assert proto.tally(rec) is False and rec["reason"].startswith("missing_reveal")


def _announce(agg: Any, round_id: int, nonce: bytes, model: str) -> MqttMessage:
    parts = ("box-a", "box-b", "box-c", "box-d")
    body = announcement_body(Announcement(parts, model, 5.0, agg.cert_der))
    msg = Message(AGGREGATOR, BROADCAST, round_id, Stage.SETUP, 0, nonce, body)
    return MqttMessage(topics.announce("grind", round_id), encode(msg, agg.key), 1, True)


def _routed(agg: Any, me: str, round_id: int, nonce: bytes, stage: Stage, seq: int,
            body: dict[str, Any]) -> MqttMessage:  # fmt: skip
    msg = Message(AGGREGATOR, me, round_id, stage, seq, nonce, body)
    return MqttMessage(topics.round_topic("grind", round_id, str(stage), me),
                       encode(msg, agg.key), 1, False)  # fmt: skip


def test_each_abort_after_the_reveal_is_counted_and_bounds_the_tries(
    pki: Pki, syn_model: bytes, tmp_state: Path
) -> None:
    """The aggregator runs the beacon honestly, sees the seed, dislikes it and aborts.

    The daemon's box counts every such round; at ``max_reveal_aborts`` it sits
    rounds out, so the aggregator got that many discarded draws and no more.
    """
    me = "box-a"
    ca = load_ca(pki.ca_cert)
    agg = load_identity(pki.client_files(AGGREGATOR).cert, ca, AGGREGATOR)
    files = pki.client_files(me)
    dim = get_params(parse_model(syn_model)).size
    box = FlClient(me, "grind", load_identity(files.cert, ca, me), ca,
                   FixedLearner(np.zeros(dim, np.float32), 5),
                   MqttLink(me, "127.0.0.1", 1, files, "grind", identity=me),
                   global_sha256=sha256_hex(syn_model), state_dir=tmp_state,
                   max_reveal_aborts=2)  # fmt: skip
    sha = sha256_hex(syn_model)
    draws = 0
    for round_id in itertools.count(1):
        nonce = os.urandom(16)
        box.handle(_announce(agg, round_id, nonce, sha))
        if box.current is None:
            break  # the box sits the round out: no more draws for the aggregator
        box.handle(_routed(agg, me, round_id, nonce, Stage.COMMIT, 1, {}))
        commit = box.beacon._commit
        # the aggregator fixes the set with the box in it and gets its contribution
        set_bits = bytes([0b1111])
        req = {Key.BEACON_DIGEST.value: os.urandom(32), Key.BEACON_SET.value: set_bits}
        box.handle(_routed(agg, me, round_id, nonce, Stage.REVEAL, 2, req))
        assert box.beacon.revealed and commit
        draws += 1  # it now knows this round's seed ... and throws it away
        aborted = {Key.STATUS.value: "aborted", Key.REASON.value: "too_few_boxes"}
        box.handle(_routed(agg, me, round_id, nonce, Stage.RESULT, 3, aborted))
        assert round_id < 10
    assert draws == 2 and box.counters["aborted_after_reveal"] == 2
    assert box.counters["grinding_limit"] == 1 and box.counters["not_invited"] == 0
