"""Signed round keys and signed survivor sets: what ties SecAgg+ material to a box (pure).

Why: a box's neighbours learn its public keys (``pk_enc``, ``pk_mask``) and its
self-seed commitment only through the aggregator. Unsigned, an aggregator (or
anyone holding its key) could hand a box its own keys in a neighbour's name,
decrypt every share sent to that "neighbour", rebuild both of the box's
secrets and unmask its input. So each box signs its round keys with its
identity key, bound to the round id, the round nonce and its box id, and every
neighbour checks that signature against the box's fleet certificate before it
encrypts a share (Bonawitz et al. 2017, the active-adversary variant; Bell et
al. 2020). The same identity key signs the survivor set a box is shown in the
consistency round (Bonawitz 2017, round 3), so an aggregator cannot show
different boxes different survivor sets without the signatures giving it away.

``RoundSigner`` is what a box brings to a round: its Ed25519 key, the
certificate its neighbours check, and ``verify_peer``, the box's own way of
turning a neighbour's certificate into that neighbour's key (in a deployment:
``fl.identity.verify_identity_cert`` against the fleet CA, named for the
neighbour, minus revoked boxes). Every statement starts with its own context
string, so a key signature is never valid as a survivor-set signature, an
envelope or a model signature.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeagent.errors import ProtocolError

KEYS_CONTEXT = b"edgeagent/fl/secagg/round-keys/v1\x00"
SURVIVORS_CONTEXT = b"edgeagent/fl/secagg/survivors/v1\x00"
SIGNATURE_BYTES = 64
#: Largest certificate a round message may carry for one box (an Ed25519 DER identity
#: certificate of this fleet is ~400 bytes).
MAX_CERT_BYTES = 4096

#: A certificate a box already holds travels as SHA-256 of its DER bytes (no DER
#: certificate is this short, so the two never mix up).
FINGERPRINT_BYTES = 32
#: Certificates a box keeps across rounds; past this it starts over with a new epoch.
CERT_CACHE_MAX = 4096
EPOCH_BYTES = 8
LAB_CERT_TAG = b"edgeagent/lab-identity\x00"

#: ``(box id, certificate bytes) -> that box's Ed25519 key``; raises ``ProtocolError``.
PeerVerifier = Callable[[str, bytes], Ed25519PublicKey]


@dataclass(frozen=True)
class RoundSigner:
    """A box's identity for SecAgg+ rounds: signing key, certificate, and peer check."""

    key: Ed25519PrivateKey
    cert: bytes
    verify_peer: PeerVerifier


