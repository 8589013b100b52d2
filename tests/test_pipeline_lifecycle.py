"""Lifecycle: a candidate runs in shadow, raising nothing, and goes live only if it is no worse
on the live alert rate and on held-back labels; every decision is recorded with its figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edgeagent.model.graph import get_params, parse_model, read_meta, set_params, to_bytes
from edgeagent.model.meta import flatten, unflatten
from edgeagent.model.registry import ModelRegistry
from edgeagent.pipeline.alerts import MemoryAlertSink
from edgeagent.pipeline.detect import Detector, ValidatedWindow
from edgeagent.pipeline.lifecycle import (
    HOLDOUT,
    SHIPPED_BASELINE,
    Evidence,
    ModelManager,
    Outcome,
    ValidationPolicy,
    balanced_agreement,
    decide,
)
from edgeagent.pipeline.windows import Windower
from edgeagent.streams import SampleBlock, Stream
from firmware_sim.physiology import Generator, Label, SimConfig, make_patient
from tests.plugins.model import SYN_FEATURES, SYN_MODALITY, SynWorld

POLICY = ValidationPolicy()

# -- the decision, as a pure function -----------------------------------------


def _ev(**kw: float | int | None) -> Evidence:
    base: dict[str, float | int | None] = {
        "windows": 90,
        "active_alerts": 10,
        "shadow_alerts": 10,
        "active_flagged": 40,
        "shadow_flagged": 40,
    }
    return Evidence(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("evidence", "outcome", "why"),
    [
        # too few windows: keep scoring in shadow; past the time bound: reject
        (_ev(windows=89), Outcome.WAIT, "89 of 90"),
        (_ev(windows=10, elapsed_s=3600.0), Outcome.REJECT, "expired"),
        # the same behaviour: promoted
        (_ev(), Outcome.PROMOTE, "no worse"),
        # alert rate: 10 % over the active model's, no further
        (_ev(shadow_alerts=11), Outcome.PROMOTE, "no worse"),
        (_ev(shadow_alerts=12), Outcome.REJECT, "alert rate worse"),
        (_ev(active_alerts=0, shadow_alerts=1), Outcome.REJECT, "alert rate worse"),
        # one episode held open for ever is one alert: the alert windows show it
        (
            _ev(shadow_alerts=1, active_alerts=1, shadow_flagged=103, active_flagged=15),
            Outcome.REJECT,
            "alert rate worse",
        ),
        (_ev(shadow_flagged=47), Outcome.PROMOTE, "no worse"),  # 40 x 1.1 + 3
        (_ev(shadow_flagged=48), Outcome.REJECT, "alert rate worse"),
        # fewer alerts: without labels to back it, silencing most of them is rejected ...
        (_ev(shadow_alerts=3), Outcome.REJECT, "silences"),
        (_ev(shadow_flagged=10), Outcome.REJECT, "silences"),
        (_ev(shadow_alerts=7, shadow_flagged=30), Outcome.PROMOTE, "no worse"),
        # ... with enough held-back labels agreeing, it is promoted
        (
            _ev(
                shadow_alerts=3,
                shadow_flagged=10,
                labelled=20,
                active_agreement=0.8,
                shadow_agreement=0.9,
            ),
            Outcome.PROMOTE,
            "agreement 0.900 vs 0.800",
        ),
        # agreement with held-back labels: within the margin, no further
        (
            _ev(labelled=20, active_agreement=0.8, shadow_agreement=0.785),
            Outcome.PROMOTE,
            "no worse",
        ),
        (
            _ev(labelled=20, active_agreement=0.8, shadow_agreement=0.77),
            Outcome.REJECT,
            "agreement worse",
        ),
        # too few labels say nothing: agreement is not judged on them
        (
            _ev(labelled=19, active_agreement=0.8, shadow_agreement=0.2),
            Outcome.PROMOTE,
            "19 held-back labels",
        ),
        # a candidate worse on the alert rate is rejected whatever the labels say
        (
            _ev(shadow_alerts=20, labelled=50, active_agreement=0.5, shadow_agreement=1.0),
            Outcome.REJECT,
            "alert rate worse",
        ),
    ],
)
def test_decision_table(evidence: Evidence, outcome: Outcome, why: str) -> None:
    verdict = decide(evidence, POLICY)
    assert verdict.outcome is outcome, verdict
    assert why in verdict.reason
    # the figures that decided it travel with it: evidence and margins
    assert verdict.figures["shadow_alerts"] == evidence.shadow_alerts
    assert verdict.figures["margins"]["alert_rel"] == POLICY.alert_rel


def test_margins_are_the_policys() -> None:
    ev = _ev(shadow_alerts=12)
    assert decide(ev, POLICY).outcome is Outcome.REJECT
    assert decide(ev, replace(POLICY, alert_abs=1)).outcome is Outcome.PROMOTE
    ev = _ev(labelled=20, active_agreement=0.8, shadow_agreement=0.75)
    assert decide(ev, replace(POLICY, agree_margin=0.1)).outcome is Outcome.PROMOTE


def test_balanced_agreement_rewards_neither_silence_nor_noise() -> None:
    labels = ["normal"] * 8 + ["fall"] * 2
    assert balanced_agreement(["normal"] * 10, labels) == pytest.approx(0.5)
    assert balanced_agreement(["fall"] * 10, labels) == pytest.approx(0.5)
    assert balanced_agreement(labels, labels) == 1.0
    with pytest.raises(ValueError):
        balanced_agreement(["normal"], labels)


# -- shadow scoring on the synthetic world --------------------------------------


class Labels:
    """An in-memory ``LabelledSource``: labelled windows by split; records what was asked."""

    def __init__(self, holdout: Sequence[ValidatedWindow] = ()) -> None:
        self.splits = {HOLDOUT: list(holdout), "train": []}
        self.asked: list[str] = []

    def labelled(self, split: str) -> Sequence[ValidatedWindow]:
        self.asked.append(split)
        return self.splits[split]


def _box(
    tmp_state: Path, model: bytes, **kw: object
) -> tuple[ModelRegistry, Detector, ModelManager]:
    reg = ModelRegistry(tmp_state)
    rec = reg.add(model, "baseline")
    reg.activate(rec.version, "install")
    det = Detector(
        model,
        rec.label,
        MemoryAlertSink(),
        feature_names=SYN_FEATURES,
        featurize=lambda w: w,
        modality_of=SYN_MODALITY,
    )
    return reg, det, ModelManager(reg, det, **kw)  # type: ignore[arg-type]


def _feed(det: Detector, world: SynWorld, t0: float = 0.0) -> float:
    t = t0
    for kind, n in [("normal", 100), ("tachycardia", 10), ("normal", 20), ("fever", 10)]:
        for x in world.rows(50, kind, n, seed=int(t0)):
            det.process_features("p50", t, t + 10, x)
            t += 2
    return t


def _biased(model: bytes, kind: str, by: float) -> bytes:
    """The model with its head's bias for ``kind`` moved by ``by`` logits: a round that
    learned to call (or never call) one class."""
    proto = onnx.load_from_string(model)
    meta = read_meta(proto)
    p = unflatten(meta.spec, get_params(proto))
    p["b2"] = p["b2"].copy()
    p["b2"][list(meta.classes).index(kind)] += by
    return to_bytes(set_params(proto, flatten(meta.spec, p)))


def _head_scrambled(model: bytes, seed: int = 0) -> bytes:
    """The classifier head's weights shuffled and scaled, the autoencoder intact: noise on
    coordinates no box trained (the issue-22 round), the normal model unharmed."""
    proto = onnx.load_from_string(model)
    meta = read_meta(proto)
    p = unflatten(meta.spec, get_params(proto))
    rng = np.random.default_rng(seed)
    for k in ("W2", "b2"):
        p[k] = rng.permutation(p[k].ravel()).reshape(p[k].shape) * 3
    return to_bytes(set_params(proto, flatten(meta.spec, p)))


def _scrambled(model: bytes) -> bytes:
    """A well-formed model whose weights are shuffled and scaled (a ruined global round)."""
    proto = onnx.load_from_string(model)
    w = get_params(proto)
    return to_bytes(set_params(proto, np.random.default_rng(0).permutation(w) * 3))


def _alert_labels(det: Detector) -> set[str]:
    return {a.model for a in det.sink.alerts.values()}  # type: ignore[attr-defined]


def test_a_bad_candidate_waits_in_shadow_raises_nothing_and_is_rejected(
    tmp_state: Path, syn_model: bytes, syn_world: SynWorld
) -> None:
    reg, det, mgr = _box(tmp_state, syn_model)
    changes: list[str] = []
    mgr.on_change = lambda rec, what: changes.append(what)
    running = det.model_label
    _feed(det, syn_world)  # the patient's calibration warms up under the running model
    res = mgr.apply(_biased(syn_model, "fever", 6.0), "fl:round-1")
    assert not res.accepted and res.reason == "shadow"
    assert det.shadow_label == res.label and det.model_label == running
    assert mgr.probation_check() is None  # no windows in shadow yet: nothing to decide
    _feed(det, syn_world, 1000.0)
    tally = det.shadow_tally
    assert tally is not None and tally.windows == 140
    assert tally.shadow_flagged > tally.active_flagged + 10  # it would have alerted ...
    assert _alert_labels(det) == {running}  # ... and raised nothing
    out = mgr.probation_check()
    assert out is not None and out.reason == "rejected" and not out.accepted
    assert "alert rate worse" in out.detail
    assert det.model_label == running == reg.active().label  # type: ignore[union-attr]
    assert det.shadow_label is None and mgr.shadow is None
    rec = reg.get(res.label)
    assert rec.rejected
    (decision,) = reg.decisions()[rec.version]
    assert decision["kind"] == "rejected"
    fig = decision["figures"]
    assert fig["windows"] == 140 and fig["against"] == running
    assert fig["shadow_flagged"] == tally.shadow_flagged
    assert fig["margins"] == POLICY.margins()
    assert changes == []  # nothing that runs changed: the learner is not restarted


def test_a_good_candidate_is_promoted_hot_after_its_shadow(
    tmp_state: Path, syn_model: bytes, syn_world: SynWorld
) -> None:
    reg, det, mgr = _box(tmp_state, syn_model)
    changes: list[tuple[str, str]] = []
    mgr.on_change = lambda rec, what: changes.append((rec.label, what))
    _feed(det, syn_world)
    proto = onnx.load_from_string(syn_model)
    close = to_bytes(set_params(proto, get_params(proto) * np.float32(0.999)))
    res = mgr.apply(close, "fl:round-2")
    assert res.reason == "shadow"
    assert mgr.apply(close, "fl:round-2").detail == "already in shadow"
    _feed(det, syn_world, 1000.0)
    out = mgr.probation_check()
    assert out is not None and out.accepted and out.reason == "promoted", out
    assert det.model_label == res.label == reg.active().label  # type: ignore[union-attr]
    assert changes == [(res.label, "promoted")]
    decision = reg.decisions()[reg.active().version][-1]  # type: ignore[union-attr]
    assert decision["kind"] == "promoted" and decision["figures"]["windows"] == 140
    assert reg.events()[0]["kind"] == "promoted"


def test_held_back_labels_reject_a_candidate_that_disagrees_with_them(
    tmp_state: Path, syn_model: bytes, syn_world: SynWorld
) -> None:
    """A candidate that never calls fever: quieter, so no worse on the alert rate, and
    the clinicians' confirmed fever windows are what show it is worse."""
    reg, det, _ = _box(tmp_state, syn_model)
    _feed(det, syn_world)  # a warm calibration to label windows with
    cal = det.calibration("p50")
    held = [
        ValidatedWindow(x, cal.mu.copy(), cal.sigma.copy(), kind)
        for kind in ("normal", "fever")
        for x in syn_world.rows(50, kind, 12, seed=7)
    ]
    labels = Labels(held)
    mgr = ModelManager(reg, det, labels)
    res = mgr.apply(_biased(syn_model, "fever", -12.0), "fl:round-3")
    assert res.reason == "shadow"
    _feed(det, syn_world, 1000.0)
    out = mgr.probation_check()
    assert out is not None and out.reason == "rejected", out
    assert "agreement worse" in out.detail
    assert out.figures is not None and out.figures["labelled"] == 24
    assert out.figures["shadow_agreement"] < out.figures["active_agreement"]
    assert labels.asked and set(labels.asked) == {HOLDOUT}  # never judged on trained labels


