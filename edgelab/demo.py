"""``edgeagent demo``: the whole system on one machine, with nothing to configure.

What runs, stage by stage (each stage is a function returning a result record,
so the CLI, the tests and the report read the same facts):

1. :func:`prepare_model` — the shipped baseline model (``models/baseline.onnx``),
   or, in a checkout without it, a deterministic build through
   ``models/build.py`` (the summary says which).
2. :func:`start_broker` — Mosquitto as a subprocess on 127.0.0.1 with the
   fleet's TLS + ACL config (:mod:`edgelab.broker`), a broker at HOST:PORT,
   or none (then rounds run in memory through the same SecAgg+ code and the
   summary says so).
3. :func:`start_hubs` — per hub: a simulated patient (``firmware_sim.physiology``)
   on a serial textile served on a real pty (``firmware_sim.serialdev``, a few
   injected byte faults), read by the agent's ``SerialSource`` into a
   ``Windower``, features, the ONNX ``Detector`` (alerts stored in SQLite) and
   the ``LocalLearner``; a box ``FlClient`` on its own mTLS MQTT link.
4. :func:`start_ble` — where ``dbus-daemon`` exists: a private bus, the BlueZ
   simulator with one chest strap per hub, and the agent's ``BleSource``
   through unmodified bleak. Skipped with the reason otherwise.
5. Segments and rounds — the wearables stream one segment of simulated time,
   then one federated round runs (aggregator over MQTT, or in memory), and the
   new global model is hot-swapped on every hub (``ModelManager``: validated,
   or rolled back). ``rounds + 1`` segments: segment 0 runs the baseline.
6. :func:`build_summary` (pure) — ledger vs. agent counters, windows, alerts
   matched to ground truth, per-round accuracy and epsilon, latencies, and
   which parts ran for real; :func:`check_summary` (pure) lists any figure that
   does not add up; :func:`write_report` writes PNGs, a self-contained HTML
   page and ``summary.json``.

The simulated devices run faster than real time by default ("fast"): the
serial device sends as fast as the agent reads and agent time follows device
time. BLE runs on the wall clock whatever the pacing (the BlueZ simulator
ticks in real time), so it streams for as long as the serial segments take.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FLEET = "demo"
WINDOW_S = 10.0
HOP_S = 2.0
#: Simulated seconds per hub by default: 4 segments of 225 s keep the demo under a minute.
DEFAULT_SECONDS = 900.0
#: Light byte faults on every serial link, so the report shows real rejections.
SERIAL_FAULTS = {"bit_flip": 0.002, "garbage": 0.002, "dup_frame": 0.002}
#: Episodes that resolve within a segment (fever/hypothermia ramp over many minutes).
EPISODE_KINDS = ("tachycardia", "bradycardia", "af", "pvc", "st_change", "fall", "lead_off")
#: Federated settings for a few-box demo. The clip matches the size of a segment's
#: local update (~0.01-0.04 in L2). Noise/signal of the averaged update is about
#: z * sqrt(n_params) / n_boxes, so with 3 boxes and ~4.9k parameters only a small
#: noise multiplier z leaves the update useful: the (large) epsilon it costs is
#: reported as is. A fleet of hundreds of boxes gets the same utility at a
#: meaningful epsilon; ``--noise-multiplier`` shows the trade-off.
CLIP_NORM = 1.0
NOISE_MULTIPLIER = 0.01
N_CAP = 64
STAGE_TIMEOUT_S = 15.0
#: Bounds on waiting (wall seconds): a stuck part is reported, never waited on forever.
SEGMENT_TIMEOUT_S = 120.0
ROUND_TIMEOUT_S = 90.0
#: BLE streams on the wall clock: before stopping, wait (bounded) until every strap's
#: data made this many windows, so its path is shown end to end even in a short demo.
BLE_MIN_WINDOWS = 3
BLE_MAX_WAIT_S = 45.0
CLINICAL = "clinical"
FAULT_KIND_NAMES = ("lead_off", "motion_artifact", "saturation")


# --------------------------------------------------------------------------- records


@dataclass
class DemoOptions:
    """What ``edgeagent demo`` was asked to do (CLI flags, validated)."""

    hubs: int = 3
    seconds: float = DEFAULT_SECONDS
    rounds: int = 3
    out: Path = Path("demo-out")
    realtime: bool = False
    ble: bool = True
    broker: str = "embedded"  # "embedded" | "mosquitto" | "HOST:PORT" | "none"
    seed: int = 0
    noise_multiplier: float = NOISE_MULTIPLIER

    def __post_init__(self) -> None:
        # Absolute from the start: the aggregator and hub daemons refuse relative state dirs
        # (a service's cwd is '/'), and the default --out is relative.
        self.out = Path(self.out).absolute()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad option and what is allowed."""
        if not 1 <= self.hubs <= 20:
            raise ValueError(f"--hubs must be 1..20, got {self.hubs}")
        if self.rounds < 0 or self.rounds > 20:
            raise ValueError(f"--rounds must be 0..20, got {self.rounds}")
        segs = self.rounds + 1
        if not math.isfinite(self.seconds) or self.seconds / segs < 2 * WINDOW_S:
            raise ValueError(
                f"--seconds {self.seconds} leaves under {2 * WINDOW_S:.0f} s per segment "
                f"({segs} segments for {self.rounds} rounds); "
                f"use at least {2 * WINDOW_S * segs:.0f}"
            )
        if not math.isfinite(self.noise_multiplier) or not 0 <= self.noise_multiplier <= 100:
            raise ValueError(f"--noise-multiplier must be in [0, 100], got {self.noise_multiplier}")
        if self.broker not in ("embedded", "mosquitto", "none"):
            host, _, port = self.broker.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"--broker must be embedded, mosquitto or HOST:PORT, got {self.broker!r}"
                )


@dataclass
class Part:
    """One part of the system and whether it ran: ``how`` is real, in-memory or skipped."""

    name: str
    ran: bool
    how: str
    reason: str = ""


@dataclass
class ModelInfo:
    """The baseline model the demo starts from, and whether it had to be built."""

    path: Path
    data: bytes
    sha256: str
    built: bool
    note: str


@dataclass
class BrokerInfo:
    """Where the federated part talks, or why it runs in memory."""

    host: str | None
    port: int | None
    how: str  # "real" | "in-memory"
    reason: str
    broker: Any = None  # edgelab.broker.Broker we started, if any


# --------------------------------------------------------------------------- pure helpers


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


