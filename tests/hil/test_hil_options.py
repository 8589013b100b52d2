"""The HIL plugin itself: options, bench validation at start-up, skip-with-reason, never a
silent pass. Runs pytest in a subprocess, as an engineer on a bench would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _pytest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def test_bad_bench_file_stops_the_run_with_the_key(tmp_path: Path) -> None:
    f = tmp_path / "bench.toml"
    f.write_text('[serial]\nport = "/dev/ttyUSB0"\nbaud = 9600\n')
    res = _pytest("tests/hil/test_hil_serial.py", "--hil-bench", str(f), "--collect-only")
    assert res.returncode == 4, res.stdout + res.stderr  # pytest's usage error
    assert "serial.baud" in res.stderr and str(f) in res.stderr


def test_described_hardware_that_does_not_answer_fails(tmp_path: Path) -> None:
    """A described port is used: if nothing answers there the test fails, it never passes."""
    res = _pytest(
        "tests/hil/test_hil_serial.py",
        "tests/test_ops_install.py",
        "-m",
        "hil",
        "-k",
        "test_serial_stream and hw",
        "--hil-serial",
        str(tmp_path / "no-such-tty"),
        "--hil-duration",
        "1",
    )
    out = res.stdout
    assert res.returncode == 1, out
    assert "FAILED tests/hil/test_hil_serial.py::test_serial_stream[hw]" in out
    assert "framing: no frame decoded" in out
    assert "1 failed, " in out and "passed" not in out  # test_ops_install deselected by -m hil


def test_undescribed_hardware_is_skipped_with_the_reason() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SYSTEM_BUS_ADDRESS"}
    if Path("/run/dbus/system_bus_socket").exists():
        pytest.skip("this machine has a system bus; the no-bus skip cannot be shown here")
    res = _pytest(
        "tests/hil/test_hil_serial.py",
        "tests/hil/test_hil_ble.py",
        "-k",
        "hw and (test_serial_stream or test_ble_stream)",
        "--hil-ble",
        "AA:BB:CC:DD:EE:FF",
        env=env,
    )
    out = res.stdout
    assert res.returncode == 0, out
    assert "no serial hardware described: pass --hil-serial PORT" in out
    assert "BLE hardware described but no D-Bus system bus" in out
    assert "2 skipped" in out and "passed" not in out and "failed" not in out
