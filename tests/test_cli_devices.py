"""``edgeagent devices scan`` against the BlueZ simulator on a private bus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from firmware_sim.bluez import CHEST_STRAP, WRISTBAND, BluezSimThread, Peripheral


def test_devices_scan_json_and_table(bluez_sim: BluezSimThread) -> None:
    bluez_sim.call(bluez_sim.sim.add, Peripheral("D0:00:00:00:00:01", "Polar H10 X", CHEST_STRAP))
    bluez_sim.call(bluez_sim.sim.add, Peripheral("D0:00:00:00:00:02", "Band Y", WRISTBAND))
    _register()
    runner = CliRunner()
    res = runner.invoke(app, ["devices", "scan", "--timeout", "0.6", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["address"]: r for r in json.loads(res.output)}
    assert rows["D0:00:00:00:00:01"]["name"] == "Polar H10 X"
    assert "0000180d-0000-1000-8000-00805f9b34fb" in rows["D0:00:00:00:00:01"]["services"]
    assert isinstance(rows["D0:00:00:00:00:02"]["rssi"], int)
    res = runner.invoke(app, ["devices", "scan", "-t", "0.6", "--name", "^Band"])
    assert res.exit_code == 0, res.output
    assert "Band Y" in res.output and "Polar" not in res.output and "thermometer" in res.output
    res = runner.invoke(app, ["devices", "scan", "-t", "0.1", "--name", "("])
    assert res.exit_code == 2 and "name_pattern" in res.output
    res = runner.invoke(app, ["devices", "scan", "-t", "0.6", "--adapter", "hci0", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)) == 2


def test_devices_scan_without_a_bus_names_the_socket_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "no" / "system_bus_socket"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={sock}")
    _register()
    runner = CliRunner()
    res = runner.invoke(app, ["devices", "scan", "-t", "0.1"])
    assert res.exit_code == 1
    assert str(sock) in res.stderr and "apt-get install dbus bluez" in res.stderr
    res = runner.invoke(app, ["devices", "scan", "-t", "0.1", "--json"])
    assert res.exit_code == 1
    err = json.loads(res.stdout)["error"]
    assert err["type"] == "SourceError" and err["reason"] == "no_system_bus"
