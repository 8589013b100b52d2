"""Box side of SecAgg+ as a sans-I/O state machine: a stage body in, a reply body out.

The driver (the box's FL client, later) verifies envelopes, hands
``(stage, body)`` from the aggregator to ``handle`` and publishes the returned
body. Nothing here touches the network or the clock; a box that should drop
out simply stops calling ``handle``.

Safety checks a box makes on its own behalf (Bonawitz 2017, section 4 and the
active-adversary variant; Bell 2020): the neighbour list must be the public
round graph over the announced participants; the threshold must satisfy
t > (k + 1 + c) / 2 for the c corrupt holders it tolerates; the privacy
settings must meet the box's own floor (``PrivacyFloor``); every neighbour's
round keys must carry that neighbour's identity signature (``auth``) and no two
keys may repeat; it masks only with at least t share holders; it signs the
survivor set it is shown (consistency round) and at UNMASK reveals a share of
a box only when t of that box's share holders signed the same set; it never
reveals both the self-seed share and the mask-key share of the same box; and
the shares it reveals are sealed to the round's aggregator key, so the broker
never reads them.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgeagent.errors import ProtocolError
from edgeagent.fl import seal
from edgeagent.fl.constants import MAX_DEGREE, NONCE_BYTES, SHAMIR_CHUNK, Key, Stage
from edgeagent.fl.privacy import sensitivity
from edgeagent.fl.quantize import Quantizer, add_mod, pack, rotate, sub_mod
from edgeagent.fl.secagg import auth, crypto
from edgeagent.fl.secagg.state import (
    check_stage,
    min_safe_threshold,
    ring_neighbours,
    ring_order,
)

#: Largest payload dimension a box accepts from a SETUP message (memory guard).
MAX_DIM = 50_000_000
#: Bounds on the other integers of a SETUP body (refused, never passed on, beyond these).
MAX_SUMMANDS = 1 << 20
MAX_HEADROOM = 16
MAX_N_CAP = 1 << 24
#: Largest sealed UNMASK plaintext (share maps of up to MAX_DEGREE + 1 boxes).
MAX_UNMASK_PLAIN = 64 * 1024
UNMASK_CONTEXT = b"edgeagent/fl/secagg/unmask/v1\x00"


def unmask_context(round_id: int, nonce: bytes, node: str) -> bytes:
    """HPKE ``info`` binding a sealed UNMASK reply to its round, nonce and box."""
    return UNMASK_CONTEXT + struct.pack("<Q", round_id) + nonce + node.encode()


@dataclass(frozen=True)
class PrivacyFloor:
    """What a box insists on, whatever the aggregator's SETUP says.

    ``max_clip`` and ``max_n_cap`` bound the sensitivity the box accepts;
    ``min_noise_multiplier`` (distributed DP) is the z of the box's own
    configuration: the box refuses a round whose per-box noise std is below
    ``z * sensitivity(clip, n_cap) / sqrt(m)`` for the m boxes of its
    instance (the most lenient split of the total noise over all of them).
    """

    max_clip: float = math.inf
    max_n_cap: int = MAX_N_CAP
    min_noise_multiplier: float = 0.0

    def check(self, clip: float, n_cap: int, noise_std: float, boxes: int) -> None:
        """``ProtocolError('privacy_floor')`` if the announced settings give less privacy."""
        if not 0 < clip <= self.max_clip * (1 + 1e-9):
            raise ProtocolError("privacy_floor", f"clip {clip} above this box's {self.max_clip}")
        if not 1 <= n_cap <= self.max_n_cap:
            raise ProtocolError("privacy_floor", f"n_cap {n_cap} above this box's {self.max_n_cap}")
        need = self.min_noise_multiplier * sensitivity(clip, n_cap) / math.sqrt(max(boxes, 1))
        if noise_std < need * (1 - 1e-9):
            raise ProtocolError(
                "privacy_floor", f"noise std {noise_std:.4g} below this box's floor {need:.4g}"
            )


def _need(body: Mapping[str, Any], key: Key, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key.value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError("bad_body", f"field {key.value!r} missing or of the wrong type")
    return value


def _int(body: Mapping[str, Any], key: Key, lo: int, hi: int) -> int:
    value = _need(body, key, int)
    if not lo <= value <= hi:
        raise ProtocolError("bad_body", f"{key.value} = {value} outside {lo}..{hi}")
    return int(value)


def _num(body: Mapping[str, Any], key: Key) -> float:
    value = _need(body, key, (int, float))
    if isinstance(value, int) and abs(value) > 2**53:
        raise ProtocolError("bad_body", f"{key.value} out of range")
    out = float(value)
    if not math.isfinite(out) or out < 0:
        raise ProtocolError("bad_body", f"{key.value} must be finite and >= 0")
    return out


def _ids(values: list[Any], limit: int) -> list[str]:
    if len(values) > limit or not all(isinstance(v, str) for v in values):
        raise ProtocolError("bad_body", "box ids must be strings (and not too many)")
    return values


class SecAggClient:
    """One box's view of one SecAgg+ round.

    ``set_input`` takes the real-valued payload ``[n_k * clip(delta_k), n_k]``
    (see ``edgeagent.fl.privacy.fedavg_payload``); the box quantises it, adds
    its share of distributed DP noise if the round asks for it, and masks it.
    ``signer`` is the box's identity (``auth.RoundSigner``); without a public
    participant list (``expect_participants``) the box refuses SETUP, since
    it could not check the neighbours it is handed.
    """

    def __init__(
        self,
        node_id: str,
        signer: auth.RoundSigner,
        *,
        floor: PrivacyFloor | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.node_id = node_id
        self.signer = signer
        self.floor = floor or PrivacyFloor()
        self.stage: Stage | None = None
        self._rng = (
            rng
            if rng is not None
            else np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        )
        self._payload: np.ndarray | None = None
        self._participants: tuple[str, ...] | None = None
        self.certs = auth.CertCache()  # neighbours' checked certificates, across rounds
        self._seed_in = b""  # the round seed the driver derived (beacon), b"": the nonce
        self.clamped = 0  # coordinates clamped to the quantiser bound in this round
        self._reset()

    def _reset(self) -> None:
        self.round_id: int | None = None
        self.nonce = b""
        self.neighbours: frozenset[str] = frozenset()
        self.graph: Mapping[str, frozenset[str]] = {}
        self.threshold = 0
        self.dim = 0
        self.quantizer: Quantizer | None = None
        self.rotate = False  # rotate the update coordinates before quantising (Key.ROTATE)
        self.noise_std = 0.0
        self.clip = 0.0  # announced L2 clip norm, for building the payload
        self.n_cap = 0  # announced cap on n_k, for building the payload
        self.enc_pk = b""
        self._send_cert = True  # False when the aggregator holds this box's certificate
        self._sk_enc: X25519PrivateKey | None = None
        self._sk_mask: X25519PrivateKey | None = None
        self._seed = b""
        self._peer_keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._peer_ids: dict[str, Ed25519PublicKey] = {}
        self._held: dict[str, tuple[int, bytes]] = {}  # owner -> (index, 48-byte share)
        self._mask_peers: frozenset[str] = frozenset()
        self._survivors: frozenset[str] | None = None  # the set this box signed
        self._digest = b""

    def expect_participants(self, participants: Iterable[str] | None, seed: bytes = b"") -> None:
        """Check the aggregator's neighbour list against the round's public participant list.

        The list comes from the signed round announcement; with it the box
        recomputes its neighbourhood (``neighbour_graph`` keyed by ``seed``,
        the round's commit-reveal seed, ``beacon``) and refuses a SETUP that
        hands it hand-picked neighbours. Without a seed the graph is keyed by
        the nonce, which the aggregator picks: only in-memory tools do that.
        """
        self._participants = None if participants is None else tuple(participants)
        self._seed_in = bytes(seed)

    @property
    def graph_seed(self) -> bytes:
        """The seed this round's graph and key signatures are keyed by."""
        return self._seed_in or self.nonce

    def set_input(self, payload: np.ndarray) -> None:
        """Set the real-valued payload to submit this round (before COLLECT_MASKED)."""
        p = np.asarray(payload, dtype=np.float64)
        if p.ndim != 1 or not np.all(np.isfinite(p)):
            raise ValueError("payload must be a finite 1-D vector")
        self._payload = p

    def handle(
        self, round_id: int, nonce: bytes, stage: Stage, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Process one aggregator message for this round; return the reply body.

        ``ProtocolError`` means the message was refused; the box's state is
        unchanged by a refused message only for stage-order errors, otherwise
        the box should treat itself as dropped for this round.
        """
        if not isinstance(body, Mapping):
            raise ProtocolError("bad_body", "body must be a map")
        if stage is Stage.SETUP and round_id != self.round_id:
            # a new round starts over, even if this box was cut off mid-round
            self.stage = None
        check_stage(self.stage, stage)
        if stage is not Stage.SETUP and (round_id != self.round_id or nonce != self.nonce):
            raise ProtocolError("out_of_round", f"round {round_id} is not the current round")
        handler = {
            Stage.SETUP: self._setup,
            Stage.SHARE_KEYS: self._share_keys,
            Stage.COLLECT_MASKED: self._collect_masked,
            Stage.CONSISTENCY: self._consistency,
            Stage.UNMASK: self._unmask,
            Stage.RESULT: self._result,
        }[stage]
        if stage is Stage.SETUP:
            if type(round_id) is not int or not 0 <= round_id < 2**63:
                raise ProtocolError("bad_body", "round id out of range")
            self._reset()
            self.round_id, self.nonce = round_id, nonce
        try:
            reply = handler(body)
        except (TypeError, ValueError, OverflowError, KeyError) as exc:
            # a body that passed the field checks but is still nonsense: refuse, never crash
            raise ProtocolError("bad_body", f"{type(exc).__name__}: {exc}") from exc
        self.stage = stage
        return reply

    # -- stages ---------------------------------------------------------------------------------

    def _setup(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise ProtocolError("bad_body", "round nonce has the wrong length")
        if self._participants is None:
            raise ProtocolError("bad_graph", "no public participant list to check neighbours")
        neighbours = _ids(_need(body, Key.NEIGHBOURS, list), MAX_DEGREE)
        if self.node_id in neighbours:
            raise ProtocolError("bad_body", "neighbours must be other boxes' ids")
        if not 1 <= len(set(neighbours)) == len(neighbours) <= MAX_DEGREE:
            raise ProtocolError("bad_body", f"need 1..{MAX_DEGREE} distinct neighbours")
        # the public graph where this box needs it: its own neighbourhood and its
        # neighbours' (whose share holders sign the survivor set at UNMASK)
        order = ring_order(self._participants, self._seed_in or self.nonce)
        where = {n: i for i, n in enumerate(order)}
        if self.node_id not in where:
            raise ProtocolError("bad_graph", "this box is not among the round's participants")
        try:
            mine = ring_neighbours(order, where[self.node_id], len(neighbours))
            graph = {self.node_id: mine}
            for peer in mine:
                graph[peer] = ring_neighbours(order, where[peer], len(neighbours))
        except ValueError as exc:
            raise ProtocolError("bad_graph", str(exc)) from exc
        if mine != frozenset(neighbours):
            raise ProtocolError("bad_graph", "neighbours differ from the public round graph")
        k = len(neighbours)
        t = _int(body, Key.THRESHOLD, 2, k + 1)
        if t < min_safe_threshold(k):
            # below (k+1+c)/2 a lying server plus c colluders collect both shares of a box
            raise ProtocolError(
                "bad_body",
                f"threshold {t} unsafe for {k} neighbours (need >= {min_safe_threshold(k)})",
            )
        dim = _int(body, Key.DIM, 1, MAX_DIM)
        try:
            self.quantizer = Quantizer(
                bound=_num(body, Key.BOUND),
                max_summands=_int(body, Key.MAX_SUMMANDS, 1, MAX_SUMMANDS),
                headroom_bits=_int(body, Key.HEADROOM, 0, MAX_HEADROOM),
                bits=_int(body, Key.BITS, 2, 32) if Key.BITS.value in body else 32,
                count_bound=_num(body, Key.COUNT_BOUND) if Key.COUNT_BOUND.value in body else 0.0,
            )
        except ValueError as exc:
            raise ProtocolError("bad_body", str(exc)) from exc
        rot = body.get(Key.ROTATE.value, False)
        if type(rot) is not bool or (rot and dim < 2):
            raise ProtocolError("bad_body", "rotate must be a boolean (and needs dim >= 2)")
        self.rotate = rot
        noise = _num(body, Key.NOISE_STD)
        clip = _num(body, Key.CLIP)
        n_cap = _int(body, Key.N_CAP, 1, MAX_N_CAP)
        self.floor.check(clip, n_cap, noise, len(self._participants))
        have_cert = body.get(Key.HAVE_CERT.value) is True
        enc_pk = _need(body, Key.ENC_PK, bytes)
        if len(enc_pk) != seal.KEY_BYTES:
            raise ProtocolError("bad_body", "round sealing key must be 32 bytes")
        self.clip, self.n_cap, self.enc_pk = clip, n_cap, enc_pk
        self._send_cert = not have_cert
        self.neighbours = frozenset(neighbours)
        self.graph = graph
        self.threshold, self.dim, self.noise_std = t, dim, noise
        self._sk_enc = X25519PrivateKey.generate()
        self._sk_mask = X25519PrivateKey.generate()
        self._seed = crypto.new_self_seed()
        pk_enc, pk_mask = crypto.raw_public(self._sk_enc), crypto.raw_public(self._sk_mask)
        commit = crypto.commit_seed(self._seed, self.nonce, self.node_id)
        assert self.round_id is not None
        statement = auth.keys_statement(
            self.round_id, self.nonce, self.node_id, pk_enc, pk_mask, commit, self.graph_seed
        )
        return {
            Key.PK_ENC.value: pk_enc,
            Key.PK_MASK.value: pk_mask,
            Key.COMMIT.value: commit,
            Key.KEY_SIG.value: self.signer.key.sign(statement),
            # the aggregator relays the certificate to the neighbours; it may hold it already
            **({Key.CERT.value: self.signer.cert} if self._send_cert else {}),
            Key.CERT_EPOCH.value: self.certs.start_round(),
        }

    def _share_keys(self, body: Mapping[str, Any]) -> dict[str, Any]:
        keys = _need(body, Key.KEYS, dict)
        assert self._sk_enc is not None and self._sk_mask is not None
        assert self.round_id is not None
        peers: dict[str, tuple[bytes, bytes, bytes]] = {}
        ids: dict[str, Ed25519PublicKey] = {}
        seen = {crypto.raw_public(self._sk_enc), crypto.raw_public(self._sk_mask)}
        for node, entry in keys.items():
            if node not in self.neighbours:
                raise ProtocolError("bad_body", f"keys for non-neighbour {node!r}")
            if (
                not isinstance(entry, list)
                or len(entry) != 5
                or not all(isinstance(x, bytes) and len(x) == 32 for x in entry[:3])
            ):
                raise ProtocolError("bad_body", f"keys for {node!r} malformed")
            pk_enc, pk_mask, commit, sig, _ = entry
            cert = self.certs.resolve(node, entry[4])
            if pk_enc in seen or pk_mask in seen or pk_enc == pk_mask:
                # one key under two names is how a substituted key shows itself
                raise ProtocolError("duplicate_key", f"round key of {node!r} repeats another")
            seen |= {pk_enc, pk_mask}
            ident = self.signer.verify_peer(node, cert)
            self.certs.keep(node, cert)
            statement = auth.keys_statement(
                self.round_id, self.nonce, node, pk_enc, pk_mask, commit, self.graph_seed
            )
            auth.check_signature(ident, sig, statement, f"round keys of {node}")
            peers[node] = (pk_enc, pk_mask, commit)
            ids[node] = ident
        holders = sorted({self.node_id, *peers})
        if len(holders) < self.threshold:
            raise ProtocolError("below_threshold", f"{len(holders)} holders < t={self.threshold}")
        secret = crypto.raw_private(self._sk_mask) + self._seed
        shares = crypto.split_secrets(secret, self.threshold, len(holders))
        out: dict[str, bytes] = {}
        for holder, (index, share) in zip(holders, shares, strict=True):
            if holder == self.node_id:
                self._held[self.node_id] = (index, share)
                continue
            key = crypto.share_key(self._sk_enc, peers[holder][0], self.nonce)
            out[holder] = crypto.encrypt_share(key, self.nonce, self.node_id, holder, index, share)
        self._peer_keys = peers
        self._peer_ids = ids
        return {Key.SHARES.value: out}

    def _collect_masked(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if self._payload is None:
            raise ProtocolError("no_input", "set_input() was not called before COLLECT_MASKED")
        if self._payload.shape != (self.dim,):
            raise ProtocolError(
                "no_input", f"payload has {self._payload.size} values, round wants {self.dim}"
            )
        shares = _need(body, Key.SHARES, dict)
        if len(shares) + 1 < self.threshold:
            # masking with fewer than t holders: the self-mask alone would stand between the
            # input and an aggregator that later asks the holders for the self-seed shares
            raise ProtocolError(
                "below_threshold", f"{len(shares) + 1} share holders < t={self.threshold}"
            )
        assert self._sk_enc is not None and self._sk_mask is not None and self.quantizer
        held = {}
        for src, blob in shares.items():
            if src not in self._peer_keys:
                raise ProtocolError("bad_body", f"share from unknown box {src!r}")
            key = crypto.share_key(self._sk_enc, self._peer_keys[src][0], self.nonce)
            held[src] = crypto.decrypt_share(key, self.nonce, src, self.node_id, blob)
        self._held.update(held)
        self._mask_peers = frozenset(shares)
        x = self._payload
        if self.noise_std > 0:
            x = x + self._rng.normal(0.0, self.noise_std, size=x.shape)
        if self.rotate:
            x = np.concatenate([rotate(x[:-1], self.nonce), x[-1:]])
        masked, self.clamped = self.quantizer.quantize(x, self._rng)
        add_mod(masked, crypto.self_mask(self._seed, self.nonce, self.node_id, self.dim))
        for peer in sorted(self._mask_peers):
            m = crypto.pairwise_mask(self._sk_mask, self._peer_keys[peer][1], self.nonce, self.dim)
            if self.node_id < peer:
                add_mod(masked, m)
            else:
                sub_mod(masked, m)
        q = self.quantizer
        return {Key.MASKED.value: pack(q.reduce(masked), q.bits)}

    def _consistency(self, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self._participants is not None and self.round_id is not None
        # the survivor set as the participants (announcement) less the boxes listed as dropped
        dropped = frozenset(_ids(_need(body, Key.DROPPED, list), len(self._participants)))
        if not dropped <= set(self._participants):
            raise ProtocolError("unsafe_unmask", "dropped list names boxes outside this round")
        if self.node_id in dropped:
            raise ProtocolError("unsafe_unmask", "this box sent its input but is listed as dropped")
        survivors = frozenset(self._participants) - dropped
        live = (self._mask_peers | {self.node_id}) & survivors
        if len(live) < self.threshold:
            raise ProtocolError("below_threshold", f"{len(live)} survivors < t={self.threshold}")
        self._survivors = survivors
        self._digest = digest = auth.survivors_digest(survivors)
        statement = auth.survivors_statement(self.round_id, self.nonce, self.node_id, digest)
        return {Key.SURVIVORS_SIG.value: self.signer.key.sign(statement)}

    def _unmask(self, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self._survivors is not None and self.round_id is not None
        sigs = _need(body, Key.SIGS, dict)
        if len(sigs) > len(self._survivors):
            raise ProtocolError("bad_body", "more signatures than survivors")
        digest = self._digest
        signed: set[str] = set()
        for signer, entry in sigs.items():
            if signer not in self._survivors:
                raise ProtocolError("inconsistent", f"signature of {signer!r}, not a survivor")
            if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], bytes):
                raise ProtocolError("bad_body", f"signature entry of {signer!r} malformed")
            if not isinstance(entry[0], bytes) or len(entry[1]) > auth.MAX_CERT_BYTES:
                raise ProtocolError("bad_body", f"certificate of {signer!r} too large")
            ident = self._peer_ids.get(signer)
            if signer == self.node_id:
                ident = self.signer.key.public_key()
            elif ident is None:
                cert = self.certs.resolve(signer, entry[1])
                ident = self.signer.verify_peer(signer, cert)
                self.certs.keep(signer, cert)
            statement = auth.survivors_statement(self.round_id, self.nonce, signer, digest)
            # a signature over another set means this box was shown a different one: refuse
            auth.check_signature(ident, entry[0], statement, f"survivor set of {signer}")
            signed.add(signer)
        survivors = (self._mask_peers | {self.node_id}) & self._survivors
        dropped = self._mask_peers - self._survivors
        for owner in survivors | dropped:
            agree = len(signed & (self.graph.get(owner, frozenset()) | {owner}))
            if agree < self.threshold:
                raise ProtocolError(
                    "inconsistent",
                    f"only {agree} of {owner}'s share holders signed this survivor set "
                    f"(t={self.threshold})",
                )
        seeds = {}
        for node in sorted(survivors):
            index, share = self._held[node]
            seeds[node] = [index, share[2 * SHAMIR_CHUNK :]]
        mask_keys = {}
        for node in sorted(dropped):
            index, share = self._held[node]
            mask_keys[node] = [index, share[: 2 * SHAMIR_CHUNK]]
        plain = cbor2.dumps({Key.SEED_SHARES.value: seeds, Key.KEY_SHARES.value: mask_keys})
        context = unmask_context(self.round_id, self.nonce, self.node_id)
        return {Key.SEALED.value: seal.seal_bytes(plain, self.enc_pk, context)}

    def _result(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._payload = None
        self._sk_enc = self._sk_mask = None
        self._held.clear()
        return {}
