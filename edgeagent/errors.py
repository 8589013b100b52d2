"""One root error for the agent; subclasses carry the fields a caller acts on.

Errors say who broke what and how to fix it, so the CLI can print them as-is.
Protocol and transport errors carry a *reason* from a closed set (bleak's
style): reasons are counted, logged, documented and printed by ``--json``, so a
typo in a new reason must fail at once rather than open a new counter silently.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

_R = TypeVar("_R", bound=StrEnum)


class ProtocolReason(StrEnum):
    """Why a federated-protocol message was refused (docs/wire-protocol.md)."""

    # envelope and schema
    MALFORMED = "malformed"  # not a decodable envelope, or header fields of the wrong type
    BAD_BODY = "bad_body"  # the body does not match the stage's schema
    OVERSIZED = "oversized"  # larger than the stage allows
    BAD_INPUT = "bad_input"  # a value out of range inside an otherwise valid body
    TOPIC_MISMATCH = "topic_mismatch"  # the envelope names another sender or stage than its topic
    # who sent it
    BAD_SIGNATURE = "bad_signature"  # the Ed25519 signature does not verify
    BAD_CERTIFICATE = "bad_certificate"  # the sender's identity certificate is unusable
    FOREIGN_CA = "foreign_ca"  # the certificate was not issued by this fleet's CA
    EXPIRED = "expired"  # the certificate is outside its validity period
    WRONG_IDENTITY = "wrong_identity"  # the certificate names another box than the sender
    IMPERSONATION = "impersonation"  # a box signs as another box or as the aggregator
    UNEXPECTED_SENDER = "unexpected_sender"  # the sender is not a participant of this round
    UNKNOWN_SENDER = "unknown_sender"  # no identity key is known for the sender
    WRONG_DESTINATION = "wrong_destination"  # addressed to another party
    BAD_VERSION = "bad_version"  # an envelope version this party does not speak
    REVOKED = "revoked"  # the sender is on the deny-list (edgeagent pki revoke)
    # when it came
    REPLAY = "replay"  # a (sender, sequence) seen before in this round, or a nonce seen before
    OUT_OF_WINDOW = "out_of_window"  # a signed message whose time is too far from the receiver's
    OUT_OF_ORDER = "out_of_order"  # a stage that may not follow the current one
    OUT_OF_ROUND = "out_of_round"  # another round id or nonce than the open round's
    STALE_NONCE = "stale_nonce"  # the open round's id with another (older) nonce
    WRONG_STAGE = "wrong_stage"  # a reply for a stage that is not open
    WRONG_MODE = "wrong_mode"  # a SecAgg message in a plaintext round, or the reverse
    DUPLICATE_REPLY = "duplicate_reply"  # a second reply of one box to one stage
    LATE_PARTIAL = "late_partial"  # an intake worker's partial sum after the stage closed
    DUPLICATE_PARTIAL = "duplicate_partial"  # the same partial sum twice
    BAD_PARTIAL = "bad_partial"  # a partial sum that does not verify or names unknown boxes
    # secure aggregation
    BAD_KEY = "bad_key"  # a public key that is malformed or repeated
    DUPLICATE_KEY = "duplicate_key"  # a round key that another box (or this one) already uses
    BAD_SHARE_INDEX = "bad_share_index"  # a Shamir index other than the one that holder got
    INCONSISTENT = "inconsistent"  # fewer than t share holders signed this box's survivor set
    PRIVACY_FLOOR = "privacy_floor"  # clip, n_cap or DP noise weaker than the box's own
    BAD_SHARE = "bad_share"  # a share that fails decryption, routing or size checks
    UNDECRYPTABLE = "undecryptable"  # a sealed payload this party cannot open
    BAD_GRAPH = "bad_graph"  # the neighbour graph is not what the round's seed gives
    BAD_GROUPS = "bad_groups"  # the robust groups are not what the round's seed gives
    BELOW_THRESHOLD = "below_threshold"  # fewer parties than the threshold t
    UNKNOWN_CERTIFICATE = "unknown_certificate"  # a fingerprint of a certificate never received
    BAD_REVEAL = "bad_reveal"  # a round contribution that does not match its commitment
    MISSING_REVEAL = "missing_reveal"  # a committed box's contribution is absent: round aborts
    GRINDING_LIMIT = "grinding_limit"  # too many rounds aborted after this box revealed
    UNSAFE_UNMASK = "unsafe_unmask"  # asked for both secrets of one box
    NO_INPUT = "no_input"  # a stage needs this box's input and it has none
    BAD_MASK = "bad_mask"  # the announced parameter mask is unknown or unusable to this box
    # models
    HASH_MISMATCH = "hash_mismatch"  # the model's bytes do not hash to the announced value
    BAD_MODEL_SIGNATURE = "bad_model_signature"  # the model's signature does not verify
    STALE_MODEL = "stale_model"  # a model older than the one the box runs


class FeedbackReason(StrEnum):
    """Why a clinician's verdict on an alert was refused (nothing is trained on it)."""

    UNKNOWN_ALERT = "unknown_alert"  # no windows kept for that id (never raised, or a system alert)
    EXPIRED = "expired"  # older than ``[feedback] retention_s``: its windows are gone
    ALREADY_ACKED = "already_acked"  # the alert has a verdict; the first one stands
    BAD_KIND = "bad_kind"  # the kind (given or the alert's own) is not a class of the model
    UNKNOWN_PATIENT = "unknown_patient"  # a patient this box does not serve
    PATIENT_MISMATCH = "patient_mismatch"  # the verdict names another patient than the alert's
    RATE_LIMITED = "rate_limited"  # the patient's token bucket is empty (a flood of feedback)
    MALFORMED = "malformed"  # a field missing, of the wrong type, or too long
    OVERSIZED = "oversized"  # the request is larger than a verdict can be
    UNAVAILABLE = "unavailable"  # the feedback store is closed (the daemon is stopping)


