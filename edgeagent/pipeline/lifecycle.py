"""Model lifecycle on the box: install -> validate -> activate -> probation -> rollback.

Why: a global model comes from many boxes and may suit this box's patients
worse than the one it replaces. The detector keeps a buffer of recent
*validated* windows: windows whose every feature lies within the patient's
own baseline (a rule that does not ask any model, so a bad model cannot
vouch for itself) and confident detections made while the running model was
trusted (not on probation). A candidate is
scored on them against the current model before activation, and again after
activation once fresh validated windows exist (probation); if it does worse
it is rolled back automatically and the registry records why. Every swap is
hot (``Detector.swap``), and a model that fails parsing, hashing, signature
or the dry run never replaces the running one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.errors import ModelError
from edgeagent.model.meta import NORMAL, session_meta
from edgeagent.model.registry import ModelRecord, ModelRegistry
from edgeagent.pipeline.detect import Detector, ValidatedWindow, make_session

#: A candidate may be this much (relative) worse before it counts as worse: noise margin.
TOLERANCE = 0.05
#: ... plus this much absolute loss (nats): near-perfect models differ by noise in relative terms.
ABS_TOLERANCE = 0.02
#: Fewer validated windows than this say too little to judge; the candidate is accepted.
MIN_VALIDATED = 20
#: Weight of the autoencoder's normal-window error next to the classifier's cross-entropy.
AE_WEIGHT = 0.1


#: The baseline model shipped inside the package: the last resort of the fallback chain.
SHIPPED_BASELINE = Path(__file__).resolve().parents[1] / "data" / "baseline.onnx"


@dataclass(frozen=True)
class RunnableModel:
    """The model the daemon runs, and why it is not the registry's active one (if not)."""

    record: ModelRecord
    fallback: str | None = None


def model_problem(registry: ModelRegistry, rec: ModelRecord) -> str | None:
    """Why ``rec`` cannot run (file missing, hash mismatch, does not parse), or None."""
    verdict = registry.verify(rec.version)
    if verdict.get("hash_ok") is False or verdict.get("parse_ok") is False:
        return str(verdict.get("error") or "unusable")
    return None


def fallback_sources(seed: Path | None) -> list[Path]:
    """Files to fall back to when the registry holds no intact model: the configured
    starting model, then the shipped baseline."""
    return [p for p in (seed, SHIPPED_BASELINE) if p is not None and p.is_file()]


def runnable_model(registry: ModelRegistry, seed: Path | None = None) -> RunnableModel | None:
    """The model the daemon will run: the active one if intact, else the last good one in
    the registry, else ``seed`` (``detection.model_path``), else the shipped baseline.

    Why not refuse to start: a box that stops ingesting loses every patient's data for
    one damaged file. The fallback is activated in the registry (so the CLI shows it)
    and the reason returned for the caller to log, alert and report. An empty registry
    is seeded from ``seed``; with neither, there is no model (None).
    """
    active = registry.active()
    if active is None:
        if seed is None:
            return None
        try:
            data = Path(seed).read_bytes()
        except OSError as exc:
            raise ModelError(f"detection.model_path {seed}: {exc}") from exc
        return RunnableModel(
            registry.activate(registry.add(data, "config").version, "starting model")
        )
    problem = model_problem(registry, active)
    if problem is None:
        return RunnableModel(active)
    why = f"active model {active.label} cannot run ({problem})"
    prev = registry.last_good(exclude=active.version)
    if prev is not None and model_problem(registry, prev) is None:
        rec = registry.activate(prev.version, f"fallback: {why}")
        return RunnableModel(rec, f"{why}; fell back to {rec.label}, the last good model")
    for path in fallback_sources(seed):
        try:
            rec = registry.add(path.read_bytes(), f"fallback:{path.name}")
            if model_problem(registry, rec) is None:
                rec = registry.activate(rec.version, f"fallback: {why}")
                return RunnableModel(rec, f"{why}; fell back to {rec.label} from {path}")
        except (OSError, ModelError):
            continue
    raise ModelError(
        f"{why}, and no intact model to fall back to (registry, {seed}, {SHIPPED_BASELINE})"
    )


def validation_loss(data: bytes, windows: Sequence[ValidatedWindow]) -> float:
    """Class-balanced cross-entropy of the head plus ``AE_WEIGHT`` x normal reconstruction error."""
    sess = make_session(data)
    meta = session_meta(sess)
    classes = list(meta.classes)
    rows = [w for w in windows if w.label in classes]
    if not rows:
        return float("nan")
    x = np.stack([w.x for w in rows]).astype(np.float32)
    mu = np.concatenate([np.asarray(w.mu, np.float32).reshape(1, -1) for w in rows])
    sigma = np.concatenate([np.asarray(w.sigma, np.float32).reshape(1, -1) for w in rows])
    probs, recon = sess.run(None, {"x": x, "mu": mu, "sigma": sigma})
    y = np.asarray([classes.index(w.label) for w in rows])
    ce = -np.log(probs[np.arange(len(rows)), y] + 1e-9)
    per_class = [float(ce[y == c].mean()) for c in np.unique(y)]
    normal = y == classes.index(NORMAL)
    ae = float(recon[normal].mean()) if normal.any() else 0.0
    return float(np.mean(per_class)) + AE_WEIGHT * ae


