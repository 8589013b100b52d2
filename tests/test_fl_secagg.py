"""SecAgg+ end to end in memory: k boxes + aggregator, signed envelopes, dropouts at every stage.

The central property: the unmasked result equals the plaintext weighted FedAvg
of the same clipped updates within quantisation error, whoever drops out
(within the threshold); beyond it the round aborts cleanly and the next round
works. Dropout sets are drawn from a seeded generator so failures reproduce.
"""

from __future__ import annotations

import contextlib
import math
import os

import cbor2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeagent.errors import ProtocolError
from edgeagent.fl.aggregate import ClientUpdate, mean_from_total, weighted_fedavg
from edgeagent.fl.constants import AGGREGATOR, Key, Stage
from edgeagent.fl.messages import EnvelopeReceiver, Message, decode_unverified, encode
from edgeagent.fl.privacy import fedavg_payload, payload_bound
from edgeagent.fl.quantize import Quantizer, field_bits, packed_bytes
from edgeagent.fl.secagg import (
    MaskedSum,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    auth,
    check_stage,
    choose_degree,
    choose_threshold,
    crypto,
    neighbour_graph,
)
from edgeagent.fl.secagg.auth import CertBook, lab_signers
from edgeagent.fl.secagg.simulate import simulate_round
from edgeagent.fl.secagg.state import field_terms

CLIP, N_CAP = 1.0, 500
STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED, Stage.UNMASK)
ALL_STAGES = (*STAGES[:3], Stage.CONSISTENCY, Stage.UNMASK)


def make_updates(n: int, dim: int, seed: int = 0) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    # non-IID: per-box offsets and scales, some norms above the clip, some n_k above the cap
    return [
        ClientUpdate(
            node=f"box{i:03d}",
            delta=rng.normal(rng.normal(0, 0.2), rng.uniform(0.01, 0.6), dim),
            n=int(rng.integers(1, 900)),
        )
        for i in range(n)
    ]


def make_round(updates: list[ClientUpdate], round_id: int = 1, **kw: object) -> RoundConfig:
    dim = updates[0].delta.size + 1
    return RoundConfig(
        round_id=round_id,
        nonce=os.urandom(16),
        participants=tuple(u.node for u in updates),
        dim=dim,
        bound=payload_bound(CLIP, N_CAP),
        clip=CLIP,
        n_cap=N_CAP,
        **kw,  # type: ignore[arg-type]
    )


