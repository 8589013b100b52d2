"""``edgeagent demo`` as a user runs it: a subprocess, small settings, bounded in time.

Checks that the summary's figures are consistent with each other and with the
devices' ledgers, that the rounds ran (or say why not), that the parts list is
honest about what ran, and that the report files are real PNG/HTML.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeagent.errors import BrokerError
from edgelab.broker import find_mosquitto
from edgelab.demo.summary import check_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _have_mosquitto() -> bool:
    try:
        find_mosquitto()
    except BrokerError:
        return False
    return True


def _run(out: Path, *args: str, timeout: float = 120.0, cwd: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "from edgeagent.cli import main; main()"]
    proc = subprocess.run(
        [*cmd, "demo", "--out", str(out), "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    on_disk = json.loads(((cwd or Path()) / out / "summary.json").read_text())
    assert on_disk["totals"] == summary["totals"]
    return summary


def _parts(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in s["parts"]}


def _check_common(s: dict[str, Any], out: Path, hubs: int, rounds: int) -> None:
    assert check_summary(s) == [], check_summary(s)
    assert s["consistency"] == []
    assert len(s["hubs"]) == hubs
    for h in s["hubs"]:
        streams = h["serial"]["streams"]
        assert set(streams) >= {"ecg", "acc", "skin_temp", "env", "hr", "rr"}
        for name, v in streams.items():
            # every sample in an intact frame arrived, nothing else did
            assert v["received"] <= v["generated"], name
            assert v["received"] == v["sent_intact"], name
        led, link = h["serial"]["ledger"], h["serial"]["link"]
        assert led.get("samples_corrupted", 0) + led.get("heartbeat_corrupted", 0) > 0
        assert link["bad_crc"] + link["malformed"] > 0  # the faults were seen and counted
        assert h["windows"] > 0
        for cat in ("clinical", "sensor_fault"):
            a = h["alerts"][cat]
            assert a["tp"] + a["fp"] == a["alerts"]
        assert h["alerts"]["clinical"]["events"] > 0  # the schedule put episodes in
        assert len(h["segments"]) == rounds + 1
    t = s["totals"]
    assert t["alerts"] == t["tp"] + t["fp"] > 0
    assert t["detected"] > 0  # the detector found real episodes
    assert len(s["accuracy_per_round"]) == rounds + 1
    fed = s["federation"]
    done = [r for r in fed["rounds"] if r["status"] == "completed"]
    assert len(done) == rounds or fed["reason"]
    assert s["latency"]["inference_ms"]["p50"] > 0
    files = s["report"]
    for name in ("timeline", "accuracy", "epsilon", "latency"):
        data = Path(files[name]).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 4
    parts = _parts(s)
    assert parts["serial wearables"]["how"] == "real"
    assert parts["pipeline"]["how"] == "real"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_full_run_over_mqtt(tmp_path: Path) -> None:
    # a relative --out, as README's `edgeagent demo` uses (its default is ./demo-out)
    s = _run(Path("demo"), "--hubs", "2", "--seconds", "300", "--rounds", "2", cwd=tmp_path)
    out = tmp_path / "demo"
    _check_common(s, out, hubs=2, rounds=2)
    parts = _parts(s)
    if _have_mosquitto():
        assert parts["MQTT broker"]["how"] == "real"
        assert parts["aggregator + box clients"]["how"] == "real"
        assert s["federation"]["how"] == "real"
        done = [r for r in s["federation"]["rounds"] if r["status"] == "completed"]
        assert len(done) == 2, s["federation"]
        # every box took every global model (hot swap or validated rollback)
        for r in done:
            assert set(r["applied"]) == {"hub-1", "hub-2"}
            assert all(a["global_version"] == r["model_version"] for a in r["applied"].values())
            assert all(
                a["result"] in ("activated", "rolled back", "already active", "shadow")
                for a in r["applied"].values()
            ), r["applied"]
        # 2 boxes: DP is off by default and said so, never an epsilon that guarantees nothing
        assert all(r["epsilon"] is None for r in done)
        assert s["privacy"] == {
            "dp": False,
            "statement": "DP off: 2 boxes: user-level DP gives no meaningful guarantee; see "
            "docs/security.md, fleet-scale table",
        }
    else:
        assert parts["MQTT broker"]["how"] == "skipped" and parts["MQTT broker"]["reason"]
    ble = parts["BLE wearables"]
    if shutil.which("dbus-daemon"):
        assert ble["how"] == "real", ble
        for hub, b in s["ble"].items():
            assert b["windows"] > 0, hub
            assert all(0 < v["received"] <= v["sent"] for v in b["streams"].values()), b
    else:
        assert ble["how"] == "skipped" and "dbus-daemon" in ble["reason"]


@pytest.mark.timeout(120)
def test_demo_without_broker_runs_rounds_in_memory_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    s = _run(
        out, "--hubs", "2", "--seconds", "240", "--rounds", "1", "--broker", "none", "--no-ble"
    )
    _check_common(s, out, hubs=2, rounds=1)
    parts = _parts(s)
    assert (
        parts["MQTT broker"]["how"] == "skipped"
        and "--broker none" in parts["MQTT broker"]["reason"]
    )
    assert parts["aggregator + box clients"]["how"] == "in-memory"
    assert parts["BLE wearables"] == {
        "name": "BLE wearables",
        "ran": False,
        "how": "skipped",
        "reason": "--no-ble",
    }
    assert s["federation"]["how"] == "in-memory"
    assert s["federation"]["rounds"][0]["status"] == "completed", s["federation"]


@pytest.mark.timeout(120)
def test_demo_against_an_external_broker(tmp_path: Path) -> None:
    """``--broker HOST:PORT``: a broker someone else runs, set up with the demo's PKI."""
    if not _have_mosquitto():
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    from edgelab.broker import Broker
    from edgelab.demo.fleet import demo_pki

    out = tmp_path / "demo"
    pki = demo_pki(out / "pki", ["hub-1", "hub-2"])  # what a first demo run leaves behind
    with Broker(pki, tmp_path / "external") as broker:
        s = _run(
            out,
            *("--hubs", "2", "--seconds", "240", "--rounds", "1", "--no-ble"),
            "--broker",
            f"{broker.host}:{broker.port}",
        )
    _check_common(s, out, hubs=2, rounds=1)
    part = _parts(s)["MQTT broker"]
    assert part["how"] == "real" and f"{broker.port}" in part["reason"]
    assert s["federation"]["how"] == "real"
    assert s["federation"]["rounds"][0]["status"] == "completed", s["federation"]
    assert not (out / "run" / "broker").exists()  # the demo started no broker of its own
