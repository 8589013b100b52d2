"""Simulated boxes that train: the agent's LocalLearner on simulated windows (no broker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeagent.fl.privacy import fedavg_payload
from edgelab.fleetsim import TrainingBox, load_model_params, training_boxes

MODEL = Path(__file__).resolve().parents[1] / "models" / "baseline.onnx"


def test_a_training_box_sends_its_learners_real_update() -> None:
    model = load_model_params(str(MODEL))
    box = TrainingBox("sim-00007", seed=1, windows=48, model=model)
    box.train()
    assert 0 < box.n_k <= 48 and box.cpu_s > 0
    assert np.linalg.norm(box.delta) > 0  # it learned something from its windows
    dim = 10_000
    payload = box(dim, 1.0, 100)
    assert payload.shape == (dim + 1,)
    # the learner's update, zero-padded to the round's size, weighted by its n_k
    want = np.zeros(dim)
    want[: box.delta.size] = box.delta
    np.testing.assert_allclose(payload, fedavg_payload(want, box.n_k, 1.0, 100))
    assert not payload[box.delta.size : dim].any()
    first = box.delta.copy()
    box.train()  # the next round: from the same global model, on new windows
    assert box.rounds == 2 and not np.array_equal(first, box.delta)


def test_a_share_of_the_boxes_trains_spread_over_the_ids() -> None:
    nodes = [f"b{i:03d}" for i in range(100)]
    assert training_boxes(nodes, 0.0) == set()
    picked = training_boxes(nodes, 0.1)
    assert len(picked) == 10 and {"b000", "b010", "b090"} <= picked
    assert training_boxes(nodes, 1.0) == set(nodes)