def payloads(updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
    return {u.node: fedavg_payload(u.delta, u.n, CLIP, N_CAP) for u in updates}


def spread_dropouts(nodes: list[str], fraction: float, seed: int) -> dict[str, Stage]:
    """``fraction`` of boxes drop, spread over all four stages."""
    rng = np.random.default_rng(seed)
    gone = rng.choice(nodes, size=round(fraction * len(nodes)), replace=False)
    return {str(b): STAGES[i % 4] for i, b in enumerate(gone)}


def assert_matches_plaintext(report, updates, cfg) -> None:
    assert report.abort is None, report.abort
    res = report.result
    counted = [u for u in updates if u.node in res.survivors]
    expected = weighted_fedavg(counted, clip=CLIP, n_cap=N_CAP)
    got = mean_from_total(res.total)
    # deterministic bound: stochastic rounding moves each box's value by < 1 step
    q = Quantizer(cfg.bound, len(cfg.participants), cfg.headroom_bits)
    n_total = sum(min(u.n, N_CAP) for u in counted)
    tol = 2 * len(counted) * q.step / n_total * (1 + np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)
    assert res.total[-1] == pytest.approx(n_total, abs=len(counted) * q.step)
    assert not np.allclose(got, 0)  # the check could fail: the result is not trivial


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
def test_secure_sum_equals_plaintext_fedavg_with_dropouts(fraction: float) -> None:
    updates = make_updates(20, 50, seed=int(fraction * 100))
    cfg = make_round(updates)
    drop = spread_dropouts([u.node for u in updates], fraction, seed=3)
    report = simulate_round(cfg, payloads(updates), drop=drop)
    assert_matches_plaintext(report, updates, cfg)
    assert set(report.result.survivors) == {u.node for u in updates} - {
        b for b, s in drop.items() if s in (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED)
    }
    silent = [b for stage_boxes in report.result.dropped.values() for b in stage_boxes]
    assert sorted(silent) == sorted(drop)
    assert sum(report.refused.values()) == 0


@pytest.mark.parametrize("stage", STAGES)
def test_30_percent_dropping_at_one_stage(stage: Stage) -> None:
    updates = make_updates(10, 30, seed=11)
    cfg = make_round(updates)
    drop = {u.node: stage for u in updates[:3]}
    report = simulate_round(cfg, payloads(updates), drop=drop)
    assert_matches_plaintext(report, updates, cfg)
    assert report.result.dropped[stage] == tuple(sorted(drop))


def test_sparse_graph_round_with_dropouts() -> None:
    updates = make_updates(40, 20, seed=5)
    cfg = make_round(updates)
    assert cfg.degree < 39 and cfg.degree == choose_degree(40)
    drop = spread_dropouts([u.node for u in updates], 0.1, seed=9)
    report = simulate_round(cfg, payloads(updates), drop=drop)
    assert_matches_plaintext(report, updates, cfg)
    # Shamir work and key traffic per box are bounded by the degree, not by n
    down = report.bytes_down
    assert max(down.values()) < 4 * cfg.dim * 1.2 + 600 * cfg.degree + 2000


def test_too_many_dropouts_abort_cleanly_then_next_round_works() -> None:
    updates = make_updates(10, 20, seed=2)
    cfg = make_round(updates)  # full graph: 10 holders, t = 6
    assert cfg.threshold == 6
    drop = {u.node: Stage.UNMASK for u in updates[:5]}  # 5 holders left < t
    report = simulate_round(cfg, payloads(updates), drop=drop)
    assert report.result is None and report.abort is not None
    assert "below_threshold" in report.abort.reason
    nxt = simulate_round(make_round(updates, round_id=2), payloads(updates))
    assert_matches_plaintext(nxt, updates, cfg)


def test_abort_when_fewer_than_min_survivors() -> None:
    updates = make_updates(6, 5, seed=4)
    cfg = make_round(updates, min_survivors=5)
    report = simulate_round(
        cfg, payloads(updates), drop={"box000": Stage.SETUP, "box001": Stage.SETUP}
    )
    assert report.abort is not None and "too_few_boxes" in report.abort.reason


def test_forged_replayed_out_of_round_messages_refused_round_unaffected() -> None:
    updates = make_updates(8, 10, seed=8)
    cfg = make_round(updates)
    ids = {u.node: Ed25519PrivateKey.generate() for u in updates}
    stranger = Ed25519PrivateKey.generate()
    captured: dict[str, bytes] = {}

    def wire(src: str, dst: str, stage: Stage, data: bytes) -> list[bytes]:
        if dst != AGGREGATOR:
            return [data]
        out = [data, data]  # QoS 1 redelivery: must be idempotent
        if stage is Stage.SETUP:
            captured[src] = data
        if stage is Stage.COLLECT_MASKED and src == "box001":
            m = decode_unverified(data)
            zeros = {Key.MASKED.value: bytes(len(m.body[Key.MASKED.value]))}

            def variant(key: Ed25519PrivateKey, **kw: object) -> bytes:
                f = {"round": m.round, "seq": m.seq + 1, "nonce": m.nonce} | kw
                return encode(Message(m.src, m.dst, stage=m.stage, body=zeros, **f), key)  # type: ignore[arg-type]

            unsigned = cbor2.loads(data)
            unsigned[Key.SIGNATURE.value] = b""
            out[:0] = [
                variant(stranger),  # forged: box001's name, another key
                cbor2.dumps(unsigned),  # signature stripped
                variant(ids["box001"], round=m.round - 1),  # out of round
                variant(ids["box001"], nonce=os.urandom(16)),  # an old round's nonce
                captured["box001"],  # replay of its SETUP message
            ]
            out.append(variant(ids["box001"], seq=m.seq))  # same seq, other content
        return out

    report = simulate_round(cfg, payloads(updates), wire=wire, identities=ids)
    assert_matches_plaintext(report, updates, cfg)
    assert report.refused == {
        "server:bad_signature": 2,
        "server:out_of_round": 1,
        "server:stale_nonce": 1,
        "server:replay": 1,
    }
    # replayed bytes are acknowledged as duplicates and never processed twice
    assert report.duplicates == 5 * len(updates) + 1  # five stages answered


def test_out_of_round_message_refused_by_receiver() -> None:
    key = Ed25519PrivateKey.generate()
    rx = EnvelopeReceiver(AGGREGATOR, {"box1": key.public_key()})
    rx.begin_round(5, b"n" * 16)
    old = Message("box1", AGGREGATOR, 4, Stage.COLLECT_MASKED, 0, b"n" * 16, {})
    with pytest.raises(ProtocolError, match="out_of_round"):
        rx.receive(encode(old, key))


def make_clients(cfg: RoundConfig) -> dict[str, SecAggClient]:
    """Boxes with signing identities that trust each other, knowing the public participant list."""
    signers = lab_signers(cfg.participants)
    clients = {n: SecAggClient(n, signers[n]) for n in cfg.participants}
    for c in clients.values():
        c.expect_participants(cfg.participants)
    return clients


def drive_to(stage: Stage, n: int = 5) -> tuple[SecAggServer, dict[str, SecAggClient], dict]:
    """Run a round by hand up to the bodies the server sends for ``stage``."""
    updates = make_updates(n, 4, seed=1)
    cfg = make_round(updates)
    server = SecAggServer(cfg)
    clients = make_clients(cfg)
    for u in updates:
        clients[u.node].set_input(fedavg_payload(u.delta, u.n, CLIP, N_CAP))
    out = server.start()
    while server.stage is not stage:
        for node, body in out.items():
            server.receive(
                node, server.stage, clients[node].handle(1, cfg.nonce, server.stage, body)
            )
        out = server.advance()
    return server, clients, out


def test_client_refuses_unsafe_unmask_request() -> None:
    server, clients, out = drive_to(Stage.CONSISTENCY)
    node = sorted(out)[0]
    body = dict(out[node])
    body[Key.DROPPED.value] = [node]
    with pytest.raises(ProtocolError, match="unsafe_unmask"):  # it sent its input: it survived
        clients[node].handle(1, server.config.nonce, Stage.CONSISTENCY, body)
    body[Key.DROPPED.value] = ["stranger"]
    with pytest.raises(ProtocolError, match="unsafe_unmask"):
        clients[node].handle(1, server.config.nonce, Stage.CONSISTENCY, body)


def test_client_refuses_stage_out_of_order_and_other_round() -> None:
    c = SecAggClient("box000", lab_signers(["box000"])["box000"])
    with pytest.raises(ProtocolError, match="out_of_order"):
        c.handle(1, b"n" * 16, Stage.UNMASK, {})
    server, clients, out = drive_to(Stage.SHARE_KEYS)
    node = sorted(out)[0]
    with pytest.raises(ProtocolError, match="out_of_round"):
        clients[node].handle(2, server.config.nonce, Stage.SHARE_KEYS, out[node])
    with pytest.raises(ProtocolError, match="out_of_order"):
        clients[node].handle(1, server.config.nonce, Stage.UNMASK, out[node])


def test_client_refuses_unsafe_setup() -> None:
    server, clients, out = drive_to(Stage.SETUP)
    nonce = server.config.nonce
    c = clients["box000"]
    body = dict(out["box000"])
    body[Key.THRESHOLD.value] = 1  # one neighbour could unmask this box alone
    with pytest.raises(ProtocolError, match="bad_body"):
        c.handle(1, nonce, Stage.SETUP, body)
    with pytest.raises(ProtocolError, match="bad_body"):
        c.handle(1, nonce, Stage.SETUP, {Key.NEIGHBOURS.value: "everyone"})
    blind = SecAggClient("box000", lab_signers(["box000"])["box000"])
    with pytest.raises(ProtocolError, match="bad_graph"):  # no participant list: cannot check
        blind.handle(1, nonce, Stage.SETUP, out["box000"])


def test_server_refuses_bad_bodies_without_state_change() -> None:
    server, _clients, out = drive_to(Stage.COLLECT_MASKED)
    node = sorted(out)[0]
    for body, reason in (
        ({Key.MASKED.value: b"\x00" * 3}, "bad_body"),
        ({}, "bad_body"),
    ):
        with pytest.raises(ProtocolError, match=reason):
            server.receive(node, Stage.COLLECT_MASKED, body)
    with pytest.raises(ProtocolError, match="wrong_stage"):
        server.receive(node, Stage.SETUP, {})
    with pytest.raises(ProtocolError, match="unexpected_sender"):
        server.receive("intruder", Stage.COLLECT_MASKED, {Key.MASKED.value: b""})
    assert node in server.pending()
    assert server.rejected["bad_body"] == 2


def reseal(server: SecAggServer, node: str, body: dict) -> dict:
    """What a box would send: ``body`` (seed and key shares) sealed to the round key."""
    from edgeagent.fl import seal
    from edgeagent.fl.secagg.client import unmask_context

    ctx = unmask_context(server.config.round_id, server.config.nonce, node)
    return {Key.SEALED.value: seal.seal_bytes(cbor2.dumps(body), server.enc_pk, ctx)}


def opened(server: SecAggServer, node: str, reply: dict) -> dict:
    from edgeagent.fl import seal
    from edgeagent.fl.secagg.client import unmask_context

    ctx = unmask_context(server.config.round_id, server.config.nonce, node)
    return cbor2.loads(seal.open_bytes(reply[Key.SEALED.value], server._seal_key, ctx, 1 << 20))


def test_corrupted_share_detected_by_commitment() -> None:
    server, clients, out = drive_to(Stage.UNMASK, n=6)
    holders = sorted(out)
    replies = {n: clients[n].handle(1, server.config.nonce, Stage.UNMASK, out[n]) for n in holders}
    victim = holders[0]
    for n in holders:  # corrupt every holder's share of the victim's seed
        body = opened(server, n, replies[n])
        idx, share = body[Key.SEED_SHARES.value][victim]
        body[Key.SEED_SHARES.value][victim] = [idx, bytes(b ^ 1 for b in share)]
        server.receive(n, Stage.UNMASK, reseal(server, n, body))
    result = server.advance()
    assert server.result is None and "reconstruction_failed" in server.abort.reason
    assert all(b[Key.STATUS.value] == "aborted" for b in result.values())


def test_partial_sums_from_two_intake_workers_combine() -> None:
    server, clients, out = drive_to(Stage.COLLECT_MASKED, n=6)
    worker = MaskedSum(server.config.dim)
    nodes = sorted(out)
    for i, node in enumerate(nodes):
        reply = clients[node].handle(1, server.config.nonce, Stage.COLLECT_MASKED, out[node])
        if i % 2:
            worker.add(node, reply[Key.MASKED.value])
        else:
            server.receive(node, Stage.COLLECT_MASKED, reply)
    server.absorb(worker)
    with pytest.raises(ProtocolError):
        server.absorb(worker)  # the same boxes twice
    assert not server.pending()
    out = server.advance()
    for stage in (Stage.CONSISTENCY, Stage.UNMASK):
        for node, body in out.items():
            server.receive(node, stage, clients[node].handle(1, server.config.nonce, stage, body))
        out = server.advance()
    assert server.result is not None and len(server.result.survivors) == 6


def test_distributed_noise_reaches_target_variance() -> None:
    n, dim, sigma = 10, 2000, 4.0
    updates = [ClientUpdate(f"box{i:03d}", np.zeros(dim), 10) for i in range(n)]
    per_box = sigma / math.sqrt(7)  # min_survivors = 7
    cfg = make_round(updates, noise_std=per_box, min_survivors=7)
    drop = {"box000": Stage.COLLECT_MASKED, "box001": Stage.COLLECT_MASKED, "box002": Stage.SETUP}
    report = simulate_round(cfg, payloads(updates), drop=drop)
    noise = report.result.total[:-1]  # zero updates: what is left is the summed noise
    assert noise.std() == pytest.approx(sigma, rel=0.06)
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(dim)


def test_crypto_primitives() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    nonce = os.urandom(16)
    m_ab = crypto.pairwise_mask(a, crypto.raw_public(b), nonce, 64)
    np.testing.assert_array_equal(m_ab, crypto.pairwise_mask(b, crypto.raw_public(a), nonce, 64))
    assert not np.array_equal(
        m_ab, crypto.pairwise_mask(a, crypto.raw_public(b), os.urandom(16), 64)
    )
    key = crypto.share_key(a, crypto.raw_public(b), nonce)
    blob = crypto.encrypt_share(key, nonce, "a", "b", 3, b"s" * crypto.SECRET_BYTES)
    assert crypto.decrypt_share(key, nonce, "a", "b", blob) == (3, b"s" * crypto.SECRET_BYTES)
    with pytest.raises(ProtocolError, match="bad_share"):
        crypto.decrypt_share(key, nonce, "a", "c", blob)  # misrouted: dst is bound
    with pytest.raises(ProtocolError, match="bad_share"):
        crypto.decrypt_share(key, nonce, "a", "b", blob[:-1] + bytes([blob[-1] ^ 1]))
    secret = crypto.raw_private(a) + crypto.new_self_seed()
    shares = crypto.split_secrets(secret, 3, 5)
    assert crypto.combine_chunks(shares[1:4], 0, 3) == secret
    # too few shares: garbage, which only the commitment check catches
    assert crypto.combine_chunks(shares[:2], 0, 3) != secret
    seed = secret[32:]
    assert crypto.commit_seed(seed, nonce, "a") != crypto.commit_seed(seed, nonce, "b")
    assert crypto.public_from_private(crypto.combine_chunks(shares[:3], 0, 2)) == crypto.raw_public(
        a
    )


def test_stage_table_and_graph() -> None:
    check_stage(None, Stage.SETUP)
    check_stage(Stage.SETUP, Stage.SHARE_KEYS)
    check_stage(Stage.SHARE_KEYS, Stage.RESULT)
    with pytest.raises(ProtocolError):
        check_stage(Stage.SETUP, Stage.UNMASK)
    nodes = [f"n{i}" for i in range(200)]
    k = choose_degree(200)
    assert k % 2 == 0 and k <= 3 * math.log2(200) + 2
    g = neighbour_graph(nodes, k, b"x" * 16)
    assert all(len(v) == k for v in g.values())
    assert all(a in g[b] for a in g for b in g[a])  # symmetric
    assert neighbour_graph(nodes, k, b"y" * 16) != g  # public randomness decides the graph
    t = choose_threshold(k)
    assert 2 * t > k + 1
    with pytest.raises(ValueError):
        RoundConfig(1, b"x" * 16, ("a", "b"), 3, 1.0, threshold=1)


def test_box_cut_off_mid_round_joins_the_next_round() -> None:
    _server, clients, out = drive_to(Stage.COLLECT_MASKED)
    node = sorted(out)[0]
    updates = make_updates(5, 4, seed=1)
    cfg2 = make_round(updates, round_id=2)
    setup = SecAggServer(cfg2).start()[node]
    reply = clients[node].handle(2, cfg2.nonce, Stage.SETUP, setup)
    assert len(reply[Key.PK_MASK.value]) == 32
    with pytest.raises(ProtocolError, match="out_of_order"):
        clients[node].handle(2, cfg2.nonce, Stage.SETUP, setup)  # same round twice


def test_box_checks_its_neighbours_against_the_public_graph() -> None:
    updates = make_updates(30, 4, seed=1)
    cfg = make_round(updates)
    server = SecAggServer(cfg)
    out = server.start()
    signer = lab_signers(["box000"])["box000"]
    honest = SecAggClient("box000", signer)
    honest.expect_participants(cfg.participants)
    honest.handle(1, cfg.nonce, Stage.SETUP, out["box000"])
    body = dict(out["box000"])
    others = sorted(set(cfg.participants) - cfg.graph["box000"] - {"box000"})
    swapped = sorted(cfg.graph["box000"])[1:] + others[:1]  # one neighbour hand-picked
    body[Key.NEIGHBOURS.value] = swapped
    victim = SecAggClient("box000", signer)
    victim.expect_participants(cfg.participants)
    with pytest.raises(ProtocolError, match="bad_graph"):
        victim.handle(1, cfg.nonce, Stage.SETUP, body)


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.binary(max_size=40)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_bodies = st.dictionaries(st.sampled_from([k.value for k in Key]), _cbor_values, max_size=6)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stage=st.sampled_from(ALL_STAGES), body=_bodies)
def test_random_bodies_are_refused_never_crash(stage: Stage, body: dict) -> None:
    server, clients, out = drive_to(stage, n=3)
    node = sorted(out)[0]
    with contextlib.suppress(ProtocolError):
        clients[node].handle(1, server.config.nonce, stage, body)
    with contextlib.suppress(ProtocolError):
        server.receive(node, stage, body)


