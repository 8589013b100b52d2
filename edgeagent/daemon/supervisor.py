"""The daemon: a Supervisor that starts, watches and cleanly stops components.

Everything the box runs (sources, pipeline, learner, federated client,
transport) is a :class:`Component` with ``start()``, ``stop()`` and
``status()``. Components are built from the config by the composition root
(``daemon.wiring``), so wiring a new part in never edits the supervisor's loop.

The supervisor owns the process-level duties: SIGTERM/SIGINT handling, the
sd_notify READY/STATUS/WATCHDOG/STOPPING conversation, the liveness-gated
watchdog, the control socket, and the periodic status snapshot (written
atomically to ``state_dir/status.json`` and handed to status sinks such as
the MQTT publisher). Shutdown stops components in reverse start order, each
bounded in time, so data producers stop before the consumers that flush them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgeagent import __version__
from edgeagent.atomic import write_atomic
from edgeagent.daemon.components import (
    DEFAULT_ORDER,
    Component,
    Counters,
)
from edgeagent.daemon.control import ControlServer
from edgeagent.daemon.health import Liveness, LivenessReport
from edgeagent.daemon.sdnotify import Notifier, watchdog_interval
from edgeagent.daemon.telemetry import OutboxStats, ProcessStats, build_status
from edgeagent.ops.config import Config

log = logging.getLogger(__name__)

# A stop() that takes longer than this is abandoned (logged) so the rest still
# flush before systemd's TimeoutStopSec escalates to SIGKILL.
DEFAULT_STOP_TIMEOUT_S = 10.0
# All stops together stay inside this, under the unit's TimeoutStopSec=30s, so
# the final status.json is written before systemd's SIGKILL.
DEFAULT_STOP_BUDGET_S = 20.0
# Upper bound of the supervisor's sleep: how fast it notices ticks and signals.
MAX_TICK_S = 1.0


def sample_process(proc: Any = None) -> ProcessStats | None:
    """CPU/memory of this process via psutil (None if psutil cannot read it)."""
    try:
        import psutil

        p = proc or psutil.Process()
        with p.oneshot():
            try:
                nfiles = len(p.open_files())
            except psutil.Error:
                nfiles = 0
            return ProcessStats(
                cpu_percent=float(p.cpu_percent(interval=None)),
                rss_bytes=int(p.memory_info().rss),
                memory_percent=round(float(p.memory_percent()), 3),
                threads=int(p.num_threads()),
                open_files=nfiles,
            )
    except Exception:  # telemetry must never take the daemon down
        return None


class Supervisor:
    """Runs components under one process with systemd integration.

    ``components`` are started in order and stopped in reverse. ``clock`` and
    ``wall`` are injectable for tests; nothing else about the loop is faked.
    """

    def __init__(
        self,
        config: Config,
        components: list[Component] | None = None,
        *,
        notifier: Notifier | None = None,
        liveness: Liveness | None = None,
        counters: Counters | None = None,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        stop_budget_s: float = DEFAULT_STOP_BUDGET_S,
        control: bool = True,
    ) -> None:
        self.config = config
        self.components: list[Component] = sorted(
            components or [], key=lambda c: getattr(c, "order", DEFAULT_ORDER)
        )
        self.notifier = notifier or Notifier()
        self.liveness = liveness or Liveness()
        self.counters = counters or Counters()
        self.stop_timeout_s = stop_timeout_s
        self.stop_budget_s = stop_budget_s
        self.status_sinks: list[Callable[[dict[str, Any]], None]] = []
        self.state = "created"
        self._status_write_error = ""
        self.started_at = time.time()
        self.watchdog_s = watchdog_interval()
        self.watchdog_pings = 0
        self.watchdog_withheld = 0
        self.last_report: LivenessReport | None = None
        self._started: list[Component] = []
        self._stop_event = threading.Event()
        self._stop_reason = ""
        self._last_status_text = ""
        self._proc: Any = None
        with contextlib.suppress(Exception):
            import psutil

            # One Process object: cpu_percent() measures since the previous call on it.
            self._proc = psutil.Process()
            self._proc.cpu_percent(interval=None)
        handlers: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "status": lambda _r: self.snapshot(),
            "counters": lambda _r: self.all_counters(),
        }
        for comp in self.components:  # e.g. the transport's "flush" for `edgeagent outbox flush`
            commands = getattr(comp, "commands", None)
            if commands is not None:
                handlers.update(commands())
        self._control = ControlServer(config.control.socket_path, handlers) if control else None

    # -- lifecycle ---------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to shut down (safe from signal handlers and other threads)."""
        if not self._stop_event.is_set():
            self._stop_reason = reason
            self._stop_event.set()

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, lambda s, _f: self.request_stop(signal.Signals(s).name))
        return previous

    def run(self) -> int:
        """Start everything, supervise until a stop is requested, stop cleanly.

        Returns the process exit code: 0 after a requested stop with every
        component stopped in time, 1 when start-up failed or a stop timed out.
        """
        previous = self._install_signals()
        code = 0
        try:
            code = self._start_all()
            if code == 0:
                self._loop()
        finally:
            code = max(code, self._stop_all())
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.notifier.close()
        return code

    def _start_all(self) -> int:
        self.state = "starting"
        self.notifier.status("starting")
        try:
            if self._control is not None:
                self._control.start()
            for comp in self.components:
                log.info("starting %s", comp.name)
                comp.start()
                self._started.append(comp)
        except Exception as exc:
            log.error("start-up failed: %s", exc)
            self.notifier.status(f"start-up failed: {exc}")
            self.state = "failed"
            return 1
        self.state = "running"
        self.notifier.ready(status=f"running {len(self._started)} components")
        log.info("edgeagent %s running with %d components", __version__, len(self._started))
        return 0

    def _loop(self) -> None:
        next_status = time.monotonic()
        next_ping = time.monotonic()
        tick = MAX_TICK_S
        if self.watchdog_s:
            tick = min(tick, self.watchdog_s / 4)
        while not self._stop_event.is_set():
            now = time.monotonic()
            for comp in self._started:
                t = getattr(comp, "tick", None)
                if callable(t):
                    try:
                        t()
                    except Exception:
                        log.exception("tick of %s failed", comp.name)
            report = self.liveness.check()
            self._on_liveness(report)
            if self.watchdog_s and now >= next_ping:
                if report.ok:
                    self.notifier.watchdog()
                    self.watchdog_pings += 1
                else:
                    # No ping: systemd restarts us after WatchdogSec, which is the point.
                    self.watchdog_withheld += 1
                next_ping = now + self.watchdog_s / 2
            if now >= next_status:
                self.publish_status()
                next_status = now + self.config.status.interval_s
            self._stop_event.wait(tick)
        log.info("stopping: %s", self._stop_reason)

    def _on_liveness(self, report: LivenessReport) -> None:
        prev = self.last_report
        self.last_report = report
        text = report.summary()
        if (prev is None or prev.ok != report.ok) and not report.ok:
            log.error("liveness: %s", text)
        if text != self._last_status_text:
            self._last_status_text = text
            self.notifier.status(text)

    def _stop_one(self, comp: Component, timeout: float) -> bool:
        done = threading.Event()
        err: list[BaseException] = []

        def target() -> None:
            try:
                comp.stop()
            except BaseException as exc:
                err.append(exc)
            finally:
                done.set()

        threading.Thread(target=target, name=f"stop:{comp.name}", daemon=True).start()
        if not done.wait(timeout):
            log.error("%s did not stop within %.1f s; abandoning it", comp.name, timeout)
            return False
        if err:
            log.error("%s failed to stop cleanly: %s", comp.name, err[0])
            return False
        return True

    def _stop_all(self) -> int:
        if self.state == "stopped":
            return 0
        self.state = "stopping"
        self.notifier.stopping(status=f"stopping: {self._stop_reason or 'start-up failed'}")
        ok = True
        deadline = time.monotonic() + self.stop_budget_s
        for comp in reversed(self._started):
            log.info("stopping %s", comp.name)
            left = max(0.05, min(self.stop_timeout_s, deadline - time.monotonic()))
            ok = self._stop_one(comp, left) and ok
        self._started.clear()
        if self._control is not None:
            self._control.stop()
        self.state = "stopped"
        self.publish_status()
        return 0 if ok else 1

    # -- status -----------------------------------------------------------------

    def all_counters(self) -> dict[str, int]:
        """Counters from the process and every component's status()."""
        out = self.counters.snapshot()
        out["watchdog_pings"] = self.watchdog_pings
        out["watchdog_withheld"] = self.watchdog_withheld
        for comp in self.components:
            for k, v in _safe_status(comp).get("counters", {}).items():
                out[k] = out.get(k, 0) + int(v)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The status snapshot (see telemetry.build_status) of this moment."""
        links: dict[str, Mapping[str, Any]] = {}
        outbox: OutboxStats | None = None
        model_version: str | None = None
        last_round: int | str | None = None
        inference: dict[str, Any] | None = None  # the detector's backend (edgeagent.providers)
        components: dict[str, Any] = {}
        degraded: list[str] = []  # why the box works but is not doing its job (say, 0x87)
        for comp in self.components:
            st = _safe_status(comp)
            components[comp.name] = st
            links.update(st.get("links", {}))
            if "outbox" in st:
                ob = st["outbox"]
                outbox = ob if isinstance(ob, OutboxStats) else OutboxStats(**ob)
            degraded.extend(str(r) for r in st.get("degraded", ()))
            model_version = st.get("model_version", model_version)
            last_round = st.get("last_round", last_round)
            inference = st.get("inference") or inference
        snap = build_status(
            box_id=self.config.agent.box_id,
            fleet=self.config.agent.fleet,
            version=__version__,
            started_at=self.started_at,
            now=time.time(),
            state=self.state,
            model_version=model_version,
            links=links,
            outbox=outbox,
            counters=self.all_counters(),
            process=sample_process(self._proc),
            last_round=last_round,
            liveness=self.last_report or self.liveness.check(),
        )
        snap["watchdog_s"] = self.watchdog_s
        snap["degraded"] = degraded
        if inference is not None:
            snap["inference"] = inference
        # Whatever else a component reports (transport, detection, learner, federation
        # detail), so the operator sees it without a schema change for each part.
        details = {
            name: {k: v for k, v in st.items() if k not in _SNAPSHOT_KEYS}
            for name, st in components.items()
        }
        snap["components"] = {name: d for name, d in details.items() if d}
        return snap

    def publish_status(self) -> None:
        """Write status.json atomically and hand the snapshot to every sink."""
        snap = self.snapshot()
        try:
            write_atomic(
                self.config.agent.state_dir / "status.json",
                json.dumps(snap, indent=1, default=str).encode(),
            )
        except OSError as exc:
            self.counters.add("status_write_errors")
            if str(exc) != self._status_write_error:  # once per kind, not once a second
                log.warning("cannot write status.json: %s", exc)
            self._status_write_error = str(exc)
        else:
            self._status_write_error = ""
        for sink in self.status_sinks:
            try:
                sink(snap)
            except Exception:
                self.counters.add("status_sink_errors")
                log.exception("status sink %r failed", sink)


#: Component status keys the snapshot folds into its own fields.
_SNAPSHOT_KEYS = frozenset(
    {"links", "outbox", "counters", "model_version", "last_round", "inference", "degraded"}
)


def _safe_status(comp: Component) -> dict[str, Any]:
    try:
        return dict(comp.status())
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
