"""Liveness: is every part of the daemon doing its job, or knowingly idle?

systemd's watchdog restarts a service that stops pinging. A bare timer thread
would keep pinging while the pipeline is wedged, so the daemon pings only
when :meth:`Liveness.check` says every registered component is alive:

* it made progress recently (processed a block, sent a message), or
* it reported *idle* recently with nothing pending (no device in range, empty
  queue) — its loop ran and found no work, which is healthy.

A component that reports a backlog but makes no progress, or that stops
reporting at all (hung thread, deadlock), is *stalled* after
``stall_after_s``. The tracker is pure bookkeeping over an injectable clock,
thread-safe, and does no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Entry:
    stall_after_s: float
    last_progress: float
    last_idle: float | None = None
    backlog: int = 0
    progress_total: int = 0
    note: str = ""


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    """One component's state as the watchdog sees it."""

    name: str
    state: str  # "active" | "idle" | "stalled"
    since_progress_s: float
    backlog: int
    progress_total: int
    note: str = ""


@dataclass(frozen=True, slots=True)
class LivenessReport:
    """The verdict of one check: ``ok`` is what gates a WATCHDOG=1 ping."""

    ok: bool
    components: tuple[ComponentHealth, ...] = field(default_factory=tuple)

    @property
    def stalled(self) -> list[str]:
        return [c.name for c in self.components if c.state == "stalled"]

    def summary(self) -> str:
        """One line for sd_notify STATUS and logs."""
        if not self.components:
            return "no components"
        if self.ok:
            active = sum(c.state == "active" for c in self.components)
            return f"{active} active, {len(self.components) - active} idle"
        return "stalled: " + ", ".join(self.stalled)


class Liveness:
    """Components report progress/idle/backlog; the supervisor asks :meth:`check`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, stall_after_s: float) -> None:
        """Start tracking ``name``; registration counts as progress (a start-up grace period)."""
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be positive")
        with self._lock:
            self._entries[name] = _Entry(stall_after_s=stall_after_s, last_progress=self._clock())

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"component {name!r} is not registered with the liveness tracker"
            ) from None

    def progress(self, name: str, n: int = 1, backlog: int | None = None) -> None:
        """``name`` did ``n`` units of work; optionally update what is still pending."""
        with self._lock:
            e = self._entry(name)
            e.last_progress = self._clock()
            e.progress_total += n
            if backlog is not None:
                e.backlog = max(0, backlog)

    def idle(self, name: str, note: str = "") -> None:
        """``name``'s loop ran and found nothing to do (this clears its backlog)."""
        with self._lock:
            e = self._entry(name)
            e.last_idle = self._clock()
            e.backlog = 0
            e.note = note

    def backlog(self, name: str, depth: int) -> None:
        """Work is waiting for ``name`` (e.g. queue depth); it must progress to stay alive."""
        with self._lock:
            self._entry(name).backlog = max(0, depth)

    def check(self, now: float | None = None) -> LivenessReport:
        """Classify every component; ``ok`` only when none is stalled."""
        now = self._clock() if now is None else now
        out: list[ComponentHealth] = []
        with self._lock:
            for name, e in sorted(self._entries.items()):
                since = now - e.last_progress
                if since <= e.stall_after_s:
                    state = "active"
                elif (
                    e.backlog == 0
                    and e.last_idle is not None
                    and now - e.last_idle <= e.stall_after_s
                ):
                    state = "idle"
                else:
                    state = "stalled"
                out.append(
                    ComponentHealth(
                        name=name,
                        state=state,
                        since_progress_s=round(since, 3),
                        backlog=e.backlog,
                        progress_total=e.progress_total,
                        note=e.note,
                    )
                )
        return LivenessReport(ok=all(c.state != "stalled" for c in out), components=tuple(out))