def percentiles(
    values: Sequence[float], qs: Sequence[int] = (50, 90, 99)
) -> dict[str, float | None]:
    """``{"p50": ..., ...}`` of finite values (None when there are none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    return {f"p{q}": (float(np.percentile(v, q)) if v.size else None) for q in qs}


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def match_alerts(
    alerts: Iterable[dict[str, Any]], labels: Iterable[tuple[float, float, str]]
) -> dict[str, Any]:
    """Alerts against ground truth: an alert is a true positive when it overlaps a label
    of its category (clinical episode for clinical alerts, sensor fault for fault alerts).

    Returns per-category ``alerts``, ``tp``, ``fp`` and label ``events``/``detected``
    counts, plus each alert's verdict under ``verdicts`` (same order as given).
    """
    labels = list(labels)
    out: dict[str, Any] = {}
    verdicts: list[bool] = []
    for cat in (CLINICAL, "sensor_fault"):
        out[cat] = {"alerts": 0, "tp": 0, "fp": 0, "events": 0, "detected": 0}
    alerts = list(alerts)
    for a in alerts:
        cat = a["category"] if a["category"] in out else CLINICAL
        want_fault = cat == "sensor_fault"
        hit = any(
            _overlaps(a["start"], a["end"], s, e) and ((k in FAULT_KIND_NAMES) == want_fault)
            for s, e, k in labels
        )
        rec = out[cat]
        rec["alerts"] += 1
        rec["tp" if hit else "fp"] += 1
        verdicts.append(hit)
    for s, e, k in labels:
        cat = "sensor_fault" if k in FAULT_KIND_NAMES else CLINICAL
        out[cat]["events"] += 1
        if any(a["category"] == cat and _overlaps(a["start"], a["end"], s, e) for a in alerts):
            out[cat]["detected"] += 1
    out["verdicts"] = verdicts
    return out


def detection_delays(
    windows: Sequence[dict[str, Any]], labels: Iterable[tuple[float, float, str]], window_s: float
) -> list[float]:
    """Seconds from each clinical episode's onset to the end of the first window that had a
    clinical episode open while seeing it (the ``edgeagent evaluate`` definition)."""
    out: list[float] = []
    ws = sorted((w for w in windows if w["status"] == "ok"), key=lambda w: w["end"])
    for s, e, k in labels:
        if k in FAULT_KIND_NAMES:
            continue
        for w in ws:
            if w["clinical_active"] and w["end"] > s and w["start"] < e + window_s:
                out.append(max(0.0, w["end"] - s))
                break
    return out


def check_summary(summary: dict[str, Any]) -> list[str]:
    """Every way the summary's figures fail to add up (empty list: consistent).

    The CI test and the demo itself both run this, so a report never claims
    numbers that contradict each other.
    """
    bad: list[str] = []
    hubs = summary.get("hubs", [])
    if len(hubs) != summary.get("options", {}).get("hubs", len(hubs)):
        bad.append(f"{len(hubs)} hub records for {summary['options']['hubs']} hubs")
    tot_alerts = 0
    for h in hubs:
        name = h["name"]
        for stream, s in h["serial"]["streams"].items():
            if s["received"] > s["sent_intact"]:
                bad.append(f"{name}/{stream}: received {s['received']} > sent {s['sent_intact']}")
            if s["received"] != s["sent_intact"]:
                bad.append(
                    f"{name}/{stream}: received {s['received']} != intact {s['sent_intact']} "
                    "(ledger minus corrupted frames)"
                )
            if s["sent_intact"] > s["generated"]:
                bad.append(f"{name}/{stream}: intact {s['sent_intact']} > generated")
        link = h["serial"]["link"]
        led = h["serial"]["ledger"]
        want_ok = (
            led.get("hello_intact", 0)
            + led.get("samples_intact", 0)
            + led.get("heartbeat_intact", 0)
            + led.get("duplicates_sent", 0)
        )
        if link["frames_ok"] != want_ok:
            bad.append(f"{name}: frames_ok {link['frames_ok']} != intact frames sent {want_ok}")
        if link["duplicates"] != led.get("duplicates_sent", 0):
            bad.append(f"{name}: duplicates dropped {link['duplicates']} != sent twice")
        corrupted = sum(led.get(f"{k}_corrupted", 0) for k in ("samples", "hello", "heartbeat"))
        if corrupted and link["bad_crc"] + link["malformed"] == 0:
            bad.append(f"{name}: {corrupted} corrupted frames sent but none rejected")
        if h["windows"] <= 0:
            bad.append(f"{name}: no windows")
        if sum(seg["windows"] for seg in h["segments"]) != h["windows"]:
            bad.append(f"{name}: segment windows do not add up to {h['windows']}")
        for cat, m in h["alerts"].items():
            if m["tp"] + m["fp"] != m["alerts"]:
                bad.append(f"{name}/{cat}: tp {m['tp']} + fp {m['fp']} != {m['alerts']}")
            if m["detected"] > m["events"]:
                bad.append(f"{name}/{cat}: detected {m['detected']} > events {m['events']}")
            tot_alerts += m["alerts"]
    for hub, b in (summary.get("ble") or {}).items():
        for stream, v in b["streams"].items():
            if v["received"] > v["sent"]:
                bad.append(f"{hub} BLE/{stream}: received {v['received']} > sent {v['sent']}")
    t = summary.get("totals", {})
    if t.get("alerts") != tot_alerts:
        bad.append(f"total alerts {t.get('alerts')} != sum over hubs {tot_alerts}")
    if t.get("alerts") != t.get("tp", 0) + t.get("fp", 0):
        bad.append("total alerts != tp + fp")
    if t.get("windows") != sum(h["windows"] for h in hubs):
        bad.append("total windows != sum over hubs")
    fed = summary.get("federation", {})
    rounds = fed.get("rounds", [])
    want = summary.get("options", {}).get("rounds", len(rounds))
    done = sum(1 for r in rounds if r["status"] == "completed")
    if done != want and not fed.get("reason"):
        bad.append(f"{done} of {want} rounds completed and no reason recorded")
    if len(summary.get("accuracy_per_round", [])) != len(hubs[0]["segments"] if hubs else []):
        bad.append("accuracy_per_round does not have one entry per segment")
    for p in summary.get("parts", []):
        if p["how"] not in ("real", "in-memory", "skipped"):
            bad.append(f"part {p['name']}: how={p['how']!r}")
        if p["ran"] == (p["how"] == "skipped"):
            bad.append(f"part {p['name']}: ran={p['ran']} but how={p['how']}")
        if p["how"] != "real" and not p["reason"]:
            bad.append(f"part {p['name']} is {p['how']} without a reason")
    return bad


# --------------------------------------------------------------------------- stage 1: model


def repo_root() -> Path:
    """The checkout this package runs from (``models/`` lives there)."""
    return Path(__file__).resolve().parent.parent


def prepare_model(root: Path | None = None, timeout_s: float = 900.0) -> ModelInfo:
    """The baseline model: shipped in ``models/``, or built deterministically first.

    Raises ``ModelError`` when neither the artefact nor its build script exists.
    """
    from edgeagent.errors import ModelError
    from edgeagent.model.graph import parse_model, sha256_hex

    if root is None:
        # An editable install runs from the checkout; otherwise try where the user stands.
        found = [r for r in (repo_root(), Path.cwd()) if (r / "models").is_dir()]
        root = found[0] if found else repo_root()
    path = root / "models" / "baseline.onnx"
    built = False
    note = "shipped baseline model (models/baseline.onnx)"
    if not path.is_file():
        script = root / "models" / "build.py"
        if not script.is_file():
            raise ModelError(
                f"no baseline model at {path} and no build script to make one; "
                "run the demo from a checkout of the repository"
            )
        log.warning("building the baseline model first (models/build.py, deterministic)")
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=root, timeout=timeout_s, capture_output=True
        )
        if proc.returncode != 0 or not path.is_file():
            tail = proc.stderr.decode(errors="replace")[-2000:]
            raise ModelError(f"models/build.py failed ({proc.returncode}): {tail}")
        built = True
        note = "baseline model was not in the checkout: built with models/build.py (deterministic)"
    data = path.read_bytes()
    parse_model(data)
    return ModelInfo(path, data, sha256_hex(data), built, note)


# --------------------------------------------------------------------------- stage 2: broker


def demo_pki(root: Path, boxes: Sequence[str]) -> Any:
    """The demo fleet's PKI under ``<out>/pki``, kept across runs and completed as needed.

    Kept so that an external broker (``--broker HOST:PORT``) can be set up once
    with ``pki/ca.crt``, ``pki/broker.crt`` and ``pki/broker.key``.
    """
    from edgeagent.ops.pki import AGGREGATOR_ID, Pki

    pki = Pki.open(root) if (root / "ca.crt").is_file() else Pki.init(root, fleet=FLEET)
    for name in (AGGREGATOR_ID, *boxes):
        if not pki.client_files(name).cert.is_file():
            if name == AGGREGATOR_ID:
                pki.issue_aggregator()
            else:
                pki.issue(name)
    return pki


def start_broker(opts: DemoOptions, workdir: Path, pki: Any) -> BrokerInfo:
    """Start or locate the MQTT broker the federated rounds use (or say why there is none)."""
    from edgeagent.errors import BrokerError
    from edgelab.broker import Broker, find_mosquitto

    if opts.hubs < 2:
        return BrokerInfo(None, None, "in-memory", "secure aggregation needs at least 2 hubs")
    if opts.broker == "none":
        return BrokerInfo(None, None, "in-memory", "--broker none: rounds run in memory")
    if opts.broker not in ("embedded", "mosquitto"):
        host, _, port = opts.broker.rpartition(":")
        return BrokerInfo(
            host, int(port), "real", f"external broker {opts.broker} (must trust {pki.ca_cert})"
        )
    try:
        find_mosquitto()
    except BrokerError as exc:
        if opts.broker == "mosquitto":
            raise
        reason = f"{exc}"
        try:
            import amqtt  # noqa: F401

            reason += (
                "; amqtt is installed but speaks MQTT 3.1.1 without mTLS identities, "
                "which the fleet ACL and signed rounds need"
            )
        except ImportError:
            reason += "; amqtt is not installed either"
        return BrokerInfo(None, None, "in-memory", reason + ": rounds run in memory")
    broker = Broker(pki, workdir / "broker")
    try:
        broker.start()
    except BrokerError as exc:
        if opts.broker == "mosquitto":
            raise
        return BrokerInfo(
            None, None, "in-memory", f"mosquitto failed to start ({exc}): rounds run in memory"
        )
    return BrokerInfo(
        broker.host, broker.port, "real", "mosquitto subprocess on 127.0.0.1 (TLS, ACL)", broker
    )


# --------------------------------------------------------------------------- stage 3: hubs


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
        from edgeagent.daemon.wiring import detection_stack
        from edgeagent.model.registry import ModelRegistry
        from edgeagent.ops.config import LearningSection
        from edgeagent.pipeline import features
        from edgeagent.pipeline.alerts import AlertStore
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
        """Train the local learner on every window queued during the segment."""
        n = self.learner.step(max_batches=10_000)
        self.learned.append(n)
        self.delta_norms.append(float(np.linalg.norm(self.learner.delta())))
        return n

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
        """Close the alert store (the hub's other parts were stopped by ``finish``)."""
        with contextlib.suppress(Exception):
            self.alert_store.close()

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


# --------------------------------------------------------------------------- stage 5: rounds


def _round_record(round_id: int, status: str, reason: str = "", **extra: Any) -> dict[str, Any]:
    rec = {"round": round_id, "status": status, "reason": reason}
    rec.update(extra)
    return rec


class MqttFederation:
    """The real thing: ``fl.aggregator.Aggregator`` and one ``fl.client.FlClient`` per hub,
    over the broker with mTLS identities from the demo's fleet PKI.

    The aggregator loop runs on its own thread (it owns the round state); rounds
    are started on request after each segment instead of on its timer, so every
    round sees exactly one segment of new data.
    """

    how = "real"

    def __init__(
        self,
        hubs: list[Hub],
        model: ModelInfo,
        broker: BrokerInfo,
        pki: Any,
        workdir: Path,
        noise_multiplier: float = NOISE_MULTIPLIER,
    ) -> None:
        from edgeagent.federation.aggregator import Aggregator
        from edgeagent.federation.client import FlClient
        from edgeagent.fl.identity import load_ca, load_identity
        from edgeagent.ops.config import parse_config
        from edgeagent.transport.mqtt import MqttLink

        assert broker.host is not None and broker.port is not None
        self.hubs = hubs
        files = pki.client_files("aggregator")
        cfg = parse_config(
            {
                "agent": {
                    "box_id": "demo-aggregator",
                    "fleet": FLEET,
                    "state_dir": str(workdir / "aggregator"),
                },
                "federation": {
                    "enabled": True,
                    "broker_host": broker.host,
                    "broker_port": broker.port,
                    "ca_file": str(files.ca),
                    "cert_file": str(files.cert),
                    "key_file": str(files.key),
                    "clip_norm": CLIP_NORM,
                    "noise_multiplier": noise_multiplier,
                    "keepalive_s": 10,
                },
                "aggregator": {
                    "min_boxes": 2,
                    "max_boxes": max(2, len(hubs)),
                    "min_survivors": 2,
                    "stage_timeout_s": STAGE_TIMEOUT_S,
                    # rounds start on request only (after each segment), never on a timer
                    "round_interval_s": 86400,
                    "n_cap": N_CAP,
                    "initial_model": str(model.path),
                },
            }
        )
        self.config = cfg
        self.agg = Aggregator(cfg)
        self.agg.start()
        self.agg.next_round_at = math.inf  # rounds start on request, after each segment
        self._want_round = threading.Event()
        self._stop = threading.Event()
        self.loop_error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="demo-aggregator", daemon=True)
        self._thread.start()
        ca = load_ca(files.ca)
        self.clients: dict[str, Any] = {}
        for h in hubs:
            tls = pki.client_files(h.name)
            link = MqttLink(
                h.name, broker.host, broker.port, tls, FLEET, identity=h.name, keepalive_s=10
            )
            client = FlClient(
                h.name,
                FLEET,
                load_identity(tls.cert, ca, h.name),
                ca,
                h.learner,
                link,
                manager=h.manager,
                global_sha256=model.sha256,
                min_samples=1,
                state_dir=h.state,
            )
            h.registry.require_signature = True  # from now on only signed global models
            client.start()
            self.clients[h.name] = client

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if self._want_round.is_set() and self.agg.round is None:
                    self._want_round.clear()
                    ready = self.agg.eligible()
                    if len(ready) >= 2:
                        self.agg.start_round(ready)
                self.agg.step()
        except BaseException as exc:  # reported in the summary, never hangs the demo
            self.loop_error = exc
            log.exception("aggregator loop failed")

    def wait_ready(self, timeout: float = 20.0) -> bool:
        """Wait until every hub's verified hello reached the aggregator."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.agg.eligible()) >= len(self.hubs):
                return True
            time.sleep(0.05)
        return False

    def run_round(self, r: int, on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
        """One round: announce, SecAgg+ stages over MQTT, signed model, hot swap on each hub."""
        t0 = time.monotonic()
        n_k = {h.name: int(h.learner.n_k) for h in self.hubs}
        idle = sorted(n for n, k in n_k.items() if k < 1)
        why_idle = (
            f"; boxes with no trained windows sit rounds out ({', '.join(idle)}): the personal "
            "calibration needs 40 windows first, use a longer --seconds"
            if idle
            else ""
        )
        n_before = len(self.agg.state["rounds"])
        taken = {n: c.counters["models_taken"] for n, c in self.clients.items()}
        self._want_round.set()
        deadline = t0 + ROUND_TIMEOUT_S
        while time.monotonic() < deadline and len(self.agg.state["rounds"]) <= n_before:
            if self.loop_error is not None:
                return _round_record(r, "failed", f"aggregator loop failed: {self.loop_error}")
            if on_tick is not None:
                on_tick()
            time.sleep(0.1)
        if len(self.agg.state["rounds"]) <= n_before:
            self._want_round.clear()
            return _round_record(r, "timeout", f"no result within {ROUND_TIMEOUT_S:.0f} s")
        rec = dict(self.agg.state["rounds"][-1])
        version = rec.get("model_version")
        applied: dict[str, Any] = {}
        if rec.get("status") == "completed" and version is not None:
            wait_until = time.monotonic() + 20.0
            # models_taken counts after the lifecycle decided (hot swap or rollback)
            while time.monotonic() < wait_until and any(
                c.global_version < version or c.counters["models_taken"] <= taken[n]
                for n, c in self.clients.items()
            ):
                time.sleep(0.05)
            for name, c in self.clients.items():
                applied[name] = {
                    "global_version": c.global_version,
                    "result": (c.last_apply or {}).get("reason"),
                }
        status = str(rec.get("status"))
        reason = str(rec.get("reason", "")) + (why_idle if status != "completed" else "")
        return _round_record(
            r,
            status,
            reason,
            n_k=n_k,
            participants=list(rec.get("participants", [])),
            survivors=list(rec.get("survivors", [])),
            dropped=rec.get("dropped", {}),
            refused=rec.get("refused", {}),
            epsilon=rec.get("epsilon"),
            sum_n=rec.get("sum_n"),
            update_norm=rec.get("update_norm"),
            model_version=version,
            seconds=round(time.monotonic() - t0, 3),
            bytes_in=rec.get("bytes_in"),
            bytes_out=rec.get("bytes_out"),
            applied=applied,
            clients={n: dict(c.counters) for n, c in self.clients.items()},
        )

    def close(self) -> None:
        """Stop the aggregator loop, the box clients and the aggregator link."""
        self._stop.set()
        self._thread.join(5.0)
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                c.stop()
        with contextlib.suppress(Exception):
            self.agg.close()


class MemoryFederation:
    """The same SecAgg+ round, DP accounting and FedAvg step, run in memory with no broker
    (``fl.secagg.simulate_round``: real signed envelopes, no network)."""

    how = "in-memory"

    def __init__(
        self, hubs: list[Hub], model: ModelInfo, noise_multiplier: float = NOISE_MULTIPLIER
    ) -> None:
        from edgeagent.federation.accountant import DpAccountant

        self.noise_multiplier = noise_multiplier
        self.hubs = hubs
        self.model_bytes = model.data
        self.version = 0
        self.accountant = DpAccountant(1e-5)

    def wait_ready(self, timeout: float = 0.0) -> bool:
        """Nothing to wait for: there is no network."""
        return True

    def run_round(self, r: int, on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
        """One in-memory round; every hub validates and hot-swaps (or rolls back) the result."""
        import secrets

        from edgeagent.fl.aggregate import apply_update, mean_from_total
        from edgeagent.fl.constants import NONCE_BYTES
        from edgeagent.fl.privacy import (
            distributed_std,
            fedavg_payload,
            gaussian_std,
            payload_bound,
        )
        from edgeagent.fl.secagg import RoundConfig
        from edgeagent.fl.secagg.simulate import simulate_round
        from edgeagent.model.graph import get_params, parse_model, set_params, to_bytes

        t0 = time.monotonic()
        ready = [h for h in self.hubs if h.learner.n_k >= 1]
        if len(ready) < 2:
            return _round_record(
                r,
                "aborted",
                f"only {len(ready)} hub(s) had trained windows (the personal calibration "
                "needs 40 windows first: use a longer --seconds)",
            )
        model = parse_model(self.model_bytes)
        w = get_params(model)
        box_std = distributed_std(gaussian_std(self.noise_multiplier, CLIP_NORM, N_CAP), 2)
        cfg = RoundConfig(
            round_id=r,
            nonce=secrets.token_bytes(NONCE_BYTES),
            participants=tuple(h.name for h in ready),
            dim=int(w.size) + 1,
            bound=payload_bound(CLIP_NORM, N_CAP, box_std),
            min_survivors=2,
            clip=CLIP_NORM,
            n_cap=N_CAP,
            noise_std=box_std,
        )
        payloads = {
            h.name: fedavg_payload(
                np.asarray(h.learner.delta(), np.float64), int(h.learner.n_k), CLIP_NORM, N_CAP
            )
            for h in ready
        }
        rep = simulate_round(cfg, payloads)
        if rep.result is None:
            reason = str(rep.abort) if rep.abort else "unknown"
            return _round_record(r, "aborted", reason)
        total = np.asarray(rep.result.total, np.float64)
        mean = mean_from_total(total)
        data = to_bytes(set_params(model, apply_update(w, mean)))
        self.model_bytes = data
        self.version += 1
        eps: float | None = None
        if self.noise_multiplier > 0:
            self.accountant.step(self.noise_multiplier, 1.0)
            eps = float(self.accountant.epsilon())
        applied: dict[str, Any] = {}
        w_new = get_params(parse_model(data))
        for h in self.hubs:
            h.learner.reset_global(w_new)
            res = h.manager.apply(data, f"in-memory:round-{r}")
            applied[h.name] = {"global_version": self.version, "result": res.reason}
        return _round_record(
            r,
            "completed",
            "",
            participants=list(cfg.participants),
            survivors=list(rep.result.survivors),
            dropped={},
            refused=dict(rep.refused),
            epsilon=eps,
            sum_n=float(total[-1]),
            update_norm=float(np.linalg.norm(mean)),
            model_version=self.version,
            seconds=round(time.monotonic() - t0, 3),
            bytes_in=int(sum(rep.bytes_up.values())),
            bytes_out=int(sum(rep.bytes_down.values())),
            applied=applied,
        )

    def close(self) -> None:
        """Nothing to release."""
        return None


# --------------------------------------------------------------------------- stage 4: BLE


class BleSkipped(Exception):
    """BLE cannot run here; the message says why (shown in the summary's parts list)."""


class BleStage:
    """Chest straps on the BlueZ simulator, read by the agent's ``BleSource`` through
    unmodified bleak over a private ``dbus-daemon`` (never the machine's system bus).

    Each hub gets one strap worn by the same patient index; its windows are
    scored by that hub's detector as a second patient record ("<patient>-strap").
    Ground truth is tracked on the serial path only (the strap's feed keeps none).
    """

    def __init__(self, hubs: list[Hub], opts: DemoOptions) -> None:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise BleSkipped("dbus-daemon is not installed (Debian: apt-get install dbus)")
        from edgeagent.pipeline.windows import Windower
        from edgeagent.sources.ble import BleSource, DeviceFilter
        from edgeagent.sources.retry import RetryPolicy
        from firmware_sim.bluez import CHEST_STRAP, BluezSim, BluezSimThread, Peripheral
        from firmware_sim.feeds import PhysiologyFeed

        self.proc = subprocess.Popen(
            [exe, "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.proc.kill()
            raise BleSkipped("dbus-daemon started but printed no bus address")
        # bleak reads the system bus address from here: point it at the private bus.
        self._old_env = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        self.sim_thread = BluezSimThread(BluezSim(bus_address=self.address))
        try:
            self.sim_thread.start()
        except BaseException:
            self.close()
            raise
        self.lock = threading.Lock()
        self.hub_of: dict[str, Hub] = {}
        self.periph: dict[str, Any] = {}
        self.windowers: dict[str, Any] = {}
        self.received: dict[str, dict[str, int]] = {}
        self.windows: dict[str, int] = {}
        self.gaps = 0
        self.events: list[str] = []
        for h in hubs:
            addr = f"C0:DE:00:00:00:{h.index + 1:02X}"
            p = Peripheral(
                addr,
                f"Polar H10 {h.name}",
                kind=CHEST_STRAP,
                feed=PhysiologyFeed(h.index + 1, seed=opts.seed),
            )
            self.sim_thread.call(self.sim_thread.sim.add, p)
            self.hub_of[addr] = h
            self.periph[addr] = p
            self.windowers[addr] = Windower(WINDOW_S, HOP_S, patient=f"{h.patient}-strap")
            self.received[addr] = {}
            self.windows[addr] = 0
        self.source = BleSource(
            DeviceFilter(addresses=frozenset(self.hub_of)),
            self._on_block,
            self._on_gap,
            self._on_event,
            retry=RetryPolicy(base_s=0.2, cap_s=1.0),
            scan_s=0.5,
            rescan_s=0.5,
            seed=opts.seed,
        )
        self.source.start()

    def _on_block(self, block: Any) -> None:
        addr = block.device.upper()
        h = self.hub_of.get(addr)
        if h is None:
            return
        with self.lock:
            r = self.received[addr]
            r[str(block.stream)] = r.get(str(block.stream), 0) + len(block)
            win = self.windowers[addr]
            win.push(block)
            ready = win.pop_ready()
            self.windows[addr] += len(ready)
        for w in ready:
            h.detector.process(w)

    def _on_gap(self, gap: Any) -> None:
        with self.lock:
            self.gaps += 1
            w = self.windowers.get(gap.device.upper())
            if w is not None:
                w.push_gap(gap)

    def _on_event(self, ev: Any) -> None:
        self.events.append(f"{ev.device} {ev.kind} {ev.detail}".strip())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Live per-strap sample totals and window counts for the progress display."""
        with self.lock:
            return {
                self.hub_of[a].name: {"received": dict(r), "windows": self.windows[a]}
                for a, r in self.received.items()
            }

    def stop(self) -> dict[str, Any]:
        """Stop the source and the simulator; return per-strap accounting."""
        with contextlib.suppress(Exception):
            self.source.stop()
        out: dict[str, Any] = {}
        for addr, p in self.periph.items():
            h = self.hub_of[addr]
            streams = {}
            for s, n in sorted(self.received[addr].items()):
                streams[s] = {"sent": len(p.sent(s)), "received": int(n)}
            counters = self.source.counters.get(addr) or self.source.counters.get(addr.lower())
            out[h.name] = {
                "device": addr,
                "patient": f"{h.patient}-strap",
                "streams": streams,
                "windows": self.windows[addr],
                "link": counters.as_dict() if counters is not None else {},
            }
        with contextlib.suppress(Exception):
            self.sim_thread.stop()
        self.close()
        return out

    def close(self) -> None:
        """Stop the private dbus-daemon and restore the bus address bleak reads."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self._old_env is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self._old_env


# --------------------------------------------------------------------------- stage 6: summary


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
    }


def _window_counts(
    windows: Sequence[dict[str, Any]], labels: list[tuple[float, float, str]]
) -> dict[str, int]:
    from edgeagent.evaluate import ScoredWindow, score_windows

    sw = [
        ScoredWindow(
            w["start"], w["end"], w["score"], w["clinical_active"], w["fault_active"], w["status"]
        )
        for w in windows
    ]
    m = score_windows(sw, labels, WINDOW_S)
    return {k: int(m[k]) for k in ("tp", "fp", "fn", "tn")}


def _rates(c: dict[str, int]) -> dict[str, float | None]:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    n = tp + fp + fn + tn
    prec = tp / (tp + fp) if tp + fp else None
    rec = tp / (tp + fn) if tp + fn else None
    f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if n else None)
    return {"accuracy": (tp + tn) / n if n else None, "precision": prec, "recall": rec, "f1": f1}


def build_summary(
    opts: DemoOptions,
    hubs: Sequence[dict[str, Any]],
    parts: Sequence[Part],
    rounds: Sequence[dict[str, Any]],
    federation: dict[str, Any],
    ble: dict[str, Any] | None,
    model: dict[str, Any],
    wall_s: float,
) -> dict[str, Any]:
    """The demo's figures from plain records (pure: the tests call it on hand-made input)."""
    segments = opts.rounds + 1
    hub_out = []
    acc_counts = [{"tp": 0, "fp": 0, "fn": 0, "tn": 0, "windows": 0} for _ in range(segments)]
    all_lat: list[float] = []
    all_delay: list[float] = []
    totals = {"windows": 0, "alerts": 0, "tp": 0, "fp": 0, "events": 0, "detected": 0}
    for h in hubs:
        ws = h["windows"]
        labels = [tuple(lb) for lb in h["labels"]]
        m = match_alerts(h["alerts"], labels)
        m.pop("verdicts")
        segs = []
        for k in range(segments):
            sw = [w for w in ws if w["segment"] == k]
            c = _window_counts(sw, labels) if sw else {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
            for key, v in c.items():
                acc_counts[k][key] += v
            acc_counts[k]["windows"] += len(sw)
            segs.append({"segment": k, "windows": len(sw), **c})
        lat = [w["latency_ms"] for w in ws]
        delays = detection_delays(ws, labels, WINDOW_S)
        all_lat += lat
        all_delay += delays
        for cat in m.values():
            totals["alerts"] += cat["alerts"]
            totals["tp"] += cat["tp"]
            totals["fp"] += cat["fp"]
            totals["events"] += cat["events"]
            totals["detected"] += cat["detected"]
        totals["windows"] += len(ws)
        hub_out.append(
            {
                "name": h["name"],
                "patient": h["patient"],
                "sim_seconds": h["sim_seconds"],
                "serial": {
                    "device": h["device"],
                    "streams": h["streams"],
                    "link": h["link"],
                    "ledger": h["ledger"],
                    "gaps": h["gaps"],
                },
                "windower": h["windower"],
                "windows": len(ws),
                "segments": segs,
                "alerts": m,
                "ble_alerts": h.get("ble_alerts", 0),
                "labels": len(labels),
                "inference_ms": percentiles(lat),
                "detection_delay_s": percentiles(delays, (50, 90)),
                "learned_per_segment": h["learned"],
                "update_norm_per_segment": h.get("delta_norms", []),
                "models": h["model_history"],
            }
        )
    eps_after = {r["round"]: r.get("epsilon") for r in rounds}
    accuracy = []
    for k, c in enumerate(acc_counts):
        accuracy.append(
            {
                "segment": k,
                "model": "baseline" if k == 0 else f"after round {k}",
                "epsilon": eps_after.get(k) if k else None,
                **c,
                **_rates(c),
            }
        )
    streams_tot: dict[str, dict[str, int]] = {}
    for h in hub_out:
        for s, v in h["serial"]["streams"].items():
            t = streams_tot.setdefault(s, {"generated": 0, "sent_intact": 0, "received": 0})
            for key in t:
                t[key] += v[key]
    link_tot: dict[str, int] = {}
    for h in hub_out:
        for k2, v2 in h["serial"]["link"].items():
            link_tot[k2] = link_tot.get(k2, 0) + int(v2)
    done = [r for r in rounds if r["status"] == "completed"]
    return {
        "options": {
            "hubs": opts.hubs,
            "seconds": opts.seconds,
            "rounds": opts.rounds,
            "pacing": "realtime" if opts.realtime else "fast",
            "ble": opts.ble,
            "broker": opts.broker,
            "seed": opts.seed,
            "noise_multiplier": opts.noise_multiplier,
            "clip_norm": CLIP_NORM,
            "n_cap": N_CAP,
            "window_s": WINDOW_S,
            "hop_s": HOP_S,
        },
        "wall_seconds": round(wall_s, 2),
        "model": model,
        "parts": [asdict(p) for p in parts],
        "hubs": hub_out,
        "ble": ble,
        "totals": {
            **totals,
            "samples": streams_tot,
            "link": link_tot,
            "rounds_completed": len(done),
        },
        "federation": {**federation, "rounds": list(rounds)},
        "accuracy_per_round": accuracy,
        "epsilon": done[-1].get("epsilon") if done else None,
        "latency": {
            "inference_ms": percentiles(all_lat),
            "detection_delay_s": percentiles(all_delay, (50, 90)),
        },
    }


# --------------------------------------------------------------------------- report


def _plots(summary: dict[str, Any], hubs: Sequence[dict[str, Any]], out: Path) -> dict[str, Path]:
    """Four PNGs (matplotlib, Agg): timeline, accuracy per round, epsilon, latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    files: dict[str, Path] = {}
    n = max(1, len(hubs))
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.2 * n + 0.8), sharex=True, squeeze=False)
    seg_len = summary["options"]["seconds"] / (summary["options"]["rounds"] + 1)
    for ax, h in zip(axes[:, 0], hubs, strict=False):
        for s, e, k in h["labels"]:
            color = "0.75" if k in FAULT_KIND_NAMES else "tab:red"
            ax.axvspan(s, e, color=color, alpha=0.25, lw=0)
            ax.text(s, 1.02, k, fontsize=7, va="bottom")
        ws = [w for w in h["windows"] if w["status"] == "ok"]
        if ws:
            t = [w["end"] for w in ws]
            ax.plot(t, [w["score"] for w in ws], lw=1, color="tab:blue", label="clinical score")
            ax.plot(t, [w["p_fault"] for w in ws], lw=0.8, color="tab:gray", label="fault prob.")
        verdicts = match_alerts(h["alerts"], [tuple(x) for x in h["labels"]])["verdicts"]
        for a, ok in zip(h["alerts"], verdicts, strict=True):
            y = 0.92 if a["category"] == CLINICAL else 0.84
            ax.plot(
                [a["start"], a["end"]],
                [y, y],
                lw=4,
                color="tab:green" if ok else "tab:orange",
                solid_capstyle="butt",
            )
        for k in range(1, summary["options"]["rounds"] + 1):
            ax.axvline(k * seg_len, color="k", lw=0.6, ls="--")
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(h["name"])
    axes[-1, 0].set_xlabel("simulated time (s); dashed lines: federated rounds")
    axes[0, 0].legend(
        handles=[
            Patch(color="tab:red", alpha=0.3, label="clinical episode (truth)"),
            Patch(color="0.75", alpha=0.5, label="sensor fault (truth)"),
            Patch(color="tab:green", label="alert, true positive"),
            Patch(color="tab:orange", label="alert, false positive"),
        ],
        loc="upper right",
        fontsize=7,
        ncol=4,
    )
    fig.suptitle("Detection timeline: alerts against ground truth")
    fig.tight_layout()
    files["timeline"] = out / "timeline.png"
    fig.savefig(files["timeline"], dpi=90)
    plt.close(fig)

    acc = summary["accuracy_per_round"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [a["segment"] for a in acc]
    for key, style in (("accuracy", "o-"), ("f1", "s--"), ("recall", "^:")):
        ax.plot(xs, [a[key] if a[key] is not None else float("nan") for a in acc], style, label=key)
    ax.set_xticks(xs, [a["model"] for a in acc], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title("Window-level detection quality per segment")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files["accuracy"] = out / "accuracy.png"
    fig.savefig(files["accuracy"], dpi=90)
    plt.close(fig)

    rounds = summary["federation"]["rounds"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    rx = [r["round"] for r in rounds if r.get("epsilon") is not None]
    ax.plot(rx, [r["epsilon"] for r in rounds if r.get("epsilon") is not None], "o-")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon (delta = 1e-5)")
    ax.set_title("Privacy spent (DP accountant)")
    if not rx:
        ax.text(0.5, 0.5, "no round completed", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    files["epsilon"] = out / "epsilon.png"
    fig.savefig(files["epsilon"], dpi=90)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
    lat = [w["latency_ms"] for h in hubs for w in h["windows"]]
    a1.hist(lat or [0.0], bins=40, color="tab:blue")
    a1.set_xlabel("ms per window (features + ONNX scoring)")
    a1.set_title("Per-window processing latency")
    delays = [d for h in hubs for d in detection_delays(h["windows"], h["labels"], WINDOW_S)]
    a2.hist(delays or [0.0], bins=15, color="tab:red")
    a2.set_xlabel("seconds from episode onset to alert")
    a2.set_title("Detection delay")
    fig.tight_layout()
    files["latency"] = out / "latency.png"
    fig.savefig(files["latency"], dpi=90)
    plt.close(fig)
    return files


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def render_html(summary: dict[str, Any], images: dict[str, bytes]) -> str:
    """A self-contained page: every image inlined as base64, no external resources."""
    e = html.escape
    rows = []
    for p in summary["parts"]:
        rows.append(
            f"<tr><td>{e(p['name'])}</td><td class='{e(p['how'])}'>{e(p['how'])}</td>"
            f"<td>{e(p['reason'])}</td></tr>"
        )
    hub_rows = []
    for h in summary["hubs"]:
        st = h["serial"]["streams"]
        link = h["serial"]["link"]
        cl = h["alerts"][CLINICAL]
        sf = h["alerts"]["sensor_fault"]
        hub_rows.append(
            "<tr>"
            + "".join(
                f"<td>{_fmt(v)}</td>"
                for v in (
                    h["name"],
                    h["patient"],
                    sum(s["sent_intact"] for s in st.values()),
                    sum(s["received"] for s in st.values()),
                    link.get("bad_crc", 0) + link.get("malformed", 0),
                    link.get("frames_missing", 0),
                    h["windows"],
                    f"{cl['tp']}/{cl['fp']}",
                    f"{cl['detected']}/{cl['events']}",
                    f"{sf['tp']}/{sf['fp']}",
                    h["models"][-1]["label"] if h["models"] else "-",
                )
            )
            + "</tr>"
        )
    ble_alerts = {h["name"]: h["ble_alerts"] for h in summary["hubs"]}
    ble_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{e(b['device'])}</td>"
        f"<td>{sum(v['sent'] for v in b['streams'].values())}</td>"
        f"<td>{sum(v['received'] for v in b['streams'].values())}</td>"
        f"<td>{b['windows']}</td><td>{ble_alerts.get(name, 0)}</td></tr>"
        for name, b in (summary.get("ble") or {}).items()
    )
    ble_table = (
        "<h2>BLE chest straps (bleak, private D-Bus)</h2><table><tr><th>hub</th><th>device</th>"
        f"<th>samples sent</th><th>received</th><th>windows</th><th>alerts</th></tr>{ble_rows}"
        "</table><p>Strap windows are scored by the hub's detector as a second patient "
        "record; ground truth is kept on the serial path only.</p>"
        if ble_rows
        else ""
    )
    acc_rows = "".join(
        f"<tr><td>{e(a['model'])}</td><td>{a['windows']}</td><td>{_fmt(a['accuracy'])}</td>"
        f"<td>{_fmt(a['f1'])}</td><td>{_fmt(a['recall'])}</td><td>{_fmt(a['epsilon'], 2)}</td></tr>"
        for a in summary["accuracy_per_round"]
    )
    rnd_rows = "".join(
        f"<tr><td>{r['round']}</td><td>{e(str(r['status']))}</td>"
        f"<td>{e(str(r.get('reason', '')))}</td>"
        f"<td>{len(r.get('survivors', []))}/{len(r.get('participants', []))}</td>"
        f"<td>{_fmt(r.get('epsilon'), 2)}</td><td>{_fmt(r.get('model_version'))}</td>"
        f"<td>{_fmt(r.get('seconds'), 2)}</td></tr>"
        for r in summary["federation"]["rounds"]
    )
    imgs = "".join(
        f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode()}'>"
        for name, data in images.items()
    )
    inf, dly = summary["latency"]["inference_ms"], summary["latency"]["detection_delay_s"]
    bad = summary.get("consistency", [])
    cons = "all figures consistent" if not bad else "INCONSISTENT: " + "; ".join(bad)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeagent demo report</title>
<style>
body{{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}
.real{{color:#060}} .in-memory{{color:#a60}} .skipped{{color:#a00}} img{{max-width:100%}}
</style></head><body>
<h1>edgeagent demo</h1>
<p>{summary["options"]["hubs"]} hubs, {summary["options"]["seconds"]:.0f} s of simulated wearable
time each ({e(summary["options"]["pacing"])} pacing), {summary["options"]["rounds"]} federated
rounds requested, {summary["totals"]["rounds_completed"]} completed; wall time
{summary["wall_seconds"]:.1f} s. Model: {e(summary["model"]["note"])}. Check: {e(cons)}.</p>
<h2>What ran</h2><table><tr><th>part</th><th>how</th><th>detail</th></tr>{"".join(rows)}</table>
<h2>Hubs</h2><table><tr><th>hub</th><th>patient</th><th>samples sent</th><th>received</th>
<th>frames rejected</th><th>frames missing</th><th>windows</th><th>clinical alerts TP/FP</th>
<th>episodes detected</th><th>fault alerts TP/FP</th><th>model now</th></tr>
{"".join(hub_rows)}</table>
{ble_table}
<h2>Accuracy per round</h2>
<p>Window-level, summed over hubs. Segments hold different episodes, so a change
between segments mixes the model's change with the data's.</p>
<table><tr><th>model</th><th>windows</th><th>accuracy</th><th>F1</th>
<th>recall</th><th>epsilon</th></tr>{acc_rows}</table>
<h2>Federated rounds ({e(summary["federation"].get("how", ""))})</h2>
<table><tr><th>round</th><th>status</th><th>reason</th><th>survivors</th><th>epsilon</th>
<th>model version</th><th>seconds</th></tr>{rnd_rows}</table>
<p>Latency per window (ms): p50 {_fmt(inf["p50"])}, p90 {_fmt(inf["p90"])},
p99 {_fmt(inf["p99"])}. Detection delay (s): p50 {_fmt(dly["p50"], 1)},
p90 {_fmt(dly["p90"], 1)}.</p>
{imgs}
</body></html>
"""


def write_report(
    summary: dict[str, Any], hubs: Sequence[dict[str, Any]], out: Path
) -> dict[str, str]:
    """summary.json, four PNGs and report.html (images inlined) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = _plots(summary, hubs, out)
    images = {name: p.read_bytes() for name, p in files.items()}
    page = render_html(summary, images)
    (out / "report.html").write_text(page, encoding="utf-8")
    listing = {name: str(p) for name, p in files.items()}
    listing["html"] = str(out / "report.html")
    listing["summary"] = str(out / "summary.json")
    summary["report"] = listing
    (out / "summary.json").write_text(to_json(summary, indent=1), encoding="utf-8")
    return listing


def to_json(summary: dict[str, Any], indent: int | None = None) -> str:
    """Strict JSON (NaN/inf become null, numpy scalars and paths plain values)."""
    return json.dumps(_jsonable(summary), indent=indent, allow_nan=False)


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, np.floating | np.integer):
        return _jsonable(o.item())
    if isinstance(o, Path):
        return str(o)
    return o


# --------------------------------------------------------------------------- orchestration

Progress = Callable[[dict[str, Any]], None]


def _wait(cond: Callable[[], bool], timeout: float, tick: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        tick()
        time.sleep(0.2)
    return cond()


def run_demo(opts: DemoOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run every stage, write the report under ``opts.out``, return the summary.

    ``progress`` receives a live snapshot about five times a second (phase,
    per-hub rates and windows, latest features, alerts, rounds).
    """
    opts.validate()
    t_start = time.monotonic()
    out = Path(opts.out)
    work = out / "run"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    parts: list[Part] = []
    rounds: list[dict[str, Any]] = []
    live: dict[str, Any] = {"phase": "starting", "segment": 0, "segments": opts.rounds + 1}
    live["rounds"] = rounds

    hubs: list[Hub] = []
    ble: BleStage | None = None
    fed: MqttFederation | MemoryFederation | None = None
    broker: BrokerInfo | None = None
    fed_info: dict[str, Any] = {}
    ble_res: dict[str, Any] | None = None

    def tick() -> None:
        """Hand a live snapshot to the progress callback."""
        if progress is None:
            return
        live["elapsed"] = time.monotonic() - t_start
        live["hubs"] = [h.snapshot() for h in hubs]
        live["ble"] = ble.snapshot() if ble is not None else {}
        progress(live)

    try:
        live["phase"] = "preparing the baseline model"
        tick()
        model = prepare_model()
        parts.append(Part("baseline model", True, "real", model.note))
        pki = demo_pki(out / "pki", [f"hub-{i + 1}" for i in range(opts.hubs)])
        live["phase"] = "starting the broker"
        tick()
        broker = start_broker(opts, work, pki)
        start_hubs(opts, work, model, into=hubs)
        parts.append(
            Part(
                "serial wearables",
                True,
                "real",
                f"{opts.hubs} simulated textiles on real ptys (COBS/CRC frames, injected byte "
                "faults), read by SerialSource",
            )
        )
        parts.append(
            Part(
                "pipeline",
                True,
                "real",
                "Windower -> features -> onnxruntime Detector (alerts in SQLite) -> LocalLearner",
            )
        )
        if not opts.ble:
            parts.append(Part("BLE wearables", False, "skipped", "--no-ble"))
        else:
            try:
                ble = BleStage(hubs, opts)
                parts.append(
                    Part(
                        "BLE wearables",
                        True,
                        "real",
                        f"{opts.hubs} chest straps on the BlueZ simulator over a private "
                        "dbus-daemon, read through unmodified bleak (wall-clock pace)",
                    )
                )
            except BleSkipped as exc:
                parts.append(Part("BLE wearables", False, "skipped", str(exc)))
            except Exception as exc:
                log.exception("BLE failed to start")
                parts.append(Part("BLE wearables", False, "skipped", f"failed to start: {exc}"))
        live["phase"] = "connecting the federation"
        tick()
        if broker.how == "real":
            parts.append(Part("MQTT broker", True, "real", broker.reason))
            try:
                fed = MqttFederation(hubs, model, broker, pki, work, opts.noise_multiplier)
                if not fed.wait_ready():
                    raise TimeoutError("not every hub said hello to the aggregator within 20 s")
                fed_info = {"how": "real", "reason": ""}
                parts.append(
                    Part(
                        "aggregator + box clients",
                        True,
                        "real",
                        "fl.aggregator + fl.client over MQTT (mTLS, signed SecAgg+ stages, "
                        "signed models)",
                    )
                )
            except Exception as exc:
                log.exception("MQTT federation failed to start")
                if fed is not None:
                    fed.close()
                fed = MemoryFederation(hubs, model, opts.noise_multiplier)
                why = f"MQTT federation failed to start ({exc}): rounds ran in memory"
                fed_info = {"how": "in-memory", "reason": why}
                parts.append(Part("aggregator + box clients", True, "in-memory", why))
        else:
            parts.append(Part("MQTT broker", False, "skipped", broker.reason))
            fed = MemoryFederation(hubs, model, opts.noise_multiplier)
            fed_info = {"how": "in-memory", "reason": broker.reason}
            if opts.hubs < 2:
                parts.append(Part("aggregator + box clients", False, "skipped", broker.reason))
            else:
                parts.append(
                    Part(
                        "aggregator + box clients",
                        True,
                        "in-memory",
                        "fl.secagg.simulate_round (signed envelopes, no network): " + broker.reason,
                    )
                )

        seg_len = opts.seconds / (opts.rounds + 1)
        for k in range(opts.rounds + 1):
            until = (k + 1) * seg_len
            live.update(phase=f"streaming segment {k + 1}/{opts.rounds + 1}", segment=k)
            for h in hubs:
                h.begin_segment(k, until)
            ok = _wait(
                lambda u=until: all(h.segment_done(u) for h in hubs), SEGMENT_TIMEOUT_S, tick
            )
            if not ok:
                log.warning("segment %d did not finish within %.0f s", k, SEGMENT_TIMEOUT_S)
                fed_info.setdefault("notes", []).append(f"segment {k} timed out")
            for h in hubs:
                h.train()
                check = h.manager.probation_check()
                if check is not None:
                    h.model_history.append(
                        {
                            "segment": k,
                            "label": h.detector.model_label,
                            "reason": f"probation: {check.reason}",
                        }
                    )
            if k < opts.rounds:
                live["phase"] = f"federated round {k + 1}/{opts.rounds}"
                tick()
                rec = fed.run_round(k + 1, tick)
                rounds.append(rec)
                for h in hubs:
                    res = rec.get("applied", {}).get(h.name, {})
                    h.model_history.append(
                        {
                            "segment": k + 1,
                            "label": h.detector.model_label,
                            "reason": f"round {k + 1}: {res.get('result', rec['status'])}",
                        }
                    )
        for h in hubs:
            h.finish()
        if ble is not None:
            live["phase"] = f"BLE: waiting for {BLE_MIN_WINDOWS} windows per strap"
            strap = ble
            _wait(
                lambda: min(strap.windows.values(), default=0) >= BLE_MIN_WINDOWS,
                BLE_MAX_WAIT_S,
                tick,
            )
            live["phase"] = "stopping"
            tick()
            ble_res = ble.stop()
            ble = None
        done = sum(1 for r in rounds if r["status"] == "completed")
        if done < opts.rounds and not fed_info.get("reason"):
            bad = [
                f"round {r['round']}: {r['status']} {r.get('reason', '')}".strip()
                for r in rounds
                if r["status"] != "completed"
            ]
            fed_info["reason"] = "; ".join(bad) or "rounds did not complete"
        parts.append(
            Part(
                "federated rounds",
                done > 0 or opts.rounds == 0,
                fed_info.get("how", "in-memory") if (done > 0 or opts.rounds == 0) else "skipped",
                f"{done}/{opts.rounds} completed"
                + (f"; {fed_info['reason']}" if fed_info.get("reason") else ""),
            )
        )
        records = [hub_record(h) for h in hubs]
    finally:
        if ble is not None:
            with contextlib.suppress(Exception):
                ble.stop()
        for h in hubs:
            with contextlib.suppress(Exception):
                h.feed.close()
                h.device.stop()
                h.source.stop()
        if fed is not None:
            fed.close()
        if broker is not None and broker.broker is not None:
            broker.broker.stop()
        for h in hubs:
            h.close()
    model_rec = {
        "path": str(model.path),
        "sha256": model.sha256,
        "built": model.built,
        "note": model.note,
    }
    summary = build_summary(
        opts, records, parts, rounds, fed_info, ble_res, model_rec, time.monotonic() - t_start
    )
    summary["consistency"] = check_summary(summary)
    write_report(summary, records, out)
    live["phase"] = "done"
    return summary