def test_late_reply_after_stage_closed_is_refused() -> None:
    server, clients, out = drive_to(Stage.COLLECT_MASKED)
    late = sorted(out)[0]
    reply = clients[late].handle(1, server.config.nonce, Stage.COLLECT_MASKED, out[late])
    for node in sorted(out)[1:]:
        body = clients[node].handle(1, server.config.nonce, Stage.COLLECT_MASKED, out[node])
        server.receive(node, Stage.COLLECT_MASKED, body)
    server.advance()  # `late` counts as dropped after sharing keys
    with pytest.raises(ProtocolError, match="wrong_stage"):
        server.receive(late, Stage.COLLECT_MASKED, reply)
    assert server.dropped()[Stage.COLLECT_MASKED] == (late,)


def test_early_abort_when_setup_dropouts_exceed_threshold() -> None:
    updates = make_updates(10, 5, seed=6)
    cfg = make_round(updates)
    report = simulate_round(cfg, payloads(updates), drop={u.node: Stage.SETUP for u in updates[:5]})
    assert report.abort is not None and report.abort.stage == "setup"
    assert "too_few_boxes" in report.abort.reason


# -- quantised updates: the masked sum in Z_2^b --------------------------------------------------


@pytest.mark.parametrize("dropouts", [False, True])
@pytest.mark.parametrize("value_bits", [8, 16])
def test_quantised_secure_sum_is_exactly_the_sum_of_the_quantised_inputs(
    value_bits: int, dropouts: bool
) -> None:
    """Inputs on the quantiser's grid round to themselves: the unmasked sum must be exact,
    with all 9 boxes at the bound on some coordinates (no wrap at the most participants the
    field is sized for), and with a box dropping after its masked vector (its self-mask is
    removed mod 2^b) and one before (its pairwise masks are removed mod 2^b)."""
    n, dim, bound = 9, 40, 3.0
    nodes = tuple(f"box{i:03d}" for i in range(n))
    bits = field_bits(value_bits, n)
    q = Quantizer(bound, n, 0, bits)
    rng = np.random.default_rng(value_bits)
    ints = {b: rng.integers(-q.levels, q.levels + 1, dim) for b in nodes}
    ints[nodes[0]][:] = q.levels  # one box at the bound everywhere
    for b in nodes:  # and every box at the bound on some coordinates: the sum's worst case
        ints[b][:5], ints[b][5:10] = q.levels, -q.levels
    cfg = RoundConfig(round_id=1, nonce=os.urandom(16), participants=nodes, dim=dim,
                      bound=bound, headroom_bits=0, bits=bits)  # fmt: skip
    drop = {nodes[1]: Stage.COLLECT_MASKED, nodes[2]: Stage.UNMASK} if dropouts else {}
    report = simulate_round(cfg, {b: v / q.scale for b, v in ints.items()}, drop=drop)
    assert report.abort is None, report.abort
    res = report.result
    want = sum(ints[b] for b in res.survivors)
    np.testing.assert_array_equal(np.rint(res.total * q.scale).astype(np.int64), want)
    assert nodes[2] in res.survivors and (nodes[1] in res.survivors) is not dropouts
    # the same round in the 32-bit field: each masked vector shrinks to b bits a coordinate
    wide = RoundConfig(round_id=1, nonce=cfg.nonce, participants=nodes, dim=dim, bound=bound)
    full = simulate_round(wide, {b: v / q.scale for b, v in ints.items()}, drop=drop)
    saved = (
        full.stage_bytes[str(Stage.COLLECT_MASKED)] - report.stage_bytes[str(Stage.COLLECT_MASKED)]
    )
    sent = n - 1 if dropouts else n  # boxes that sent a masked vector
    assert abs(saved - sent * (4 * dim - packed_bytes(dim, bits))) <= 2 * sent


