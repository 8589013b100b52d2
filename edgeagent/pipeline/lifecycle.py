"""Model lifecycle on the box: install -> shadow -> promote or reject.

Why: a global model comes from many boxes and may suit this box's patients
worse than the one it replaces, and a model the box has not judged must never
raise an alert. A candidate therefore runs in *shadow* first: a second
onnxruntime session scores every window beside the active model
(``Detector.set_shadow``), its would-be alerts are counted and none is raised.
After ``ValidationPolicy.shadow_windows`` windows it is judged by ``decide``, a
pure function of two kinds of evidence, neither of which the incumbent
produced by itself:

* the alert rate of both models on the same live windows, counted by the same
  rule (no label needed; a candidate that would alert more is worse);
* agreement with labels people gave (clinician feedback), on the held-back
  share that no model was trained on (``LabelledSource.labelled("holdout")``).

The running model's own confident detections are no evidence: a model that
labels its own exam passes it, and a better candidate that disagrees with it
fails. Each promotion, rejection and rollback is recorded in the registry with
the figures that decided it. Every swap is hot, and a model that fails
parsing, hashing, signature or the dry run never replaces the running one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from edgeagent.errors import ModelError
from edgeagent.model.meta import NORMAL, session_meta
from edgeagent.model.registry import ModelRecord, ModelRegistry
from edgeagent.pipeline.detect import Detector, ShadowTally, ValidatedWindow, make_session

#: Weight of the autoencoder's normal-window error next to the classifier's cross-entropy
#: in ``validation_loss`` (the aggregator's hold-out rule, ``federation.holdout``).
AE_WEIGHT = 0.1
#: The labelled share a candidate is judged on: windows no model was trained on.
HOLDOUT = "holdout"


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


class LabelledSource(Protocol):
    """Windows people labelled on this box (``pipeline.feedback.FeedbackStore``).

    ``split`` "holdout" is the share never trained on: the only labels a candidate
    that learned from this box's feedback can be judged on without flattering it.
    """

    def labelled(self, split: str) -> Sequence[ValidatedWindow]: ...


@dataclass(frozen=True)
class ValidationPolicy:
    """When a shadow is judged and by what margins; docs/model.md says why each default."""

    #: Windows scored in shadow before the candidate is judged (3 min of one patient at a
    #: 2 s hop; a demo segment holds about 108).
    shadow_windows: int = 90
    #: Seconds after which a shadow that has not seen ``shadow_windows`` is rejected: a box
    #: with no patient on it has no evidence, and the next round brings a newer global.
    shadow_max_s: float = 3600.0
    #: The shadow may open at most ``active x (1 + alert_rel) + alert_abs`` would-be alerts,
    #: and be in alert on at most ``active x (1 + alert_rel) + flag_abs`` windows (an
    #: episode held open for ever is one alert: the windows show it).
    alert_rel: float = 0.10
    alert_abs: int = 0
    flag_abs: int = 3
    #: Held-back labelled windows needed before agreement is judged (below: too few).
    min_labels: int = 20
    #: Class-balanced agreement may be at most this much below the active model's.
    agree_margin: float = 0.02
    #: Without enough labels, a candidate with fewer than ``quiet_share`` of the active
    #: model's alerts (less ``quiet_abs``) or alert windows (less ``flag_abs``) is
    #: rejected: fewer alerts may be fewer false alarms or missed events, and only
    #: labels can tell which.
    quiet_share: float = 0.5
    quiet_abs: int = 1

    def margins(self) -> dict[str, float]:
        return {
            "alert_rel": self.alert_rel,
            "alert_abs": self.alert_abs,
            "flag_abs": self.flag_abs,
            "agree_margin": self.agree_margin,
            "min_labels": self.min_labels,
            "quiet_share": self.quiet_share,
            "quiet_abs": self.quiet_abs,
        }


@dataclass(frozen=True)
class Evidence:
    """What is known about a shadow candidate next to the active model."""

    windows: int  # windows both models scored while the candidate was in shadow
    active_alerts: int
    shadow_alerts: int
    active_flagged: int = 0  # windows in clinical alert
    shadow_flagged: int = 0
    disagreed: int = 0  # windows the two call differently
    labelled: int = 0  # held-back labelled windows
    active_agreement: float | None = None  # class-balanced, 0..1
    shadow_agreement: float | None = None
    elapsed_s: float = 0.0

    @classmethod
    def from_tally(
        cls,
        tally: ShadowTally | None,
        labelled: int = 0,
        agreement: tuple[float, float] | None = None,
        elapsed_s: float = 0.0,
    ) -> Evidence:
        t = tally or ShadowTally("")
        a, s = agreement if agreement is not None else (None, None)
        return cls(
            t.windows,
            t.active_alerts,
            t.shadow_alerts,
            t.active_flagged,
            t.shadow_flagged,
            t.disagreed,
            labelled,
            a,
            s,
            elapsed_s,
        )


class Outcome(StrEnum):
    WAIT = "shadow"  # not enough windows yet: keep scoring in shadow
    PROMOTE = "promoted"
    REJECT = "rejected"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    figures: dict[str, Any]


def decide(ev: Evidence, policy: ValidationPolicy) -> Verdict:
    """Promote, reject or keep waiting: a pure function of the evidence and the margins.

    Promote only when (a) the candidate's would-be alerts are no more than the active
    model's within the margin and (b) with enough held-back labels, its agreement with
    them is no worse within the margin, or, without enough labels, it does not silence
    most of the active model's alerts.
    """
    figures: dict[str, Any] = asdict(ev) | {"margins": policy.margins()}
    n = ev.windows
    if n < policy.shadow_windows:
        if ev.elapsed_s < policy.shadow_max_s:
            return Verdict(Outcome.WAIT, f"{n} of {policy.shadow_windows} windows", figures)
        return Verdict(
            Outcome.REJECT,
            f"expired: {n} of {policy.shadow_windows} windows in {ev.elapsed_s:.0f} s",
            figures,
        )
    alerts = (
        f"{ev.shadow_alerts} would-be alerts vs {ev.active_alerts},"
        f" {ev.shadow_flagged} vs {ev.active_flagged} alert windows of {n}"
    )
    limit = ev.active_alerts * (1 + policy.alert_rel) + policy.alert_abs
    flag_limit = ev.active_flagged * (1 + policy.alert_rel) + policy.flag_abs
    if ev.shadow_alerts > limit or ev.shadow_flagged > flag_limit:
        return Verdict(
            Outcome.REJECT,
            f"alert rate worse: {alerts} (limits {limit:.1f}, {flag_limit:.1f})",
            figures,
        )
    if (
        ev.labelled >= policy.min_labels
        and ev.active_agreement is not None
        and ev.shadow_agreement is not None
    ):
        agree = (
            f"agreement {ev.shadow_agreement:.3f} vs {ev.active_agreement:.3f}"
            f" on {ev.labelled} held-back labels"
        )
        if ev.shadow_agreement < ev.active_agreement - policy.agree_margin:
            return Verdict(
                Outcome.REJECT, f"agreement worse: {agree} (margin {policy.agree_margin})", figures
            )
        return Verdict(Outcome.PROMOTE, f"no worse: {alerts}; {agree}", figures)
    floor = ev.active_alerts * policy.quiet_share - policy.quiet_abs
    flag_floor = ev.active_flagged * policy.quiet_share - policy.flag_abs
    if ev.shadow_alerts < floor or ev.shadow_flagged < flag_floor:
        return Verdict(
            Outcome.REJECT,
            f"silences alerts with {ev.labelled} held-back labels to back it: {alerts}"
            f" (floors {floor:.1f}, {flag_floor:.1f})",
            figures,
        )
    return Verdict(Outcome.PROMOTE, f"no worse: {alerts}; {ev.labelled} held-back labels", figures)


def balanced_agreement(verdicts: Sequence[str], labels: Sequence[str]) -> float:
    """Mean over label classes of the share of windows whose verdict equals the label.

    Balanced, because feedback is mostly about alerts: a model that calls everything
    normal must not score well on a set of mostly dismissed false alarms, nor one that
    alerts on everything on a set of mostly confirmed events.
    """
    if len(verdicts) != len(labels):
        raise ValueError("one verdict per label")
    if not labels:
        return float("nan")
    per: dict[str, list[bool]] = {}
    for v, y in zip(verdicts, labels, strict=True):
        per.setdefault(y, []).append(v == y)
    return float(np.mean([np.mean(hits) for hits in per.values()]))


@dataclass
class ApplyResult:
    """What happened to a model handed to ``ModelManager.apply`` or judged in shadow."""

    accepted: bool
    label: str
    reason: str  # activated | already active | shadow | promoted | rejected | refused: ...
    detail: str = ""
    figures: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Shadow(NamedTuple):
    """The candidate being judged: its record, where it came from, when it began."""

    record: ModelRecord
    source: str
    since: float


#: Registry event kinds that end a shadow (see ``ModelRegistry.decisions``).
SHADOW_ENDS = ("promoted", "rejected", "superseded")


class ModelManager:
    """Ties the registry to a running detector, a candidate in shadow and the labels.

    Every change of the running model (promotion, the first model, manual rollback)
    calls ``on_change``, so the daemon can restart the local learner with the model
    it follows; a rejected shadow changes nothing that runs, so it calls nothing.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        detector: Detector,
        labels: LabelledSource | None = None,
        policy: ValidationPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.detector = detector
        self.labels = labels
        self.policy = policy or ValidationPolicy()
        self.clock = clock
        self.shadow: Shadow | None = None
        self._resumed = False
        #: Called with (record now running, what happened) after every swap of the detector.
        self.on_change: Callable[[ModelRecord, str], None] | None = None

    def _changed(self, rec: ModelRecord, what: str) -> None:
        if self.on_change is not None:
            self.on_change(rec, what)

    def apply(self, data: bytes, source: str, signature: bytes | None = None) -> ApplyResult:
        """Register a model and put it in shadow beside the running one (never live unjudged).

        The box's first model has nothing to be compared with and goes live at once.
        """
        try:
            rec = self.registry.add(data, source, signature, self.detector.feature_names)
        except ModelError as e:
            self.registry.record_event("refused", None, f"source={source}: {e}")
            return ApplyResult(False, "", f"refused: {e}")
        if not self._resumed:
            # A model handed in now outranks one a restart left in shadow.
            self._resumed = True
            left = self.registry.pending_shadow()
            if left is not None and left.sha256 != rec.sha256:
                self.registry.record_event("superseded", left.version, f"by {rec.label}")
        current = self.registry.active()
        if current is not None and current.sha256 == rec.sha256:
            return ApplyResult(True, rec.label, "already active")
        if current is None:
            try:
                self.detector.swap(data, rec.label)
            except ModelError as e:
                self.registry.record_event("refused", rec.version, f"swap failed: {e}")
                return ApplyResult(False, rec.label, f"refused: {e}")
            active = self.registry.activate(rec.version, f"first model, from {source}")
            self._changed(active, "activated")
            return ApplyResult(True, rec.label, "activated")
        if self.shadow is not None:
            if self.shadow.record.sha256 == rec.sha256:
                return ApplyResult(False, rec.label, "shadow", "already in shadow")
            self._end_shadow("superseded", f"superseded by {rec.label} from {source}")
        return self._start_shadow(rec, data, source, current)

    def _start_shadow(
        self, rec: ModelRecord, data: bytes, source: str, current: ModelRecord
    ) -> ApplyResult:
        try:
            self.detector.set_shadow(data, rec.label)
        except ModelError as e:
            self.registry.record_event("refused", rec.version, f"shadow failed: {e}")
            return ApplyResult(False, rec.label, f"refused: {e}")
        self.shadow = Shadow(rec, source, self.clock())
        detail = (
            f"from {source}: scored beside {current.label} for {self.policy.shadow_windows}"
            " windows, raising no alerts"
        )
        self.registry.record_event("shadow", rec.version, detail)
        return ApplyResult(False, rec.label, "shadow", detail)

    def _end_shadow(self, kind: str, reason: str, figures: dict[str, Any] | None = None) -> None:
        assert self.shadow is not None
        rec = self.shadow.record
        tally = self.detector.clear_shadow()
        if figures is None and tally is not None:
            figures = tally.as_dict()
        self.shadow = None
        if kind == "rejected":
            self.registry.reject(rec.version, reason, figures)
        else:
            self.registry.record_event(kind, rec.version, reason, figures)

    def resume(self) -> ApplyResult | None:
        """Put back in shadow the candidate a restart interrupted (the registry remembers it).

        Without this a global that arrived just before a restart would never be judged:
        the federated client does not take the same model twice.
        """
        self._resumed = True
        if self.shadow is not None:
            return None
        pending = self.registry.pending_shadow()
        current = self.registry.active()
        if pending is None or current is None or pending.sha256 == current.sha256:
            return None
        try:
            data = self.registry.load_bytes(pending)
        except ModelError as e:
            self.registry.record_event("rejected", pending.version, f"cannot resume: {e}")
            return None
        return self._start_shadow(pending, data, "resumed after restart", current)

    def evidence(self, with_labels: bool = True) -> Evidence:
        """The shadow's evidence so far (tally, held-back labels, agreement)."""
        if self.shadow is None:
            raise ModelError("no model in shadow")
        tally = self.detector.shadow_tally
        if tally is not None and tally.label != self.shadow.record.label:
            tally = None
        windows: list[ValidatedWindow] = []
        if with_labels and self.labels is not None:
            windows = list(self.labels.labelled(HOLDOUT))
        agreement = None
        if windows:
            labels = [w.label for w in windows]
            agreement = (
                balanced_agreement(self.detector.verdicts(windows), labels),
                balanced_agreement(self.detector.verdicts(windows, shadow=True), labels),
            )
        elapsed = self.clock() - self.shadow.since
        return Evidence.from_tally(tally, len(windows), agreement, elapsed)

    def probation_check(self) -> ApplyResult | None:
        """Judge the candidate in shadow once it has seen enough windows (the periodic check).

        None while there is nothing to decide.
        """
        if not self._resumed:
            self.resume()
        if self.shadow is None:
            return None
        rec, source, _ = self.shadow
        current = self.registry.active()
        if current is not None and current.sha256 == rec.sha256:
            # Activated by an operator meanwhile (``edgeagent model activate``).
            self._end_shadow("superseded", "activated in the registry while in shadow")
            return None
        if self.detector.shadow_label != rec.label:
            # The detector lost the session (another caller cleared it): score it again,
            # from zero windows, rather than judge on a tally of something else.
            try:
                self.detector.set_shadow(self.registry.load_bytes(rec), rec.label)
            except ModelError as e:
                self.shadow = None
                self.registry.reject(rec.version, f"cannot score in shadow: {e}")
                return ApplyResult(False, rec.label, "rejected", str(e))
            return None
        if decide(self.evidence(with_labels=False), self.policy).outcome is Outcome.WAIT:
            return None  # labels are scored only when there is something to decide
        verdict = decide(self.evidence(), self.policy)
        figures = verdict.figures | {"against": current.label if current else None}
        if verdict.outcome is Outcome.REJECT:
            self._end_shadow("rejected", verdict.reason, figures)
            return ApplyResult(False, rec.label, "rejected", verdict.reason, figures)
        self.detector.promote_shadow()
        self.shadow = None
        active = self.registry.activate(
            rec.version, f"promoted from shadow ({source}): {verdict.reason}", figures,
            event="promoted",
        )  # fmt: skip
        self._changed(active, "promoted")
        return ApplyResult(True, rec.label, "promoted", verdict.reason, figures)

    def rollback(self, reason: str = "manual") -> ModelRecord:
        """Manual rollback, hot. A candidate in shadow stays and is judged against the
        model that runs after the rollback."""
        back = self.registry.rollback(reason)
        self.detector.swap(self.registry.load_bytes(back), back.label)
        self._changed(back, "rolled back")
        return back
