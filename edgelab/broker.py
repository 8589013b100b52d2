"""Run a local Mosquitto broker from the shipped configuration.

Used by the tests (real broker, never a fake), the demo and the aggregator's
dev mode. The configuration is ``edgeagent/data/mosquitto.conf.template`` with
the ACL ``edgeagent/data/mosquitto.acl``: the same policy a field broker runs,
so a test that passes here exercises the real TLS and ACL rules.

The broker binds 127.0.0.1 on a free port by default and keeps that port
across :meth:`Broker.stop` / :meth:`Broker.start`, so clients can reconnect
after an outage exactly as they would to a field broker.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path
from string import Template
from types import TracebackType

from edgeagent.errors import BrokerError
from edgeagent.ops.pki import Pki
from edgeagent.ops.revocation import crl_path, write_crl
from edgeagent.transport import topics

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def find_mosquitto() -> str:
    """Path of the mosquitto binary; raises :class:`BrokerError` with install advice."""
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BrokerError(
            "mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto); "
            "it is needed for the local broker, the demo and the transport tests"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def data_file(name: str) -> str:
    """Text of a file shipped in ``edgeagent/data``."""
    return resources.files("edgeagent").joinpath("data", name).read_text(encoding="utf-8")


def render_acl(fleet: str | None = None) -> str:
    """The shipped ACL with its fleet level fixed to ``fleet`` (``+``, any fleet, if None)."""
    if fleet is not None:
        topics.prefix(fleet)  # a valid topic level, or TransportError
    return Template(data_file("mosquitto.acl")).substitute(fleet=fleet or "+")


def render_config(
    pki: Pki, data_dir: Path, port: int, bind: str = "127.0.0.1", acl_file: Path | None = None
) -> str:
    """The broker configuration text for this PKI, directory and port (pure)."""
    files = pki.broker_files()
    crl = crl_path(pki)
    if not crl.exists():
        write_crl(pki)  # an empty CRL: the broker then refuses only what is revoked later
    return Template(data_file("mosquitto.conf.template")).substitute(
        crlfile=str(crl),
        acl_file=str(acl_file or data_dir / "mosquitto.acl"),
        data_dir=str(data_dir),
        log_file=str(data_dir / "mosquitto.log"),
        user=getpass.getuser(),
        port=port,
        bind=bind,
        cafile=str(files.ca),
        certfile=str(files.cert),
        keyfile=str(files.key),
    )


class Broker:
    """A Mosquitto subprocess with the shipped config. Restartable on the same port."""

    def __init__(
        self,
        pki: Pki,
        data_dir: Path,
        port: int | None = None,
        bind: str = "127.0.0.1",
        fleet: str | None = None,
    ) -> None:
        self.pki = pki
        #: the ACL's fleet level: this fleet only, or any ("+") for a lab broker
        self.fleet = fleet
        self.data_dir = Path(data_dir)
        self.bind = bind
        self.port = port if port is not None else free_port(bind)
        self._binary = find_mosquitto()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.bind

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    @property
    def pid(self) -> int | None:
        """Process id while running (tests freeze it with SIGSTOP to stall PUBACKs)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        """The last lines of the broker log (for error messages and test failures)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def write_config(self) -> Path:
        """Render the config and copy the ACL into ``data_dir``; returns the config path."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "mosquitto.acl").write_text(render_acl(self.fleet))
        self.conf_path.write_text(render_config(self.pki, self.data_dir, self.port, self.bind))
        return self.conf_path

    def start(self, timeout: float = START_TIMEOUT_S) -> Broker:
        """Start mosquitto and wait until it accepts TCP connections."""
        if self.running:
            return self
        self.pki.broker_files().check()
        self.write_config()
        self._proc = subprocess.Popen(
            [self._binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                tail = self.log_tail()
                msg = f"mosquitto exited at start (port {self.port}): {err.strip()}"
                raise BrokerError(f"{msg}\n{tail}")
            try:
                with socket.create_connection((self.bind, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.bind}:{self.port} in {timeout} s")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if proc.stderr is not None:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL: a crash or power cut of the broker host (nothing saved)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
