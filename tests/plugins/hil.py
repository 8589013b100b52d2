"""Hardware-in-the-loop: options, the ``hil`` marker, and the link targets the HIL tests run on.

Options (docs/hil.md)::

    pytest -m hil                                   # simulator targets only (CI)
    pytest -m hil --hil-serial /dev/ttyUSB0         # + a serial device on that port
    pytest -m hil --hil-ble AA:BB:CC:DD:EE:FF       # + a BLE wearable in range
    pytest -m hil --hil-bench bench.toml            # everything a bench file describes

Any test that asks for ``serial_target`` or ``ble_target`` runs once per
target: ``sim`` always, ``hw`` too -- and when the bench does not describe
that hardware, the ``hw`` case is *skipped with the reason*, never passed.
A bad bench file or option stops the run at start with the key at fault.

Also here: :class:`PtyNullModem`, two ptys joined back to back like a
crossed USB-serial cable pair, so the hardware path (a device process on one
real tty, the agent on another) runs in CI too.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import subprocess
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeagent.errors import BenchError
from edgelab.hil import (
    BLE_RATES_HZ,
    BLE_STREAMS,
    BleBench,
    HilBench,
    SerialBench,
    Tolerances,
    bench_from_options,
)

_BENCH_KEY = pytest.StashKey[HilBench]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the --hil-* options."""
    g = parser.getgroup("hil", "hardware-in-the-loop bench (docs/hil.md)")
    g.addoption("--hil-bench", type=Path, default=None, help="bench description (TOML)")
    g.addoption("--hil-serial", default=None, help="serial port of a device under test")
    g.addoption("--hil-ble", default=None, help="BLE address of a wearable under test")
    g.addoption("--hil-ble-kind", default=None, help="chest_strap (default) or wristband")
    g.addoption("--hil-duration", type=float, default=None, help="seconds per hardware run")


