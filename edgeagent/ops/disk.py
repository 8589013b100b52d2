"""Disk space on the state directory: the free-space floor, a reserve file, writability.

Why a reserve: SQLite needs a few pages to commit even one row. On a full
disk nothing commits, alerts included. The daemon keeps a pre-allocated file
(``reserve.bin``, ``outbox.reserve_bytes``) that it deletes the moment an alert
cannot be stored otherwise, so the alert goes in and the operator gets time to
act. Below the floor (``outbox.min_free_bytes``) the outbox refuses status,
telemetry and updates, so that what space remains is spent on alerts.

Why check writability before anything opens: a read-only or missing state
directory otherwise surfaces as a traceback from whichever part touches it
first (SQLite says only "unable to open database file").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_NAME = "reserve.bin"


@dataclass(frozen=True, slots=True)
class DiskState:
    """Free space under a directory against the floor; ``short`` below it."""

    path: str
    free_bytes: int
    floor_bytes: int
    reserve_bytes: int

    @property
    def short(self) -> bool:
        return self.free_bytes < self.floor_bytes

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "free_bytes": self.free_bytes,
            "floor_bytes": self.floor_bytes,
            "reserve_bytes": self.reserve_bytes,
            "short": self.short,
        }

    def describe(self) -> str:
        """One line for logs and fault flags."""
        return (
            f"{self.free_bytes} bytes free under {self.path} "
            f"(floor {self.floor_bytes}, reserve held {self.reserve_bytes})"
        )


def free_bytes(path: Path | str) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system."""
    return int(shutil.disk_usage(path).free)


class DiskReserve:
    """A pre-allocated file in the state directory, given back to let an alert in."""

    def __init__(self, state_dir: Path | str, size: int) -> None:
        self.path = Path(state_dir) / RESERVE_NAME
        self.size = max(0, int(size))
        self.released = 0

    @property
    def held(self) -> int:
        """Bytes the reserve holds now (0 when absent)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def ensure(self, floor_bytes: int = 0) -> bool:
        """Create the reserve if it is missing and the disk can spare it above ``floor_bytes``.

        ``posix_fallocate`` allocates real blocks (a sparse file would reserve
        nothing). Returns True when the reserve is in place.
        """
        if self.size == 0:
            return False
        if self.held >= self.size:
            return True
        try:
            if free_bytes(self.path.parent) < floor_bytes + self.size:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            log.warning("disk reserve %s not created: %s", self.path, exc)
            return False
        return True

    def release(self) -> bool:
        """Delete the reserve (an alert needs the space); True if there was one."""
        n = self.held
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot release the disk reserve %s: %s", self.path, exc)
            return False
        self.released += 1
        log.error(
            "disk full: released the %d-byte reserve %s so alerts can still be stored; "
            "free space on this disk now",
            n,
            self.path,
        )
        return True


def disk_state(path: Path | str, floor_bytes: int, reserve: DiskReserve | None = None) -> DiskState:
    """The free space under ``path`` against ``floor_bytes``."""
    return DiskState(
        str(path), free_bytes(path), floor_bytes, reserve.held if reserve is not None else 0
    )


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's and the kernel's ways of saying the disk is full."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "database or disk is full" in text or "no space left" in text


def check_writable(path: Path | str, what: str) -> str | None:
    """None when the daemon can create ``path`` and write into it, else one line saying why.

    Writes and removes a probe file: permission bits are not enough (root ignores
    them, a read-only mount does not).
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{what} {p} cannot be created: {exc.strerror or exc}"
    if not p.is_dir():
        return f"{what} {p} is not a directory"
    probe = p / f".edgeagent-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EROFS:
            reason = "read-only file system"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            reason = f"permission denied for uid {os.geteuid()}"
        elif exc.errno == errno.ENOSPC:
            reason = "no space left on the device"
        return f"{what} {p} is not writable: {reason}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None
