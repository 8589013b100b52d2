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

import copy
from collections.abc import Callable
from typing import Any

import numpy as np


class ShadowArm:
    """A detector (and, for the control, a local learner) scoring the hub's windows beside it.

    ``learner_config`` None: a frozen model (the baseline arm); otherwise the
    arm learns locally with these settings (the control arm).
    """

    def __init__(
        self,
        name: str,
        model_bytes: bytes,
        featurize: Callable[[Any], np.ndarray],
        learner_config: Any = None,
    ) -> None:
        from edgeagent.model.graph import get_params, parse_model
        from edgeagent.pipeline.alerts import MemoryAlertSink
        from edgeagent.pipeline.detect import Detector
        from edgeagent.pipeline.learn import LocalLearner

        self.name = name
        self.model_bytes = model_bytes
        self.sink = MemoryAlertSink()
        self.detector = Detector(model_bytes, f"{name}-0", self.sink, featurize=featurize)
        self.learner: LocalLearner | None = None
        if learner_config is not None:  # the hub's own learner settings: same training
            self.learner = LocalLearner(
                self.detector.meta.spec,
                get_params(parse_model(model_bytes)),
                copy.copy(learner_config),
            )
            self.detector.on_scored = self.learner.offer
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
