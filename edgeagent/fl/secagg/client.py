"""Box side of SecAgg+ as a sans-I/O state machine: a stage body in, a reply body out.

The driver (the box's FL client, later) verifies envelopes, hands
``(stage, body)`` from the aggregator to ``handle`` and publishes the returned
body. Nothing here touches the network or the clock; a box that should drop
out simply stops calling ``handle``.

Safety checks a box makes on its own behalf (Bonawitz 2017, section 4):
the neighbour list it is given must be consistent with the configuration; it
only accepts keys and shares from its neighbours; at UNMASK it refuses unless
at least ``t`` of its share holders survived, and it never reveals both the
self-seed share and the mask-key share of the same box.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgeagent.errors import ProtocolError
from edgeagent.fl.constants import MAX_DEGREE, NONCE_BYTES, SHAMIR_CHUNK, Key, Stage
from edgeagent.fl.quantize import Quantizer, add_mod, sub_mod
from edgeagent.fl.secagg import crypto
from edgeagent.fl.secagg.state import check_stage, neighbour_graph

#: Largest payload dimension a box accepts from a SETUP message (memory guard).
MAX_DIM = 50_000_000


def _need(body: Mapping[str, Any], key: Key, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key.value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError("bad_body", f"field {key.value!r} missing or of the wrong type")
    return value


def _ids(values: list[Any]) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise ProtocolError("bad_body", "box ids must be strings")
    return values


class SecAggClient:
    """One box's view of one SecAgg+ round.

    ``set_input`` takes the real-valued payload ``[n_k * clip(delta_k), n_k]``
    (see ``edgeagent.fl.privacy.fedavg_payload``); the box quantises it, adds
    its share of distributed DP noise if the round asks for it, and masks it.
    """

    def __init__(self, node_id: str, *, rng: np.random.Generator | None = None) -> None:
        self.node_id = node_id
        self.stage: Stage | None = None
        self._rng = (
            rng
            if rng is not None
            else np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        )
        self._payload: np.ndarray | None = None
        self._participants: tuple[str, ...] | None = None
        self.clamped = 0  # coordinates clamped to the quantiser bound in this round
        self._reset()

    def _reset(self) -> None:
        self.round_id: int | None = None
        self.nonce = b""
        self.neighbours: frozenset[str] = frozenset()
        self.threshold = 0
        self.dim = 0
        self.quantizer: Quantizer | None = None
        self.noise_std = 0.0
        self.clip = 0.0  # announced L2 clip norm, for building the payload
        self.n_cap = 0  # announced cap on n_k, for building the payload
        self._sk_enc: X25519PrivateKey | None = None
        self._sk_mask: X25519PrivateKey | None = None
        self._seed = b""
        self._peer_keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._held: dict[str, tuple[int, bytes]] = {}  # owner -> (index, 48-byte share)
        self._mask_peers: frozenset[str] = frozenset()

    def expect_participants(self, participants: Iterable[str] | None) -> None:
        """Check the aggregator's neighbour list against the round's public participant list.

        The list comes from the signed round announcement; with it the box
        recomputes its neighbourhood (``neighbour_graph`` over the round nonce)
        and refuses a SETUP that hands it hand-picked neighbours.
        """
        self._participants = None if participants is None else tuple(participants)

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
            Stage.UNMASK: self._unmask,
            Stage.RESULT: self._result,
        }[stage]
        if stage is Stage.SETUP:
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
        if len(self.nonce) != NONCE_BYTES:
            raise ProtocolError("bad_body", "round nonce has the wrong length")
        neighbours = _need(body, Key.NEIGHBOURS, list)
        if not all(isinstance(n, str) for n in neighbours) or self.node_id in neighbours:
            raise ProtocolError("bad_body", "neighbours must be other boxes' ids")
        if not 1 <= len(set(neighbours)) == len(neighbours) <= MAX_DEGREE:
            raise ProtocolError("bad_body", f"need 1..{MAX_DEGREE} distinct neighbours")
        if self._participants is not None:
            try:
                graph = neighbour_graph(self._participants, len(neighbours), self.nonce)
            except ValueError as exc:
                raise ProtocolError("bad_graph", str(exc)) from exc
            if graph.get(self.node_id) != frozenset(neighbours):
                raise ProtocolError("bad_graph", "neighbours differ from the public round graph")
        t = _need(body, Key.THRESHOLD, int)
        if not 2 <= t <= len(neighbours) + 1 or 2 * t <= len(neighbours) + 1:
            # t <= (k+1)/2 would let a lying server collect both shares of a box
            raise ProtocolError(
                "bad_body", f"threshold {t} unsafe for {len(neighbours)} neighbours"
            )
        dim = _need(body, Key.DIM, int)
        if not 1 <= dim <= MAX_DIM:
            raise ProtocolError("bad_body", f"dimension {dim} out of range")
        try:
            self.quantizer = Quantizer(
                bound=float(_need(body, Key.BOUND, (int, float))),
                max_summands=_need(body, Key.MAX_SUMMANDS, int),
                headroom_bits=_need(body, Key.HEADROOM, int),
            )
        except ValueError as exc:
            raise ProtocolError("bad_body", str(exc)) from exc
        noise = float(_need(body, Key.NOISE_STD, (int, float)))
        self.clip = float(_need(body, Key.CLIP, (int, float)))
        self.n_cap = _need(body, Key.N_CAP, int)
        if not np.isfinite(noise) or noise < 0:
            raise ProtocolError("bad_body", "noise_std must be finite and >= 0")
        self.neighbours = frozenset(neighbours)
        self.threshold, self.dim, self.noise_std = t, dim, noise
        self._sk_enc = X25519PrivateKey.generate()
        self._sk_mask = X25519PrivateKey.generate()
        self._seed = crypto.new_self_seed()
        return {
            Key.PK_ENC.value: crypto.raw_public(self._sk_enc),
            Key.PK_MASK.value: crypto.raw_public(self._sk_mask),
            Key.COMMIT.value: crypto.commit_seed(self._seed, self.nonce, self.node_id),
        }

    def _share_keys(self, body: Mapping[str, Any]) -> dict[str, Any]:
        keys = _need(body, Key.KEYS, dict)
        peers: dict[str, tuple[bytes, bytes, bytes]] = {}
        for node, entry in keys.items():
            if node not in self.neighbours:
                raise ProtocolError("bad_body", f"keys for non-neighbour {node!r}")
            if (
                not isinstance(entry, list)
                or len(entry) != 3
                or not all(isinstance(x, bytes) and len(x) == 32 for x in entry)
            ):
                raise ProtocolError("bad_body", f"keys for {node!r} malformed")
            peers[node] = (entry[0], entry[1], entry[2])
        holders = sorted({self.node_id, *peers})
        if len(holders) < self.threshold:
            raise ProtocolError("below_threshold", f"{len(holders)} holders < t={self.threshold}")
        assert self._sk_enc is not None and self._sk_mask is not None
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
        return {Key.SHARES.value: out}

    def _collect_masked(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if self._payload is None:
            raise ProtocolError("no_input", "set_input() was not called before COLLECT_MASKED")
        if self._payload.shape != (self.dim,):
            raise ProtocolError(
                "no_input", f"payload has {self._payload.size} values, round wants {self.dim}"
            )
        shares = _need(body, Key.SHARES, dict)
        assert self._sk_enc is not None and self._sk_mask is not None and self.quantizer
        for src, blob in shares.items():
            if src not in self._peer_keys:
                raise ProtocolError("bad_body", f"share from unknown box {src!r}")
            key = crypto.share_key(self._sk_enc, self._peer_keys[src][0], self.nonce)
            self._held[src] = crypto.decrypt_share(key, self.nonce, src, self.node_id, blob)
        self._mask_peers = frozenset(shares)
        x = self._payload
        if self.noise_std > 0:
            x = x + self._rng.normal(0.0, self.noise_std, size=x.shape)
        masked, self.clamped = self.quantizer.quantize(x, self._rng)
        add_mod(masked, crypto.self_mask(self._seed, self.nonce, self.node_id, self.dim))
        for peer in sorted(self._mask_peers):
            m = crypto.pairwise_mask(self._sk_mask, self._peer_keys[peer][1], self.nonce, self.dim)
            if self.node_id < peer:
                add_mod(masked, m)
            else:
                sub_mod(masked, m)
        return {Key.MASKED.value: masked.astype("<u4").tobytes()}

    def _unmask(self, body: Mapping[str, Any]) -> dict[str, Any]:
        survivors = set(_ids(_need(body, Key.SURVIVORS, list)))
        dropped = set(_ids(_need(body, Key.DROPPED, list)))
        if survivors & dropped:
            raise ProtocolError("unsafe_unmask", "a box cannot be both survivor and dropped")
        if self.node_id not in survivors:
            raise ProtocolError("unsafe_unmask", "this box sent its input but is not a survivor")
        known = self._mask_peers | {self.node_id}
        if not (survivors | dropped) <= known:
            raise ProtocolError("unsafe_unmask", "unmask request names boxes outside this round")
        if len(survivors) < self.threshold:
            raise ProtocolError(
                "below_threshold", f"{len(survivors)} survivors < t={self.threshold}"
            )
        seeds = {}
        for node in sorted(survivors):
            index, share = self._held[node]
            seeds[node] = [index, share[2 * SHAMIR_CHUNK :]]
        mask_keys = {}
        for node in sorted(dropped):
            index, share = self._held[node]
            mask_keys[node] = [index, share[: 2 * SHAMIR_CHUNK]]
        return {Key.SEED_SHARES.value: seeds, Key.KEY_SHARES.value: mask_keys}

    def _result(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._payload = None
        self._sk_enc = self._sk_mask = None
        self._held.clear()
        return {}
