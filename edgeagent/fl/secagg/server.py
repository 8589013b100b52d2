"""Aggregator side of SecAgg+ as a sans-I/O state machine.

Driving it: ``start()`` returns the SETUP body for each participant (with the
round's sealing key: UNMASK replies come back sealed to it, ``fl.seal``). Feed each
verified reply to ``receive(src, stage, body)``; when every expected reply is in
(``pending()`` is empty) or the stage deadline passes, call ``advance()``, which
closes the stage, treats the silent boxes as dropped, and returns the next
stage's bodies keyed by destination. After UNMASK, ``advance()`` unmasks and
returns RESULT bodies; ``result`` then holds the sum. If dropouts exceed what
the thresholds can recover, ``advance()`` returns RESULT bodies saying
``aborted`` and ``abort`` holds the reason; no input is ever revealed.

Between COLLECT_MASKED and UNMASK runs the consistency round (Bonawitz 2017,
round 3): every survivor signs the survivor set, and UNMASK carries those
signatures so each box can check that the set it was shown is the one its
neighbours' share holders saw. With ``verify_peer`` the server checks the
boxes' key and survivor-set signatures itself, so one box with a bad signature
is dropped here instead of making its honest neighbours refuse the round.

Memory is O(dim + n * k): masked vectors are summed on arrival (``MaskedSum``)
and never stored, and several intake workers can each fill a ``MaskedSum`` and
hand it over with ``absorb`` because masked vectors are additive.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import cbor2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeagent.errors import ProtocolError, RoundAborted
from edgeagent.fl import seal
from edgeagent.fl.constants import SHAMIR_CHUNK, Key, Stage
from edgeagent.fl.quantize import Quantizer, add_mod, packed_bytes, sub_mod, unpack, unrotate
from edgeagent.fl.secagg import auth, crypto
from edgeagent.fl.secagg.client import MAX_UNMASK_PLAIN, unmask_context
from edgeagent.fl.secagg.state import RoundConfig, RoundResult

log = logging.getLogger(__name__)

#: How many t-subsets of the received shares to try before declaring a
#: reconstruction failed (a corrupted share makes Shamir return garbage; the
#: commitment check catches it and another subset may avoid the bad share).
MAX_RECONSTRUCTION_TRIES = 8

_SHARE_BLOB = 12 + 2 + crypto.SECRET_BYTES + 16


class MaskedSum:
    """Running sum of masked vectors (uint32, i.e. Z_2^32, which maps onto the round's Z_2^bits);
    mergeable across intake workers.

    Each box sends ``bits`` bits per coordinate (``quantize.pack``); the sum is kept
    in uint32 whatever ``bits`` is, and reduced mod 2^bits only when it is decoded.
    """

    def __init__(self, dim: int, bits: int = 32) -> None:
        self.dim = dim
        self.bits = bits
        self.total = np.zeros(dim, dtype=np.uint32)
        self.nodes: set[str] = set()

    def add(self, node: str, masked: bytes) -> None:
        """Add one box's masked vector (``bits`` bits per coordinate); once per box."""
        if node in self.nodes:
            raise ProtocolError("duplicate_reply", f"{node} already counted")
        size = packed_bytes(self.dim, self.bits)
        if not isinstance(masked, bytes) or len(masked) != size:
            raise ProtocolError("bad_body", f"masked vector must be {size} bytes")
        try:
            add_mod(self.total, unpack(masked, self.bits, self.dim))
        except ValueError as exc:
            raise ProtocolError("bad_body", str(exc)) from exc
        self.nodes.add(node)

    def merge(self, other: MaskedSum) -> None:
        """Fold another worker's partial sum in (disjoint sets of boxes only)."""
        if other.dim != self.dim or other.bits != self.bits or self.nodes & other.nodes:
            raise ProtocolError("bad_partial", "partial sums overlap or differ in dimension")
        add_mod(self.total, other.total)
        self.nodes |= other.nodes


class SecAggServer:
    """One SecAgg+ round on the aggregator."""

    def __init__(
        self,
        config: RoundConfig,
        verify_peer: auth.PeerVerifier | None = None,
        certs: auth.CertBook | None = None,
        box_certs: Mapping[str, bytes] | None = None,
    ) -> None:
        self.config = config
        # certificates the aggregator already holds (verified hellos): those boxes need
        # not send theirs in every SETUP reply
        self._known_certs = dict(box_certs or {})
        self.verify_peer = verify_peer
        # which certificates each box already holds (kept across rounds by the caller):
        # those travel as fingerprints; without a book every certificate goes in full
        self.certs = certs
        self._offered: dict[str, set[bytes]] = {}  # box -> full certificates in flight to it
        self._seal_key, self.enc_pk = seal.round_key()
        self._idents: dict[str, Ed25519PublicKey] = {}
        self._certs: dict[str, bytes] = {}
        self._key_sigs: dict[str, bytes] = {}
        self._survivors: frozenset[str] = frozenset()
        self._digest = b""
        self._ranks: dict[str, dict[str, int]] = {}  # owner -> holder -> Shamir index
        self._used_keys: set[bytes] = set()  # round keys taken at SETUP (no box may reuse one)
        self.quantizer = Quantizer(
            config.bound,
            len(config.participants),
            config.headroom_bits,
            config.bits,
            config.count_bound,
        )
        self.stage: Stage | None = None
        self.rejected: Counter[str] = Counter()
        self.result: RoundResult | None = None
        self.abort: RoundAborted | None = None
        self._expected: set[str] = set()
        self._replies: dict[str, Mapping[str, Any]] = {}
        self.alive: dict[Stage, frozenset[str]] = {}
        self._keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._sent_keys: dict[str, frozenset[str]] = {}
        self._inbox: dict[str, dict[str, bytes]] = {}  # dst -> src -> encrypted share
        self._mask_peers: dict[str, frozenset[str]] = {}
        self._sum = MaskedSum(config.dim, config.bits)
        self._seed_shares: dict[str, list[tuple[int, bytes]]] = {}
        self._key_shares: dict[str, list[tuple[int, bytes]]] = {}
        self._unmask_sent: dict[str, tuple[frozenset[str], frozenset[str]]] = {}

    # -- driving --------------------------------------------------------------------------------

    def start(self) -> dict[str, dict[str, Any]]:
        """Open the round: SETUP body (config + own neighbours) for every participant."""
        if self.stage is not None:
            raise ProtocolError("out_of_order", "round already started")
        c = self.config
        self.stage = Stage.SETUP
        self._expected = set(c.participants)
        quantised: dict[str, Any] = {Key.BITS.value: c.bits} if c.bits != 32 else {}  # absent: 32
        if c.count_bound:
            quantised[Key.COUNT_BOUND.value] = float(c.count_bound)
        if c.rotate:
            quantised[Key.ROTATE.value] = True
        return {
            node: {
                **quantised,
                Key.NEIGHBOURS.value: sorted(c.graph[node]),
                Key.THRESHOLD.value: c.threshold,
                Key.DIM.value: c.dim,
                Key.BOUND.value: float(c.bound),
                Key.MAX_SUMMANDS.value: len(c.participants),
                Key.HEADROOM.value: c.headroom_bits,
                Key.CLIP.value: float(c.clip),
                Key.N_CAP.value: c.n_cap,
                Key.NOISE_STD.value: float(c.noise_std),
                Key.ENC_PK.value: self.enc_pk,
                **({Key.HAVE_CERT.value: True} if node in self._known_certs else {}),
            }
            for node in c.participants
        }

    def pending(self) -> frozenset[str]:
        """Boxes whose reply to the current stage has not arrived yet."""
        done = self._sum.nodes if self.stage is Stage.COLLECT_MASKED else set(self._replies)
        return frozenset(self._expected - done)

    def receive(self, src: str, stage: Stage, body: Mapping[str, Any]) -> None:
        """Take one verified reply; a refusal raises ``ProtocolError`` and changes nothing."""
        try:
            if self.stage is None or self.stage is Stage.RESULT or stage != self.stage:
                raise ProtocolError("wrong_stage", f"{stage} reply while in {self.stage}")
            if src not in self._expected:
                raise ProtocolError("unexpected_sender", f"{src} is not expected in {stage}")
            if src in self._replies:
                raise ProtocolError("duplicate_reply", f"{src} already answered {stage}")
            if stage is Stage.COLLECT_MASKED:
                self._sum.add(src, _field(body, Key.MASKED, bytes))
                return
            checked = {
                Stage.SETUP: self._check_setup,
                Stage.SHARE_KEYS: self._check_shares,
                Stage.CONSISTENCY: self._check_consistency,
                Stage.UNMASK: self._check_unmask,
            }[stage](src, body)
            self._replies[src] = checked
            if self.certs is not None and src in self._offered:
                # the box answered: it checked (and keeps) the certificates it was sent
                self.certs.confirm(src, self._offered.pop(src))
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            # a body that passed the field checks but is still nonsense: refuse, never crash
            self.rejected["bad_body"] += 1
            raise ProtocolError("bad_body", f"{type(exc).__name__}: {exc}") from exc
        except ProtocolError as exc:
            self.rejected[exc.reason] += 1
            log.warning(
                "secagg round %d: refused %s from %s: %s", self.config.round_id, stage, src, exc
            )
            raise

    def absorb(self, partial: MaskedSum) -> None:
        """Merge a partial sum of masked vectors collected by another intake worker."""
        if self.stage is not Stage.COLLECT_MASKED or not partial.nodes <= self._expected:
            raise ProtocolError("bad_partial", "partial sum holds boxes not expected now")
        self._sum.merge(partial)

    def advance(self) -> dict[str, dict[str, Any]]:
        """Close the current stage (silent boxes count as dropped); return next stage's bodies."""
        if self.stage is None or self.stage is Stage.RESULT:
            raise ProtocolError("out_of_order", f"cannot advance from {self.stage}")
        stage = self.stage
        try:
            out = {
                Stage.SETUP: self._close_setup,
                Stage.SHARE_KEYS: self._close_share_keys,
                Stage.COLLECT_MASKED: self._close_collect,
                Stage.CONSISTENCY: self._close_consistency,
                Stage.UNMASK: self._close_unmask,
            }[stage]()
        except RoundAborted as exc:
            self.abort = exc
            log.warning("%s", exc)
            notify = frozenset(self._expected)
            self._finish(Stage.RESULT)
            return {n: {Key.STATUS.value: "aborted", Key.REASON.value: exc.reason} for n in notify}
        return out

    def cancel(self, reason: str) -> dict[str, dict[str, Any]]:
        """Abort the round now, before anything is unmasked; return RESULT bodies saying so.

        For a driver that runs several rounds side by side (grouped robust
        aggregation) and learns that this one's sum will not be used: stopping
        it before UNMASK means the aggregator never sees that sum at all.
        """
        if self.stage is None or self.stage is Stage.RESULT:
            raise ProtocolError("out_of_order", f"cannot cancel from {self.stage}")
        self.abort = RoundAborted(self.config.round_id, str(self.stage), reason)
        notify = frozenset(self._expected)
        self._finish(Stage.RESULT)
        return {n: {Key.STATUS.value: "aborted", Key.REASON.value: reason} for n in notify}

    def dropped(self) -> dict[Stage, tuple[str, ...]]:
        """Boxes that went silent, by the stage whose reply they did not send."""
        before = frozenset(self.config.participants)
        out: dict[Stage, tuple[str, ...]] = {}
        for stage in (
            Stage.SETUP,
            Stage.SHARE_KEYS,
            Stage.COLLECT_MASKED,
            Stage.CONSISTENCY,
            Stage.UNMASK,
        ):
            now = self.alive.get(stage)
            if now is None:
                break
            out[stage] = tuple(sorted(before - now))
            before = now
        return out

    # -- reply checks (raise before mutating) -----------------------------------------------------

    def _check_setup(self, src: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        for key in (Key.PK_ENC, Key.PK_MASK, Key.COMMIT):
            if len(_field(body, key, bytes)) != 32:
                raise ProtocolError("bad_body", f"{key.value} must be 32 bytes")
        sig = _field(body, Key.KEY_SIG, bytes)
        cert = body.get(Key.CERT.value) or self._known_certs.get(src)
        if not isinstance(cert, bytes):
            raise ProtocolError("bad_body", "field 'cert' missing or of the wrong type")
        if len(cert) > auth.MAX_CERT_BYTES:
            raise ProtocolError("bad_body", "certificate too large")
        pk_enc, pk_mask = body[Key.PK_ENC.value], body[Key.PK_MASK.value]
        if pk_enc == pk_mask or pk_enc in self._used_keys or pk_mask in self._used_keys:
            # neighbours refuse repeated keys; refusing the copier here keeps the round alive
            raise ProtocolError("duplicate_key", f"round key of {src} repeats another box's")
        if self.verify_peer is not None:
            ident = self.verify_peer(src, cert)
            statement = auth.keys_statement(
                self.config.round_id, self.config.nonce, src, pk_enc, pk_mask,
                body[Key.COMMIT.value], self.config.graph_seed,
            )  # fmt: skip
            auth.check_signature(ident, sig, statement, f"round keys of {src}")
            self._idents[src] = ident
        self._used_keys |= {pk_enc, pk_mask}
        return {**body, Key.CERT.value: cert}

    def _check_shares(self, src: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        shares = _field(body, Key.SHARES, dict)
        if set(shares) != self._sent_keys[src]:
            raise ProtocolError("bad_body", "shares must go to exactly the neighbours given")
        if not all(isinstance(b, bytes) and len(b) == _SHARE_BLOB for b in shares.values()):
            raise ProtocolError("bad_body", "encrypted share of the wrong size")
        return body

    def _check_consistency(self, src: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        sig = _field(body, Key.SURVIVORS_SIG, bytes)
        ident = self._idents.get(src)
        if ident is not None:
            statement = auth.survivors_statement(
                self.config.round_id, self.config.nonce, src, self._digest
            )
            auth.check_signature(ident, sig, statement, f"survivor set of {src}")
        elif len(sig) != auth.SIGNATURE_BYTES:
            raise ProtocolError("bad_signature", "survivor-set signature of the wrong size")
        return body

    def _expected_index(self, owner: str, holder: str) -> int:
        """The Shamir index ``holder`` got for ``owner``'s secrets (1 + rank among holders)."""
        ranks = self._ranks.get(owner)
        if ranks is None:
            ranks = self._ranks[owner] = {
                h: i + 1 for i, h in enumerate(sorted({owner} | self._sent_keys[owner]))
            }
        return ranks.get(holder, 0)

    def _check_unmask(self, src: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        sealed = _field(body, Key.SEALED, bytes)
        context = unmask_context(self.config.round_id, self.config.nonce, src)
        plain = seal.open_bytes(sealed, self._seal_key, context, MAX_UNMASK_PLAIN)
        try:
            opened = cbor2.loads(plain)
        except Exception as exc:  # cbor2 raises several types, incl. RecursionError
            raise ProtocolError(
                "bad_body", f"sealed shares are not CBOR: {type(exc).__name__}"
            ) from exc
        survivors, dropped = self._unmask_sent[src]
        for key, names, size in (
            (Key.SEED_SHARES, survivors, SHAMIR_CHUNK),
            (Key.KEY_SHARES, dropped, 2 * SHAMIR_CHUNK),
        ):
            got = _field(opened, key, dict)
            if set(got) != names:
                raise ProtocolError("bad_body", f"{key.value} must cover exactly the boxes asked")
            for owner, entry in got.items():
                if (
                    not isinstance(entry, list)
                    or len(entry) != 2
                    or type(entry[0]) is not int
                    or not 1 <= entry[0] <= 255
                    or not isinstance(entry[1], bytes)
                    or len(entry[1]) != size
                ):
                    raise ProtocolError("bad_body", f"{key.value} entry malformed")
                if entry[0] != self._expected_index(owner, src):
                    # a repeated or foreign index would make the Lagrange step fail or lie
                    raise ProtocolError(
                        "bad_share_index", f"{src} sent index {entry[0]} for {owner}"
                    )
        return opened

    # -- stage closing --------------------------------------------------------------------------

    def _holders(self, node: str, among: Iterable[str]) -> int:
        return len(({node} | self.config.graph[node]) & set(among))

    def _prune(self, alive: set[str], stage: Stage) -> frozenset[str]:
        """Drop boxes whose secrets could not be recovered (fewer than t live holders)."""
        t = self.config.threshold
        changed = True
        while changed:
            weak = {n for n in alive if self._holders(n, alive) < t}
            changed = bool(weak)
            alive -= weak
        if len(alive) < self.config.min_survivors:
            raise RoundAborted(
                self.config.round_id,
                str(stage),
                f"too_few_boxes: {len(alive)} < min_survivors {self.config.min_survivors}",
            )
        return frozenset(alive)

    def _finish(self, stage: Stage) -> None:
        self.stage = stage
        self._replies = {}

    def _close_setup(self) -> dict[str, dict[str, Any]]:
        replies = self._replies
        alive = self._prune(set(replies), Stage.SETUP)
        self.alive[Stage.SETUP] = alive
        self._keys = {
            n: (
                replies[n][Key.PK_ENC.value],
                replies[n][Key.PK_MASK.value],
                replies[n][Key.COMMIT.value],
            )
            for n in alive
        }
        self._key_sigs = {n: replies[n][Key.KEY_SIG.value] for n in alive}
        self._certs = {n: replies[n][Key.CERT.value] for n in alive}
        if self.certs is not None:
            for n in alive:
                self.certs.sync(n, replies[n].get(Key.CERT_EPOCH.value))
        self._offered = {}
        out = {}
        for node in alive:
            peers = self.config.graph[node] & alive
            self._sent_keys[node] = frozenset(peers)
            out[node] = {
                Key.KEYS.value: {
                    p: [*self._keys[p], self._key_sigs[p], self._cert_field(node, p)]
                    for p in sorted(peers)
                }
            }
        self._finish(Stage.SHARE_KEYS)
        self._expected = set(alive)
        return out

    def _close_share_keys(self) -> dict[str, dict[str, Any]]:
        alive = self._prune(set(self._replies), Stage.SHARE_KEYS)
        self.alive[Stage.SHARE_KEYS] = alive
        inbox: dict[str, dict[str, bytes]] = {n: {} for n in alive}
        for src in alive:
            for dst, blob in self._replies[src][Key.SHARES.value].items():
                if dst in alive:
                    inbox[dst][src] = blob
        self._mask_peers = {n: frozenset(inbox[n]) for n in alive}
        self._finish(Stage.COLLECT_MASKED)
        self._expected = set(alive)
        return {n: {Key.SHARES.value: inbox[n]} for n in alive}

    def _close_collect(self) -> dict[str, dict[str, Any]]:
        c = self.config
        u2 = frozenset(self._sum.nodes)
        self.alive[Stage.COLLECT_MASKED] = u2
        if len(u2) < c.min_survivors:
            raise RoundAborted(c.round_id, str(Stage.COLLECT_MASKED), f"too_few_boxes: {len(u2)}")
        u1 = self.alive[Stage.SHARE_KEYS]
        for node in u1:
            holders = ({node} | self._mask_peers[node]) & u2
            if len(holders) < c.threshold:
                raise RoundAborted(
                    c.round_id,
                    str(Stage.COLLECT_MASKED),
                    f"below_threshold: {node} has {len(holders)} live holders < t={c.threshold}",
                )
        self._survivors = u2
        self._digest = auth.survivors_digest(u2)
        self._finish(Stage.CONSISTENCY)
        self._expected = set(u2)
        # the boxes know the participant list (announcement): the dropped ones say it all
        dropped = sorted(set(c.participants) - u2)
        return {node: {Key.DROPPED.value: dropped} for node in u2}

    def _close_consistency(self) -> dict[str, dict[str, Any]]:
        c = self.config
        u3 = frozenset(self._replies)
        self.alive[Stage.CONSISTENCY] = u3
        u1, u2 = self.alive[Stage.SHARE_KEYS], self.alive[Stage.COLLECT_MASKED]
        for node in u1:
            holders = ({node} | self._mask_peers[node]) & u3
            if len(holders) < c.threshold:
                raise RoundAborted(
                    c.round_id,
                    str(Stage.CONSISTENCY),
                    f"below_threshold: {node} has {len(holders)} signing holders < t={c.threshold}",
                )
        sigs = {n: self._replies[n][Key.SURVIVORS_SIG.value] for n in u3}
        self._offered = {}
        out = {}
        for node in u3:
            peers = self._mask_peers[node]
            sent = (frozenset((peers | {node}) & u2), frozenset(peers - u2))
            self._unmask_sent[node] = sent
            known = self._sent_keys[node] | {node}  # identities the box already checked
            chosen = self._signers_for(node, peers | {node}, u3, known)
            out[node] = {
                Key.SIGS.value: {
                    s: [sigs[s], b"" if s in known else self._cert_field(node, s)]
                    for s in sorted(chosen)
                }
            }
        self._finish(Stage.UNMASK)
        self._expected = set(u3)
        return out

    def _cert_field(self, dst: str, owner: str) -> bytes:
        """``owner``'s certificate as sent to ``dst``: a fingerprint if ``dst`` holds it."""
        cert = self._certs.get(owner, b"")
        if self.certs is None or not cert:
            return cert
        return self.certs.field(dst, cert, self._offered.setdefault(dst, set()))

    def _signers_for(
        self, node: str, owners: Iterable[str], signed: frozenset[str], known: frozenset[str]
    ) -> set[str]:
        """Enough survivor-set signatures for ``node``: t from the holders of each owner.

        Greedy and small: signatures already chosen count for every owner they
        hold a share of, and boxes whose identity ``node`` already knows come
        first (they need no certificate in the message).
        """
        g, t = self.config.graph, self.config.threshold
        chosen: set[str] = set()
        for owner in sorted(owners):
            cands = (g[owner] | {owner}) & signed
            need = t - len(cands & chosen)
            if need > 0:
                rest = sorted(cands - chosen, key=lambda s: (s not in known, s))
                chosen.update(rest[:need])
        return chosen

    def _close_unmask(self) -> dict[str, dict[str, Any]]:
        c = self.config
        u4 = frozenset(self._replies)
        self.alive[Stage.UNMASK] = u4
        u1, u2 = self.alive[Stage.SHARE_KEYS], self.alive[Stage.COLLECT_MASKED]
        for holder in sorted(u4):
            body = self._replies[holder]
            for owner, (idx, share) in body[Key.SEED_SHARES.value].items():
                self._seed_shares.setdefault(owner, []).append((idx, share))
            for owner, (idx, share) in body[Key.KEY_SHARES.value].items():
                self._key_shares.setdefault(owner, []).append((idx, share))
        total = self._sum.total.copy()
        for node in sorted(u2):
            seed = self._reconstruct(
                node,
                self._seed_shares.get(node, []),
                0,
                1,
                lambda s, n=node: crypto.commit_seed(s, c.nonce, n) == self._keys[n][2],
            )
            sub_mod(total, crypto.self_mask(seed, c.nonce, node, c.dim))
        for gone in sorted(u1 - u2):
            sk = self._reconstruct(
                gone,
                self._key_shares.get(gone, []),
                0,
                2,
                lambda s, n=gone: crypto.public_from_private(s) == self._keys[n][1],
            )
            for peer in sorted(self._mask_peers[gone] & u2):
                m = crypto.pairwise_mask(sk, self._keys[peer][1], c.nonce, c.dim)
                # peer added m if peer < gone, else subtracted it: undo that
                if peer < gone:
                    sub_mod(total, m)
                else:
                    add_mod(total, m)
        plain = self.quantizer.dequantize(total)
        if c.rotate:  # the boxes rotated their updates; the sum of rotations rotates back
            plain[:-1] = unrotate(plain[:-1], c.nonce)
        self.result = RoundResult(
            round_id=c.round_id,
            total=plain,
            survivors=tuple(sorted(u2)),
            dropped=self.dropped(),
        )
        self._finish(Stage.RESULT)
        return {n: {Key.STATUS.value: "ok", Key.REASON.value: ""} for n in u4}

    def _reconstruct(
        self,
        owner: str,
        shares: list[tuple[int, bytes]],
        first: int,
        count: int,
        verify: Callable[[bytes], bool],
    ) -> bytes:
        """Shamir-combine ``shares``; accept the result only if ``verify`` (commitment) holds."""
        c = self.config
        t = c.threshold
        if len(shares) < t:
            raise RoundAborted(
                c.round_id,
                str(Stage.UNMASK),
                f"below_threshold: {len(shares)} shares of {owner} < t={t}",
            )
        for start in range(min(MAX_RECONSTRUCTION_TRIES, len(shares) - t + 1)):
            subset = shares[start : start + t]
            secret = crypto.combine_chunks(subset, first, count)
            if verify(secret):
                return secret
        raise RoundAborted(
            c.round_id, str(Stage.UNMASK), f"reconstruction_failed: commitment mismatch for {owner}"
        )


def _field(body: Any, key: Key, kind: type) -> Any:
    value = body.get(key.value) if isinstance(body, Mapping) else None
    if not isinstance(value, kind):
        raise ProtocolError("bad_body", f"field {key.value!r} missing or of the wrong type")
    return value
