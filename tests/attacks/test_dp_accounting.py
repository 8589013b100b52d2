"""Epsilon under the sampling that actually happens.

The review's example: 100 boxes known, 10 online, z = 1, 100 rounds. Taking
q = participants / known (0.1) as a Poisson rate reports eps 7.90; but the
participants are every online box (or a fixed-size draw from them) and their
list is published, so no amplification by sampling holds and q = 1 gives
eps 96.1. The aggregator accounts with q = 1; the test runs a real round over
Mosquitto with 97 known-but-offline boxes and checks what it composed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeagent.federation.accountant import DpAccountant
from edgeagent.federation.aggregator import DP_SAMPLING_RATE, Aggregator
from edgeagent.federation.scheduler import BoxInfo
from edgeagent.model.graph import get_params, parse_model
from edgeagent.ops.config import parse_config
from edgeagent.ops.pki import Pki
from edgelab.broker import Broker
from tests.fl_support import aggregator_config, make_fleet, start_broker, start_clients

BOXES = ("box-a", "box-b", "box-c")
FLEET = "fldp"


def test_the_reviews_example_with_the_sampling_that_happens() -> None:
    wrong = DpAccountant(1e-5)
    wrong.step(1.0, 10 / 100, rounds=100)
    assert wrong.epsilon() == pytest.approx(7.90, abs=0.01)
    right = DpAccountant(1e-5)
    right.step(1.0, DP_SAMPLING_RATE, rounds=100)
    assert right.epsilon() == pytest.approx(96.1, abs=0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_fleet(tmp_path_factory.mktemp("dppki"), BOXES)


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(fleet, tmp_path_factory.mktemp("dpbroker"))
    yield b
    b.stop()


def test_aggregator_accounts_with_q_1_however_many_boxes_it_knows(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(syn_model)
    dim = get_params(parse_model(syn_model)).size
    rng = np.random.default_rng(3)
    deltas = {b: (rng.normal(0, 0.05, dim).astype(np.float32), 30) for b in BOXES}
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model, FLEET, min_boxes=3, rounds=1)
    cfg["federation"]["noise_multiplier"] = 1.0
    clients = start_clients(fleet, broker, syn_model, deltas, FLEET)
    try:
        agg = Aggregator(parse_config(cfg))
        for i in range(97):  # boxes that said hello once and are offline now
            agg.boxes[f"gone-{i:02d}"] = BoxInfo(Ed25519PrivateKey.generate().public_key(), False)
        agg.start()
        t = threading.Thread(target=agg.run, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), agg.state["rounds"]
        agg.close()
        # (z = 1 over 3 boxes drowns the sum: a round may fail to apply, but it was
        # released to the aggregator, so it is accounted all the same)
        events = agg.state["dp_events"]
        assert events and all(ev == [1.0, 1.0] for ev in events)  # q = 1, not 3 / 100
        want = DpAccountant(1e-5)
        want.step(1.0, 1.0, rounds=len(events))
        assert agg.state["rounds"][-1]["epsilon"] == pytest.approx(want.epsilon())
    finally:
        for c in clients:
            c.stop()
