"""Stage 3: the hubs. Per hub a simulated patient on a serial textile (a real pty),
read by the agent's ``SerialSource`` into windows and the daemon's detection stack.

Also the hub's scenario (:func:`demo_schedule`) and, once it stopped, its plain
record (:func:`hub_record`) for the pure summary.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgelab.demo.arms import ShadowArm
from edgelab.demo.nurse import nurse_verdicts
from edgelab.demo.options import (
    CHECK_EVERY_S,
    EPISODE_KINDS,
    FLEET,
    HOP_S,
    SERIAL_FAULTS,
    WINDOW_S,
    DemoOptions,
    ModelInfo,
    Part,
)


def demo_schedule(hub: int, seconds: float, seed: int = 0) -> list[tuple[float, float, str]]:
    """Scripted episodes for one hub: one every ~70-100 s after a 100 s calm start.

    The calm start lets the detector's personal calibration warm up (40 windows)
    so the learner has normal windows to train on before the first round.

    Deterministic from (seed, hub); cycles through :data:`EPISODE_KINDS` from a
    hub-dependent offset so hubs see different events (non-IID data).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, hub, 0xDE70]))
    out: list[tuple[float, float, str]] = []
    t = 100.0
    i = hub
    while True:
        kind = EPISODE_KINDS[i % len(EPISODE_KINDS)]
        i += 1
        dur = float(rng.uniform(20.0, 35.0)) if kind == "fall" else float(rng.uniform(25.0, 45.0))
        start = t + float(rng.uniform(5.0, 25.0))
        end = start + dur
        if end + 5.0 > seconds:
            return out
        out.append((round(start, 3), round(end, 3), kind))
        t = end + 30.0


class _EmptyChunk:
    streams: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # noqa: RUF012 (read-only)
    labels: list[Any] = []  # noqa: RUF012


