"""Attacks on one box's privacy by a malicious aggregator, run against the real SecAgg+ classes.

Each test plays the attack from the security review and shows where the box
refuses; where the attack needs shares, it also counts what the aggregator
ends up holding and checks it is below the threshold.
"""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgeagent.errors import ProtocolError
from edgeagent.fl import seal
from edgeagent.fl.constants import SHAMIR_CHUNK, Key, Stage
from edgeagent.fl.identity import load_ca, load_identity, verify_identity_cert
from edgeagent.fl.messages import Message, encode
from edgeagent.fl.secagg import auth, crypto
from edgeagent.fl.secagg.auth import RoundSigner
from edgeagent.fl.secagg.client import unmask_context
from edgeagent.ops.pki import Pki
from tests.attacks.secagg_rig import rig

# -- 1. too few shares at COLLECT_MASKED ------------------------------------------------------


def test_box_refuses_to_mask_with_fewer_than_t_share_holders() -> None:
    r = rig(6)
    r.run_to(Stage.COLLECT_MASKED)
    victim = "box000"
    t = r.config.threshold
    # The attack: no shares at all, so the box would mask with its self-mask alone and its
    # neighbours, seeing it survive, would hand over its self-seed shares at UNMASK.
    with pytest.raises(ProtocolError) as err:
        r.handle(victim, Stage.COLLECT_MASKED, {Key.SHARES.value: {}})
    assert err.value.reason == "below_threshold"
    # One holder short of t (the box itself counts as one): refused too.
    shares = r.out[victim][Key.SHARES.value]
    short = dict(list(sorted(shares.items()))[: t - 2])
    with pytest.raises(ProtocolError, match="below_threshold"):
        r.handle(victim, Stage.COLLECT_MASKED, {Key.SHARES.value: short})
    # With exactly t holders the box masks (the check is not a blanket refusal).
    enough = dict(list(sorted(shares.items()))[: t - 1])
    reply = r.handle(victim, Stage.COLLECT_MASKED, {Key.SHARES.value: enough})
    assert len(reply[Key.MASKED.value]) == 4 * r.config.dim


# -- 2. neighbour keys substituted by the aggregator --------------------------------------------


@pytest.fixture(scope="module")
def fleet_signers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, dict[str, RoundSigner]]:
    """Real fleet identities: Ed25519 certificates from a fleet CA, checked by name."""
    pki = Pki.init(tmp_path_factory.mktemp("attack-pki"), fleet="attack")
    nodes = [f"box{i:03d}" for i in range(5)]
    for n in nodes:
        pki.issue(n)
    pki.issue_aggregator()
    ca = load_ca(pki.ca_cert)

    def verify(node: str, cert: bytes):  # what FlClient does (minus its cache)
        return verify_identity_cert(cert, ca, node)

    signers = {}
    for n in nodes:
        ident = load_identity(pki.client_files(n).cert, ca, n)
        signers[n] = RoundSigner(ident.key, ident.cert_der, verify)
    return pki, signers


def _agg_identity(pki: Pki):
    return load_identity(pki.client_files("aggregator").cert, load_ca(pki.ca_cert), "aggregator")


def test_substituted_neighbour_keys_are_refused(fleet_signers, tmp_path: Path) -> None:
    pki, signers = fleet_signers
    r = rig(5, signers=signers)
    r.run_to(Stage.SHARE_KEYS)
    victim, neighbour = "box000", "box001"
    honest = r.out[victim][Key.KEYS.value]
    evil_enc, evil_mask = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    mine = [crypto.raw_public(evil_enc), crypto.raw_public(evil_mask)]

    def tampered(entry: list) -> dict:
        keys = dict(honest)
        keys[neighbour] = entry
        return {Key.KEYS.value: keys}

    # (a) the aggregator's own keys under the neighbour's signature
    with pytest.raises(ProtocolError, match="bad_signature"):
        r.handle(victim, Stage.SHARE_KEYS, tampered([*mine, *honest[neighbour][2:]]))
    # (b) ... signed with the aggregator's identity and certificate: not the neighbour's
    agg = _agg_identity(pki)
    c = honest[neighbour][2]
    sig = agg.key.sign(auth.keys_statement(1, r.config.nonce, neighbour, mine[0], mine[1], c))
    with pytest.raises(ProtocolError, match="wrong_identity"):
        r.handle(victim, Stage.SHARE_KEYS, tampered([*mine, c, sig, agg.cert_der]))
    # (c) a certificate from another CA with the neighbour's name
    other = Pki.init(tmp_path / "other", fleet="attack")
    other.issue(neighbour)
    fake = load_identity(other.client_files(neighbour).cert, load_ca(other.ca_cert), neighbour)
    sig = fake.key.sign(auth.keys_statement(1, r.config.nonce, neighbour, mine[0], mine[1], c))
    with pytest.raises(ProtocolError, match="foreign_ca"):
        r.handle(victim, Stage.SHARE_KEYS, tampered([*mine, c, sig, fake.cert_der]))
    # (d) one neighbour's genuine keys repeated under another name
    dup = dict(honest)
    dup["box002"] = honest[neighbour]
    with pytest.raises(ProtocolError, match="duplicate_key"):
        r.handle(victim, Stage.SHARE_KEYS, {Key.KEYS.value: dup})
    # (e) the neighbour's genuine keys from another round (its signature binds round + nonce)
    old = rig(5, signers=signers)
    old.run_to(Stage.SHARE_KEYS)
    with pytest.raises(ProtocolError, match="bad_signature"):
        r.handle(victim, Stage.SHARE_KEYS, tampered(old.out[victim][Key.KEYS.value][neighbour]))
    # the genuine keys still go through: the box encrypts a share to each real neighbour
    reply = r.handle(victim, Stage.SHARE_KEYS, {Key.KEYS.value: honest})
    assert set(reply[Key.SHARES.value]) == set(honest)


