"""``edgeagent serial probe`` against the simulated textile on a real pty."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from edgeagent.cli import _register, app
from firmware_sim.serialdev import FaultConfig, PtyDevice

_register()
runner = CliRunner()


def test_probe_reads_frames_and_counts_faults(tmp_path: Path) -> None:
    link = tmp_path / "ttyTEXTILE0"
    faults = FaultConfig(bit_flip=0.05, seed=3)
    dev = PtyDevice(link, realtime=True, seed=3, device_id="shirt-7", faults=faults,
                    hello_every_s=0.5).start()  # fmt: skip
    try:
        res = runner.invoke(app, ["serial", "probe", str(link), "--seconds", "2", "--json"])
    finally:
        dev.stop()
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["hello"]["device_id"] == "shirt-7"
    assert doc["counters"]["frames_ok"] > 5 and doc["bytes"] > 0
    assert doc["counters"]["bad_crc"] + doc["counters"]["malformed"] > 0  # the flipped bits
    assert any(s["samples"] > 0 for s in doc["streams"].values())


def test_probe_of_a_missing_port_is_a_clear_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["serial", "probe", str(tmp_path / "nope"), "-s", "0.2", "--json"])
    assert res.exit_code == 1
    err = json.loads(res.stdout)["error"]
    assert err["type"] == "SourceError" and err["reason"] == "cannot_open"
    res = runner.invoke(app, ["serial", "probe", str(tmp_path / "nope"), "-s", "0.2"])
    assert res.exit_code == 1 and "cannot_open" in res.stderr
