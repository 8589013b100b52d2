"""Federated learning keeps going after a bad global model: two daemons, the aggregator, Mosquitto.

The field report: with 2 boxes and ``noise_multiplier 0.5`` round 1's global
model was far worse than the boxes' own (loss 16.49 against 0.027). Once it
had been rolled back, the learner rejected every window as an outlier (its
reference errors came from the previous weights), ``n_k`` stayed 0 and every
later round aborted with ``too_few_boxes``.

Here the same setting runs end to end: two ``edgeagent run`` boxes fed over
ptys by the physiology simulator, and ``edgeagent aggregator run`` over the
real broker with z = 0.5. The aggregator caps ``n_k`` at 1, so the noise is not
averaged down and every global model it publishes is bad, deterministically
(the report's outcome without depending on the draw). The test asserts
outcomes, not the lifecycle's internals: after a bad global the learners keep
accepting windows and ``n_k`` grows again, the next round completes with both
boxes, and no alert comes from a global model the box never judged good (the
physiology is normal, so the starting model is the only one that may alert).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.federation.aggregator import read_state
from edgeagent.ops.config import to_toml
from firmware_sim.physiology import Generator, SimConfig, make_patient
from firmware_sim.serialdev import PtyDevice
from tests.fl_support import FLEET, aggregator_config, federation, make_fleet, start_broker
from tests.plugins.ops import CLI, REPO

BOXES = ("box-1", "box-2")
MODEL = REPO / "models" / "baseline.onnx"
QUIET = SimConfig(anomaly_rate_per_hour=0.0, fault_rate_per_hour=0.0)
#: The report's noise multiplier, on the boxes (a floor) and announced by the aggregator.
NOISE = 0.5
#: Windows a box must have trained on since its global model before it joins a round.
MIN_SAMPLES = 16
#: Completed rounds to wait for (the first one's global model is already bad).
ROUNDS = 3


def _wait(cond: Callable[[], bool], timeout: float, what: str, detail: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
        if any(p.poll() is not None for p in _RUNNING):
            # a daemon or the aggregator exited: its log says why
            raise AssertionError(f"a process exited while waiting for {what}: {detail()}")
    raise AssertionError(f"timed out after {timeout} s waiting for {what}: {detail()}")


def _status(state: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def _counters(state: Path) -> dict[str, int]:
    return dict(_status(state).get("counters", {}))


def _rounds(agg_state: Path) -> list[dict[str, Any]]:
    try:
        return list(read_state(agg_state).get("rounds", []))
    except (OSError, ValueError):
        return []


def _alert_models(state: Path) -> list[str]:
    db = state / "alerts.sqlite"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT model FROM alerts")]
    finally:
        con.close()


#: The processes of the running test, so a wait stops as soon as one of them exits.
_RUNNING: list[subprocess.Popen[bytes]] = []


@pytest.fixture
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    _RUNNING.clear()
    yield started
    _RUNNING.clear()
    for p in started.values():
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_learning_and_rounds_continue_after_a_bad_global_model(
    tmp_path: Path, procs: dict[str, subprocess.Popen[bytes]]
) -> None:
    pki = make_fleet(tmp_path / "pki", BOXES)
    broker = start_broker(pki, tmp_path / "broker")
    devices: list[PtyDevice] = []
    states = {b: tmp_path / b / "state" for b in BOXES}
    agg_state = tmp_path / "agg"

    def detail() -> dict[str, Any]:
        logs = {p.parent.name: p.read_text(errors="replace")[-600:]
                for p in tmp_path.glob("*/box.log")}  # fmt: skip
        return {
            "logs": logs,
            "agg_log": (tmp_path / "agg.log").read_text(errors="replace")[-600:]
            if (tmp_path / "agg.log").exists() else "",
            "rounds": [(r.get("round"), r.get("status"), r.get("reason")) for r in
                       _rounds(agg_state)][-6:],
            **{b: {k: v for k, v in _counters(s).items() if k.startswith(("learn", "fl_"))}
               for b, s in states.items()},
        }  # fmt: skip

    try:
        for i, box in enumerate(BOXES):
            d = tmp_path / box
            d.mkdir()
            port = d / "tty"
            gen = Generator(make_patient(30 + i, seed=5), QUIET)
            # faster than real time, long enough for every round below
            devices.append(PtyDevice(port, gen, device_id=f"t{i}", seed=i, duration_s=3600.0))
            cfg = {
                "agent": {"box_id": box, "fleet": FLEET, "state_dir": str(states[box])},
                "devices": {"serial": [{"port": str(port), "device_id": f"t{i}", "patient": "p"}]},
                "detection": {"model_path": str(MODEL)},
                "learning": {"min_samples": MIN_SAMPLES},
                "federation": federation(pki, box, broker, noise_multiplier=NOISE),
                "status": {"interval_s": 1.0, "stall_after_s": 20.0},
                "control": {"socket_path": f"/tmp/ea-lock-{os.getpid()}-{i}.sock"},
            }
            (d / "box.toml").write_text(to_toml(cfg))
            with open(d / "box.log", "wb") as log:
                procs[box] = subprocess.Popen(
                    [*CLI, "run", "--config", str(d / "box.toml")],
                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                )  # fmt: skip
            _RUNNING.append(procs[box])
        for dev in devices:
            dev.start()

        agg_cfg = aggregator_config(pki, broker, agg_state, MODEL, min_boxes=2, min_survivors=2,
                                    stage_timeout_s=8.0, round_interval_s=1.0, n_cap=1,
                                    # the lock-up, not the privacy budget, is under test
                                    epsilon_budget=1e6)  # fmt: skip
        agg_cfg["federation"]["noise_multiplier"] = NOISE
        (tmp_path / "agg.toml").write_text(to_toml(agg_cfg))
        with open(tmp_path / "agg.log", "wb") as log:
            procs["agg"] = subprocess.Popen(
                [*CLI, "aggregator", "run", "--config", str(tmp_path / "agg.toml")],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        _RUNNING.append(procs["agg"])

        def completed() -> list[dict[str, Any]]:
            return [r for r in _rounds(agg_state) if r.get("status") == "completed"]

        # Every global here is bad and restarts the learners: each completed round after the
        # first needs both boxes to have trained MIN_SAMPLES fresh windows since the last one.
        # The lock-up: after the first, every window was rejected and no round completed.
        _wait(lambda: len(completed()) >= ROUNDS, 60, f"{ROUNDS} completed rounds", detail)
        for r in completed()[:ROUNDS]:
            assert set(r["survivors"]) == set(BOXES), r

        def learning(c: dict[str, int]) -> bool:
            # the outlier guard may drop some windows of a bad model, never all of them
            return (
                c.get("fl_models_taken", 0) >= ROUNDS - 1
                and c.get("learn_trained", 0) >= ROUNDS * MIN_SAMPLES
                and c.get("learn_rejected_outlier", 0) < c.get("learn_trained", 0)
            )

        # status.json is written every second: give the counters that long to catch up
        _wait(lambda: all(learning(_counters(s)) for s in states.values()), 5,
              "the learners' counters", detail)  # fmt: skip

        # No alert from a model the box had not judged: the physiology is normal and every
        # fleet global here is bad, so only the starting model (v1) may have raised any.
        for b, s in states.items():
            models = set(_alert_models(s))
            assert all(m.startswith("v1-") for m in models), (b, models)
    finally:
        for dev in devices:
            dev.stop()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        broker.stop()