class TransportReason(StrEnum):
    """Why an MQTT link operation failed."""

    CONNECT_FAILED = "connect_failed"  # TCP, TLS or CONNACK failed
    CLOSED = "closed"  # the link was closed by this side
    BAD_TLS_FILES = "bad_tls_files"  # CA, certificate or key unreadable
    NO_TLS = "no_tls"  # a broker link without TLS where TLS is required
    BAD_TOPIC = "bad_topic"
    BAD_TOPIC_LEVEL = "bad_topic_level"
    BAD_QOS = "bad_qos"
    BAD_PUBLISH = "bad_publish"
    PUBLISH_FAILED = "publish_failed"  # the broker refused or the client could not queue
    ACK_TIMEOUT = "ack_timeout"  # no PUBACK in time
    SUBSCRIBE_FAILED = "subscribe_failed"
    SUBSCRIBE_REFUSED = "subscribe_refused"  # SUBACK with a failure code (ACL)
    NO_STATUS = "no_status"
    NO_FEDERATION = "no_federation"  # the config enables no federation
    INTAKE_WORKER = "intake_worker"  # an intake worker process failed
    SIM_NOT_READY = "sim_not_ready"
    SIM_TIMEOUT = "sim_timeout"


class EdgeAgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """A configuration value is missing or invalid."""

    def __init__(self, key: str, value: object, problem: str) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        super().__init__(f"config key {key!r} = {value!r}: {problem}")


class RecordingError(EdgeAgentError):
    """A recording directory or one of its files cannot be read as documented."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class FrameError(EdgeAgentError):
    """A device frame failed validation (CRC, length, type, schema)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ModelError(EdgeAgentError):
    """A model file is corrupt, tampered with, or does not fit the pipeline."""


class ProtocolError(EdgeAgentError):
    """A federated-protocol message was malformed, forged, replayed or out of order."""

    def __init__(self, reason: ProtocolReason | str, detail: str = "") -> None:
        self.reason = _reason(ProtocolReason, reason)
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _reason(kind: type[_R], reason: _R | str) -> _R:
    """``reason`` as a member of ``kind``; a string outside the set is a programming error."""
    try:
        return kind(reason)
    except ValueError:
        raise TypeError(f"{reason!r} is not a {kind.__name__}; add it there") from None


class FeedbackError(EdgeAgentError):
    """A verdict on an alert was refused; ``reason`` says why (a :class:`FeedbackReason`)."""

    def __init__(self, reason: FeedbackReason | str, detail: str = "") -> None:
        self.reason = _reason(FeedbackReason, reason)
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class PkiError(EdgeAgentError):
    """Fleet certificate material is missing, invalid, or a name cannot be issued."""


class BrokerError(EdgeAgentError):
    """The local Mosquitto broker cannot be started or stopped (not installed, bad config)."""


class TransportError(EdgeAgentError):
    """An MQTT link operation failed (not connected, refused by the broker, closed)."""

    def __init__(self, reason: TransportReason | str, detail: str = "") -> None:
        self.reason = _reason(TransportReason, reason)
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class OutboxError(EdgeAgentError):
    """The store-and-forward outbox refused a message or its database is unusable."""


class ConfigErrors(ConfigError):
    """Several configuration values are invalid at once; ``errors`` lists each one.

    Reporting all of them in one go saves a field engineer a fix-rerun loop per key.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.key, first.value, first.problem)
        self.errors = errors
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class ControlError(EdgeAgentError):
    """The daemon's local control socket is unreachable or answered with an error."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"control socket {path}: {problem}")


class RoundAborted(EdgeAgentError):
    """A federated round cannot finish (too many dropouts, failed reconstruction).

    The round's inputs stay masked; the aggregator starts the next round.
    """

    def __init__(self, round_id: int, stage: str, reason: str) -> None:
        self.round_id = round_id
        self.stage = stage
        self.reason = reason
        super().__init__(f"round {round_id} aborted at {stage}: {reason}")


class SourceError(EdgeAgentError):
    """A data source gave up on its device (retrying cannot help; ``advice`` says why)."""

    def __init__(self, device: str, reason: str, advice: str = "") -> None:
        self.device = device
        self.reason = reason
        self.advice = advice
        super().__init__(f"{device}: {reason}" + (f" ({advice})" if advice else ""))


class InstallError(EdgeAgentError):
    """``edgeagent service install|uninstall`` cannot do a step (``target`` says which)."""

    def __init__(self, target: str, problem: str) -> None:
        self.target = target
        self.problem = problem
        super().__init__(f"{target}: {problem}")


class BenchError(EdgeAgentError):
    """A hardware-in-the-loop bench description is invalid (``key`` names the setting)."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"bench {key}: {problem}")
