"""Federated rounds with the whole daemon: three ``edgeagent run`` boxes and the aggregator.

Each box is the real service built from its config (serial source on a pty
fed by the physiology simulator, windows, features, the shipped baseline
model, the local learner, the outbox and the MQTT transport), so the
federated client trains on windows the box really scored. The aggregator
(``edgeagent aggregator run``) starts from the same baseline; a completed
round proves the in-service client joined with its learner's update, and
the boxes then verify, register and hot-swap the new signed global model.
"""

from __future__ import annotations

import json
import os
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

BOXES = ("box-1", "box-2", "box-3")
MODEL = REPO / "models" / "baseline.onnx"
QUIET = SimConfig(anomaly_rate_per_hour=0.0, fault_rate_per_hour=0.0)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _status(state: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


@pytest.fixture
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    yield started
    for p in started.values():
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_daemon_boxes_join_a_round_and_take_the_global_model(
    tmp_path: Path, procs: dict[str, subprocess.Popen[bytes]]
) -> None:
    pki = make_fleet(tmp_path / "pki", BOXES)
    broker = start_broker(pki, tmp_path / "broker")
    devices: list[PtyDevice] = []
    try:
        for i, box in enumerate(BOXES):
            d = tmp_path / box
            d.mkdir()
            port = d / "tty"
            # Normal physiology, faster than real time: ~4 min of windows in seconds.
            gen = Generator(make_patient(20 + i, seed=3), QUIET)
            devices.append(PtyDevice(port, gen, device_id=f"t{i}", seed=i, duration_s=240.0))
            cfg = {
                "agent": {"box_id": box, "fleet": FLEET, "state_dir": str(d / "state")},
                "devices": {"serial": [{"port": str(port), "device_id": f"t{i}", "patient": "p"}]},
                "detection": {"model_path": str(MODEL)},
                "learning": {"min_samples": 16},
                # the box's own z is a floor on the round's noise: the aggregator here runs z = 0
                "federation": federation(pki, box, broker, noise_multiplier=0.0),
                "status": {"interval_s": 1.0, "stall_after_s": 20.0},
                "control": {"socket_path": f"/tmp/ea-fl-{os.getpid()}-{i}.sock"},
            }
            (d / "box.toml").write_text(to_toml(cfg))
            with open(d / "box.log", "wb") as log:
                procs[box] = subprocess.Popen(
                    [*CLI, "run", "--config", str(d / "box.toml")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
        for dev in devices:
            dev.start()

        def trained(box: str) -> bool:
            st = _status(tmp_path / box / "state")
            return st.get("counters", {}).get("learn_trained", 0) >= 16

        _wait(lambda: all(trained(b) for b in BOXES), 90, "every box to train on its windows")

        agg_state = tmp_path / "agg"
        agg_cfg = aggregator_config(pki, broker, agg_state, MODEL, rounds=1, stage_timeout_s=10.0)
        (tmp_path / "agg.toml").write_text(to_toml(agg_cfg))
        with open(tmp_path / "agg.log", "wb") as log:
            agg = subprocess.Popen(
                [*CLI, "aggregator", "run", "--config", str(tmp_path / "agg.toml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        procs["agg"] = agg
        assert agg.wait(120) == 0, (tmp_path / "agg.log").read_text()[-3000:]
        # the daemons' periodic status (a few kB, nested) is read, not refused
        assert "refused" not in (tmp_path / "agg.log").read_text()
        rounds = read_state(agg_state)["rounds"]
        done = [r for r in rounds if r["status"] == "completed"]
        assert done, rounds
        assert set(done[0]["survivors"]) == set(BOXES), done[0]
        version = done[0]["model_version"]

        def took_model(box: str) -> bool:
            """The box took the global: it holds it in shadow, scoring beside the running
            model and raising nothing until judged (the devices' data is all scored before
            the round ends, so here it stays unjudged)."""
            st = _status(tmp_path / box / "state")
            c = st.get("counters", {})
            det = (st.get("components", {}).get("detection") or {}).get("detection") or {}
            shadow = str(det.get("shadow")).startswith("v2-")  # v1: the starting model
            return (
                st.get("last_round", 0) >= done[0]["round"]
                and shadow
                and c.get("fl_models_taken", 0) >= 1
                and c.get("fl_joined", 0) >= 1
            )

        def runs_it(box: str) -> bool:
            return str(_status(tmp_path / box / "state").get("model_version")).startswith("v2-")

        try:
            _wait(lambda: all(took_model(b) for b in BOXES), 30, "the boxes to take the new model")
            assert not any(runs_it(b) for b in BOXES), "an unjudged global went live"
        except AssertionError as exc:
            detail = {b: _status(tmp_path / b / "state").get("components", {}).get("detection")
                      for b in BOXES}  # fmt: skip
            raise AssertionError(f"{exc}: {detail}") from None
        assert version >= 1
        for box in BOXES:
            p = procs[box]
            p.terminate()
            assert p.wait(30) == 0, (tmp_path / box / "box.log").read_text()[-3000:]
            assert b"Traceback" not in (tmp_path / box / "box.log").read_bytes()
    finally:
        for dev in devices:
            dev.stop()
        broker.stop()