def test_quantised_round_matches_plaintext_fedavg_within_its_step() -> None:
    updates = make_updates(12, 300, seed=8)
    cfg = make_round(updates, headroom_bits=0, bits=field_bits(16, 12))
    report = simulate_round(cfg, payloads(updates))
    assert report.abort is None
    q = Quantizer(cfg.bound, 12, 0, cfg.bits)
    counted = updates
    expected = weighted_fedavg(counted, clip=CLIP, n_cap=N_CAP)
    n_total = sum(min(u.n, N_CAP) for u in counted)
    got = mean_from_total(report.result.total)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * 12 * q.step / n_total * 2)
    assert not np.allclose(got, 0)


def test_masked_vector_of_the_wrong_width_is_refused() -> None:
    masked = MaskedSum(10, bits=12)
    with pytest.raises(ProtocolError, match="bad_body"):
        masked.add("a", b"\x00" * 40)  # a 32-bit vector in a 12-bit round
    masked.add("a", b"\x00" * 15)
    assert masked.nodes == {"a"}


@pytest.mark.parametrize("value_bits", [8, 16])
def test_rotated_quantised_round_is_unbiased_and_close_to_plaintext(value_bits: int) -> None:
    """The aggregator's quantised terms (``field_terms``): rotated updates, own n_k bound."""
    updates = make_updates(10, 400, seed=value_bits)
    terms = field_terms(value_bits, CLIP, N_CAP, 0.0, 400, 10)
    assert terms["rotate"] and terms["bits"] == field_bits(value_bits, 10)
    nodes = tuple(u.node for u in updates)
    cfg = RoundConfig(round_id=1, nonce=os.urandom(16), participants=nodes, dim=401, clip=CLIP,
                      n_cap=N_CAP, **terms)  # fmt: skip
    report = simulate_round(cfg, payloads(updates))
    assert report.abort is None, report.abort
    expected = weighted_fedavg(updates, clip=CLIP, n_cap=N_CAP)
    got = mean_from_total(report.result.total)
    rel = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert 0 < rel < (0.05 if value_bits == 8 else 1e-3), rel
    n_total = sum(min(u.n, N_CAP) for u in updates)
    assert report.result.total[-1] == pytest.approx(n_total, rel=0.02)