def test_server_refuses_a_box_that_copies_anothers_keys() -> None:
    r = rig(4)
    replies = {n: r.handle(n, Stage.SETUP, b) for n, b in r.out.items()}
    r.server.receive("box000", Stage.SETUP, replies["box000"])
    copied = dict(replies["box001"])
    copied[Key.PK_ENC.value] = replies["box000"][Key.PK_ENC.value]
    with pytest.raises(ProtocolError, match="duplicate_key"):
        r.server.receive("box001", Stage.SETUP, copied)


# -- 3. lying about who dropped; threshold ---------------------------------------------------


def test_threshold_just_over_half_is_refused_by_the_box() -> None:
    # 5 boxes, k = 4: t = 3 is "just over half" of 5 holders; with one colluding
    # holder a lying aggregator gets 3 seed shares and 3 key shares of a survivor.
    r = rig(5, threshold=3)
    with pytest.raises(ProtocolError, match="unsafe"):
        r.handle("box000", Stage.SETUP, r.out["box000"])
    ok = rig(5)
    assert ok.config.threshold == 4  # t > (k + 1 + c) / 2 with c = 1
    ok.handle("box000", Stage.SETUP, ok.out["box000"])


def test_split_view_of_the_survivor_set_yields_neither_secret() -> None:
    """The aggregator tells half the holders "victim survived", the other half "dropped"."""
    r = rig(5)
    r.run_to(Stage.CONSISTENCY)
    cfg, t = r.config, r.config.threshold
    victim, colluder = "box000", "box004"
    every = sorted(cfg.participants)
    without = [n for n in every if n != victim]
    told = {victim: every, "box001": every, "box002": without, "box003": without}
    sigs: dict[str, dict[str, list]] = {"with": {}, "without": {}}
    for node, shown in told.items():
        dropped = sorted(set(every) - set(shown))
        reply = r.handle(node, Stage.CONSISTENCY, {Key.DROPPED.value: dropped})
        view = "with" if shown == every else "without"
        sigs[view][node] = [reply[Key.SURVIVORS_SIG.value], r.clients[node].signer.cert]
    # the colluding box signs both sets
    for view, shown in (("with", every), ("without", without)):
        st = auth.survivors_statement(1, cfg.nonce, colluder, auth.survivors_digest(shown))
        sigs[view][colluder] = [
            r.clients[colluder].signer.key.sign(st),
            r.clients[colluder].signer.cert,
        ]
    seed_shares, key_shares = 1, 1  # the colluder's own share of each secret
    for node, shown in told.items():
        view = "with" if shown == every else "without"
        try:
            reply = r.handle(node, Stage.UNMASK, {Key.SIGS.value: sigs[view]})
        except ProtocolError as exc:
            assert exc.reason == "inconsistent"
            continue
        ctx = unmask_context(1, cfg.nonce, node)
        opened = cbor2.loads(
            seal.open_bytes(reply[Key.SEALED.value], r.server._seal_key, ctx, 1 << 20)
        )
        seed_shares += victim in opened[Key.SEED_SHARES.value]
        key_shares += victim in opened[Key.KEY_SHARES.value]
    # 3 signatures per view (2 honest + the colluder) < t = 4: every honest box refused
    assert seed_shares < t and key_shares < t
    assert seed_shares == 1 and key_shares == 1


def test_signature_over_another_survivor_set_is_refused() -> None:
    r = rig(5)
    r.run_to(Stage.CONSISTENCY)
    r.run_stage()  # everybody signs the true set; the server builds UNMASK bodies
    body = r.out["box000"]
    forged = dict(body[Key.SIGS.value])
    other = auth.survivors_digest(["box001", "box002", "box003", "box004"])
    st = auth.survivors_statement(1, r.config.nonce, "box001", other)
    forged["box001"] = [r.clients["box001"].signer.key.sign(st), forged["box001"][1]]
    with pytest.raises(ProtocolError, match="bad_signature"):
        r.handle("box000", Stage.UNMASK, {Key.SIGS.value: forged})
    # too few signatures at all: refused as inconsistent, nothing revealed
    few = dict(list(body[Key.SIGS.value].items())[:2])
    with pytest.raises(ProtocolError, match="inconsistent"):
        r.handle("box000", Stage.UNMASK, {Key.SIGS.value: few})


# -- 5. shares readable at the broker --------------------------------------------------------


def test_unmask_shares_are_sealed_to_the_round_key() -> None:
    r = rig(5)
    r.run_to(Stage.UNMASK)
    agg_id = Ed25519PrivateKey.generate()
    for node, body in r.out.items():
        reply = r.handle(node, Stage.UNMASK, body)
        assert set(reply) == {Key.SEALED.value}
        # what the broker stores and forwards: the signed envelope bytes
        env = encode(Message(node, "aggregator", 1, Stage.UNMASK, 9, r.config.nonce, reply), agg_id)
        for _owner, (_, share) in r.clients[node]._held.items():
            assert share[2 * SHAMIR_CHUNK :] not in env and share[: 2 * SHAMIR_CHUNK] not in env
        # bound to round, nonce and sender: it does not open as another box's reply
        with pytest.raises(ProtocolError, match="undecryptable"):
            seal.open_bytes(
                reply[Key.SEALED.value],
                r.server._seal_key,
                unmask_context(1, r.config.nonce, "box004" if node != "box004" else "box003"),
                1 << 20,
            )
        r.server.receive(node, Stage.UNMASK, reply)
    r.server.advance()
    assert r.server.result is not None  # and the aggregator still unmasks the sum
    total = sum(r.inputs.values())
    assert abs(r.server.result.total[-1] - total[-1]) < 1.0