def _field(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return struct.pack("<I", len(raw)) + raw


def keys_statement(
    round_id: int,
    nonce: bytes,
    node: str,
    pk_enc: bytes,
    pk_mask: bytes,
    commit: bytes,
    seed: bytes = b"",
) -> bytes:
    """What a box signs at SETUP: its round keys and seed commitment, bound to round and id.

    ``seed`` is the round seed the box derived (``beacon``; the nonce where
    none is used): a neighbour that was shown another seed refuses the
    signature, so an aggregator that shows boxes different commitment lists
    cannot make them share secrets.
    """
    return b"".join(
        (
            KEYS_CONTEXT,
            struct.pack("<Q", round_id),
            _field(nonce),
            _field(seed),
            _field(node),
            _field(pk_enc),
            _field(pk_mask),
            _field(commit),
        )
    )


def survivors_digest(survivors: Iterable[str]) -> bytes:
    """SHA-256 of a survivor set (order-free: sorted, length-prefixed ids)."""
    return hashlib.sha256(b"".join(_field(n) for n in sorted(set(survivors)))).digest()


def survivors_statement(round_id: int, nonce: bytes, signer: str, digest: bytes) -> bytes:
    """What a box signs in the consistency round: the survivor set it was shown."""
    return b"".join(
        (SURVIVORS_CONTEXT, struct.pack("<Q", round_id), _field(nonce), _field(signer), digest)
    )


def check_signature(key: Ed25519PublicKey, signature: object, statement: bytes, what: str) -> None:
    """``ProtocolError('bad_signature')`` unless ``signature`` is ``key``'s over ``statement``."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise ProtocolError("bad_signature", f"{what}: signature must be {SIGNATURE_BYTES} bytes")
    try:
        key.verify(signature, statement)
    except InvalidSignature as exc:
        raise ProtocolError("bad_signature", f"{what}: signature does not verify") from exc


def trust_map(keys: dict[str, Ed25519PublicKey]) -> PeerVerifier:
    """A ``PeerVerifier`` for in-memory rounds: the "certificate" is the raw public key.

    Used by the simulator, benchmarks and tests, where a fleet CA would only
    add setup time: a box is trusted with exactly the key registered for its id
    (its "certificate" is ``lab_cert``: a tag and the raw key).
    """

    def verify(node: str, cert: bytes) -> Ed25519PublicKey:
        key = keys.get(node)
        if key is None or not isinstance(cert, bytes) or cert != lab_cert(key):
            raise ProtocolError("wrong_identity", f"no registered identity {node!r} with that key")
        return key

    return verify


def lab_signers(nodes: Iterable[str]) -> dict[str, RoundSigner]:
    """Fresh identities for in-memory rounds, each trusting exactly the others' keys."""
    keys = {n: Ed25519PrivateKey.generate() for n in nodes}
    pubs = {n: k.public_key() for n, k in keys.items()}
    verify = trust_map(pubs)
    return {n: RoundSigner(k, lab_cert(pubs[n]), verify) for n, k in keys.items()}


def lab_cert(key: Ed25519PublicKey) -> bytes:
    """The in-memory stand-in for a certificate: a tag and the raw key (never 32 bytes long,
    so it cannot be taken for a fingerprint)."""
    return LAB_CERT_TAG + key.public_bytes_raw()


def fingerprint(cert: bytes) -> bytes:
    """SHA-256 of a certificate's DER bytes: what travels once a box holds the certificate."""
    return hashlib.sha256(cert).digest()


class CertCache:
    """The certificates a box has checked, by fingerprint, kept across rounds.

    Why: each box checks its neighbours' identity certificates, and over many
    rounds it meets the same boxes again; a certificate it holds then costs 32
    bytes instead of ~450. ``epoch`` names this cache's contents to the
    aggregator (``Key.CERT_EPOCH`` in the SETUP reply): a new epoch (restart,
    or the cache starting over at ``CERT_CACHE_MAX``) tells it to send full
    certificates again. The cache only saves bytes: every certificate is still
    checked by the box's ``verify_peer`` (CA, name, revocation) in every round.
    """

    def __init__(self, limit: int = CERT_CACHE_MAX) -> None:
        self.limit = limit
        self._certs: dict[bytes, tuple[str, bytes]] = {}
        self.epoch = os.urandom(EPOCH_BYTES)

    def __len__(self) -> int:
        return len(self._certs)

    def start_round(self) -> bytes:
        """The epoch to announce this round (a full cache starts over under a new one)."""
        if len(self._certs) >= self.limit:
            self._certs.clear()
            self.epoch = os.urandom(EPOCH_BYTES)
        return self.epoch

    def resolve(self, node: str, field: object) -> bytes:
        """The certificate a round message names for ``node``: full DER, or its fingerprint."""
        if not isinstance(field, bytes) or len(field) > MAX_CERT_BYTES:
            raise ProtocolError("bad_body", f"certificate of {node!r} malformed or too large")
        if len(field) != FINGERPRINT_BYTES:
            return field
        got = self._certs.get(field)
        if got is None or got[0] != node:
            raise ProtocolError("unknown_certificate", f"no certificate of {node!r} with that hash")
        return got[1]

    def keep(self, node: str, cert: bytes) -> None:
        """Remember a certificate ``verify_peer`` accepted for ``node``."""
        self._certs[fingerprint(cert)] = (node, cert)


class CertBook:
    """The aggregator's record of which certificates each box holds (``CertCache``).

    A certificate counts as held once the box answered the stage that carried
    it (it checked it before replying), and only under the epoch the box last
    announced; a new epoch forgets everything for that box. Kept by the
    aggregator across rounds.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        # a bound on the aggregator's memory (~100 bytes an entry): past it, certificates
        # go in full, which is always correct, only larger
        self.max_entries = max_entries
        self._entries = 0
        self._epochs: dict[str, bytes] = {}
        self._held: dict[str, set[bytes]] = {}

    def sync(self, node: str, epoch: object) -> None:
        """The epoch a box announced at SETUP (anything malformed: assume an empty cache)."""
        value = epoch if isinstance(epoch, bytes) and len(epoch) == EPOCH_BYTES else b""
        if not value or self._epochs.get(node) != value:
            self._entries -= len(self._held.get(node, ()))
            self._held[node] = set()
        self._epochs[node] = value

    def field(self, node: str, cert: bytes, sent: set[bytes]) -> bytes:
        """What to send ``node`` for ``cert``: its fingerprint if held, else the certificate.

        Full certificates sent are added to ``sent`` (confirmed by ``confirm``).
        """
        fp = fingerprint(cert)
        if self._epochs.get(node) and fp in self._held.get(node, ()):
            return fp
        sent.add(fp)
        return cert

    def confirm(self, node: str, sent: set[bytes]) -> None:
        """``node`` answered the stage that carried ``sent``: it holds them now."""
        if self._epochs.get(node) and sent:
            held = self._held.setdefault(node, set())
            new = sent - held
            if len(held) + len(new) <= CERT_CACHE_MAX and self._entries + len(new) <= (
                self.max_entries
            ):
                held |= new
                self._entries += len(new)