def test_a_newer_candidate_supersedes_the_one_in_shadow(
    tmp_state: Path, syn_model: bytes, syn_world: SynWorld
) -> None:
    reg, det, mgr = _box(tmp_state, syn_model)
    first = mgr.apply(_biased(syn_model, "fever", 6.0), "fl:round-1")
    _feed(det, syn_world)
    second = mgr.apply(_scrambled(syn_model), "fl:round-2")
    assert second.reason == "shadow" and det.shadow_label == second.label
    kinds = [d["kind"] for d in reg.decisions()[reg.get(first.label).version]]
    assert kinds == ["superseded"]
    assert det.shadow_tally is not None and det.shadow_tally.windows == 0


def test_a_shadow_interrupted_by_a_restart_is_resumed(
    tmp_state: Path, syn_model: bytes, syn_world: SynWorld
) -> None:
    _reg, _det, mgr = _box(tmp_state, syn_model)
    res = mgr.apply(_biased(syn_model, "fever", 6.0), "fl:round-1")
    # the daemon restarts: a new detector and manager on the same registry
    reg2, det2, mgr2 = _box(tmp_state, syn_model)
    assert mgr2.probation_check() is None  # resumed, and no windows yet
    assert mgr2.shadow is not None and det2.shadow_label == res.label
    _feed(det2, syn_world)
    _feed(det2, syn_world, 1000.0)
    out = mgr2.probation_check()
    assert out is not None and out.reason == "rejected"
    assert reg2.pending_shadow() is None


