"""Signed, versioned CBOR envelopes for the federated round, and the receiver that checks them.

Every federated message travels as ``CBOR{v, p, sig}`` where ``p`` is the CBOR
encoding of the header and body (``src, dst, round, stage, seq, nonce, body``)
and ``sig`` is an Ed25519 signature over ``SIGNATURE_CONTEXT + SHA-256(p)``
made with the sender's identity key. Signing the encoded bytes (not a
re-encoding of the decoded map) means the receiver verifies exactly what was
sent, with no canonicalisation ambiguity. Signing their SHA-256 rather than the
bytes themselves (as ``model.signing`` does for models) means a 40 kB masked
vector is hashed once per check instead of twice: Ed25519 runs SHA-512 over
its whole message (~80 us for 40 kB on the reference machine) and the
replay cache needs a digest anyway (SHA-256, ~30 us with the CPU's SHA
extensions), so the digest now serves both; checking one 40 kB envelope went
from ~360 to ~270 us there (the Ed25519 arithmetic itself, ~180 us, stays).
Security rests on SHA-256's collision resistance (128-bit), as the model
signatures' already does.

``EnvelopeReceiver`` is sans-I/O: bytes in, a ``Message`` (or a refusal) out.
It checks, in this order so that cheap checks shield expensive ones: size,
outer schema, version, inner schema, sender known, signature, destination,
round and nonce (freshness), then per-sender sequence numbers (uniqueness).
A byte-identical redelivery (MQTT QoS 1 may deliver twice) is reported as a
duplicate so the caller can acknowledge it without processing it again; a
different message reusing an old sequence number is a replay and refused.
Each refusal is logged with its reason and counted in ``counters``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeagent.errors import ProtocolError
from edgeagent.fl.constants import (
    BROADCAST,
    ENVELOPE_VERSION,
    MAX_ENVELOPE_BYTES,
    MAX_ROUND_ID,
    NONCE_BYTES,
    PLAINTEXT_STAGES,
    SIGNATURE_CONTEXT,
    STAGE_ORDER,
    Key,
    Stage,
)

log = logging.getLogger(__name__)

#: Reasons a message can be refused; counters are keyed by these strings.
REJECT_REASONS: tuple[str, ...] = (
    "oversized",
    "malformed",
    "unknown_sender",
    "bad_signature",
    "bad_version",
    "wrong_destination",
    "out_of_round",
    "stale_nonce",
    "replay",
)

_MAX_ID_LEN = 128


@dataclass(frozen=True, slots=True)
class Message:
    """A verified (or about-to-be-signed) federated message.

    ``body`` is a plain CBOR-able map; its schema belongs to the stage and is
    checked by the secure-aggregation state machines, not here.
    """

    src: str
    dst: str
    round: int
    stage: Stage
    seq: int
    nonce: bytes
    body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_header(self.src, self.dst, self.round, self.stage, self.seq, self.nonce)
        if not isinstance(self.body, Mapping):
            raise ProtocolError("malformed", "body must be a map")


@dataclass(frozen=True, slots=True)
class Received:
    """What the receiver made of one delivery."""

    message: Message
    duplicate: bool  # byte-identical redelivery: acknowledge, do not process again
    digest: bytes  # SHA-256 of the signed payload, for logs and idempotency keys


def _check_header(src: Any, dst: Any, rnd: Any, stage: Any, seq: Any, nonce: Any) -> None:
    """Raise ``ProtocolError('malformed')`` unless header fields have the documented types."""
    for name, value in (("src", src), ("dst", dst)):
        if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID_LEN:
            raise ProtocolError("malformed", f"{name} must be a non-empty string <= 128 chars")
    if type(rnd) is not int or not 0 <= rnd <= MAX_ROUND_ID:
        raise ProtocolError("malformed", "round must be a non-negative 63-bit integer")
    if type(seq) is not int or not 0 <= seq < 2**63:
        raise ProtocolError("malformed", "seq must be a non-negative 63-bit integer")
    if stage not in STAGE_ORDER and stage not in PLAINTEXT_STAGES:
        raise ProtocolError("malformed", f"unknown stage {stage!r}")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ProtocolError("malformed", f"nonce must be {NONCE_BYTES} bytes")


def signed_bytes(payload: bytes) -> bytes:
    """What an envelope's Ed25519 signature covers: context + SHA-256 of the payload."""
    return SIGNATURE_CONTEXT + hashlib.sha256(payload).digest()


def encode(message: Message, key: Ed25519PrivateKey) -> bytes:
    """Sign ``message`` with the sender's identity key and return the envelope bytes."""
    payload = cbor2.dumps(
        {
            Key.SRC.value: message.src,
            Key.DST.value: message.dst,
            Key.ROUND.value: message.round,
            Key.STAGE.value: str(message.stage),
            Key.SEQ.value: message.seq,
            Key.NONCE.value: message.nonce,
            Key.BODY.value: dict(message.body),
        },
        canonical=True,
    )
    sig = key.sign(signed_bytes(payload))
    data = cbor2.dumps(
        {Key.VERSION.value: ENVELOPE_VERSION, Key.PAYLOAD.value: payload, Key.SIGNATURE.value: sig}
    )
    if len(data) > MAX_ENVELOPE_BYTES:
        raise ProtocolError("oversized", f"{len(data)} bytes > {MAX_ENVELOPE_BYTES}")
    return data


def _loads(data: bytes) -> Any:
    """Decode CBOR, turning every decoder failure into a ``malformed`` refusal."""
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types, incl. RecursionError
        raise ProtocolError("malformed", f"not CBOR: {type(exc).__name__}") from exc


