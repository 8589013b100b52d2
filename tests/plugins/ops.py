"""Fixtures for the ops tests: configs, a real sd_notify socket, a running daemon.

Everything is real: the notify socket is an AF_UNIX datagram socket bound in a
temp dir (what systemd does), the daemon is ``edgeagent run`` in a subprocess,
and the control socket is the daemon's own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "systemd" / "edgeagent.example.toml"
# Runs the CLI exactly as the console script does, without needing it on PATH.
CLI = [sys.executable, "-c", "from edgeagent.cli import main; main()"]


def run_bench(script: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script>`` as a user would (its own process, from the repository root)."""
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """Write a config dict as TOML with the agent's own renderer."""
    from edgeagent.ops.config import to_toml

    path.write_text(to_toml(data))
    return path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temp dir: unix socket paths are limited to 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="ea-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ops_config_data(tmp_state: Path, short_dir: Path) -> dict[str, Any]:
    """The shipped example config, pointed at temp dirs, no devices, no federation."""
    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    data["agent"]["state_dir"] = str(tmp_state)
    data["devices"] = {"serial": [], "ble": {"enabled": False}}
    data["federation"] = {"enabled": False}
    data["control"] = {"socket_path": str(short_dir / "control.sock")}
    data["status"] = {"interval_s": 1.0, "stall_after_s": 2.0}
    return data


@pytest.fixture
def ops_config(ops_config_data: dict[str, Any], tmp_path: Path) -> Path:
    """``ops_config_data`` written to a file."""
    return write_toml(tmp_path / "config.toml", ops_config_data)


@dataclass
class NotifyListener:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    path: Path
    sock: socket.socket
    received: list[dict[str, str]] = field(default_factory=list)

    def drain(self, timeout: float = 0.0) -> list[dict[str, str]]:
        """Collect every datagram arriving within ``timeout`` seconds (bounded even
        while a watchdog keeps pinging); returns all received so far."""
        from edgeagent.daemon.sdnotify import parse

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            self.sock.settimeout(max(left, 0.001))
            try:
                self.received.append(parse(self.sock.recv(4096)))
            except (TimeoutError, BlockingIOError):
                return self.received
            if left <= 0:
                return self.received

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0) -> dict[str, str]:
        """Block until a message with ``key`` (and ``value``) arrives; fail the test otherwise."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.drain(0.05)
            for msg in self.received[seen:]:
                if key in msg and (value is None or msg[key] == value):
                    return msg
            seen = len(self.received)
        raise AssertionError(f"no {key}={value} within {timeout} s; got {self.received}")

    def count(self, key: str, value: str) -> int:
        return sum(1 for m in self.received if m.get(key) == value)


@pytest.fixture
def notify_socket(short_dir: Path) -> Iterator[NotifyListener]:
    """A real datagram socket bound where NOTIFY_SOCKET will point."""
    path = short_dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield NotifyListener(path, sock)
    finally:
        sock.close()


@dataclass
class Daemon:
    """A running ``edgeagent run`` subprocess."""

    proc: subprocess.Popen[str]
    config: Path
    socket_path: Path
    notify: NotifyListener

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out


@pytest.fixture
def daemon(
    ops_config: Path, ops_config_data: dict[str, Any], notify_socket: NotifyListener
) -> Iterator[Daemon]:
    """``edgeagent run`` under a simulated systemd (NOTIFY_SOCKET, 1 s watchdog), READY."""
    env = dict(os.environ)
    env.update(NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(ops_config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    d = Daemon(proc, ops_config, Path(ops_config_data["control"]["socket_path"]), notify_socket)
    try:
        notify_socket.wait_for("READY", "1", timeout=20.0)
        yield d
    finally:
        d.stop()
