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
