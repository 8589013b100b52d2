"""Reconnect policy as data: backoff timing plus one pure error classifier.

Links to wearables drop all the time (a textile unplugged, a BLE peer walking
out of range, BlueZ busy with another connection). Every source reconnects the
same way, so the *when* (``backoff_delay``, shared with the MQTT link in
:mod:`edgeagent.backoff`) and the *whether* (``classify``)
live here as pure functions that are tested as tables, in the style of
bleak-retry-connector. Sources only do the sleeping and the I/O.

Nothing here imports bleak or pyserial: errors are recognised by class name
and message signature so that the table can name errors from any backend.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass
from enum import StrEnum

from edgeagent.backoff import DEFAULT_JITTER, backoff_delay

__all__ = ["DEFAULT_JITTER", "Action", "RetryPolicy", "Verdict", "backoff_delay", "classify"]

# Defaults chosen for wired/BLE wearables on a hub:
# - first retry after ~0.25 s: a USB-serial adapter re-enumerates in ~100-500 ms,
#   so an immediate retry usually fails and a long one wastes data;
# - cap 30 s: a wearable out of range for minutes should not be hammered
#   (BlueZ and the radio are shared), but must be picked up within a window;
# - jitter (edgeagent.backoff.DEFAULT_JITTER): half of each delay is random.
DEFAULT_BASE_S = 0.25
DEFAULT_CAP_S = 30.0
# Retries that are expected to succeed almost at once (a transient "busy")
# wait this long instead of entering the exponential ladder.
FAST_RETRY_S = 0.05


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a source retries a lost link. ``give_up_after=None`` retries forever.

    Sources on a hub retry forever by default: the wearable coming back an
    hour later must still be picked up without an operator.
    """

    base_s: float = DEFAULT_BASE_S
    cap_s: float = DEFAULT_CAP_S
    jitter: float = DEFAULT_JITTER
    give_up_after: int | None = None

    def __post_init__(self) -> None:
        if self.base_s <= 0:
            raise ValueError(f"base_s must be > 0, got {self.base_s}")
        if self.cap_s < self.base_s:
            raise ValueError(f"cap_s ({self.cap_s}) must be >= base_s ({self.base_s})")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")
        if self.give_up_after is not None and self.give_up_after < 1:
            raise ValueError(f"give_up_after must be >= 1 or None, got {self.give_up_after}")

    def delay(self, attempt: int, rng: random.Random | None) -> float:
        """The wait before retry ``attempt`` under this policy."""
        return backoff_delay(attempt, self.base_s, self.cap_s, rng, self.jitter)

    def exhausted(self, attempt: int) -> bool:
        """True once ``attempt`` retries have been spent and the source should give up."""
        return self.give_up_after is not None and attempt >= self.give_up_after


class Action(StrEnum):
    """What a source does after an error."""

    RETRY_FAST = "retry_fast"  # transient: retry after FAST_RETRY_S, do not climb the ladder
    BACKOFF = "backoff"  # link gone: climb the exponential ladder
    GIVE_UP = "give_up"  # retrying cannot help: report and stop


@dataclass(frozen=True, slots=True)
class Verdict:
    """The classifier's answer: an action, a short reason and advice for the operator."""

    action: Action
    reason: str
    advice: str = ""


# Message fragments (lower-case) of transient errors that clear by themselves.
# BlueZ answers "InProgress"/"busy" when another connect is under way and
# aborts LE connections it could not schedule; both succeed on a quick retry.
TRANSIENT_SIGNATURES: frozenset[str] = frozenset(
    {
        "org.bluez.error.inprogress",
        "operation already in progress",
        "le-connection-abort-by-local",
        "resource temporarily unavailable",
        "device or resource busy",
    }
)

# errno values of a path that can never be a serial port (pyserial wraps these
# in SerialException, so they are recognised by errno, not by class).
NOT_A_PORT_ERRNOS: frozenset[int] = frozenset({errno.EISDIR, errno.ENOTDIR, errno.ENOTTY})

# Exception class names (any backend) that mean "the peer is not there now".
GONE_CLASS_NAMES: frozenset[str] = frozenset(
    {
        "SerialException",
        "BleakDeviceNotFoundError",
        "BleakError",
        # bleak-retry-connector's typed give-ups (establish_connection): all "not now"
        "BleakNotFoundError",
        "BleakConnectionError",
        "BleakAbortedError",
        "BleakOutOfConnectionSlotsError",
        "BleakDBusError",
        "TimeoutError",
        "ConnectionError",
        "BrokenPipeError",
    }
)

# errno values of a port that vanished (unplugged USB adapter, closed pty).
GONE_ERRNOS: frozenset[int] = frozenset(
    {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO, errno.EBADF, errno.EPIPE}
)


def classify(exc: BaseException) -> Verdict:
    """Decide how to react to ``exc`` raised while opening or reading a link.

    Pure: looks only at the exception's class, errno and message. Unknown
    errors back off rather than give up, because on a hub an unknown error
    that we stop on loses data until someone restarts the service, while a
    spurious retry costs one log line per ladder step.
    """
    message = str(exc).lower()
    if any(sig in message for sig in TRANSIENT_SIGNATURES):
        return Verdict(Action.RETRY_FAST, "transient: link busy")
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        # udev may still be applying group ownership right after a hot-plug,
        # so keep retrying, but tell the operator the usual cause.
        return Verdict(
            Action.BACKOFF,
            "permission denied",
            "add the service user to the 'dialout' group or fix the udev rule",
        )
    err = getattr(exc, "errno", None)
    if isinstance(exc, IsADirectoryError | NotADirectoryError) or err in NOT_A_PORT_ERRNOS:
        return Verdict(Action.GIVE_UP, "not a device path", "point the source at a tty device")
    if isinstance(exc, ValueError | TypeError):
        # Bad settings (baud rate, port string) never fix themselves.
        return Verdict(Action.GIVE_UP, f"invalid setting: {exc}", "fix the source configuration")
    if err in GONE_ERRNOS:
        return Verdict(Action.BACKOFF, f"device gone (errno {err})")
    if any(cls.__name__ in GONE_CLASS_NAMES for cls in type(exc).__mro__):
        return Verdict(Action.BACKOFF, f"link lost: {type(exc).__name__}")
    if isinstance(exc, OSError):
        return Verdict(Action.BACKOFF, f"I/O error: {exc}")
    return Verdict(Action.BACKOFF, f"unexpected {type(exc).__name__}: {exc}")
