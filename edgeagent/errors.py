"""One root error for the agent; subclasses carry the fields a caller acts on.

Errors say who broke what and how to fix it, so the CLI can print them as-is.
"""

from __future__ import annotations


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

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class PkiError(EdgeAgentError):
    """Fleet certificate material is missing, invalid, or a name cannot be issued."""


class BrokerError(EdgeAgentError):
    """The local Mosquitto broker cannot be started or stopped (not installed, bad config)."""


class TransportError(EdgeAgentError):
    """An MQTT link operation failed (not connected, refused by the broker, closed)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class OutboxError(EdgeAgentError):
    """The store-and-forward outbox refused a message or its database is unusable."""
