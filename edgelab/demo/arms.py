"""Reference arms: the same windows scored by models that never take part in a round.

Why: segments hold different episodes (segment 0 starts with 100 s of calm), so
comparing the accuracy of segment k with that of segment 0 measures the data as
much as the model. Every hub therefore scores each window three times, on the
same features and in the same order:

* the hub's own detector, running whatever the rounds left it (the federated arm);
* ``baseline``: the shipped baseline model, frozen (what the box would run with
  no learning at all);
* ``control``: no federation: the baseline model plus the box's own local
  learning on the same normal windows and the same nurse feedback, adopted on
  the box after every segment, never averaged with other boxes.

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
        self.model_bytes = model_bytes
        self.sink = MemoryAlertSink()
        state.mkdir(parents=True, exist_ok=True)
        self.registry = ModelRegistry(state)
        rec = self.registry.add(model_bytes, f"demo {name} arm")
        self.registry.activate(rec.version, f"demo {name} arm")
        stack = detection_stack(
            self.registry, rec, self.sink, LearningSection(enabled=learns), featurize=featurize
        )
        self.detector, self.learner = stack.detector, stack.learner
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

    def offer_labelled(self, window: Any) -> bool:
        """Hand a nurse-labelled window to the local learner; False where it cannot take one."""
        offer = getattr(self.learner, "offer_labelled", None)
        if offer is None:
            return False
        offer(window)
        return True

    def adopt_local(self) -> int:
        """Train on what the segment queued and run the result on this box alone.

        Returns the windows trained on. The learner then follows its own model,
        as a box with no federation would.
        """
        if self.learner is None:
            return 0
        from edgeagent.model.graph import parse_model, set_params, to_bytes

        n = self.learner.step(max_batches=10_000)
        if n < 1:
            return 0
        w = self.learner.params()
        data = to_bytes(set_params(parse_model(self.model_bytes), w))
        self.version += 1
        self.detector.swap(data, f"{self.name}-{self.version}")
        self.model_bytes = data
        self.learner.reset_global(w)
        return n

    def alerts(self) -> list[Any]:
        """The arm's alerts, oldest first."""
        return self.sink.list()
