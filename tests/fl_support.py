"""Helpers shared by the federated-round tests: a fleet PKI, configs and fixed learners.

The fleet here is separate from the transport fixtures' session PKI because
these tests need more boxes and a box whose signing identity comes from
another CA; the broker is the same real Mosquitto with the shipped ACL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeagent.errors import BrokerError
from edgeagent.ops.pki import Pki
from edgelab.broker import Broker, find_mosquitto

FLEET = "flfleet"


def mosquitto_or_skip() -> None:
    import pytest

    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.skip(str(exc))


def make_fleet(root: Path, boxes: tuple[str, ...]) -> Pki:
    """CA, broker certificate, one client + signing identity per box, and the aggregator."""
    pki = Pki.init(root, fleet=FLEET)
    for b in boxes:
        pki.issue(b)
    pki.issue_aggregator()
    for worker in range(2):  # the aggregator's intake workers each connect as themselves
        pki.issue_intake(worker)
    return pki


def start_broker(pki: Pki, data_dir: Path) -> Broker:
    mosquitto_or_skip()
    return Broker(pki, data_dir).start()


def federation(pki: Pki, name: str, broker: Broker, **extra: Any) -> dict[str, Any]:
    """The ``[federation]`` table for a box or the aggregator of this fleet."""
    f = pki.client_files(name)
    return {
        "enabled": True,
        "broker_host": broker.host,
        "broker_port": broker.port,
        "ca_file": str(f.ca),
        "cert_file": str(f.cert),
        "key_file": str(f.key),
        **extra,
    }


def aggregator_config(
    pki: Pki, broker: Broker, state_dir: Path, model: Path, fleet: str = FLEET, **policy: Any
) -> dict[str, Any]:
    return {
        "agent": {"box_id": "aggregator", "fleet": fleet, "state_dir": str(state_dir)},
        "federation": federation(pki, "aggregator", broker, noise_multiplier=0.0),
        "aggregator": {
            "min_boxes": 3,
            "min_survivors": 2,
            "stage_timeout_s": 5.0,
            "round_interval_s": 0.2,
            "n_cap": 100,
            "initial_model": str(model),
            # the 32-bit sum, so rounds compare with plaintext FedAvg to float precision;
            # the quantised default has its own end-to-end test
            "update_bits": 32,
            **policy,
        },
    }


class FixedLearner:
    """A learner whose update is known in advance, so the round's result can be checked."""

    def __init__(self, delta: np.ndarray, n_k: int) -> None:
        self._delta = np.asarray(delta, np.float32)
        self.n_k = n_k
        self.globals: list[np.ndarray] = []

    def delta(self) -> np.ndarray:
        return self._delta.copy()

    def reset_global(self, w_global: np.ndarray) -> None:
        self.globals.append(np.asarray(w_global, np.float32).copy())


def start_clients(
    fleet: Pki,
    broker: Broker,
    model: bytes,
    deltas: dict[str, tuple[np.ndarray, int]],
    name: str,
    **client_kw: Any,
) -> list[Any]:
    """One started ``FlClient`` per box in ``deltas``, each sending its fixed ``(delta, n_k)``.

    ``client_kw`` reaches every ``FlClient`` (e.g. ``min_group_size``); a
    callable value is called with the box id, so one box can differ.
    """
    from edgeagent.federation.client import FlClient
    from edgeagent.fl.identity import load_ca, load_identity
    from edgeagent.model.graph import sha256_hex
    from edgeagent.transport.mqtt import MqttLink

    ca = load_ca(fleet.ca_cert)
    out = []
    for b, (d, n) in deltas.items():
        files = fleet.client_files(b)
        link = MqttLink(b, broker.host, broker.port, files, name, identity=b)
        kw = {k: (v(b) if callable(v) else v) for k, v in client_kw.items()}
        c = FlClient(b, name, load_identity(files.cert, ca, b), ca, FixedLearner(d, n), link,
                     global_sha256=sha256_hex(model), **kw)  # fmt: skip
        c.start()
        out.append(c)
    return out
