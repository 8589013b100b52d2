"""Detection and local learning as daemon components.

Windows per patient, the ONNX detector, model checks and hot swaps serialised under one
lock, and the learner's thread with its state persisted across restarts.
"""

from __future__ import annotations

import io
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.atomic import write_atomic
from edgeagent.daemon.components import (
    Counters,
)
from edgeagent.daemon.health import Liveness
from edgeagent.daemon.outbound import AlertRelay
from edgeagent.errors import EdgeAgentError, ModelError
from edgeagent.streams import Gap, SampleBlock

log = logging.getLogger(__name__)


ORDER_DETECTION = 35


ORDER_LEARNER = 37


#: How often the detection component asks the registry which model is active
#: (``edgeagent model activate``/``rollback`` from the CLI take effect this fast).
REGISTRY_CHECK_S = 5.0


LEARNER_STATE = "learner_state.npz"


class DetectionComponent:
    """Per-patient windows -> features -> detector, fed by the pipeline thread.

    ``consume`` runs on the pipeline thread for every block and gap; ``tick``
    (supervisor thread, ~1 s) closes windows whose streams went quiet (the
    windower's lateness rule) and asks the registry whether another model was
    activated. One lock serialises both, since windowers are single-threaded.
    """

    name = "detection"
    order = ORDER_DETECTION

    def __init__(
        self,
        detector: Any,
        relay: AlertRelay,
        patient_of: Mapping[str, str],
        make_windower: Callable[[str], Any],
        counters: Counters,
        *,
        manager: Any = None,
        learner: Any = None,
        clock: Callable[[], float] = time.time,
        registry_check_s: float = REGISTRY_CHECK_S,
        fallback: str | None = None,
    ) -> None:
        self.detector = detector
        self.relay = relay
        self._last_check_error = ""
        self.patient_of = dict(patient_of)
        self.make_windower = make_windower
        self.counters = counters
        self.manager = manager
        self.learner = learner
        self.clock = clock
        self.registry_check_s = registry_check_s
        self.windowers: dict[str, Any] = {}
        self.windows = 0
        self.unknown_device = 0
        self.swaps: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        #: Held by registry checks and by federated model installs (``SerialManager``),
        #: so a check never sees a model swapped in but not yet activated and swaps back.
        self.model_lock = threading.Lock()
        self._next_check = 0.0
        #: Why the detector runs a fallback model instead of the registry's active one.
        self.fallback = fallback
        #: True when the learner trains from the running model; False when it trains from
        #: the fleet's global model (set by the wiring when the box takes part in rounds:
        #: the aggregator needs updates against the announced global, whatever runs here).
        self.learner_follows_registry = True
        if manager is not None:
            manager.on_change = self._on_model_change

    def _windower(self, device: str) -> Any | None:
        patient = self.patient_of.get(device)
        if patient is None:
            self.unknown_device += 1
            return None
        w = self.windowers.get(patient)
        if w is None:
            w = self.windowers[patient] = self.make_windower(patient)
        return w

    def consume(self, item: SampleBlock | Gap) -> None:
        """Pipeline consumer: buffer the item and score every window it completes."""
        with self._lock:
            w = self._windower(item.device)
            if w is None:
                return
            if isinstance(item, SampleBlock):
                w.push(item)
            else:
                w.push_gap(item)
            self._score(w.pop_ready(self.clock()))

    def _score(self, windows: list[Any]) -> None:
        for win in windows:
            try:
                self.detector.process(win)
            except ModelError as exc:
                self.counters.add("detection_errors")
                log.error("window %s@%.1f not scored: %s", win.patient, win.start, exc)
            self.windows += 1

    def tick(self) -> None:
        now = self.clock()
        with self._lock:
            for w in self.windowers.values():
                self._score(w.pop_ready(now))
        mono = time.monotonic()
        if self.manager is not None and mono >= self._next_check:
            self._next_check = mono + self.registry_check_s
            self.check_registry()

    def check_registry(self) -> None:
        """Follow the registry's active model (CLI activate/rollback) and probation checks."""
        with self.model_lock:
            self._check_registry()
        del self.swaps[:-20]

    def _check_registry(self) -> None:
        mgr = self.manager
        try:
            active = mgr.registry.active()
            if active is not None and active.label != self.detector.model_label:
                data = mgr.registry.load_bytes(active)
                self.detector.swap(data, active.label)
                self._reset_learner(mgr.registry, active)
                self.fallback = None  # someone chose a model: no longer running a fallback
                self.swaps.append({"label": active.label, "t": round(time.time(), 3)})
                log.info("detector now runs %s (activated in the registry)", active.label)
            res = mgr.probation_check()
            if res is not None:
                log.info("model probation: %s", res.as_dict())
                self.swaps.append({"probation": res.as_dict(), "t": round(time.time(), 3)})
        except (EdgeAgentError, sqlite3.Error) as exc:
            # sqlite3.Error: the registry cannot even open on a full or failing disk; the
            # running model keeps running, and the next check tries again.
            self.counters.add("model_check_errors")
            text = f"{type(exc).__name__}: {exc}"
            if text != self._last_check_error:
                log.error("model check failed, keeping %s: %s", self.detector.model_label, text)
            self._last_check_error = text
        else:
            self._last_check_error = ""

    def _on_model_change(self, rec: Any, what: str) -> None:
        log.info("model %s: detector now runs %s", what, rec.label)
        if what == "promoted" and self._learner_trains_from(self.manager.registry, rec):
            # The fleet's global, judged in shadow and now promoted: the learner has
            # trained from it since it arrived (the federated client reset it then), and
            # that progress is what the next round expects. Restarting would only drop it.
            self.counters.add("learner_kept")
            return
        self._reset_learner(self.manager.registry, rec)

    def _learner_trains_from(self, registry: Any, rec: Any) -> bool:
        if self.learner is None or self.learner_follows_registry:
            return False
        try:
            return bool(np.array_equal(registry.load_params(rec), self.learner.w_global))
        except (ValueError, EdgeAgentError):
            return False

    def _reset_learner(self, registry: Any, rec: Any) -> None:
        """Restart the learner on every change of the running model (activation or rollback).

        A candidate in shadow is no change: nothing it does runs, and a rejected one
        leaves the learner's progress as it was."""
        if self.learner is None:
            return
        self.counters.add("learner_restarts")
        try:
            if self.learner_follows_registry:
                self.learner.reset_global(registry.load_params(rec))
            else:
                self.learner.restart()
        except (ValueError, EdgeAgentError) as exc:
            # A different architecture: the learner cannot continue from it.
            self.counters.add("learner_reset_errors")
            log.error("learner keeps its old model: %s", exc)

    def start(self) -> None:
        self.relay.start()
        if self.fallback is not None:
            self._alert_fallback(self.fallback)

    def _alert_fallback(self, why: str) -> None:
        """A system alert: the fleet must hear that this box runs another model."""
        from edgeagent.pipeline.alerts import Alert

        now = self.clock()
        alert = Alert(
            patient="", device="", start=now, end=now, kind="model_fallback",
            category="system", score=1.0, modality="", model=self.detector.model_label,
            detail={"reason": why},
        )  # fmt: skip
        self.relay.add(alert)
        self.relay.extend(alert.id, now, 1.0, closed=True)

    def stop(self) -> None:
        """Score the windows that can close now; partial windows are not scored."""
        with self._lock:
            for w in self.windowers.values():
                self._score(w.pop_ready(self.clock()))
            self.relay.close_open("shutdown")
        self.relay.store.close()

    def status(self) -> Mapping[str, Any]:
        d = dict(self.detector.counters)
        wc: dict[str, int] = {}
        for w in list(self.windowers.values()):
            for k, v in w.counters.as_dict().items():
                wc[k] = wc.get(k, 0) + int(v)
        backend = self.detector.backend
        return {
            "degraded": [f"model fallback: {self.fallback}"] if self.fallback else [],
            "model_version": self.detector.model_label,
            "inference": backend.as_dict() if backend is not None else None,
            "detection": {
                "patients": sorted(self.windowers),
                "windows": wc,
                "swaps": list(self.swaps),
                "shadow": self.manager.shadow.record.label
                if self.manager is not None and self.manager.shadow is not None
                else None,
                "shadow_tally": self._shadow_status(),
            },
            "counters": {
                "detection_windows": self.windows,
                "detection_scored": d.get("windows", 0),
                "detection_no_data": d.get("no_data", 0),
                "detection_alerts": d.get("alerts", 0),
                "detection_swaps": d.get("swaps", 0),
                "detection_shadow_windows": d.get("shadow_windows", 0),
                "detection_unknown_device": self.unknown_device,
                "windows_late": wc.get("late", 0),
                "windows_nonfinite": wc.get("nonfinite", 0),
            },
        }

    def _shadow_status(self) -> dict[str, Any] | None:
        """The candidate judged in shadow and its tally so far (None when there is none)."""
        mgr = self.manager
        if mgr is None or mgr.shadow is None:
            return None
        tally = self.detector.shadow_tally
        return {
            "label": mgr.shadow.record.label,
            "source": mgr.shadow.source,
            "needs_windows": mgr.policy.shadow_windows,
            **(tally.as_dict() if tally is not None else {}),
        }


