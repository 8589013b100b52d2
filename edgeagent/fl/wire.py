"""Round plumbing around SecAgg+: hello, announcement and global-model payloads (pure).

The SecAgg+ stages travel in ``messages`` envelopes. Three more things cross
the broker, and this module encodes and checks them without I/O:

* **hello** (``node/<id>/hello``, retained, box -> aggregator): the box's
  identity certificate and a signature over ``(id, t, cert)`` with that key.
  Proof of possession: the aggregator admits a box to rounds only after the
  certificate verifies against the fleet CA, names the topic's box, and the
  hello is signed by it.
* **announcement** (``round/<r>/announce``, retained): an ordinary envelope
  (stage ``setup``, destination ``*``, sequence 0) whose body lists the
  participants, the global model hash, the per-stage deadline and the privacy
  settings, plus the aggregator's identity certificate. A box derives the
  round's neighbour graph from it and checks its own SETUP against it. In a
  grouped (robust) round it also carries ``group_size``; each box then derives
  the groups itself (``robust.partition_groups`` over the round nonce) and
  checks its SETUP against its own group's graph. A plaintext round
  (``[aggregator] secure_aggregation = false``) carries ``secagg: false`` and
  the ``clip`` and ``n_cap`` the box applies to its update, and ``enc_pk``, the
  round's X25519 key the box seals that update to (``fl.seal``, HPKE); the box
  sends it in one signed UPDATE envelope instead of the SecAgg+ stages (only if
  its own ``[federation] allow_plaintext`` says so). ``groups`` names the
  round's parameter mask (``model.meta.PARAM_GROUPS``): every box sends only
  those coordinates of its update, so updates keep one length across boxes,
  and since the mask is inside the signed body, nobody on the way can change it.
* **model publication** (``model/current``, retained): the ONNX bytes, their
  SHA-256, the Ed25519 signature over the hash (``model.signing``) and the
  signer's certificate; boxes check all three before the model lifecycle sees it.
* **parameter publication** (``model/params``, retained): the same release
  (version, round, hash, both signatures, certificate) carrying the model's
  float32 parameter vector (4 bytes per parameter) and the hash of its *frame*
  (``graph.frame_sha256``) instead of the file. A box whose current model has
  that frame rebuilds the file (``graph.rebuild``) and takes it only if the
  rebuilt bytes hash to the signed SHA-256; a box without such a model
  subscribes to ``model/current`` for the whole file (docs/wire-protocol.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import cbor2
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeagent.errors import ProtocolError

#: Domain separation for hello signatures (never valid as an envelope or model signature).
HELLO_CONTEXT = b"edgeagent/fl/hello/v1\x00"
WIRE_VERSION = 1
#: A hello or model publication larger than this is refused before parsing.
MAX_HELLO_BYTES = 16 * 1024
#: Below the shipped broker's max_packet_size (8 MiB), which no publication may exceed.
MAX_MODEL_BYTES = 8 * 1024 * 1024 - 64 * 1024
#: A box's retained status (``node/<id>/status``, JSON) larger or deeper than this is refused.
#: The daemon's periodic status is a few kB (about 1 kB a device) and 6 levels deep; the
#: bounds keep parsing cheap and far from ``RecursionError`` (about 1,000 levels).
MAX_STATUS_BYTES = 64 * 1024
MAX_STATUS_DEPTH = 16
#: Hello timestamps are seconds since the epoch; anything past this is not one.
MAX_HELLO_TIME = 2.0**40
#: Bounds on an announced parameter mask: a few group names, each short.
MAX_MASK_GROUPS = 16
MAX_GROUP_NAME = 32


class AKey(StrEnum):
    """Keys of the announcement body, hello and model publication maps."""

    PARTICIPANTS = "participants"
    MODEL = "model"
    STAGE_TIMEOUT = "stage_timeout_s"
    CERT = "cert"
    ID = "id"
    TIME = "t"
    VERSION = "v"
    PAYLOAD = "p"
    SIG = "sig"
    ROUND = "round"
    MODEL_VERSION = "version"
    SHA256 = "sha256"
    ONNX = "onnx"
    EVAL = "eval"
    GROUP_SIZE = "group_size"
    SECAGG = "secagg"
    CLIP = "clip"
    N_CAP = "n_cap"
    ENC_PK = "enc_pk"
    GROUPS = "groups"
    RELEASE_SIG = "rsig"
    FRAME = "frame"
    PARAMS = "params"


def _loads(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types
        raise ProtocolError("malformed", f"{what} is not CBOR: {type(exc).__name__}") from exc


# -- hello -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A box's verified-later self-introduction."""

    node: str
    t: float
    cert_der: bytes
    payload: bytes
    sig: bytes

    def verify(self, key: Ed25519PublicKey) -> None:
        """Raise ``ProtocolError('bad_signature')`` unless ``key`` signed this hello."""
        try:
            key.verify(self.sig, HELLO_CONTEXT + self.payload)
        except InvalidSignature as exc:
            raise ProtocolError("bad_signature", f"hello of {self.node} not signed by it") from exc


