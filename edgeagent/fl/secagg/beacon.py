"""Round randomness the aggregator cannot bias: commit-reveal over the boxes' contributions (pure).

Why: the seed of a round decides the SecAgg+ neighbour graph and the robust
groups. If the aggregator chose it, it could try seeds until a victim sits
with colluders (8 tries put a victim alone with 2 of 20 % colluding boxes in a
group of 3; about 150,000 surround it with t colluding share holders). So the
seed comes from every participant:

1. ``COMMIT``: each announced participant draws 16 random bytes ``r_i`` and
   sends ``c_i = SHA-256(context, round, nonce, box id, r_i)`` in an envelope
   signed with its identity key.
2. ``REVEAL``: when COMMIT closes, the aggregator fixes the committed set
   ``C`` (the announced participants that committed, as a bitmap over the
   announcement's order) and sends each box ``C`` and ``D``, the digest of
   their commitments, in an envelope it signs. Only then does a box reveal
   ``r_i``, and only if it is in ``C``.
3. ``SETUP`` carries every ``r_j`` of ``C`` (announcement order). The box
   recomputes each ``c_j`` from ``r_j``, checks that they hash to the ``D`` it
   was shown and that its own ``r_i`` is there, and takes ``seed =
   SHA-256(context, nonce, D, r_j for j in C)``. Groups and the graph are
   over ``C`` and derive from the seed (``robust.partition_groups``,
   ``state.neighbour_graph``), and the seed is bound into every box's signed
   round keys (``auth.keys_statement``), so neighbours holding another seed
   refuse each other.

Why this leaves the aggregator one try per visible abort: ``C`` and every
commitment in it are fixed (``D``, signed to the box) before any box reveals,
and SHA-256 binds each commitment to one ``r_j``. So when the aggregator
learns the last honest ``r_i``, every input of the seed is already fixed: it
cannot choose another subset (a missing reveal aborts the round, never
redraws with fewer boxes), nor another contribution for a colluder (it would
not match its commitment), nor another list (a box shown another ``D`` mixes
its own ``r_i`` into a seed nobody could predict either). Its only choice
after seeing the seed is to continue or to abort, and an abort after the
reveal is visible to every box that revealed. Each box counts such aborts
(``AbortLog``) and refuses further rounds past a configured limit, so each
grinding try costs one abort the whole fleet sees, and a box's exposure is
capped at ``limit`` discarded draws per window.

What stays the aggregator's choice is *who* takes part: the announced list,
and which of its boxes count as committed. Both are fixed before any
contribution is revealed, so they are blind to the seed; they are the
participant-selection question the box's own floors bound (minimum group
size, threshold), not grinding.

Aborts before the reveal (a box that never commits) give the aggregator
nothing: no honest contribution was disclosed, so no seed is known.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from edgeagent.errors import ProtocolError, RoundAborted
from edgeagent.fl.constants import Key, Stage

COMMIT_CONTEXT = b"edgeagent/fl/secagg/beacon-commit/v1\x00"
DIGEST_CONTEXT = b"edgeagent/fl/secagg/beacon-digest/v1\x00"
SEED_CONTEXT = b"edgeagent/fl/secagg/beacon-seed/v1\x00"
#: Bytes of one box's contribution (128 bits: unguessable, and no box can grind its own).
REVEAL_BYTES = 16
COMMIT_BYTES = 32


def commitment(round_id: int, nonce: bytes, node: str, reveal: bytes) -> bytes:
    """``c = SHA-256(context, round, nonce, box id, r)``: binds ``r`` to this round and box."""
    raw = node.encode()
    return hashlib.sha256(
        COMMIT_CONTEXT
        + struct.pack("<QI", round_id, len(nonce))
        + nonce
        + struct.pack("<I", len(raw))
        + raw
        + reveal
    ).digest()


def commitments_digest(round_id: int, nonce: bytes, commits: Sequence[bytes]) -> bytes:
    """``D``: SHA-256 over the commitments in announcement order (the set the seed uses)."""
    h = hashlib.sha256(DIGEST_CONTEXT + struct.pack("<QI", round_id, len(commits)) + nonce)
    for c in commits:
        h.update(c)
    return h.digest()


def derive_seed(nonce: bytes, digest: bytes, reveals: Sequence[bytes]) -> bytes:
    """The round seed: every contribution, in announcement order, under the digest and nonce."""
    h = hashlib.sha256(SEED_CONTEXT + nonce + digest + struct.pack("<I", len(reveals)))
    for r in reveals:
        h.update(r)
    return h.digest()


def encode_set(participants: Sequence[str], members: frozenset[str] | set[str]) -> bytes:
    """Bitmap over the announcement's order: bit i set if ``participants[i]`` is a member."""
    bits = bytearray(math.ceil(len(participants) / 8))
    for i, n in enumerate(participants):
        if n in members:
            bits[i // 8] |= 1 << (i % 8)
    return bytes(bits)


def decode_set(participants: Sequence[str], bits: object) -> tuple[str, ...]:
    """The members a bitmap names, in announcement order; ``bad_body`` if it is malformed."""
    if not isinstance(bits, bytes) or len(bits) != math.ceil(len(participants) / 8):
        raise ProtocolError("bad_body", "committed set must be one bit per announced box")
    members = tuple(n for i, n in enumerate(participants) if bits[i // 8] >> (i % 8) & 1)
    if any(bits[i // 8] >> (i % 8) & 1 for i in range(len(participants), 8 * len(bits))):
        raise ProtocolError("bad_body", "committed set names boxes beyond the announcement")
    return members


def _bytes_field(body: Any, key: Key, size: int) -> bytes:
    value = body.get(key.value) if isinstance(body, Mapping) else None
    if not isinstance(value, bytes) or len(value) != size:
        raise ProtocolError("bad_body", f"field {key.value!r} must be {size} bytes")
    return value


class BeaconBox:
    """One box's part: commit, reveal once the set is fixed, check every reveal at SETUP.

    The driver (``federation.client``, ``edgelab.fleetsim``) calls ``commit`` on
    the COMMIT request, ``reveal`` on the REVEAL request and ``seed`` on SETUP;
    ``revealed`` says whether this box has disclosed its contribution (an abort
    after that counts against the aggregator, ``AbortLog``).
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self.round_id = -1
        self.nonce = b""
        self.participants: tuple[str, ...] = ()
        self.committed: tuple[str, ...] = ()  # C: the set the seed is drawn over
        self._r = b""
        self._commit = b""
        self._digest = b""
        self.revealed = False

    def commit(self, round_id: int, nonce: bytes, participants: Sequence[str]) -> dict[str, Any]:
        """A fresh contribution for this round; the reply body carries only its commitment.

        ``participants`` is the signed announcement's list: the seed is over
        exactly these boxes, in this order.
        """
        if self.node not in participants:
            raise ProtocolError("unexpected_sender", "this box is not a participant")
        self.round_id, self.nonce, self.participants = round_id, nonce, tuple(participants)
        self._r = os.urandom(REVEAL_BYTES)
        self._commit = commitment(round_id, nonce, self.node, self._r)
        self._digest = b""
        self.committed = ()
        self.revealed = False
        return {Key.BEACON_COMMIT.value: self._commit}

    def reveal(self, round_id: int, nonce: bytes, body: Mapping[str, Any]) -> dict[str, Any]:
        """Reveal ``r`` now that the aggregator has signed the digest of all commitments."""
        if not self._commit or (round_id, nonce) != (self.round_id, self.nonce):
            raise ProtocolError("out_of_order", "REVEAL before this box committed in this round")
        if self._digest:
            raise ProtocolError("out_of_order", "a second REVEAL request in one round")
        digest = _bytes_field(body, Key.BEACON_DIGEST, COMMIT_BYTES)
        committed = decode_set(self.participants, body.get(Key.BEACON_SET.value))
        if self.node not in committed or len(committed) < 2:
            raise ProtocolError("bad_reveal", "committed set leaves this box out or is too small")
        self._digest, self.committed = digest, committed
        self.revealed = True
        return {Key.BEACON_REVEAL.value: self._r}

    def seed(self, round_id: int, nonce: bytes, body: Mapping[str, Any]) -> bytes:
        """Check every contribution in a SETUP body against the digest; return the round seed.

        Refused (``bad_reveal``) if the list is not one contribution per
        box of the committed set, if this box's own contribution is not its own,
        or if the recomputed commitments do not hash to the digest this box
        was shown before it revealed.
        """
        if not self._digest or (round_id, nonce) != (self.round_id, self.nonce):
            raise ProtocolError("out_of_order", "SETUP before this box revealed in this round")
        blob = body.get(Key.BEACON_REVEALS.value) if isinstance(body, Mapping) else None
        if not isinstance(blob, bytes) or len(blob) != REVEAL_BYTES * len(self.committed):
            raise ProtocolError("bad_reveal", "need one contribution per committed box")
        reveals = [blob[i : i + REVEAL_BYTES] for i in range(0, len(blob), REVEAL_BYTES)]
        if reveals[self.committed.index(self.node)] != self._r:
            raise ProtocolError("bad_reveal", "this box's own contribution was replaced")
        commits = [
            commitment(round_id, nonce, n, r) for n, r in zip(self.committed, reveals, strict=True)
        ]
        if commitments_digest(round_id, nonce, commits) != self._digest:
            raise ProtocolError("bad_reveal", "contributions do not match the committed digest")
        return derive_seed(nonce, self._digest, reveals)


class BeaconServer:
    """The aggregator's part: commitments, then the committed set, contributions, the seed.

    Sans-I/O like ``SecAggServer``: ``start`` gives the COMMIT requests,
    ``receive`` takes verified replies, ``advance`` closes the open stage.
    Boxes silent at COMMIT are left out of the committed set (before anything
    is revealed, that choice is blind). A committed box silent at REVEAL
    aborts the round (``RoundAborted``): drawing the seed from a subset would
    be a choice made after seeing the others' contributions.
    """

    def __init__(
        self, round_id: int, nonce: bytes, participants: Sequence[str], min_boxes: int = 2
    ) -> None:
        self.round_id, self.nonce = round_id, nonce
        self.participants = tuple(participants)
        self.min_boxes = max(2, min_boxes)
        self.stage: Stage | None = None
        self.commits: dict[str, bytes] = {}
        self.reveals: dict[str, bytes] = {}
        self.committed: tuple[str, ...] = ()
        self.digest = b""
        self.seed = b""

    def start(self) -> dict[str, dict[str, Any]]:
        """COMMIT requests (empty bodies): every participant draws and commits."""
        if self.stage is not None:
            raise ProtocolError("out_of_order", "beacon already started")
        self.stage = Stage.COMMIT
        return {n: {} for n in self.participants}

    def pending(self) -> frozenset[str]:
        if self.stage is Stage.COMMIT:
            return frozenset(n for n in self.participants if n not in self.commits)
        if self.stage is Stage.REVEAL:
            return frozenset(n for n in self.committed if n not in self.reveals)
        return frozenset()

    def receive(self, src: str, stage: Stage, body: Mapping[str, Any]) -> None:
        """Take one verified reply; refusals raise ``ProtocolError`` and change nothing."""
        if stage is not self.stage or stage not in (Stage.COMMIT, Stage.REVEAL):
            raise ProtocolError("wrong_stage", f"{stage} reply while in {self.stage}")
        if stage is Stage.COMMIT:
            if src not in self.participants:
                raise ProtocolError("unexpected_sender", f"{src} is not a participant")
            if src in self.commits:
                raise ProtocolError("duplicate_reply", f"{src} already committed")
            self.commits[src] = _bytes_field(body, Key.BEACON_COMMIT, COMMIT_BYTES)
            return
        if src not in self.committed:
            raise ProtocolError("unexpected_sender", f"{src} did not commit in time")
        if src in self.reveals:
            raise ProtocolError("duplicate_reply", f"{src} already revealed")
        r = _bytes_field(body, Key.BEACON_REVEAL, REVEAL_BYTES)
        if commitment(self.round_id, self.nonce, src, r) != self.commits[src]:
            raise ProtocolError("bad_reveal", f"contribution of {src} does not match its commit")
        self.reveals[src] = r

    def advance(self) -> dict[str, dict[str, Any]]:
        """Close COMMIT (-> REVEAL requests to the committed set) or REVEAL (-> ``seed``).

        Raises ``RoundAborted`` if fewer than ``min_boxes`` committed, or if
        any committed box did not reveal: the round ends there, before
        anything depends on the seed.
        """
        if self.stage is Stage.COMMIT:
            self.committed = tuple(n for n in self.participants if n in self.commits)
            if len(self.committed) < self.min_boxes:
                raise RoundAborted(
                    self.round_id,
                    str(Stage.COMMIT),
                    f"too_few_boxes: {len(self.committed)} committed < {self.min_boxes}",
                )
            self.digest = commitments_digest(
                self.round_id, self.nonce, [self.commits[n] for n in self.committed]
            )
            self.stage = Stage.REVEAL
            body = {
                Key.BEACON_DIGEST.value: self.digest,
                Key.BEACON_SET.value: encode_set(self.participants, set(self.committed)),
            }
            return {n: body for n in self.committed}
        if self.stage is Stage.REVEAL:
            missing = self.pending()
            if missing:
                raise RoundAborted(
                    self.round_id, str(Stage.REVEAL), f"missing_reveal: {len(missing)} silent"
                )
            ordered = [self.reveals[n] for n in self.committed]
            self.seed = derive_seed(self.nonce, self.digest, ordered)
            self.stage = Stage.SETUP
            return {}
        raise ProtocolError("out_of_order", f"cannot advance the beacon from {self.stage}")

    def reveals_field(self) -> dict[str, bytes]:
        """What every SETUP body carries so each box can check the seed itself.

        One byte string (the contributions concatenated, committed-set order):
        at 1,000 boxes it is encoded once per body, not as 1,000 CBOR items.
        """
        return {Key.BEACON_REVEALS.value: b"".join(self.reveals[n] for n in self.committed)}


class AbortLog:
    """A box's count of rounds that ended without a result after it revealed.

    Each such round is a seed the aggregator saw and could have thrown away.
    Once ``limit`` of them fall within ``window_s`` the box refuses to join
    (``grinding_limit``) until the oldest leaves the window: a grinding
    aggregator gets at most ``limit`` discarded draws of this box's
    neighbourhood per window (plus the one it keeps), each one visible.
    """

    def __init__(self, limit: int = 3, window_s: float = 86_400.0, times: Sequence[float] = ()):
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit, self.window_s = limit, window_s
        self.times = [float(t) for t in times][-limit:]

    def record(self, now: float) -> None:
        self.times.append(now)
        del self.times[: -self.limit]

    def recent(self, now: float) -> int:
        return sum(1 for t in self.times if now - t < self.window_s)

    def check(self, now: float) -> None:
        """``ProtocolError('grinding_limit')`` when the box should sit rounds out."""
        if self.recent(now) >= self.limit:
            raise ProtocolError(
                "grinding_limit",
                f"{self.recent(now)} rounds aborted after this box revealed, "
                f"within {self.window_s:.0f} s (limit {self.limit})",
            )
