"""Reference arms: the same windows scored by models that never take part in a round.

Why: segments hold different episodes (segment 0 starts with 100 s of calm), so
comparing the accuracy of segment k with that of segment 0 measures the data as
much as the model. Every hub therefore scores each window three times, on the
same features and in the same order:

* the hub's own detector, running whatever the rounds left it (the federated arm);
* ``baseline``: the shipped baseline model, frozen (what the box would run with
  no learning at all);
* ``control``: no federation: the baseline model plus the box's own local
  learning on the same normal windows and the same nurse feedback, its result
  handed after every segment to the same model lifecycle a global model meets
  on the hubs (validated, shadowed, promoted or rolled back), never averaged
  with other boxes.

Each arm has its own detector state (personal calibration, beat tracker, alert
episodes) and its own in-memory alerts, so its false alarms are its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class ShadowArm:
    """A detector (and, for the control, a local learner) scoring the hub's windows beside it.

    Wired by the daemon's ``detection_stack`` from a registry of its own, so the
    arm's detector and learner are built exactly as the hub's are; ``learns``
    False leaves the model frozen (the baseline arm).
    """

    def __init__(
        self,
        name: str,
        model_bytes: bytes,
        state: Path,
        featurize: Callable[[Any], np.ndarray],
        learns: bool,
    ) -> None:
        from edgeagent.daemon.wiring import detection_stack
        from edgeagent.model.registry import ModelRegistry
        from edgeagent.ops.config import LearningSection
        from edgeagent.pipeline.alerts import MemoryAlertSink

        self.name = name
        self.sink = MemoryAlertSink()
        state.mkdir(parents=True, exist_ok=True)
        self.registry = ModelRegistry(state)
        rec = self.registry.add(model_bytes, f"demo {name} arm")
        self.registry.activate(rec.version, f"demo {name} arm")
        stack = detection_stack(
            self.registry, rec, self.sink, LearningSection(enabled=learns), featurize=featurize
        )
        self.detector, self.learner, self.manager = stack.detector, stack.learner, stack.manager
        self.manager.on_change = self._follow
        self.history: list[dict[str, Any]] = []
        self.windows: list[dict[str, Any]] = []
        self.version = 0

    def process(self, window: Any, segment: int) -> None:
        """Score one window (the hub's featurizer hands over the features it computed)."""
        d = self.detector.process(window)
        self.windows.append(
            {
                "segment": segment,
                "start": float(d.start),
                "end": float(d.end),
                "score": float(d.score),
                "clinical_active": bool(d.clinical_active),
                "fault_active": bool(d.fault_active),
                "status": d.status,
            }
        )

    def end_segment(self, segment: int) -> int:
        """Judge the candidate of the last segment, then train on what this one queued and
        hand the result to the arm's model lifecycle, as a box with no federation would.

        The candidate goes through the same ``ModelManager`` as a global model on the
        hubs (validated, in shadow, promoted or rolled back), so the control differs
        from the hubs by the federation alone. Returns the windows trained on.
        """
        if self.learner is None:
            return 0
        from edgeagent.model.graph import parse_model, set_params, to_bytes

        self.check(segment)
        n = self.learner.step(max_batches=10_000)
        running = self.registry.active()
        if n < 1 or running is None:
            return n
        base = parse_model(self.registry.load_bytes(running))
        data = to_bytes(set_params(base, self.learner.params()))
        self.version += 1
        res = self.manager.apply(data, f"local:{self.name}-{self.version}")
        self.history.append({"segment": segment, "result": res.reason})
        return n

    def check(self, segment: int) -> None:
        """The lifecycle's periodic check on the arm's model (a frozen arm has none)."""
        if self.learner is None:
            return
        res = self.manager.probation_check()
        if res is not None:
            self.history.append({"segment": segment, "result": f"check: {res.reason}"})

    def _follow(self, rec: Any, what: str) -> None:
        """The learner restarts from whatever model the arm runs after a change."""
        if self.learner is not None:
            self.learner.reset_global(self.registry.load_params(rec))

    def alerts(self) -> list[Any]:
        """The arm's alerts, oldest first."""
        return self.sink.list()