def test_a_newer_global_after_a_restart_supersedes_the_interrupted_shadow(
    tmp_state: Path, syn_model: bytes
) -> None:
    _reg, _det, mgr = _box(tmp_state, syn_model)
    first = mgr.apply(_biased(syn_model, "fever", 6.0), "fl:round-1")
    reg2, det2, mgr2 = _box(tmp_state, syn_model)  # restart, then round 2's global
    second = mgr2.apply(_biased(syn_model, "fall", 6.0), "fl:round-2")
    assert second.reason == "shadow" and det2.shadow_label == second.label
    assert [d["kind"] for d in reg2.decisions()[reg2.get(first.label).version]] == ["superseded"]
    assert reg2.pending_shadow() == reg2.get(second.label)


def test_corrupt_and_misfit_models_are_refused_and_previous_stays(
    tmp_state: Path, syn_model: bytes
) -> None:
    reg, det, mgr = _box(tmp_state, syn_model)
    before = det.model_label
    res = mgr.apply(syn_model[:-50], "mqtt")
    assert not res.accepted and res.reason.startswith("refused")
    assert det.model_label == before == reg.active().label  # type: ignore[union-attr]
    assert reg.events()[0]["kind"] == "refused"


def test_manual_rollback_is_hot(tmp_state: Path, syn_model: bytes, syn_world: SynWorld) -> None:
    reg, det, mgr = _box(tmp_state, syn_model, policy=ValidationPolicy(shadow_windows=0))
    first = det.model_label
    proto = onnx.load_from_string(syn_model)
    close = to_bytes(set_params(proto, get_params(proto) * np.float32(0.999)))
    assert mgr.apply(close, "cli").reason == "shadow"
    assert mgr.probation_check().reason == "promoted"  # type: ignore[union-attr]
    assert det.model_label != first
    mgr.rollback("operator")
    assert det.model_label == first
    decision = reg.decisions()[reg.list()[1].version][-1]
    assert decision["kind"] == "rolled_back" and decision["figures"] is None


