"""Shared fixtures: real ptys, a private D-Bus, a real Mosquitto broker.

Fixtures start real services on 127.0.0.1 / private sockets and tear them down;
nothing here fakes a library the agent uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Area fixtures live in their own plugin modules so areas never edit one file.
pytest_plugins = [
    "tests.plugins.serial",
    "tests.plugins.ble",
    "tests.plugins.mqtt",
    "tests.plugins.ops",
    "tests.plugins.model",
    "tests.plugins.hil",
]


@pytest.fixture
def dbus_system_bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private dbus-daemon whose address stands in for the system bus (bleak reads it)."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon not installed (apt-get install dbus)")
    proc = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    try:
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)


@pytest.fixture
def tmp_state(tmp_path: Path) -> Path:
    """A state directory as the daemon would get from systemd's StateDirectory."""
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, 0o700)
    return d