def _run_to_share_keys(
    nodes: tuple[str, ...], clients: dict[str, SecAggClient], book: CertBook, round_id: int
) -> tuple[SecAggServer, dict[str, dict]]:
    cfg = RoundConfig(round_id, os.urandom(16), nodes, dim=5, bound=10.0)
    server = SecAggServer(cfg, None, book)
    for n, body in server.start().items():
        clients[n].expect_participants(nodes)
        clients[n].set_input(np.zeros(5))
        server.receive(n, Stage.SETUP, clients[n].handle(round_id, cfg.nonce, Stage.SETUP, body))
    return server, server.advance()


def test_certificates_a_box_holds_travel_as_fingerprints_in_later_rounds() -> None:
    nodes = tuple(f"b{i}" for i in range(5))
    signers = lab_signers(nodes)
    clients = {n: SecAggClient(n, signers[n]) for n in nodes}
    book = CertBook()

    def cert_sizes(bodies: dict[str, dict], to: str) -> set[int]:
        return {len(e[4]) for e in bodies[to][Key.KEYS.value].values()}

    server, bodies = _run_to_share_keys(nodes, clients, book, 1)
    assert cert_sizes(bodies, "b0") == {len(signers["b1"].cert)}  # first meeting: in full
    for n in nodes:
        nonce = server.config.nonce
        server.receive(
            n, Stage.SHARE_KEYS, clients[n].handle(1, nonce, Stage.SHARE_KEYS, bodies[n])
        )
    # next round: every neighbour's certificate is one each box checked and kept
    server, bodies = _run_to_share_keys(nodes, clients, book, 2)
    assert cert_sizes(bodies, "b0") == {auth.FINGERPRINT_BYTES}
    nonce = server.config.nonce
    reply = clients["b0"].handle(2, nonce, Stage.SHARE_KEYS, bodies["b0"])
    assert set(reply[Key.SHARES.value]) == set(nodes) - {"b0"}  # resolved and verified
    # a box that restarted announces a new cache epoch and gets full certificates again
    clients["b1"] = SecAggClient("b1", signers["b1"])
    server, bodies = _run_to_share_keys(nodes, clients, book, 3)
    assert cert_sizes(bodies, "b1") == {len(signers["b0"].cert)}
    assert cert_sizes(bodies, "b2") == {auth.FINGERPRINT_BYTES}
    # a fingerprint of a certificate the box never checked is refused, not trusted
    fresh = SecAggClient("b2", signers["b2"])
    fresh.expect_participants(nodes)
    fresh.set_input(np.zeros(5))
    cfg = server.config
    fresh.handle(3, cfg.nonce, Stage.SETUP, SecAggServer(cfg).start()["b2"])
    with pytest.raises(ProtocolError) as err:
        fresh.handle(3, cfg.nonce, Stage.SHARE_KEYS, bodies["b2"])
    assert err.value.reason == "unknown_certificate"