# -- the real baseline model on simulated strap data -----------------------------


def _windows(seconds: int, fall_at: float = 140.0) -> list[object]:
    gen = Generator(make_patient(3, seed=1),
                    SimConfig(episodes=(Label(fall_at, fall_at + 30.0, "fall"),)))  # fmt: skip
    w = Windower(10.0, 2.0, patient="p3")
    out: list[object] = []
    for i in range(seconds):
        for name, (t, v) in gen.advance(1.0).streams.items():
            if len(t):
                w.push(SampleBlock("strap", Stream(name), t, v, i))
        out += w.pop_ready(float(i))
    return out


@pytest.fixture(scope="module")
def strap_windows() -> list[object]:
    return _windows(300)


def test_shadow_of_the_real_baseline_raises_no_alerts(
    tmp_state: Path, strap_windows: list[object]
) -> None:
    """Two real onnxruntime sessions on real features: the shipped baseline runs, a
    ruined copy of it scores beside it; only the baseline's alerts reach the sink."""
    data = SHIPPED_BASELINE.read_bytes()
    sink = MemoryAlertSink()
    det = Detector(data, "v1-baseline", sink)
    det.set_shadow(_scrambled(data), "v2-ruined")
    for win in strap_windows:
        det.process(win)
    t = det.shadow_tally
    assert t is not None and t.windows == len(strap_windows) == det.counters["shadow_windows"]
    assert t.active_alerts >= 1  # the scripted fall
    assert t.shadow_flagged > 3 * t.active_flagged  # the ruined copy would alert on most
    assert {a.model for a in sink.alerts.values()} == {"v1-baseline"}
    assert det.counters["alerts"] == len(sink.alerts)
    # what the baseline itself would do as a shadow of itself: the same, window for window
    det2 = Detector(data, "v1", MemoryAlertSink())
    det2.set_shadow(data, "v1-again")
    for win in strap_windows:
        det2.process(win)
    same = det2.shadow_tally
    assert same is not None and same.disagreed == 0
    assert same.shadow_alerts == same.active_alerts == det2.counters["alerts"]
    meta = read_meta(parse_model(data))
    assert det2.verdicts([]) == [] and meta.classes[0] == "normal"