class GatedFeed:
    """Wraps the physiology generator for ``PtyDevice``: releases simulated time
    segment by segment, and keeps the ground truth (labels) and what was generated.

    ``advance`` blocks while the next chunk would pass the released time, so the
    device pauses between segments while a federated round runs.
    """

    def __init__(self, generator: Any) -> None:
        self.gen = generator
        self.allowed = 0.0
        self.t = 0.0
        self.closed = False
        self.waiting = False
        self.labels: set[tuple[float, float, str]] = set()
        self.generated: dict[str, int] = {}
        self._cv = threading.Condition()

    def release(self, until: float) -> None:
        """Let the device generate up to simulated time ``until``."""
        with self._cv:
            self.allowed = until
            self._cv.notify_all()

    def close(self) -> None:
        """Stop gating for good: later ``advance`` calls return nothing (shutdown)."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    def advance(self, seconds: float) -> Any:
        """The next ``seconds`` of every stream, blocking while past the released time."""
        with self._cv:
            while not self.closed and self.t + seconds > self.allowed + 1e-9:
                self.waiting = True
                self._cv.wait(0.1)
            self.waiting = False
            if self.closed:
                return _EmptyChunk()
        chunk = self.gen.advance(seconds)
        self.t += seconds
        for name, (t, _v) in chunk.streams.items():
            self.generated[name] = self.generated.get(name, 0) + len(t)
        for lb in chunk.labels:
            self.labels.add((float(lb.start), float(lb.end), str(lb.kind)))
        return chunk

    def paused_at(self, until: float) -> bool:
        """True once every chunk up to ``until`` was handed out and the device waits."""
        return self.closed or (self.waiting and self.t >= until - 1e-6)


class Hub:
    """One simulated box: serial wearable on a pty -> source -> windows -> detector -> learner."""

    def __init__(self, index: int, opts: DemoOptions, workdir: Path, model: ModelInfo) -> None:
        from edgeagent.daemon.components import Counters
        from edgeagent.daemon.feedback import FeedbackComponent
        from edgeagent.daemon.wiring import detection_stack
        from edgeagent.model.registry import ModelRegistry
        from edgeagent.ops.config import FeedbackSection, LearningSection
        from edgeagent.pipeline import features
        from edgeagent.pipeline.alerts import AlertStore
        from edgeagent.pipeline.feedback import FeedbackStore
        from edgeagent.pipeline.windows import Windower
        from edgeagent.sources.retry import RetryPolicy
        from edgeagent.sources.serial import DEFAULT_MAX_SKEW_S, SerialSource
        from firmware_sim.physiology import Generator, Label, SimConfig, make_patient
        from firmware_sim.serialdev import FaultConfig, PtyDevice

        self.index = index
        self.name = f"hub-{index + 1}"
        self.dir = workdir / self.name
        self.state = self.dir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        profile = make_patient(index + 1, seed=opts.seed)
        self.patient = profile.patient_id
        self.schedule = demo_schedule(index, opts.seconds, opts.seed)
        eps = tuple(Label(s, e, k) for s, e, k in self.schedule)
        self.feed = GatedFeed(Generator(profile, SimConfig(episodes=eps)))
        self.device_id = f"textile-{index + 1}"
        self.link = self.dir / "ttyTEXTILE0"
        faults = FaultConfig(**SERIAL_FAULTS, seed=opts.seed * 100 + index)
        self.device = PtyDevice(
            self.link,
            self.feed,
            device_id=self.device_id,
            seed=opts.seed * 100 + index,
            realtime=opts.realtime,
            faults=faults,
        )
        self.registry = ModelRegistry(self.state)
        rec = self.registry.add(model.data, "demo baseline")
        self.registry.activate(rec.version, "demo baseline")
        self.alert_store = AlertStore(self.state)
        self.last_features: np.ndarray | None = None
        self._extract = features.extract
        self.feature_names = tuple(features.FEATURE_NAMES)
        # Wired as the daemon wires it, with the daemon's learning defaults.
        stack = detection_stack(
            self.registry, rec, self.alert_store, LearningSection(), featurize=self._featurize
        )
        assert stack.learner is not None  # learning is on by default
        self.detector, self.learner, self.manager = stack.detector, stack.learner, stack.manager
        self.arms = {
            name: ShadowArm(name, model.data, self.dir / name, self._cached_features, learns)
            for name, learns in (("baseline", False), ("control", True))
        }
        # Nurse feedback takes the daemon's path: the detector hands the windows behind
        # each alert to the box's FeedbackStore, a verdict goes through the handler the
        # control socket's `alerts ack` calls, and the store's train split reaches the
        # learners (the hub's and the control's: the same feedback) while its held-back
        # split is what both model lifecycles judge candidates on.
        self.feedback_store = FeedbackStore(
            self.state, FeedbackSection(), classes=lambda: self.detector.meta.classes
        )
        control = self.arms["control"].learner
        both = hasattr(self.learner, "offer_labelled") and control is not None
        self.ward = FeedbackComponent(
            self.feedback_store,
            _SameFeedback(self.learner, control) if both else self.learner,
            Counters(),
            box_id=self.name,
            fleet=FLEET,
        )
        self.detector.on_alert_window = self.ward.keep
        self.manager.labels = self.feedback_store
        self.arms["control"].manager.labels = self.feedback_store
        self.feedback_share = opts.feedback_share
        self.feedback_error = opts.feedback_error
        self.seed = opts.seed
        self._judged: set[str] = set()
        self._last_check = 0.0
        self.feedback_log: list[dict[str, Any]] = []
        self.control_learned: list[int] = []
        self.windower = Windower(WINDOW_S, HOP_S, patient=self.patient)
        self.source = SerialSource(
            str(self.link),
            self.device_id,
            self._on_block,
            self._on_gap,
            retry=RetryPolicy(base_s=0.05, cap_s=0.5),
            max_skew_s=DEFAULT_MAX_SKEW_S if opts.realtime else None,
        )
        self.lock = threading.Lock()
        self.received: dict[str, int] = {}
        self.gaps = 0
        self.windows: list[dict[str, Any]] = []
        self.segment = 0
        self.first_block: tuple[str, int, float] | None = None
        self.offset: float | None = None
        self.model_history: list[dict[str, Any]] = [
            {"segment": 0, "label": rec.label, "reason": "baseline"}
        ]
        self.learned: list[int] = []
        self.delta_norms: list[float] = []

    # -- reader thread

    def _featurize(self, window: Any) -> np.ndarray:
        x = self._extract(window)
        self.last_features = x
        return x

    def _cached_features(self, window: Any) -> np.ndarray:
        """The reference arms score the features the hub's detector just computed."""
        assert self.last_features is not None
        return self.last_features

    def _on_block(self, block: Any) -> None:
        with self.lock:
            s = str(block.stream)
            self.received[s] = self.received.get(s, 0) + len(block)
            if self.first_block is None and block.seq is not None and len(block):
                self.first_block = (s, int(block.seq), float(block.t[0]))
            self.windower.push(block)
            for w in self.windower.pop_ready():
                self._score(w)

    def _on_gap(self, gap: Any) -> None:
        with self.lock:
            self.gaps += 1
            self.windower.push_gap(gap)

    def _score(self, w: Any) -> None:
        t0 = time.perf_counter()
        d = self.detector.process(w)
        ms = (time.perf_counter() - t0) * 1e3
        for arm in self.arms.values():
            arm.process(w, self.segment)
        self.windows.append(
            {
                "segment": self.segment,
                "start": float(d.start),
                "end": float(d.end),
                "score": float(d.score),
                "p_fault": float(d.p_fault),
                "clinical_active": bool(d.clinical_active),
                "fault_active": bool(d.fault_active),
                "status": d.status,
                "kind": d.kind,
                "model": d.model,
                "latency_ms": ms,
            }
        )

    # -- control (main thread)

    def start(self) -> None:
        """Open the pty device and start reading it."""
        self.device.start()
        self.source.start()

    def begin_segment(self, k: int, until: float) -> None:
        """Mark windows scored from now on as segment ``k`` and release data up to ``until``."""
        self.segment = k
        self.feed.release(until)

    def intact_samples(self) -> int:
        """Samples the device sent in intact frames so far (its ledger)."""
        frames = list(self.device.ledger.intact)  # a copy: the ledger grows on its thread
        return sum(len(f.values) for f in frames if f.values is not None)

    def caught_up(self) -> bool:
        """Everything the device sent intact has reached the agent."""
        with self.lock:
            got = sum(self.received.values())
        return got >= self.intact_samples()

    def segment_done(self, until: float) -> bool:
        """The device paused at ``until`` and the agent has everything it sent."""
        return self.feed.paused_at(until) and self.caught_up()

    def resolve_offset(self) -> float | None:
        """Agent time minus simulation time, from the first block and the device ledger."""
        if self.offset is None and self.first_block is not None:
            stream, seq, t_agent = self.first_block
            frames = list(self.device.ledger.intact)
            boot = self.device.framer.boot_offset_ns
            for f in frames:
                if f.stream == stream and f.seq == seq:
                    self.offset = t_agent - (f.t0_ns - boot) * 1e-9
                    break
        return self.offset

    def train(self) -> int:
        """Train the local learner on every window queued during the segment; the control
        arm trains on the same and adopts its model locally."""
        n = self.learner.step(max_batches=10_000)
        self.learned.append(n)
        self.delta_norms.append(float(np.linalg.norm(self.learner.delta())))
        self.control_learned.append(self.arms["control"].end_segment(self.segment))
        return n

    def check_models(self, segment: int, force: bool = False) -> None:
        """The lifecycle's periodic check (judge a candidate in shadow, probation), on the
        hub's model and the control arm's, at most once per ``CHECK_EVERY_S`` unless forced.

        The daemon runs the same check on a timer; run only at segment ends, a
        global would wait a whole segment in shadow before it could be judged.
        Under the hub's lock: the reader thread scores windows on these detectors.
        """
        now = time.monotonic()
        if not force and now - self._last_check < CHECK_EVERY_S:
            return
        self._last_check = now
        with self.lock:
            check = self.manager.probation_check()
            self.arms["control"].check(segment)
        if check is not None:
            self.model_history.append(
                {
                    "segment": segment,
                    "label": self.detector.model_label,
                    "reason": f"probation: {check.reason}",
                }
            )

    def feedback(self, segment: int) -> dict[str, Any]:
        """The simulated nurse's verdicts on the clinical alerts raised since the last call.

        Each answered alert is acknowledged through ``FeedbackComponent.ack``, the
        handler of the control socket's ``alerts_ack`` (``edgeagent alerts ack ID
        --true|--false [--kind K]``): confirmed with the ground truth's kind, or
        dismissed. The store labels the windows it kept for the alert, holds its
        share back, and hands the train split to the learners. Draws are seeded by
        (seed, hub, segment).
        """
        from edgeagent.pipeline.feedback import TRAIN

        off = self.resolve_offset() or 0.0
        alerts = [
            a
            for a in self.alert_store.list(patient=self.patient, limit=1_000_000)
            if a.id not in self._judged
        ]
        self._judged.update(a.id for a in alerts)
        sim = [
            {"start": a.start - off, "end": a.end - off, "category": a.category, "kind": a.kind}
            for a in alerts
        ]
        seq = np.random.SeedSequence([self.seed, self.index, segment, 0xFEED])
        draws = [(float(a), float(b)) for a, b in np.random.default_rng(seq).random((len(sim), 2))]
        labels = sorted(self.feed.labels)
        verdicts = nurse_verdicts(sim, labels, self.feedback_share, self.feedback_error, draws)
        rec: dict[str, Any] = {
            "segment": segment,
            "alerts": sum(1 for a in sim if a["category"] == "clinical"),
            "acked": len(verdicts),
            "confirmed": sum(1 for v in verdicts if v.true),
            "dismissed": sum(1 for v in verdicts if not v.true),
            "wrong": sum(1 for v in verdicts if not v.correct),
            "windows": 0,
            "held_back": 0,
            "refused": {},
            "trained_on": isinstance(self.ward.learner, _SameFeedback),
        }
        for v in verdicts:
            req = {
                "alert": alerts[v.alert].id,
                "confirmed": v.true,
                "source": "ward-sim",
                "patient": self.patient,
            }
            if v.true:
                req["kind"] = v.label
            res = self.ward.ack(req)
            if not res["accepted"]:
                rec["refused"][res["reason"]] = rec["refused"].get(res["reason"], 0) + 1
            elif res["split"] == TRAIN:
                rec["windows"] += res["windows"]
            else:
                rec["held_back"] += res["windows"]
        self.feedback_log.append(rec)
        return rec

    def finish(self, timeout: float = 10.0) -> None:
        """Stop the device (the reader drains what was sent), then the source; flush windows."""
        self.feed.close()
        self.device.stop()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.caught_up():
            time.sleep(0.05)
        self.source.stop()
        with self.lock:
            for w in self.windower.flush():
                self._score(w)

    def close(self) -> None:
        """Close the alert and feedback stores (the other parts were stopped by ``finish``)."""
        with contextlib.suppress(Exception):
            self.alert_store.close()
        with contextlib.suppress(Exception):
            self.feedback_store.close()

    def snapshot(self) -> dict[str, Any]:
        """Cheap live view for the progress display."""
        with self.lock:
            rec = dict(self.received)
            n_win = len(self.windows)
            last = self.last_features
        alerts = self.detector.counters.get("alerts", 0)
        feats: dict[str, float] = {}
        if last is not None:
            for name in ("hr_bpm", "rr_rmssd_ms", "acc_enmo_g", "skin_temp_c"):
                if name in self.feature_names:
                    v = float(last[self.feature_names.index(name)])
                    if math.isfinite(v):
                        feats[name] = round(v, 2)
        return {
            "hub": self.name,
            "received": rec,
            "windows": n_win,
            "alerts": alerts,
            "features": feats,
            "model": self.detector.model_label,
            "link": self.source.state,
            "sim_t": round(self.feed.t, 1),
        }


