"""``firmware_sim serve``: the real-port serial device and the command line.

The end-to-end path (device process on one tty, agent on the other) is
tests/hil/test_hil_serial.py::test_hardware_path_through_a_null_modem; these
cover what a bench engineer meets first: bad options, a port that is not
there (yet), and a device that stops on time with an honest ledger.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from firmware_sim.serve import PortDevice
from tests.plugins.hil import PtyNullModem


def _serve(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware_sim", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_missing_port_keeps_the_clock_and_counts_the_loss(tmp_path: Path) -> None:
    dev = PortDevice(str(tmp_path / "ttyUSB9"), duration_s=0.6, seed=1).start()
    t0 = time.monotonic()
    assert dev.wait_done(5.0)
    dev.stop()
    assert time.monotonic() - t0 >= 0.5  # real time, even with nowhere to send
    c = dev.ledger.counts
    assert c.get("unsent_no_port", 0) > 0 and "port_opens" not in c
    assert dev.ledger.intact == [] and dev.error is None


def test_port_that_appears_later_is_opened_with_a_hello(tmp_path: Path) -> None:
    link_dev, link_hub = tmp_path / "ttyDEV", tmp_path / "ttyHUB"
    dev = PortDevice(str(link_dev), duration_s=1.6, seed=2).start()
    time.sleep(0.4)
    nm = PtyNullModem(link_dev, link_hub).start()  # the adapter is plugged in
    try:
        assert dev.wait_done(10.0)
    finally:
        dev.stop()
        nm.stop()
    c = dev.ledger.counts
    assert c["port_opens"] == 1 and c["hello_intact"] >= 1
    assert c.get("unsent_no_port", 0) > 0 and c["samples_intact"] > 0
    assert dev.error is None


def test_cli_refuses_two_links_and_bad_faults(tmp_path: Path) -> None:
    res = _serve("--serial", "/dev/null", "--ble", "usb:0")
    assert res.returncode == 2 and "not allowed with argument" in res.stderr
    res = _serve("--serial", str(tmp_path / "tty"), "--faults", "melt=1")
    assert res.returncode == 2 and "unknown fault 'melt'" in res.stderr
    res = _serve("--ble", "bogus:0")
    assert res.returncode == 2 and "cannot open BLE transport" in res.stderr


def test_cli_serial_runs_for_its_duration_and_writes_the_ledger(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    res = _serve(
        "--serial",
        str(tmp_path / "ttyNONE"),
        "--sine",
        "--duration",
        "0.5",
        "--ledger",
        str(ledger),
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(ln) for ln in res.stdout.strip().splitlines()]
    first, last = lines[0], lines[-1]
    assert first == {"serial": str(tmp_path / "ttyNONE"), "device_id": "textile-01"}
    assert last["ledger"] == json.loads(ledger.read_text())
    assert last["ledger"]["sample_values_sent"] == 0  # nothing could be sent: no port


def test_cli_pty_writes_the_ledger_file_too(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    link = tmp_path / "ttySIM"
    res = _serve("--pty", str(link), "--sine", "--duration", "0.5", "--ledger", str(ledger))
    assert res.returncode == 0, res.stderr
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert ledger.exists(), "--pty --ledger wrote no file"
    assert last["ledger"] == json.loads(ledger.read_text())
    assert "sample_values_sent" in last["ledger"]


def test_cli_help_lists_every_link_mode() -> None:
    res = _serve("--help")
    assert res.returncode == 0
    for opt in ("--serial PORT", "--pty LINK", "--ble TRANSPORT", "chest_strap,wristband"):
        assert opt in res.stdout, opt
