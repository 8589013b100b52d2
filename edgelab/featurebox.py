"""A federated box without sensors: the daemon's Supervisor running FlClient on replayed features.

``python -m edgelab.featurebox --config box.toml [--features rows.npy]`` runs
one box's federated stack: registry, detector, local learner and FlClient,
fed by precomputed feature rows instead of sources and windows. The
multi-process tests and benchmarks start real boxes this way; a real box runs
``edgeagent run``, whose pipeline is wired in ``edgeagent.daemon.wiring``.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.errors import ModelError, TransportError
from edgeagent.federation.client import FlClient
from edgeagent.model.graph import parse_model, sha256_hex
from edgeagent.transport.mqtt import MqttLink

log = logging.getLogger(__name__)


class FeatureReplay:
    """Feeds precomputed feature rows (``.npy``, shape (N, F)) through the real detector.

    For demos and the multi-process tests: it stands in for sources + windows
    + features, so detection, calibration and local learning run exactly as
    on a box with sensors. Rows are replayed at ``rate_hz``, looping.
    """

    name = "feature-replay"
    order = 60

    def __init__(self, rows: np.ndarray, detector: Any, patient: str, rate_hz: float) -> None:
        self.rows = np.asarray(rows, np.float32)
        self.detector = detector
        self.patient = patient
        self.period = 1.0 / rate_hz
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="feature-replay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            x = self.rows[self.sent % len(self.rows)]
            t = 10.0 * self.sent
            try:
                self.detector.process_features(self.patient, t, t + 10.0, x)
            except ModelError:
                log.exception("feature replay: detector refused a row")
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def status(self) -> Mapping[str, Any]:
        return {"counters": {"replayed_rows": self.sent}}


class _LearnerComponent:
    name = "learner"
    order = 40

    def __init__(self, learner: Any) -> None:
        self.learner = learner

    def start(self) -> None:
        self.learner.start()

    def stop(self) -> None:
        self.learner.stop()

    def status(self) -> Mapping[str, Any]:
        return {"counters": {f"learn_{k}": v for k, v in self.learner.counters.items()}}


def build_box(config: Any, features: Path | None = None, rate_hz: float = 50.0) -> list[Any]:
    """The federated part of a box from its config: registry, detector, learner, client.

    Needs ``federation.enabled`` with mTLS files issued by ``edgeagent pki issue``
    (the signing identity sits next to the TLS certificate) and
    ``detection.model_path`` as the starting model.
    """
    from edgeagent.daemon.wiring import detection_stack
    from edgeagent.fl.identity import load_ca, load_identity
    from edgeagent.model.graph import read_meta
    from edgeagent.model.registry import ModelRegistry
    from edgeagent.ops.pki import TlsFiles
    from edgeagent.pipeline.alerts import MemoryAlertSink

    fed = config.federation
    if not fed.enabled or fed.ca_file is None or fed.cert_file is None or fed.key_file is None:
        raise TransportError("no_federation", "federation.enabled with ca/cert/key files needed")
    if config.detection.model_path is None:
        raise ModelError("detection.model_path (the starting model) is required")
    box = config.agent.box_id
    state = Path(config.agent.state_dir)
    ca = load_ca(fed.ca_file)
    identity = load_identity(fed.cert_file, ca, box)
    registry = ModelRegistry(state)
    active = registry.active()
    if active is None:
        data = Path(config.detection.model_path).read_bytes()
        active = registry.activate(registry.add(data, "config").version, "starting model")
    registry.require_signature = True  # from now on only signed global models
    data = registry.load_bytes(active)
    meta = read_meta(parse_model(data))
    stack = detection_stack(
        registry,
        active,
        MemoryAlertSink(),
        config.learning,
        feature_names=tuple(meta.feature_names),
        featurize=lambda _w: np.full(len(meta.feature_names), np.nan, np.float32),
        modality_of={},
    )
    if stack.learner is None:
        raise ModelError("a feature-replay box trains: set learning.enabled = true")
    detector, learner, manager = stack.detector, stack.learner, stack.manager
    link = MqttLink(
        box,
        fed.broker_host,
        fed.broker_port,
        TlsFiles(fed.ca_file, fed.cert_file, fed.key_file),
        config.agent.fleet,
        identity=box,
        keepalive_s=fed.keepalive_s,
    )
    client = FlClient(
        box,
        config.agent.fleet,
        identity,
        ca,
        learner,
        link,
        manager=manager,
        global_sha256=sha256_hex(data),
        min_samples=config.learning.min_samples,
        state_dir=state,
        allow_plaintext=fed.allow_plaintext,
        min_group_size=fed.min_group_size,
    )
    comps: list[Any] = [client, _LearnerComponent(learner)]
    if features is not None:
        comps.append(FeatureReplay(np.load(features), detector, f"{box}-patient", rate_hz))
    return comps


def main(argv: list[str] | None = None) -> int:
    """Run one box's federated stack under the daemon's Supervisor until SIGTERM."""
    from edgeagent.cli.run import setup_logging
    from edgeagent.daemon.supervisor import Supervisor
    from edgeagent.ops.config import load_config

    ap = argparse.ArgumentParser(prog="python -m edgelab.featurebox", description=__doc__)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--features", type=Path, help="replay feature rows (.npy) as local data")
    ap.add_argument("--rate", type=float, default=50.0, help="replayed rows per second")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    setup_logging(cfg.agent.log_level, False)
    comps = build_box(cfg, args.features, args.rate)
    return Supervisor(cfg, comps, control=False).run()


if __name__ == "__main__":
    raise SystemExit(main())
