"""systemd's sd_notify protocol without python-systemd.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means Linux's
abstract namespace). Message building is pure (:func:`build`); sending is a
tiny :class:`Notifier` that is a no-op outside systemd, so the daemon calls it
unconditionally and runs the same way under a terminal, a test and systemd.
See sd_notify(3).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

# sd_notify(3) reads at most this many bytes per datagram into its buffer; a
# longer STATUS would be cut by systemd anyway, so we cut it ourselves, visibly.
MAX_STATUS_CHARS = 1024


def _clean(value: str) -> str:
    """Values are single-line; a newline would start a new (forged) assignment."""
    text = " ".join(str(value).splitlines())
    if len(text) > MAX_STATUS_CHARS:
        text = text[: MAX_STATUS_CHARS - 3] + "..."
    return text


def build(
    *,
    ready: bool = False,
    reloading: bool = False,
    stopping: bool = False,
    watchdog: bool = False,
    watchdog_trigger: bool = False,
    status: str | None = None,
    errno: int | None = None,
    mainpid: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """Build one notification datagram; raises ValueError for an empty message or bad key."""
    lines: list[str] = []
    if ready:
        lines.append("READY=1")
    if reloading:
        lines.append("RELOADING=1")
    if stopping:
        lines.append("STOPPING=1")
    if watchdog:
        lines.append("WATCHDOG=1")
    if watchdog_trigger:
        lines.append("WATCHDOG=trigger")
    if status is not None:
        lines.append(f"STATUS={_clean(status)}")
    if errno is not None:
        lines.append(f"ERRNO={int(errno)}")
    if mainpid is not None:
        lines.append(f"MAINPID={int(mainpid)}")
    for key, value in (extra or {}).items():
        if not key or not key.replace("_", "").isalnum() or not key.isupper():
            raise ValueError(f"sd_notify keys are upper-case letters, digits and '_': {key!r}")
        lines.append(f"{key}={_clean(value)}")
    if not lines:
        raise ValueError("an sd_notify message needs at least one assignment")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse(datagram: bytes) -> dict[str, str]:
    """Parse a datagram back into assignments (used by tests and by ``doctor``)."""
    out: dict[str, str] = {}
    for line in datagram.decode("utf-8").splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not an assignment: {line!r}")
        out[key] = value
    return out


def socket_address(value: str) -> str | bytes:
    """Map ``$NOTIFY_SOCKET`` to an AF_UNIX address (``@name`` is abstract)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if not value.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET must be an absolute path or @abstract: {value!r}")
    return value


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog period in seconds systemd expects, or None when none is armed.

    Honours ``WATCHDOG_PID``: the timeout is meant only for that process, so a
    helper started by the daemon does not ping on its behalf.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid and int(wpid) != (os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Notifier:
    """Sends sd_notify datagrams; silently does nothing when not under systemd.

    Failures to send are counted, not raised: a notification must never take
    the daemon down (systemd will act on the missing READY/WATCHDOG itself).
    """

    def __init__(self, address: str | None = None) -> None:
        raw = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | bytes | None = socket_address(raw) if raw else None
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, datagram: bytes) -> bool:
        """Send one prepared datagram; True when it left the process."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(datagram, self.address)
        except OSError:
            self.failed += 1
            return False
        self.sent += 1
        return True

    def notify(self, **fields: object) -> bool:
        """``notify(ready=True, status="...")``: build and send (see :func:`build`)."""
        return self.send(build(**fields))  # type: ignore[arg-type]

    def ready(self, status: str | None = None) -> bool:
        return self.notify(ready=True, status=status, mainpid=os.getpid())

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def watchdog(self) -> bool:
        return self.notify(watchdog=True)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(stopping=True, status=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
