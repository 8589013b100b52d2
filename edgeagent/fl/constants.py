"""Stage names, message key names and protocol limits for the federated round.

Both sides (box and aggregator) import names from here only, so a typo in a key
is an ``AttributeError`` at import time instead of a silent schema mismatch on
the wire (the habit Flower's ``secaggplus`` constants module shows).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

#: Byzantine-robust rules of ``fl.robust``, named here (numpy-free) so the
#: config can offer exactly these without importing the numeric code.
ROBUST_RULES: Final = (
    "mean",
    "median",
    "trimmed_mean",
    "multi_krum",
    "norm_bound",
    "cosine_cluster",
    "reputation",
)
#: The rules a deployment can choose as a defence: all but the unweighted ``mean``.
DEFENCE_RULES: Final = tuple(r for r in ROBUST_RULES if r != "mean")

#: Envelope format version. Bump when the envelope layout (not a body) changes.
#: 2: the signature covers SHA-256 of the payload, not the payload itself.
ENVELOPE_VERSION: Final = 2

#: Domain separation for Ed25519 signatures: a signature made for a federated
#: envelope can never be replayed as a signature over a model file or a CSR
#: (nor a version-1 envelope signature as a version-2 one).
SIGNATURE_CONTEXT: Final = b"edgeagent/fl/envelope/v2\x00"

#: Largest envelope accepted before any parsing. A 100k-parameter masked vector
#: is 400 kB; 4 MiB leaves room for 1M parameters and refuses memory bombs.
MAX_ENVELOPE_BYTES: Final = 4 * 1024 * 1024

#: Round nonces are 16 random bytes: fresh per round, so messages of an old
#: round (same round id after a restart, say) never verify as fresh.
NONCE_BYTES: Final = 16

#: Largest round id and sequence number (63 bits): bounded so that encoding them
#: (8 bytes in statements, HPKE info) never fails on a peer's input.
MAX_ROUND_ID: Final = 2**63 - 1

#: Shamir secrets in pycryptodome are exactly 16 bytes (GF(2^128)).
SHAMIR_CHUNK: Final = 16

#: Length of the self-mask seed b_i (one Shamir chunk).
SELF_SEED_BYTES: Final = 16

#: Largest neighbour degree accepted. Bell 2020 needs O(log n); 254 keeps share
#: indices within one byte and caps Shamir work per box (see FIELD-NOTES: a
#: 127-of-255 split costs ~0.35 s per 16-byte chunk).
MAX_DEGREE: Final = 254

#: Broadcast destination in the envelope ``dst`` field.
BROADCAST: Final = "*"

#: Name of the aggregator as a sender / destination.
AGGREGATOR: Final = "aggregator"


class Stage(StrEnum):
    """SecAgg+ stages, in protocol order (Bonawitz 2017 rounds 0-3, Bell 2020 graph)."""

    #: Round randomness (``fl.secagg.beacon``): server: commit now; box: H(its contribution)
    COMMIT = "commit"
    #: server: digest of every commitment; box: its contribution (after the set is fixed)
    REVEAL = "reveal"
    SETUP = "setup"  # server: config + neighbours; box: public keys + commitment
    SHARE_KEYS = "share_keys"  # server: neighbours' keys; box: encrypted shares
    COLLECT_MASKED = "collect_masked"  # server: shares for you; box: masked vector
    #: Bonawitz 2017 round 3: server: who dropped; box: its signature over the survivor set
    CONSISTENCY = "consistency"
    UNMASK = "unmask"  # server: survivors' signatures; box: shares to unmask (sealed)
    RESULT = "result"  # server: aborted or done (informational, ends the round)
    #: Plaintext mode only (``[aggregator] secure_aggregation = false``): the box's one
    #: reply to the announcement, its clipped update and ``n_k`` (no masking, no shares).
    UPDATE = "update"


#: Order in which SecAgg+ stages must run; ``check_stage`` enforces it.
STAGE_ORDER: Final[tuple[Stage, ...]] = (
    Stage.COMMIT,
    Stage.REVEAL,
    Stage.SETUP,
    Stage.SHARE_KEYS,
    Stage.COLLECT_MASKED,
    Stage.CONSISTENCY,
    Stage.UNMASK,
    Stage.RESULT,
)

#: Stages of a plaintext round: the announcement, then one UPDATE per box, then RESULT.
PLAINTEXT_STAGES: Final[tuple[Stage, ...]] = (Stage.UPDATE, Stage.RESULT)


class Key(StrEnum):
    """Keys used inside message bodies (CBOR maps)."""

    # envelope
    VERSION = "v"
    SRC = "src"
    DST = "dst"
    ROUND = "round"
    STAGE = "stage"
    SEQ = "seq"
    NONCE = "nonce"
    BODY = "body"
    PAYLOAD = "p"
    SIGNATURE = "sig"
    # commit (box -> server): H(context, round, nonce, box, contribution)
    BEACON_COMMIT = "beacon_commit"
    # reveal (server -> box): digest of all commitments; (box -> server): the contribution
    BEACON_DIGEST = "beacon_digest"
    BEACON_SET = "beacon_set"  # (server -> box) the committed boxes: bitmap, announcement order
    BEACON_REVEAL = "beacon_reveal"
    # setup (server -> box, beside the fields below): every contribution, announcement order
    BEACON_REVEALS = "beacon_reveals"
    # setup (server -> box)
    NEIGHBOURS = "neighbours"
    THRESHOLD = "t"
    DIM = "d"
    BOUND = "bound"
    MAX_SUMMANDS = "m"
    HEADROOM = "headroom"
    #: Width b of the modular sum (Z_2^b), absent = 32: quantised updates send b bits each.
    BITS = "bits"
    #: Bound of the payload's last coordinate (n_k) when it differs from ``bound`` (absent = same).
    COUNT_BOUND = "count_bound"
    #: True: the update coordinates are rotated (``quantize.rotate``) before quantisation.
    ROTATE = "rotate"
    CLIP = "clip"
    N_CAP = "n_cap"
    NOISE_STD = "noise_std"
    ENC_PK = "enc_pk"  # the round's X25519 key UNMASK replies are sealed to (fl.seal)
    #: true: the aggregator holds this box's certificate (from its hello), so the box's
    #: SETUP reply leaves ``cert`` out (~450 bytes up per round)
    HAVE_CERT = "have_cert"
    # setup (box -> server)
    PK_ENC = "pk_enc"
    PK_MASK = "pk_mask"
    COMMIT = "commit"
    KEY_SIG = "key_sig"  # the box's identity signature over its round keys (secagg.auth)
    CERT = "cert"  # the certificate its neighbours check that signature with
    #: 8 bytes naming the box's certificate cache (a new value: the cache is empty), see
    #: ``secagg.auth.CertBook``; certificates it holds then travel as 32-byte fingerprints
    CERT_EPOCH = "cert_epoch"
    # share_keys (server -> box): node -> [pk_enc, pk_mask, commit, key_sig, cert]
    KEYS = "keys"
    # share_keys (box -> server) / collect (server -> box): node -> ciphertext
    SHARES = "shares"
    # collect (box -> server)
    MASKED = "masked"
    # consistency (server -> box): DROPPED, the participants that are not survivors;
    # (box -> server): its signature over the survivor set
    DROPPED = "dropped"
    SURVIVORS_SIG = "survivors_sig"
    # unmask (server -> box): signer -> [survivors_sig, cert]
    SIGS = "sigs"
    # unmask (box -> server): SEALED = seal(CBOR{seed_shares, key_shares})
    SEALED = "sealed"
    SEED_SHARES = "seed_shares"
    KEY_SHARES = "key_shares"
    # result
    STATUS = "status"
    REASON = "reason"
    # update (box -> server, plaintext mode): capped n_k and clipped delta, sealed (fl.seal)
    UPDATE = "update"