def decode_unverified(data: bytes) -> Message:
    """Parse an envelope WITHOUT checking its signature (tools and tests only)."""
    outer = _loads(data)
    if not isinstance(outer, dict) or not isinstance(outer.get(Key.PAYLOAD.value), bytes):
        raise ProtocolError("malformed", "envelope must be a map with a byte payload")
    return _message_from_payload(outer[Key.PAYLOAD.value])


def _message_from_payload(payload: bytes) -> Message:
    inner = _loads(payload)
    if not isinstance(inner, dict):
        raise ProtocolError("malformed", "payload must be a map")
    expected = {k.value for k in (Key.SRC, Key.DST, Key.ROUND, Key.STAGE, Key.SEQ, Key.NONCE)}
    expected.add(Key.BODY.value)
    if set(inner) != expected:
        raise ProtocolError("malformed", f"payload keys {sorted(map(str, inner))}")
    body = inner[Key.BODY.value]
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise ProtocolError("malformed", "body must be a map with string keys")
    stage = inner[Key.STAGE.value]
    _check_header(
        inner[Key.SRC.value],
        inner[Key.DST.value],
        inner[Key.ROUND.value],
        stage,
        inner[Key.SEQ.value],
        inner[Key.NONCE.value],
    )
    return Message(
        src=inner[Key.SRC.value],
        dst=inner[Key.DST.value],
        round=inner[Key.ROUND.value],
        stage=Stage(stage),
        seq=inner[Key.SEQ.value],
        nonce=inner[Key.NONCE.value],
        body=body,
    )


class EnvelopeReceiver:
    """Validates incoming envelopes for one participant (a box or the aggregator).

    ``keys`` maps a sender id to its Ed25519 public key; the caller fills it
    from the PKI (the key is bound to the box identity in its certificate), so
    a box can only speak as itself. Call ``begin_round`` when a round starts:
    anything carrying another round id or nonce is refused as out of round.
    """

    def __init__(
        self,
        me: str,
        keys: Mapping[str, Ed25519PublicKey],
        *,
        max_bytes: int = MAX_ENVELOPE_BYTES,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.me = me
        self.keys = dict(keys)
        self.max_bytes = max_bytes
        self.counters: Counter[str] = Counter()
        self.round: int | None = None
        self.nonce: bytes | None = None
        self._last_seq: dict[str, int] = {}
        self._seen: dict[tuple[str, int], bytes] = {}

    def begin_round(self, round_id: int, nonce: bytes) -> None:
        """Accept messages of this round only; forget the previous round's sequence numbers."""
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        self.round = round_id
        self.nonce = nonce
        self._last_seq.clear()
        self._seen.clear()

    def _refuse(self, reason: str, detail: str, src: str = "?") -> ProtocolError:
        self.counters[reason] += 1
        log.warning("refused federated message from %s: %s (%s)", src, reason, detail)
        return ProtocolError(reason, detail)

    def receive(self, data: bytes) -> Received:
        """Verify one delivery; raise ``ProtocolError`` (reason counted and logged) if refused."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise self._refuse("malformed", "envelope must be bytes")
        data = bytes(data)
        if len(data) > self.max_bytes:
            raise self._refuse("oversized", f"{len(data)} bytes > {self.max_bytes}")
        try:
            outer = _loads(data)
        except ProtocolError as exc:
            raise self._refuse("malformed", exc.detail) from exc
        if (
            not isinstance(outer, dict)
            or set(outer) != {Key.VERSION.value, Key.PAYLOAD.value, Key.SIGNATURE.value}
            or not isinstance(outer[Key.PAYLOAD.value], bytes)
            or not isinstance(outer[Key.SIGNATURE.value], bytes)
        ):
            raise self._refuse("malformed", "envelope must be {v, p: bytes, sig: bytes}")
        if outer[Key.VERSION.value] != ENVELOPE_VERSION:
            raise self._refuse("bad_version", f"version {outer[Key.VERSION.value]!r}")
        payload: bytes = outer[Key.PAYLOAD.value]
        try:
            msg = _message_from_payload(payload)
        except ProtocolError as exc:
            raise self._refuse("malformed", exc.detail) from exc
        key = self.keys.get(msg.src)
        if key is None:
            raise self._refuse("unknown_sender", f"no identity key for {msg.src!r}", msg.src)
        digest = hashlib.sha256(payload).digest()
        try:
            key.verify(outer[Key.SIGNATURE.value], SIGNATURE_CONTEXT + digest)
        except InvalidSignature as exc:
            raise self._refuse("bad_signature", "Ed25519 verification failed", msg.src) from exc
        if msg.dst not in (self.me, BROADCAST):
            raise self._refuse("wrong_destination", f"addressed to {msg.dst!r}", msg.src)
        if self.round is None or msg.round != self.round:
            raise self._refuse("out_of_round", f"round {msg.round}, now {self.round}", msg.src)
        if msg.nonce != self.nonce:
            raise self._refuse("stale_nonce", "nonce is not this round's", msg.src)
        seen = self._seen.get((msg.src, msg.seq))
        if seen is not None:
            if seen == digest:
                self.counters["duplicate"] += 1
                return Received(msg, duplicate=True, digest=digest)
            raise self._refuse("replay", f"seq {msg.seq} reused with other content", msg.src)
        last = self._last_seq.get(msg.src, -1)
        if msg.seq <= last:
            raise self._refuse("replay", f"seq {msg.seq} <= last {last}", msg.src)
        self._last_seq[msg.src] = msg.seq
        self._seen[(msg.src, msg.seq)] = digest
        self.counters["accepted"] += 1
        return Received(msg, duplicate=False, digest=digest)


class Sequencer:
    """Hands out increasing sequence numbers for one sender, so replays are detectable."""

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def next(self) -> int:
        """Return the next sequence number."""
        value = self._next
        self._next += 1
        return value
