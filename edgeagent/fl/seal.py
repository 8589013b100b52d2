"""Updates and unmask shares sealed to the round's aggregator key (HPKE, RFC 9180; pure).

Without secure aggregation a box's update is not masked, and TLS ends at the
broker: the broker operator would read every box's update. So the update is
sealed end to end to a fresh X25519 key the aggregator makes for each round
and announces in the round's signed announcement (HPKE base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, from
``cryptography``). The broker then sees only sizes and timing; the aggregator
drops the key when the round ends, so a later break-in there does not open
updates recorded earlier (forward secrecy per round).

The HPKE ``info`` binds the ciphertext to its round, nonce and box: a sealed
update replayed under another box's (signed) envelope, or into another round,
does not open. The sealed plaintext is ``n`` (uint32 LE, the capped sample
count) followed by the update as little-endian float32, so ``n_k`` is hidden
from the broker too.

SecAgg+ rounds use the same construction for the UNMASK reply (``seal_bytes``):
those shares are what unmasks a box, and the broker must not collect them.
"""

from __future__ import annotations

import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edgeagent.errors import ProtocolError

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
#: Encapsulated key (32) + Poly1305 tag (16): what sealing adds to the plaintext.
OVERHEAD = 48
KEY_BYTES = 32
_CONTEXT = b"edgeagent/fl/update/v1\x00"
_N = struct.Struct("<I")


def round_key() -> tuple[X25519PrivateKey, bytes]:
    """A fresh key pair for one plaintext round: the private key and the raw public key."""
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes_raw()


def info(round_id: int, nonce: bytes, box: str) -> bytes:
    """The HPKE ``info`` binding a sealed update to its round, nonce and sender."""
    return _CONTEXT + round_id.to_bytes(8, "little") + nonce + box.encode()


def sealed_size(dim: int) -> int:
    """Bytes of a sealed update of ``dim`` parameters (checked before decrypting)."""
    return OVERHEAD + _N.size + 4 * dim


def seal_update(update: np.ndarray, n: int, public_key: bytes, context: bytes) -> bytes:
    """Seal ``(n, update)`` to the round key ``public_key`` (32 raw bytes)."""
    if len(public_key) != KEY_BYTES:
        raise ValueError(f"round key must be {KEY_BYTES} bytes, got {len(public_key)}")
    plain = _N.pack(n) + np.asarray(update, "<f4").tobytes()
    return SUITE.encrypt(plain, X25519PublicKey.from_public_bytes(public_key), info=context)


def open_update(
    sealed: bytes, key: X25519PrivateKey, context: bytes, dim: int
) -> tuple[np.ndarray, int]:
    """``(update as float64, n)``; ``ProtocolError`` if it is the wrong size or does not open."""
    if len(sealed) != sealed_size(dim):
        raise ProtocolError(
            "bad_body", f"sealed update must be {sealed_size(dim)} bytes, got {len(sealed)}"
        )
    try:
        plain = SUITE.decrypt(sealed, key, info=context)
    except (InvalidTag, ValueError) as exc:
        # tampered, sealed to another round's key, or bound to another box or round
        raise ProtocolError("undecryptable", "sealed update does not open") from exc
    (n,) = _N.unpack_from(plain)
    return np.frombuffer(plain, "<f4", offset=_N.size).astype(np.float64), n


def seal_bytes(plain: bytes, public_key: bytes, context: bytes) -> bytes:
    """Seal arbitrary bytes to the round key ``public_key`` (32 raw bytes), bound to ``context``."""
    if not isinstance(public_key, bytes) or len(public_key) != KEY_BYTES:
        raise ProtocolError("bad_key", f"round key must be {KEY_BYTES} bytes")
    try:
        pk = X25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise ProtocolError("bad_key", f"round key unusable: {exc}") from exc
    return SUITE.encrypt(plain, pk, info=context)


def open_bytes(sealed: bytes, key: X25519PrivateKey, context: bytes, max_bytes: int) -> bytes:
    """Open ``seal_bytes`` output; ``ProtocolError`` if oversized, tampered or misbound."""
    if not isinstance(sealed, bytes) or not OVERHEAD <= len(sealed) <= max_bytes + OVERHEAD:
        raise ProtocolError("bad_body", "sealed blob of the wrong size")
    try:
        return SUITE.decrypt(sealed, key, info=context)
    except (InvalidTag, ValueError) as exc:
        raise ProtocolError("undecryptable", "sealed blob does not open") from exc