@dataclass
class ApplyResult:
    """What happened to a model handed to ``ModelManager.apply``."""

    accepted: bool
    label: str
    reason: str
    current_loss: float | None = None  # the model being replaced (or the previous one)
    candidate_loss: float | None = None  # the new model

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class ModelManager:
    """Ties the registry to a running detector.

    A candidate that arrives while there is too little evidence to judge it is
    held in *shadow*: registered, not running, raising no alerts, until enough
    validated windows exist; then it is judged like any other candidate. Every
    change of the running model (activation, probation rollback, manual rollback)
    calls ``on_change``, so the local learner restarts with the model it follows.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        detector: Detector,
        tolerance: float = TOLERANCE,
        min_validated: int = MIN_VALIDATED,
    ) -> None:
        self.registry = registry
        self.detector = detector
        self.tolerance = tolerance
        self.min_validated = min_validated
        self._probation: tuple[ModelRecord, int] | None = None  # (previous, windows seen at swap)
        self.shadow: tuple[ModelRecord, bytes, str] | None = None  # (candidate, bytes, source)
        #: Called with (record now running, what happened) after every swap of the detector.
        self.on_change: Callable[[ModelRecord, str], None] | None = None

    def _worse(self, cand: float, cur: float) -> bool:
        limit = cur * (1 + self.tolerance) + ABS_TOLERANCE
        return bool(np.isfinite(cand) and np.isfinite(cur) and cand > limit)

    def _changed(self, rec: ModelRecord, what: str) -> None:
        if self.on_change is not None:
            self.on_change(rec, what)

    def apply(self, data: bytes, source: str, signature: bytes | None = None) -> ApplyResult:
        """Register, validate and hot-activate a model; never leaves the box without a model."""
        try:
            rec = self.registry.add(data, source, signature, self.detector.feature_names)
        except ModelError as e:
            self.registry.record_event("refused", None, f"source={source}: {e}")
            return ApplyResult(False, "", f"refused: {e}")
        current = self.registry.active()
        if current is not None and current.sha256 == rec.sha256:
            return ApplyResult(True, rec.label, "already active")
        val = list(self.detector.validated)
        if current is not None and len(val) < self.min_validated:
            # Too little evidence: never let an unjudged model raise alerts.
            self.shadow = (rec, data, source)
            self.registry.record_event(
                "shadow", rec.version, f"held until {self.min_validated} validated windows"
            )
            return ApplyResult(False, rec.label, "shadow")
        return self._judge(rec, data, source, current, val)

    def _judge(
        self,
        rec: ModelRecord,
        data: bytes,
        source: str,
        current: ModelRecord | None,
        val: list[ValidatedWindow],
    ) -> ApplyResult:
        cur_loss = cand_loss = None
        if current is not None and len(val) >= self.min_validated:
            cur_loss = validation_loss(self.registry.load_bytes(current), val)
            cand_loss = validation_loss(data, val)
            if self._worse(cand_loss, cur_loss):
                self.registry.activate(rec.version, f"candidate from {source}")
                self.registry.rollback(
                    f"worse on {len(val)} validated windows: {cand_loss:.4f} > {cur_loss:.4f}"
                )
                return ApplyResult(False, rec.label, "rolled back", cur_loss, cand_loss)
        try:
            self.detector.swap(data, rec.label)
        except ModelError as e:
            self.registry.record_event("refused", rec.version, f"swap failed: {e}")
            return ApplyResult(False, rec.label, f"refused: {e}", cur_loss, cand_loss)
        active = self.registry.activate(rec.version, f"from {source}")
        if current is not None:
            self._probation = (current, self.detector.counters["windows"])
            self.detector.trusted = False
        self._changed(active, "activated")
        return ApplyResult(True, rec.label, "activated", cur_loss, cand_loss)

    def judge_shadow(self) -> ApplyResult | None:
        """Judge the candidate held in shadow once there is enough evidence."""
        if self.shadow is None or len(self.detector.validated) < self.min_validated:
            return None
        rec, data, source = self.shadow
        self.shadow = None
        return self._judge(rec, data, source, self.registry.active(), list(self.detector.validated))

    def probation_check(self) -> ApplyResult | None:
        """Judge a shadow candidate; after an activation, compare with the previous model
        and roll back if worse."""
        judged = self.judge_shadow()
        if judged is not None:
            return judged
        if self._probation is None:
            return None
        prev, _ = self._probation
        val = list(self.detector.validated)
        if len(val) < self.min_validated:
            return None
        active = self.registry.active()
        if active is None:
            return None
        cur_loss = validation_loss(self.registry.load_bytes(active), val)
        prev_loss = validation_loss(self.registry.load_bytes(prev), val)
        self._probation = None
        self.detector.trusted = True
        if self._worse(cur_loss, prev_loss):
            back = self.registry.rollback(
                f"probation: worse on {len(val)} validated windows: "
                f"{cur_loss:.4f} > {prev_loss:.4f}"
            )
            self.detector.swap(self.registry.load_bytes(back), back.label)
            self._changed(back, "rolled back")
            return ApplyResult(False, active.label, "rolled back", prev_loss, cur_loss)
        return ApplyResult(True, active.label, "kept", prev_loss, cur_loss)

    def rollback(self, reason: str = "manual") -> ModelRecord:
        """Manual rollback, hot."""
        back = self.registry.rollback(reason)
        self.detector.swap(self.registry.load_bytes(back), back.label)
        self._probation = None
        self.detector.trusted = True
        self._changed(back, "rolled back")
        return back