class SerialManager:
    """The ``ModelManager`` as lent to the federated client: installs hold ``lock``.

    ``ModelManager.apply`` swaps the detector before it activates the model in
    the registry; the detection component's registry check must not run in
    between, or it would swap the old model back for a few seconds.
    """

    def __init__(self, manager: Any, lock: threading.Lock) -> None:
        self.manager = manager
        self.lock = lock

    @property
    def registry(self) -> Any:
        return self.manager.registry

    def apply(self, data: bytes, source: str, signature: bytes | None = None) -> Any:
        with self.lock:
            return self.manager.apply(data, source, signature)


class LearnerComponent:
    """The local learner's training thread, with its progress kept across restarts.

    ``w_local`` and ``n_k`` are saved atomically at stop (beside the hash of
    the global model they belong to) and restored at build when the active
    model is still that one, so a restart does not throw away the windows
    trained on since the last round. The pool of clinician-labelled windows is
    saved with them and restored whatever the model: labels are the box's
    data, not progress on one model, and the rarest it has.
    """

    name = "learner"
    order = ORDER_LEARNER

    def __init__(self, learner: Any, liveness: Liveness, state_path: Path, model_sha: str) -> None:
        self.learner = learner
        self.liveness = liveness
        self.state_path = state_path
        self.model_sha = model_sha
        self.restored = False
        self.labelled_restored = 0
        self._steps_seen = 0

    def restore(self) -> bool:
        """Load saved progress if it belongs to ``model_sha``; anything else is ignored."""
        try:
            with np.load(self.state_path, allow_pickle=False) as z:
                sha = str(z["sha"])
                w_local = np.asarray(z["w_local"], np.float32)
                w_global = np.asarray(z["w_global"], np.float32)
                n_k = int(z["n_k"])
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state_path, exc)
            return False
        lr = self.learner
        self._restore_labelled()
        if sha != self.model_sha or w_local.shape != lr.w_local.shape:
            return False
        if not np.array_equal(w_global, lr.w_global) or not np.all(np.isfinite(w_local)):
            return False
        lr.w_local = w_local
        lr.n_k = n_k
        self.restored = True
        return True

    def _restore_labelled(self) -> None:
        restore = getattr(self.learner, "restore_labelled", None)
        if restore is None:
            return
        try:
            with np.load(self.state_path, allow_pickle=False) as z:
                arrays = {k: z[f"labelled_{k}"] for k in ("z", "m", "zp", "y")}
        except (OSError, ValueError, KeyError):
            return  # saved before any labelled window, or unreadable: nothing to restore
        self.labelled_restored = int(restore(arrays))

    def save(self) -> None:
        lr = self.learner
        buf = io.BytesIO()
        pool = lr.labelled_arrays() if hasattr(lr, "labelled_arrays") else {}
        np.savez(
            buf,
            sha=np.asarray(self.model_sha),
            w_local=lr.params(),
            w_global=np.asarray(lr.w_global, np.float32),
            n_k=np.asarray(int(lr.n_k)),
            **{f"labelled_{k}": v for k, v in pool.items()},
        )
        write_atomic(self.state_path, buf.getvalue())

    def start(self) -> None:
        self.learner.start()

    def tick(self) -> None:
        if not self.learner.running:
            return
        steps = int(self.learner.counters["steps"])
        if steps != self._steps_seen:
            self.liveness.progress(self.name, steps - self._steps_seen)
            self._steps_seen = steps
        else:
            self.liveness.idle(self.name, f"{self.learner.pending} windows queued")

    def stop(self) -> None:
        self.learner.stop()
        try:
            self.save()
        except OSError as exc:
            log.error("learner progress not saved: %s", exc)

    def status(self) -> Mapping[str, Any]:
        lr = self.learner
        return {
            "learner": {
                "n_k": int(lr.n_k),
                "pending": lr.pending,
                "restored": self.restored,
                "labelled": int(getattr(lr, "labelled", 0)),
                "labelled_restored": self.labelled_restored,
                "trained_groups": sorted(lr.trained_groups())
                if hasattr(lr, "trained_groups")
                else [],
            },
            "counters": {f"learn_{k}": int(v) for k, v in lr.counters.items()},
        }
