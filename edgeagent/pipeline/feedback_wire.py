"""A ward system's signed verdict on a box's alert (``node/<box>/feedback``): encode, verify.

Why signed on top of the broker's ACL: a verdict becomes a training label, so
the box itself checks who gave it. The message carries the ward's Ed25519
identity certificate; the box accepts it only if the fleet CA issued it to the
name ``ward`` (a box's certificate, another CA's or an expired one is refused),
the signature covers the payload, the payload names this box, its time is
within ``max_skew_s`` of the box's clock and its nonce was not seen within that
window (:class:`ReplayGuard`). The layout follows the hello of ``fl.wire``:

    {v: 1, p: <canonical CBOR payload>, sig: Ed25519(CONTEXT + p), cert: <DER>}
    payload: {box, alert, ok, kind?, patient?, src, t, n}

Pure apart from the clock value handed in: bytes in, a checked request out.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.errors import ProtocolError
from edgeagent.fl.identity import verify_identity_cert
from edgeagent.ops.pki import WARD_ID
from edgeagent.pipeline.feedback_rules import AckRequest, parse_request

#: Domain separation: never valid as a hello, an envelope or a model signature.
FEEDBACK_CONTEXT = b"edgeagent/feedback/v1\x00"
WIRE_VERSION = 1
#: A certificate (~400 bytes) and a few short fields; anything larger is refused unread.
MAX_FEEDBACK_BYTES = 4096
NONCE_BYTES = 16
#: Nonces remembered at most (a flood cannot grow the box's memory without bound).
MAX_NONCES = 65536


@dataclass(frozen=True)
class WardVerdict:
    """A verified ward message: who it is for, when, and the verdict it carries."""

    box: str
    t: float
    nonce: bytes
    request: AckRequest


def encode_feedback(
    box: str,
    req: AckRequest,
    t: float,
    nonce: bytes,
    key: Ed25519PrivateKey,
    cert_der: bytes,
) -> bytes:
    """The message a ward system publishes on ``node/<box>/feedback``."""
    body: dict[str, object] = {
        "box": box,
        "alert": req.alert_id,
        "ok": req.confirmed,
        "src": req.source,
        "t": float(t),
        "n": bytes(nonce),
    }
    if req.kind is not None:
        body["kind"] = req.kind
    if req.patient is not None:
        body["patient"] = req.patient
    payload = cbor2.dumps(body, canonical=True)
    return cbor2.dumps(
        {"v": WIRE_VERSION, "p": payload, "sig": key.sign(FEEDBACK_CONTEXT + payload),
         "cert": bytes(cert_der)}
    )  # fmt: skip


def _loads(data: bytes, what: str) -> object:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types
        raise ProtocolError("malformed", f"{what} is not CBOR: {type(exc).__name__}") from exc


def decode_feedback(
    data: bytes, ca: x509.Certificate, box_id: str, now: float, max_skew_s: float
) -> WardVerdict:
    """Check a ward message for box ``box_id`` at time ``now``; ``ProtocolError`` or
    ``FeedbackError`` (a well-signed but malformed verdict) says why not.

    The replay check needs memory and is :class:`ReplayGuard`'s.
    """
    if len(data) > MAX_FEEDBACK_BYTES:
        raise ProtocolError("oversized", f"feedback of {len(data)} bytes")
    outer = _loads(data, "feedback")
    if not isinstance(outer, dict):
        raise ProtocolError("malformed", "feedback must be a map {v, p, sig, cert}")
    if outer.get("v") != WIRE_VERSION:
        raise ProtocolError("bad_version", f"feedback version {outer.get('v')!r}")
    payload, sig, cert = outer.get("p"), outer.get("sig"), outer.get("cert")
    if not (isinstance(payload, bytes) and isinstance(sig, bytes) and isinstance(cert, bytes)):
        raise ProtocolError("malformed", "feedback must carry p, sig and cert as bytes")
    key = verify_identity_cert(cert, ca, WARD_ID)  # foreign_ca, expired, wrong_identity
    try:
        key.verify(sig, FEEDBACK_CONTEXT + payload)
    except InvalidSignature as exc:
        raise ProtocolError("bad_signature", "feedback not signed by the ward's key") from exc
    body = _loads(payload, "feedback payload")
    if not isinstance(body, dict):
        raise ProtocolError("bad_body", "feedback payload must be a map")
    box, t, nonce = body.get("box"), body.get("t"), body.get("n")
    if (
        not isinstance(box, str)
        or not isinstance(t, float | int)
        or isinstance(t, bool)
        or not isinstance(nonce, bytes)
        or len(nonce) != NONCE_BYTES
    ):
        raise ProtocolError("bad_body", "feedback payload needs box, t and a 16-byte nonce n")
    if isinstance(t, int) and abs(t) > 2**53:  # float() of a huge integer overflows
        raise ProtocolError("bad_body", "feedback time out of range")
    if box != box_id:
        raise ProtocolError("wrong_destination", f"feedback for {box!r} reached {box_id!r}")
    if not math.isfinite(float(t)) or abs(float(t) - now) > max_skew_s:
        raise ProtocolError(
            "out_of_window", f"sent at {t}, {abs(float(t) - now):.0f} s from the box's clock"
        )
    req = parse_request(
        {"alert": body.get("alert"), "confirmed": body.get("ok"), "kind": body.get("kind"),
         "source": body.get("src"), "patient": body.get("patient")}
    )  # fmt: skip
    return WardVerdict(box, float(t), nonce, req)


class ReplayGuard:
    """Nonces seen within the skew window: a second message with one is a replay.

    A message older than the window is refused by :func:`decode_feedback`, so
    nonces older than it can be forgotten; at most :data:`MAX_NONCES` are kept
    (the oldest go first).
    """

    def __init__(self, window_s: float, max_nonces: int = MAX_NONCES) -> None:
        self.window_s = window_s
        self.max_nonces = max_nonces
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def check(self, nonce: bytes, now: float) -> None:
        """Remember ``nonce``; ``ProtocolError('replay')`` if it was seen within the window."""
        while self._seen:
            oldest, t = next(iter(self._seen.items()))
            if now - t <= 2 * self.window_s and len(self._seen) < self.max_nonces:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            raise ProtocolError("replay", "a feedback nonce seen before")
        self._seen[nonce] = now