def encode_hello(node: str, t: float, cert_der: bytes, key: Ed25519PrivateKey) -> bytes:
    """The retained hello a box publishes when it connects."""
    payload = cbor2.dumps(
        {AKey.ID.value: node, AKey.TIME.value: float(t), AKey.CERT.value: cert_der}, canonical=True
    )
    sig = key.sign(HELLO_CONTEXT + payload)
    return cbor2.dumps(
        {AKey.VERSION.value: WIRE_VERSION, AKey.PAYLOAD.value: payload, AKey.SIG.value: sig}
    )


def decode_hello(data: bytes) -> Hello:
    """Parse a hello (signature checked later, once the certificate is trusted)."""
    if len(data) > MAX_HELLO_BYTES:
        raise ProtocolError("oversized", f"hello of {len(data)} bytes")
    outer = _loads(data, "hello")
    if (
        not isinstance(outer, dict)
        or outer.get(AKey.VERSION.value) != WIRE_VERSION
        or not isinstance(outer.get(AKey.PAYLOAD.value), bytes)
        or not isinstance(outer.get(AKey.SIG.value), bytes)
    ):
        raise ProtocolError("malformed", "hello must be {v: 1, p: bytes, sig: bytes}")
    inner = _loads(outer[AKey.PAYLOAD.value], "hello payload")
    if (
        not isinstance(inner, dict)
        or not isinstance(inner.get(AKey.ID.value), str)
        or not isinstance(inner.get(AKey.TIME.value), float | int)
        or isinstance(inner.get(AKey.TIME.value), bool)
        or not isinstance(inner.get(AKey.CERT.value), bytes)
    ):
        raise ProtocolError("malformed", "hello payload must be {id, t, cert}")
    t = inner[AKey.TIME.value]
    # a huge integer would overflow float(); an unsigned retained hello must never crash
    if not (-MAX_HELLO_TIME <= t <= MAX_HELLO_TIME) or not math.isfinite(t):
        raise ProtocolError("malformed", "hello time out of range")
    return Hello(
        inner[AKey.ID.value],
        float(t),
        inner[AKey.CERT.value],
        outer[AKey.PAYLOAD.value],
        outer[AKey.SIG.value],
    )


# -- status ------------------------------------------------------------------------------------