def bench_from_config(config: pytest.Config) -> HilBench:
    """The bench the options describe (validated; raises BenchError)."""
    return bench_from_options(
        config.getoption("--hil-bench"),
        config.getoption("--hil-serial"),
        config.getoption("--hil-ble"),
        config.getoption("--hil-ble-kind"),
        config.getoption("--hil-duration"),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Validate the bench once, before collection: a typo fails the run, loudly."""
    try:
        config.stash[_BENCH_KEY] = bench_from_config(config)
    except BenchError as exc:
        raise pytest.UsageError(f"--hil-*: {exc}") from None


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say which hardware the run uses (or that it uses none)."""
    bench = config.stash.get(_BENCH_KEY, None)
    if bench is None:
        return None
    parts = []
    if bench.serial is not None:
        parts.append(f"serial {bench.serial.port}")
    if bench.ble is not None:
        parts.append(f"ble {bench.ble.address} ({bench.ble.kind})")
    return "hil bench: " + (", ".join(parts) if parts else "none described (simulator only)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking a target runs on the simulator and on described hardware."""
    for name in ("serial_target", "ble_target"):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, ["sim", "hw"], indirect=True)


@pytest.fixture(scope="session")
def hil_bench(pytestconfig: pytest.Config) -> HilBench:
    """The validated bench (empty when nothing is described)."""
    return pytestconfig.stash[_BENCH_KEY]


# ---------------------------------------------------------------------- targets


def _skip_reason(link: str) -> str:
    opt = "--hil-serial PORT" if link == "serial" else "--hil-ble ADDRESS"
    return f"no {link} hardware described: pass {opt} or a [{link}] table in --hil-bench FILE"


def run_replug(cmd: str, timeout: float = 120.0) -> None:
    """Run a bench's replug command; its failure fails the test with its output."""
    res = subprocess.run(
        shlex.split(cmd), capture_output=True, text=True, timeout=timeout, check=False
    )
    if res.returncode != 0:
        pytest.fail(f"replug command {cmd!r} failed ({res.returncode}): {res.stderr.strip()}")


@dataclass
class SerialTarget:
    """Where a serial HIL run reads, and what it may expect there."""

    kind: str  # "sim" | "hw"
    bench: SerialBench
    tolerances: Tolerances
    tmp: Path
    fast: bool = False  # sim: the device sends as fast as the agent reads

    @property
    def realtime(self) -> bool:
        """Hardware and real-time sims run on the wall clock."""
        return not self.fast


@dataclass
class BleTarget:
    """Which wearable a BLE HIL run connects to, and what it may expect from it."""

    kind: str  # "sim" | "hw"
    bench: BleBench
    tolerances: Tolerances
    streams: tuple[str, ...] = ()
    rates_hz: dict[str, float] = field(default_factory=dict)


SIM_SERIAL_S = 30.0  # device seconds (fast mode: about a second of wall time)
SIM_BLE_S = 3.0  # wall seconds (the BlueZ sim runs on the wall clock)
SIM_BLE_ADDRESS = "F0:EA:00:00:00:01"


@pytest.fixture
def serial_target(
    request: pytest.FixtureRequest, hil_bench: HilBench, tmp_path: Path
) -> SerialTarget:
    """``sim``: a PtyDevice (exact tolerances); ``hw``: the bench's port."""
    if request.param == "hw":
        if hil_bench.serial is None:
            pytest.skip(_skip_reason("serial"))
        b = hil_bench.serial
        tol = Tolerances(b.max_bad_frame_ratio, b.max_loss_ratio, b.rate_tolerance)
        return SerialTarget("hw", b, tol, tmp_path)
    bench = SerialBench(
        port=str(tmp_path / "ttyHIL0"),
        device_id="textile-hil",
        duration_s=SIM_SERIAL_S,
        replug_down_s=0.3,
    )
    return SerialTarget("sim", bench, Tolerances(), tmp_path, fast=True)


@pytest.fixture
def ble_target(request: pytest.FixtureRequest, hil_bench: HilBench) -> BleTarget:
    """``sim``: the BlueZ simulator on a private bus; ``hw``: the bench's wearable."""
    if request.param == "hw":
        if hil_bench.ble is None:
            pytest.skip(_skip_reason("ble"))
        b = hil_bench.ble
        if not (
            os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
            or Path("/run/dbus/system_bus_socket").exists()
        ):
            pytest.skip("BLE hardware described but no D-Bus system bus (is bluetoothd running?)")
        tol = Tolerances(b.max_bad_frame_ratio, b.max_loss_ratio, b.rate_tolerance)
        return BleTarget("hw", b, tol, BLE_STREAMS[b.kind], dict(BLE_RATES_HZ[b.kind]))
    b = BleBench(address=SIM_BLE_ADDRESS, duration_s=SIM_BLE_S, replug_down_s=0.5)
    # The sim stamps with the wall clock: one sample period of jitter at most.
    return BleTarget(
        "sim", b, Tolerances(0.0, 0.0, 0.005), BLE_STREAMS[b.kind], dict(BLE_RATES_HZ[b.kind])
    )


# ---------------------------------------------------------------------- null modem


class PtyNullModem:
    """Two ptys wired back to back: bytes written to one end's tty come out of the other's.

    Each end is a real tty (``/dev/pts/N``, exposed through a symlink) that
    pyserial opens like a USB adapter. A thread copies master to master, and
    drops bytes when the far side is not reading, like a wire does.
    """

    def __init__(self, link_a: Path, link_b: Path) -> None:
        self.links = (link_a, link_b)
        self._masters: list[int] = []
        self._slaves: list[int] = []
        for link in self.links:
            m, s = os.openpty()
            tty.setraw(m)
            tty.setraw(s)
            os.set_blocking(m, False)
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            os.symlink(os.ttyname(s), link)
            self._masters.append(m)
            self._slaves.append(s)  # kept open so the masters never see EIO
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="null-modem", daemon=True)

    def start(self) -> PtyNullModem:
        """Start copying."""
        self._thread.start()
        return self

    def _pump(self) -> None:
        a, b = self._masters
        peer = {a: b, b: a}
        while not self._stop.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    continue
                try:
                    n = os.write(peer[fd], data)
                    self.dropped += len(data) - n
                except (BlockingIOError, OSError):
                    self.dropped += len(data)

    def stop(self) -> None:
        """Stop copying; close both pairs; remove the links."""
        self._stop.set()
        self._thread.join(2.0)
        for fd in self._masters + self._slaves:
            with contextlib.suppress(OSError):
                os.close(fd)
        for link in self.links:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()


@pytest.fixture
def null_modem(tmp_path: Path) -> Iterator[Callable[[], PtyNullModem]]:
    """Factory for a started :class:`PtyNullModem` (device end, hub end) under tmp_path."""
    made: list[PtyNullModem] = []

    def make() -> PtyNullModem:
        nm = PtyNullModem(tmp_path / "ttyDEV", tmp_path / "ttyHUB").start()
        made.append(nm)
        return nm

    yield make
    for nm in made:
        nm.stop()


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds (bounded waits everywhere)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
