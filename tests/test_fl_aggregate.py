"""Weighted FedAvg: the paper's objective, validation that names the culprit."""

from __future__ import annotations

import numpy as np
import pytest

from edgeagent.fl.aggregate import (
    ClientUpdate,
    apply_update,
    mean_from_total,
    sum_payloads,
    validate_updates,
    weighted_fedavg,
)


def test_weights_by_sample_count() -> None:
    ups = [ClientUpdate("a", np.array([1.0, 0.0]), 1), ClientUpdate("b", np.array([0.0, 4.0]), 3)]
    np.testing.assert_allclose(weighted_fedavg(ups), [0.25, 3.0])


def test_clip_and_cap_match_payload_sum() -> None:
    rng = np.random.default_rng(0)
    ups = [ClientUpdate(f"b{i}", rng.normal(0, 1, 8), int(rng.integers(1, 50))) for i in range(6)]
    total = sum_payloads(ups, clip=0.5, n_cap=20)
    got = weighted_fedavg(ups, clip=0.5, n_cap=20)
    np.testing.assert_allclose(got, mean_from_total(total))
    caps = np.array([min(u.n, 20) for u in ups], dtype=float)
    clipped = [u.delta * min(1.0, 0.5 / np.linalg.norm(u.delta)) for u in ups]
    np.testing.assert_allclose(got, np.average(clipped, axis=0, weights=caps))


@pytest.mark.parametrize(
    ("updates", "match"),
    [
        ([], "no updates"),
        ([ClientUpdate("a", np.zeros(2), 1), ClientUpdate("a", np.zeros(2), 1)], "two updates"),
        ([ClientUpdate("a", np.zeros(2), 1), ClientUpdate("b", np.zeros(3), 1)], "shape"),
        ([ClientUpdate("a", np.array([np.inf]), 1)], "NaN"),
        ([ClientUpdate("a", np.zeros(2), 0)], "no samples"),
    ],
)
def test_validation_names_the_problem(updates, match) -> None:
    with pytest.raises(ValueError, match=match):
        validate_updates(updates)


def test_mean_from_total_and_apply() -> None:
    np.testing.assert_allclose(mean_from_total(np.array([4.0, 8.0, 4.0])), [1.0, 2.0])
    with pytest.raises(ValueError):
        mean_from_total(np.array([1.0, 0.0]))
    w = apply_update(np.ones(2, dtype=np.float32), np.array([0.5, -1.0]), server_lr=2.0)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [2.0, -1.0])
    with pytest.raises(ValueError):
        apply_update(np.ones(2), np.ones(3))