def parse_status(payload: bytes) -> str:
    """The ``state`` of a box's retained status JSON (``offline`` for an empty payload).

    Unsigned and retained, so it is read with bounds before ``json.loads``: a
    deeply nested document would raise ``RecursionError`` on every restart.
    """
    if not payload:
        return "offline"
    if len(payload) > MAX_STATUS_BYTES:
        raise ProtocolError("oversized", f"status of {len(payload)} bytes")
    depth = deepest = 0
    for ch in payload:
        if ch in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in b"]}":
            depth -= 1
    if deepest > MAX_STATUS_DEPTH:
        raise ProtocolError("malformed", f"status nested {deepest} deep")
    try:
        doc = json.loads(payload.decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("malformed", f"status is not JSON: {type(exc).__name__}") from exc
    state = doc.get("state") if isinstance(doc, dict) else None
    if not isinstance(state, str) or len(state) > 32:
        raise ProtocolError("malformed", "status must be a JSON object with a string state")
    return state


# -- announcement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Announcement:
    """What a box needs to know about a round before its SETUP arrives."""

    participants: tuple[str, ...]
    model_sha256: str
    stage_timeout_s: float
    cert_der: bytes
    #: Grouped secure aggregation: 0 = one SecAgg+ instance over all participants;
    #: g >= 2 = ``robust.partition_groups(participants, g, nonce)``, one instance per group.
    group_size: int = 0
    #: False = plaintext round: one UPDATE envelope per box, no masking (boxes may refuse).
    secure_aggregation: bool = True
    #: Plaintext rounds only (SecAgg+ sends them in SETUP): L2 clip and cap on ``n_k``.
    clip: float = 0.0
    n_cap: int = 0
    #: Plaintext rounds only: the round's X25519 public key (raw) updates are sealed to.
    enc_pk: bytes = b""
    #: The round's parameter mask as group names (``model.meta.PARAM_GROUPS``), sorted:
    #: every box sends only those coordinates, so all updates have one length.
    #: Empty = the whole parameter vector (an announcement without the key).
    groups: tuple[str, ...] = ()


def announcement_body(a: Announcement) -> dict[str, Any]:
    body: dict[str, Any] = {
        AKey.PARTICIPANTS.value: list(a.participants),
        AKey.MODEL.value: a.model_sha256,
        AKey.STAGE_TIMEOUT.value: float(a.stage_timeout_s),
        AKey.CERT.value: a.cert_der,
    }
    if a.group_size:  # absent for plain rounds: the body stays what older boxes know
        body[AKey.GROUP_SIZE.value] = int(a.group_size)
    if a.groups:
        body[AKey.GROUPS.value] = sorted(a.groups)
    if not a.secure_aggregation:  # absent = secure: a box that predates the key never sends
        body[AKey.SECAGG.value] = False  # a plaintext update, it waits for a SETUP instead
        body[AKey.CLIP.value] = float(a.clip)
        body[AKey.N_CAP.value] = int(a.n_cap)
        body[AKey.ENC_PK.value] = a.enc_pk
    return body


def parse_announcement(body: Mapping[str, Any]) -> Announcement:
    """Check an announcement body's schema; ``ProtocolError('bad_body')`` otherwise."""
    parts = body.get(AKey.PARTICIPANTS.value)
    model = body.get(AKey.MODEL.value)
    timeout = body.get(AKey.STAGE_TIMEOUT.value)
    cert = body.get(AKey.CERT.value)
    group_size = body.get(AKey.GROUP_SIZE.value, 0)
    if (
        type(group_size) is not int
        or group_size == 1
        or group_size < 0
        or (group_size and isinstance(parts, list) and group_size > len(parts))
    ):
        raise ProtocolError("bad_body", f"announced group_size {group_size!r} is not usable")
    if (
        not isinstance(parts, list)
        or not all(isinstance(p, str) for p in parts)
        or len(set(parts)) != len(parts)
        or not isinstance(model, str)
        or not isinstance(timeout, float | int)
        or not isinstance(cert, bytes)
    ):
        raise ProtocolError(
            "bad_body", "announcement must carry participants, model, timeout, cert"
        )
    secure = body.get(AKey.SECAGG.value, True)
    clip = body.get(AKey.CLIP.value, 0.0)
    n_cap = body.get(AKey.N_CAP.value, 0)
    enc_pk = body.get(AKey.ENC_PK.value, b"")
    if secure is not True and (
        secure is not False
        or group_size
        or not isinstance(clip, float | int)
        or isinstance(clip, bool)
        or not 0 < clip < float("inf")
        or type(n_cap) is not int
        or n_cap < 1
        or not isinstance(enc_pk, bytes)
        or len(enc_pk) != 32
    ):
        # without enc_pk a box would have to send its update readable by the broker
        raise ProtocolError(
            "bad_body",
            "a plaintext announcement needs secagg: false, clip > 0, n_cap >= 1, a 32-byte "
            "enc_pk and no group_size",
        )
    return Announcement(
        tuple(parts),
        model,
        float(timeout),
        cert,
        group_size,
        secure,
        float(clip),
        n_cap,
        enc_pk if secure is False else b"",
        _parse_groups(body.get(AKey.GROUPS.value)),
    )


def _parse_groups(groups: Any) -> tuple[str, ...]:
    """The announced mask's group names; their meaning is the box's to check (layout)."""
    if groups is None:
        return ()
    if (
        not isinstance(groups, list)
        or not 0 < len(groups) <= MAX_MASK_GROUPS
        or not all(isinstance(g, str) and 0 < len(g) <= MAX_GROUP_NAME for g in groups)
        or len(set(groups)) != len(groups)
    ):
        raise ProtocolError("bad_body", "announced groups must be distinct short names")
    return tuple(sorted(groups))


# -- model publication -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPublication:
    """A signed global model as published retained on ``model/current``."""

    round_id: int
    version: int
    sha256: str
    signature: bytes
    cert_der: bytes
    onnx: bytes
    eval: dict[str, Any] = field(default_factory=dict)
    #: ``model.signing.sign_release`` over fleet, version, round and hash.
    release_sig: bytes = b""


def encode_model(pub: ModelPublication) -> bytes:
    return _encode_publication(pub, {AKey.ONNX: pub.onnx})


#: Fields every model publication carries (the file on ``model/current``, the vector on
#: ``model/params``): what the release signature covers, and who signed it, as
#: (wire key, type, attribute of ``ModelPublication`` / ``ParamsPublication``).
_RELEASE_FIELDS: tuple[tuple[AKey, type, str], ...] = (
    (AKey.ROUND, int, "round_id"),
    (AKey.MODEL_VERSION, int, "version"),
    (AKey.SHA256, str, "sha256"),
    (AKey.SIG, bytes, "signature"),
    (AKey.CERT, bytes, "cert_der"),
    (AKey.EVAL, dict, "eval"),
    (AKey.RELEASE_SIG, bytes, "release_sig"),
)


def _encode_publication(pub: ModelPublication | ParamsPublication, extra: dict[AKey, Any]) -> bytes:
    body: dict[str, Any] = {AKey.VERSION.value: WIRE_VERSION}
    body.update({k.value: getattr(pub, attr) for k, _, attr in _RELEASE_FIELDS})
    body[AKey.EVAL.value] = dict(pub.eval)
    body.update({k.value: v for k, v in extra.items()})
    return cbor2.dumps(body)


def _release_args(d: dict[str, Any]) -> dict[str, Any]:
    """The release fields of a checked publication map, by attribute name."""
    return {attr: d[k.value] for k, _, attr in _RELEASE_FIELDS}


def _publication(data: bytes, what: str, extra: dict[AKey, type]) -> dict[str, Any]:
    """A v1 publication map with the release fields and ``extra``, each of its type
    (no bools for ints) and the round and version in range; anything else ``malformed``."""
    if len(data) > MAX_MODEL_BYTES:
        raise ProtocolError("oversized", f"{what} of {len(data)} bytes")
    d = _loads(data, what)
    if not isinstance(d, dict) or d.get(AKey.VERSION.value) != WIRE_VERSION:
        raise ProtocolError("malformed", f"{what} must be a v1 map")
    for k, kind in [*((k, kind) for k, kind, _ in _RELEASE_FIELDS), *extra.items()]:
        if not isinstance(d.get(k.value), kind) or isinstance(d.get(k.value), bool):
            raise ProtocolError("malformed", f"{what} field {k.value!r} missing/bad")
    for k in (AKey.ROUND, AKey.MODEL_VERSION):
        if not 0 <= d[k.value] < 2**63:
            raise ProtocolError("malformed", f"{what} field {k.value!r} out of range")
    return d


def decode_model(data: bytes) -> ModelPublication:
    """Parse a model publication and check that the bytes match the announced hash.

    The signature over the hash is checked by the receiver (it knows which
    keys it trusts); a hash mismatch is refused here as ``hash_mismatch``.
    """
    d = _publication(data, "model publication", {AKey.ONNX: bytes})
    onnx = d[AKey.ONNX.value]
    if hashlib.sha256(onnx).hexdigest() != d[AKey.SHA256.value]:
        raise ProtocolError("hash_mismatch", "model bytes do not match the published SHA-256")
    return ModelPublication(onnx=onnx, **_release_args(d))


# -- parameter publication ---------------------------------------------------------------------


@dataclass(frozen=True)
class ParamsPublication:
    """A signed global model as its parameter vector (``model/params``, retained).

    ``sha256``, ``signature`` and ``release_sig`` are those of the ONNX file the
    vector rebuilds into; nothing here is trusted until that rebuild hashes to
    ``sha256`` and both signatures hold for it.
    """

    round_id: int
    version: int
    sha256: str
    signature: bytes
    cert_der: bytes
    frame: str
    params: bytes  # float32 little-endian, the model's flat parameter vector
    eval: dict[str, Any] = field(default_factory=dict)
    release_sig: bytes = b""

    def vector(self) -> np.ndarray:
        """The parameters as a float32 numpy array."""
        return np.frombuffer(self.params, dtype="<f4").astype(np.float32)


def encode_params(pub: ParamsPublication) -> bytes:
    return _encode_publication(pub, {AKey.FRAME: pub.frame, AKey.PARAMS: pub.params})


def decode_params(data: bytes) -> ParamsPublication:
    """Parse a parameter publication (schema and sizes only: the receiver rebuilds and checks)."""
    d = _publication(data, "parameter publication", {AKey.FRAME: str, AKey.PARAMS: bytes})
    params = d[AKey.PARAMS.value]
    if not params or len(params) % 4:
        raise ProtocolError("malformed", f"parameter vector of {len(params)} bytes is not float32")
    for k in (AKey.SHA256, AKey.FRAME):
        v = d[k.value]
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ProtocolError("malformed", f"parameter publication {k.value!r} is not a SHA-256")
    return ParamsPublication(frame=d[AKey.FRAME.value], params=params, **_release_args(d))