# -- the issue-22 lock-up, at component level ------------------------------------


def _strap_blocks(seconds: int) -> list[SampleBlock]:
    gen = Generator(make_patient(3, seed=1),
                    SimConfig(episodes=(Label(115.0, 145.0, "fall"),)))  # fmt: skip
    out = []
    for i in range(seconds):
        for name, (t, v) in gen.advance(1.0).streams.items():
            if len(t):
                out.append(SampleBlock("strap", Stream(name), t, v, i))
    return out


class _FedBox:
    """A box in federated rounds at component level: the real wiring of detector, learner
    and lifecycle (``detection_stack``), the detection component with its alert relay and
    outbox, fed simulated strap data; the global arrives as ``FlClient._on_model`` hands it
    in (learner reset to it, then the lifecycle under the component's model lock)."""

    def __init__(self, state: Path, shadow_windows: int = 20) -> None:
        from edgeagent.daemon.components import Counters
        from edgeagent.daemon.detection import DetectionComponent
        from edgeagent.daemon.outbound import AlertRelay
        from edgeagent.daemon.wiring import detection_stack
        from edgeagent.ops.config import LearningSection
        from edgeagent.pipeline.alerts import AlertStore
        from edgeagent.transport.outbox import Outbox

        self.reg = ModelRegistry(state)
        self.data = SHIPPED_BASELINE.read_bytes()
        self.rec = self.reg.activate(self.reg.add(self.data, "baseline").version, "install")
        self.outbox, self.counters = Outbox.in_state_dir(state), Counters()
        topic = "edgeagent/v1/f/alerts/box"
        self.relay = AlertRelay(AlertStore(state), self.outbox, topic, "box", self.counters)
        stack = detection_stack(self.reg, self.rec, self.relay, LearningSection())
        assert stack.learner is not None
        self.learner, self.mgr = stack.learner, stack.manager
        self.mgr.policy = ValidationPolicy(shadow_windows=shadow_windows)
        self.comp = DetectionComponent(
            stack.detector, self.relay, {"strap": "p3"},
            lambda p: Windower(10.0, 2.0, patient=p), self.counters, manager=self.mgr,
            learner=self.learner, clock=lambda: 0.0, registry_check_s=0.0,
        )  # fmt: skip
        self.comp.learner_follows_registry = False  # it follows the fleet's global
        self.blocks = _strap_blocks(185)

    def feed(self, t0: int, t1: int, tick: bool = False) -> None:
        for b in self.blocks:
            if t0 <= int(b.seq or 0) < t1:
                self.comp.consume(b)
                if tick:
                    self.comp.tick()  # the periodic check, as the supervisor runs it
        self.learner.step(100)

    def global_arrives(self, data: bytes) -> Any:
        from edgeagent.daemon.detection import SerialManager

        self.learner.reset_global(get_params(onnx.load_from_string(data)))
        return SerialManager(self.mgr, self.comp.model_lock).apply(data, "fl:round-1")

    def close(self) -> None:
        self.relay.store.close()
        self.outbox.close()