def start_hubs(
    opts: DemoOptions, workdir: Path, model: ModelInfo, into: list[Hub] | None = None
) -> list[Hub]:
    """Create and start every hub's device and serial source.

    Each hub is appended to ``into`` as soon as it exists, so a failure half-way
    still leaves the caller a list of everything it has to stop.
    """
    hubs = into if into is not None else []
    for i in range(opts.hubs):
        h = Hub(i, opts, workdir, model)
        hubs.append(h)
        h.start()
    return hubs


class _SameFeedback:
    """The hub's learner and the control arm's behind one ``offer_labelled``: the
    feedback component trains both on the same windows (the hub's answer counts)."""

    def __init__(self, hub: Any, control: Any) -> None:
        self.hub = hub
        self.control = control

    def offer_labelled(self, w: Any) -> bool:
        self.control.offer_labelled(w)
        return bool(self.hub.offer_labelled(w))


def feedback_part(opts: DemoOptions, hubs: list[Hub]) -> Part:
    """The parts-list entry for the simulated ward: how its verdicts reach the learners."""
    share = (
        f"simulated nurse answers {opts.feedback_share:.0%} of clinical alerts, "
        f"{opts.feedback_error:.0%} of answers wrong; verdicts through the daemon's "
        "alerts_ack handler (FeedbackComponent, the control socket not opened) into each "
        "hub's FeedbackStore"
    )
    if hubs and all(isinstance(h.ward.learner, _SameFeedback) for h in hubs):
        return Part("nurse feedback", True, "real", share + "; train split to both learners")
    return Part(
        "nurse feedback",
        True,
        "real",
        share + "; held-back split judges models, the train split is not trained on: this "
        "LocalLearner takes no labelled windows (offer_labelled)",
    )