def test_cert_book_is_bounded_and_forgets_a_box_that_starts_over() -> None:
    book, cert = CertBook(max_entries=1), b"c" * 400
    book.sync("a", b"e" * 8)
    sent: set[bytes] = set()
    assert book.field("a", cert, sent) == cert
    book.confirm("a", sent)
    assert book.field("a", cert, set()) == auth.fingerprint(cert)
    other: set[bytes] = set()
    book.field("a", b"d" * 400, other)
    book.confirm("a", other)  # past max_entries: not recorded, sent in full again
    assert book.field("a", b"d" * 400, set()) == b"d" * 400
    book.sync("a", b"f" * 8)  # a new epoch: the box's cache is empty
    assert book.field("a", cert, set()) == cert
    book.sync("b", b"short")  # a malformed epoch: assume nothing is held
    assert book.field("b", cert, set()) == cert


def test_a_box_whose_certificate_the_aggregator_holds_leaves_it_out_of_setup() -> None:
    nodes = ("a", "b", "c")
    signers = lab_signers(nodes)
    cfg = RoundConfig(1, os.urandom(16), nodes, dim=5, bound=10.0)
    server = SecAggServer(cfg, None, None, {"a": signers["a"].cert})  # a's hello was verified
    bodies = server.start()
    assert bodies["a"][Key.HAVE_CERT.value] is True and Key.HAVE_CERT.value not in bodies["b"]
    clients = {n: SecAggClient(n, signers[n]) for n in nodes}
    replies = {}
    for n in nodes:
        clients[n].expect_participants(nodes)
        replies[n] = clients[n].handle(1, cfg.nonce, Stage.SETUP, bodies[n])
        server.receive(n, Stage.SETUP, replies[n])
    assert Key.CERT.value not in replies["a"] and Key.CERT.value in replies["b"]
    keys = server.advance()
    assert keys["b"][Key.KEYS.value]["a"][4] == signers["a"].cert  # relayed from the hello
    clients["b"].set_input(np.zeros(5))
    clients["b"].handle(1, cfg.nonce, Stage.SHARE_KEYS, keys["b"])  # verifies a's keys with it
