"""Cryptographic building blocks of SecAgg+: key agreement, masks, shares, share encryption.

All randomness that protects inputs comes from ``cryptography`` / pycryptodome
(OS CSPRNG); masks are ChaCha20 keystreams, never a non-cryptographic RNG.
Everything here is a pure function of its arguments (plus fresh OS randomness
where a new secret is made).
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from edgeagent.errors import ProtocolError
from edgeagent.fl.constants import SELF_SEED_BYTES, SHAMIR_CHUNK
from edgeagent.fl.secagg import shamir

_MASK_INFO = b"edgeagent/fl/secagg/pairwise-mask"
_SELF_INFO = b"edgeagent/fl/secagg/self-mask"
_SHARE_INFO = b"edgeagent/fl/secagg/share-key"
_COMMIT_TAG = b"edgeagent/fl/secagg/self-seed-commitment"

#: Shares of one box's secrets: 2 chunks of the 32-byte mask key + 1 chunk of b.
SECRET_BYTES = 32 + SELF_SEED_BYTES
N_CHUNKS = SECRET_BYTES // SHAMIR_CHUNK


def raw_public(key: X25519PrivateKey) -> bytes:
    """32-byte raw X25519 public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def raw_private(key: X25519PrivateKey) -> bytes:
    """32-byte raw X25519 private key (only ever Shamir-shared, never sent whole)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _agree(sk: X25519PrivateKey | bytes, pk: bytes) -> bytes:
    priv = sk if isinstance(sk, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(sk)
    try:
        return priv.exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError as exc:  # wrong length or an all-zero (low-order) result
        raise ProtocolError("bad_key", f"X25519 exchange failed: {exc}") from exc


def _hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def keystream_u32(key: bytes, dim: int) -> np.ndarray:
    """Expand a 32-byte key into ``dim`` uint32 values with ChaCha20 (zero nonce).

    A zero nonce is safe because every key is used for exactly one stream:
    keys are derived with the round nonce in the HKDF info.
    """
    enc = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\x00" * (4 * dim)), dtype="<u4").astype(np.uint32)


def pairwise_mask(
    sk_mask: X25519PrivateKey | bytes, pk_other: bytes, nonce: bytes, dim: int
) -> np.ndarray:
    """Mask shared by two boxes: ChaCha20(HKDF(X25519(sk_i, pk_j), nonce)); symmetric."""
    return keystream_u32(_hkdf(_agree(sk_mask, pk_other), _MASK_INFO + nonce), dim)


def self_mask(seed: bytes, nonce: bytes, node: str, dim: int) -> np.ndarray:
    """The self mask PRG(b_i), so a late-arriving masked vector never reveals x_i."""
    return keystream_u32(_hkdf(seed, _SELF_INFO + nonce + node.encode()), dim)


def new_self_seed() -> bytes:
    """Fresh 16-byte self-mask seed b_i (OS CSPRNG)."""
    return os.urandom(SELF_SEED_BYTES)


def commit_seed(seed: bytes, nonce: bytes, node: str) -> bytes:
    """Binding commitment to b_i, published at setup and checked on reconstruction."""
    return hashlib.sha256(_COMMIT_TAG + nonce + node.encode() + b"\x00" + seed).digest()


def split_secrets(secret: bytes, threshold: int, holders: int) -> list[tuple[int, bytes]]:
    """Shamir-share ``secret`` (48 bytes: mask key + b) t-of-n in 16-byte chunks.

    Returns one ``(index, 48-byte share)`` per holder, index starting at 1.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes")
    if not 1 <= threshold <= holders:
        raise ValueError(f"need 1 <= threshold ({threshold}) <= holders ({holders})")
    per_chunk = [
        shamir.split(threshold, holders, secret[i : i + SHAMIR_CHUNK])
        for i in range(0, SECRET_BYTES, SHAMIR_CHUNK)
    ]
    out: list[tuple[int, bytes]] = []
    for h in range(holders):
        idx = per_chunk[0][h][0]
        out.append((idx, b"".join(chunk[h][1] for chunk in per_chunk)))
    return out


def combine_chunks(shares: list[tuple[int, bytes]], first: int, count: int) -> bytes:
    """Rebuild ``count`` chunks starting at chunk ``first`` from ``(index, share)`` pairs.

    Shamir returns garbage silently when given too few or corrupted shares, so
    callers MUST check the result against a commitment.
    """
    parts = []
    for c in range(first, first + count):
        lo = c * SHAMIR_CHUNK
        parts.append(shamir.combine([(i, s[lo : lo + SHAMIR_CHUNK]) for i, s in shares]))
    return b"".join(parts)


def _share_aad(nonce: bytes, src: str, dst: str) -> bytes:
    return nonce + b"|" + src.encode() + b"|" + dst.encode()


def share_key(sk_enc: X25519PrivateKey, pk_other: bytes, nonce: bytes) -> bytes:
    """AES-256-GCM key for shares between two boxes (same key in both directions)."""
    return _hkdf(_agree(sk_enc, pk_other), _SHARE_INFO + nonce)


def encrypt_share(key: bytes, nonce: bytes, src: str, dst: str, index: int, share: bytes) -> bytes:
    """Encrypt one share end to end; round nonce, src and dst are bound as associated data."""
    iv = os.urandom(12)
    plain = struct.pack("<H", index) + share
    return iv + AESGCM(key).encrypt(iv, plain, _share_aad(nonce, src, dst))


def decrypt_share(key: bytes, nonce: bytes, src: str, dst: str, blob: bytes) -> tuple[int, bytes]:
    """Decrypt a share; ``ProtocolError('bad_share')`` if tampered with, misrouted or mis-sized."""
    if not isinstance(blob, bytes) or len(blob) != 12 + 2 + SECRET_BYTES + 16:
        raise ProtocolError("bad_share", f"share from {src} has the wrong size")
    try:
        plain = AESGCM(key).decrypt(blob[:12], blob[12:], _share_aad(nonce, src, dst))
    except InvalidTag as exc:
        raise ProtocolError("bad_share", f"share from {src} failed authentication") from exc
    (index,) = struct.unpack("<H", plain[:2])
    return index, plain[2:]


def public_from_private(raw: bytes) -> bytes:
    """Raw public key for a raw X25519 private key (the commitment check for mask keys)."""
    return raw_public(X25519PrivateKey.from_private_bytes(raw))
