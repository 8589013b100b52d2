"""Ed25519 signatures over model hashes, and over federated model releases.

Why sign the SHA-256 rather than the bytes: the hash is what the registry,
MQTT announcements and logs name a model by, so one signature covers every
place the model is referred to. The federated aggregator signs global models
with its key; boxes verify against the trusted public keys in their config.

A hash signature says "this model is genuine", not "this is the newest model
of this fleet": republished with a higher version label, an old genuine model
would pass it and then make every later model look stale. So a federated
release is signed a second time over fleet, version, round and hash under its
own context (``sign_release``); a box takes a model only when that signature
holds for the labels it is about to act on.
"""

from __future__ import annotations

import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgeagent.errors import ModelError

#: Domain separation: a model signature can never be replayed as another message's.
CONTEXT = b"edgeagent-model-v1\x00"


def _message(sha256_hex: str) -> bytes:
    return CONTEXT + bytes.fromhex(sha256_hex)


def sign_hash(key: Ed25519PrivateKey, sha256_hex: str) -> bytes:
    """64-byte Ed25519 signature of a model's SHA-256."""
    return key.sign(_message(sha256_hex))


def verify_hash(keys: list[Ed25519PublicKey], sha256_hex: str, signature: bytes) -> int:
    """Index of the trusted key that made ``signature``; ``ModelError`` if none did."""
    if not keys:
        raise ModelError("no trusted model-signing keys configured; cannot verify")
    msg = _message(sha256_hex)
    for i, k in enumerate(keys):
        try:
            k.verify(signature, msg)
            return i
        except InvalidSignature:
            continue
    raise ModelError(f"signature on model {sha256_hex[:12]} does not verify with any trusted key")


#: Domain separation for release signatures (never valid as a hash signature or envelope).
RELEASE_CONTEXT = b"edgeagent/model/release/v1\x00"


def _release(fleet: str, version: int, round_id: int, sha256_hex: str) -> bytes:
    if not 0 <= version < 2**63 or not 0 <= round_id < 2**63:
        raise ModelError("model version and round must be 63-bit non-negative integers")
    name = fleet.encode()
    return (
        RELEASE_CONTEXT
        + struct.pack("<I", len(name))
        + name
        + struct.pack("<QQ", version, round_id)
        + bytes.fromhex(sha256_hex)
    )


def sign_release(
    key: Ed25519PrivateKey, fleet: str, version: int, round_id: int, sha256_hex: str
) -> bytes:
    """64-byte Ed25519 signature binding a model hash to its fleet, version and round."""
    return key.sign(_release(fleet, version, round_id, sha256_hex))


def verify_release(
    key: Ed25519PublicKey,
    fleet: str,
    version: int,
    round_id: int,
    sha256_hex: str,
    signature: bytes,
) -> None:
    """``ModelError`` unless ``key`` signed exactly this release."""
    try:
        key.verify(signature, _release(fleet, version, round_id, sha256_hex))
    except (InvalidSignature, ValueError) as exc:
        raise ModelError(
            f"release v{version} (round {round_id}) of {sha256_hex[:12]} in fleet {fleet!r} "
            "is not signed as such"
        ) from exc


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    """32 raw bytes; what configs and the registry store."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key from PEM or 32 raw bytes / 64 hex characters."""
    data = Path(path).read_bytes()
    try:
        if data.startswith(b"-----BEGIN"):
            k = serialization.load_pem_public_key(data)
            if not isinstance(k, Ed25519PublicKey):
                raise ModelError(f"{path}: not an Ed25519 public key")
            return k
        raw = data if len(data) == 32 else bytes.fromhex(data.decode().strip())
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot read Ed25519 public key: {e}") from e


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A private key from unencrypted PEM (PKCS8) or 32 raw bytes."""
    data = Path(path).read_bytes()
    try:
        if data.startswith(b"-----BEGIN"):
            k = serialization.load_pem_private_key(data, password=None)
            if not isinstance(k, Ed25519PrivateKey):
                raise ModelError(f"{path}: not an Ed25519 private key")
            return k
        return Ed25519PrivateKey.from_private_bytes(data)
    except ValueError as e:
        raise ModelError(f"{path}: cannot read Ed25519 private key: {e}") from e