def test_a_bad_global_stays_in_shadow_is_rejected_and_the_learner_keeps_training(
    tmp_state: Path,
) -> None:
    """What locked federated learning up: a bad global went live unjudged, raised alerts,
    was rolled back, and the learner rejected every window from then on. Here the bad
    global waits in shadow, raises nothing, is rejected, and the learner's progress
    (from the global, which the next round's update is measured against) survives."""
    box = _FedBox(tmp_state)
    reg, rec, learner, mgr, comp = box.reg, box.rec, box.learner, box.mgr, box.comp
    counters, outbox = box.counters, box.outbox
    box.feed(0, 110)
    assert learner.counters["trained"] > 0  # warmed up and training on the baseline

    res = box.global_arrives(_head_scrambled(box.data))  # round 1: a ruined head
    assert res.reason == "shadow"
    box.feed(110, 155, tick=True)  # judged once 20 windows were scored in shadow
    shadow_label = res.label
    probation = [s["probation"] for s in comp.swaps if "probation" in s]
    assert [p["reason"] for p in probation] == ["rejected"], comp.swaps
    assert "alert rate worse" in probation[0]["detail"]
    assert reg.get(shadow_label).rejected
    assert comp.detector.model_label == rec.label and mgr.shadow is None
    raised = [json.loads(r.payload) for r in outbox.peek(limit=100)]
    assert raised and {a["model"] for a in raised} == {rec.label}  # the fall, by the baseline
    assert "learner_restarts" not in counters.snapshot()  # a rejected shadow changed nothing

    trained, n_k = learner.counters["trained"], learner.n_k
    assert n_k > 0
    box.feed(155, 185)
    assert learner.counters["trained"] > trained and learner.n_k > n_k, learner.counters
    st = comp.status()
    assert st["detection"]["shadow"] is None and st["counters"]["detection_shadow_windows"] >= 20
    box.close()


def test_a_good_global_promoted_from_shadow_keeps_the_learners_progress(
    tmp_state: Path,
) -> None:
    """The learner has trained from the global since it arrived; promoting that same
    global changes what detection runs, not what the learner trains from."""
    box = _FedBox(tmp_state)
    box.feed(0, 110)
    proto = onnx.load_from_string(box.data)
    good = to_bytes(set_params(proto, get_params(proto) * np.float32(0.999)))
    res = box.global_arrives(good)
    assert res.reason == "shadow"
    assert box.comp.status()["detection"]["shadow_tally"]["needs_windows"] == 20
    box.feed(110, 155, tick=True)
    assert box.comp.detector.model_label == res.label == box.reg.active().label  # type: ignore[union-attr]
    snap = box.counters.snapshot()
    assert snap.get("learner_kept") == 1 and "learner_restarts" not in snap
    assert box.learner.n_k > 0  # the windows trained on since the global arrived are kept
    # an operator's rollback is a change of what runs: the learner restarts
    box.mgr.rollback("operator")
    assert box.counters.snapshot().get("learner_restarts") == 1 and box.learner.n_k == 0
    box.close()


def test_a_shadow_the_detector_lost_is_scored_again_not_judged_on_nothing(
    tmp_state: Path, syn_model: bytes, syn_world: SynWorld
) -> None:
    _reg, det, mgr = _box(tmp_state, syn_model, policy=ValidationPolicy(shadow_windows=0))
    res = mgr.apply(_biased(syn_model, "fever", 6.0), "fl:round-1")
    det.clear_shadow()
    assert mgr.probation_check() is None  # put back, with a fresh tally
    assert det.shadow_label == res.label and det.shadow_tally is not None
    _feed(det, syn_world)
    out = mgr.probation_check()
    assert out is not None and out.reason == "rejected" and out.figures["windows"] == 140  # type: ignore[index]