def hub_record(h: Hub) -> dict[str, Any]:
    """Plain facts of one finished hub, with times on the simulation clock (seconds
    since the patient's recording began), so they line up with the ground truth."""
    offset = h.resolve_offset()
    off = offset if offset is not None else 0.0
    led = h.device.ledger
    streams = {}
    for s in sorted(set(h.feed.generated) | set(h.received)):
        streams[s] = {
            "generated": int(h.feed.generated.get(s, 0)),
            "sent_intact": int(led.n_samples(s)),
            "received": int(h.received.get(s, 0)),
        }
    windows = [dict(w, start=w["start"] - off, end=w["end"] - off) for w in h.windows]
    alerts = [
        {
            "start": a.start - off,
            "end": a.end - off,
            "kind": a.kind,
            "category": a.category,
            "score": a.score,
            "modality": a.modality,
            "model": a.model,
        }
        for a in h.alert_store.list(patient=h.patient, limit=1_000_000)
    ]
    ble_alerts = len(h.alert_store.list(patient=f"{h.patient}-strap", limit=1_000_000))
    end = h.feed.t
    labels = sorted(lb for lb in h.feed.labels if lb[0] < end)
    arms = {
        name: {
            "windows": [dict(w, start=w["start"] - off, end=w["end"] - off) for w in arm.windows],
            "alerts": [
                {"start": a.start - off, "end": a.end - off, "category": a.category, "kind": a.kind}
                for a in arm.alerts()
            ],
            "models": list(arm.history),
        }
        for name, arm in h.arms.items()
    }
    return {
        "name": h.name,
        "patient": h.patient,
        "device": h.device_id,
        "offset_s": offset,
        "sim_seconds": end,
        "streams": streams,
        "link": h.source.counters.as_dict(),
        "ledger": dict(led.counts),
        "gaps": h.gaps,
        "windower": h.windower.counters.as_dict(),
        "windows": windows,
        "alerts": alerts,
        "ble_alerts": ble_alerts,
        "labels": labels,
        "learned": list(h.learned),
        "delta_norms": list(h.delta_norms),
        "model_history": list(h.model_history),
        "detector": dict(h.detector.counters),
        "arms": arms,
        "feedback": list(h.feedback_log),
        "control_learned": list(h.control_learned),
    }
