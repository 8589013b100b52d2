"""Local intake-worker processes: start, watch, stop, and the round control they follow.

With ``aggregator.intake_workers`` set, the aggregator runs that many
``python -m edgeagent.federation.intake`` processes on its host; they take the
boxes' masked vectors through a shared subscription and answer with signed
partial sums (``federation.partials``). This module owns the processes and
the signed OPEN/CLOSE control messages that tell them which round to take;
a worker on another host runs the same command and follows the same control.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeagent.errors import ConfigError, TransportError
from edgeagent.federation.intake import OP_CLOSE, OP_OPEN, control_topic, encode_control
from edgeagent.fl.identity import Identity
from edgeagent.fl.messages import Sequencer
from edgeagent.ops.config import Config
from edgeagent.ops.pki import intake_id
from edgeagent.transport.mqtt import MqttLink

log = logging.getLogger(__name__)

#: Seconds the local intake workers get to connect and subscribe at start.
WORKER_START_S = 30.0
#: Seconds a worker gets to exit after SIGTERM before it is killed.
WORKER_STOP_S = 5.0


class IntakeWorkers:
    """The aggregator's intake worker processes and the control channel to them."""

    def __init__(self, config: Config, state_dir: Path, identity: Identity,
                 link: MqttLink) -> None:  # fmt: skip
        self.config = config
        self.count = config.aggregator.intake_workers
        self.state_dir = Path(state_dir)
        self.identity = identity
        self.link = link
        self.fleet = config.agent.fleet
        self.procs: list[subprocess.Popen[bytes]] = []
        self._seq = Sequencer()
        self.bytes_out = 0

    def start(self) -> None:
        """Run ``count`` × ``python -m edgeagent.federation.intake`` and wait until each has
        subscribed (its ready file appears); a worker that exits or stalls stops them all."""
        fed = self.config.federation
        ready_dir = self.state_dir / "intake"
        ready_dir.mkdir(parents=True, exist_ok=True)
        ready = [ready_dir / f"{i}.ready" for i in range(self.count)]
        assert fed.cert_file is not None
        # The broker binds client ids to certificates: each worker connects as itself
        # (clients/intake-<i>.crt beside the aggregator's), signing as the aggregator.
        # All are checked before any process starts, so a missing one leaves none behind.
        certs = [fed.cert_file.parent / f"{intake_id(i)}.crt" for i in range(self.count)]
        for i, cert in enumerate(certs):
            if not cert.is_file() or not cert.with_suffix(".key").is_file():
                raise ConfigError(
                    "aggregator.intake_workers",
                    self.count,
                    f"worker {i} needs {cert} and {cert.with_suffix('.key')} (the broker binds "
                    f"client ids to certificates); issue them with `edgeagent pki issue-intake "
                    f"{i}`",
                )
        for i, (flag, cert) in enumerate(zip(ready, certs, strict=True)):
            flag.unlink(missing_ok=True)
            key = cert.with_suffix(".key")
            cmd = [sys.executable, "-m", "edgeagent.federation.intake", "--host", fed.broker_host,
                   "--port", str(fed.broker_port), "--fleet", self.fleet,
                   "--ca", str(fed.ca_file), "--cert", str(cert), "--key", str(key),
                   "--identity", str(fed.cert_file), "--worker", str(i),
                   "--ready-file", str(flag)]  # fmt: skip
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + WORKER_START_S
        for i, (proc, flag) in enumerate(zip(self.procs, ready, strict=True)):
            while not flag.exists():
                problem = None
                if proc.poll() is not None:
                    problem = f"exited with status {proc.returncode} before subscribing"
                elif time.monotonic() > deadline:
                    problem = f"not subscribed after {WORKER_START_S:.0f} s"
                if problem:
                    self.stop()
                    raise TransportError("intake_worker", f"intake worker {i} {problem}")
                time.sleep(0.05)
        log.info("%d intake workers subscribed", len(self.procs))

    def check(self) -> None:
        """A dead worker takes the service down (systemd restarts it); the round in
        progress is then recorded as interrupted, like any restart mid-round."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                code = proc.returncode
                self.stop()
                raise TransportError("intake_worker", f"intake worker {i} exited ({code})")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def open(self, round_id: int, nonce: bytes, dim: int,
             box_keys: dict[str, Ed25519PublicKey], bits: int = 32) -> None:  # fmt: skip
        """COLLECT_MASKED opens: tell the workers the round, its size, width and the box keys."""
        ctl = encode_control(OP_OPEN, round_id, nonce, self._seq.next(), self.identity.key,
                             dim=dim, box_keys=box_keys, bits=bits)  # fmt: skip
        self.bytes_out += len(ctl)
        self.link.publish(control_topic(self.fleet), ctl)

    def close(self, round_id: int, nonce: bytes) -> None:
        """Ask the workers to flush what they hold for this round and let it go."""
        ctl = encode_control(OP_CLOSE, round_id, nonce, self._seq.next(), self.identity.key)
        self.bytes_out += len(ctl)
        self.link.publish(control_topic(self.fleet), ctl)
