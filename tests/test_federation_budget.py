"""The aggregator's DP budget: a round that would exceed it is not started, and says why.

Epsilon is composed with q = 1 (``accountant.SAMPLING``); the budget is
``aggregator.epsilon_budget`` at ``dp_delta``, projected over the rounds still
planned (``aggregator.rounds``; the next round when it is 0). The refusal is
logged, counted and recorded; ``aggregator status`` shows epsilon spent, the
budget left and the rounds left, also after a restart, which must not forget
what was spent.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edgeagent.federation.accountant import SAMPLING, DpAccountant
from edgeagent.federation.aggregator import Aggregator, status_report
from edgeagent.federation.scheduler import BoxInfo
from edgeagent.model.graph import get_params, parse_model
from edgeagent.ops.config import parse_config, to_toml
from edgeagent.ops.pki import Pki
from edgelab.broker import Broker
from tests.fl_support import aggregator_config, make_fleet, start_broker, start_clients

BOXES = ("box-a", "box-b", "box-c")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_fleet(tmp_path_factory.mktemp("budgetpki"), BOXES)


def _config(fleet: Pki, broker: Any, tmp: Path, name: str, z: float, **policy: Any) -> dict:
    cfg = aggregator_config(fleet, broker, tmp / "agg", tmp / "m.onnx", name, **policy)
    cfg["federation"]["noise_multiplier"] = z
    return cfg


def _status(cfg: dict[str, Any], tmp: Path, *args: str) -> Any:
    from edgeagent.cli import _register, app

    _register()
    toml = tmp / "agg.toml"
    toml.write_text(to_toml(cfg))
    return CliRunner().invoke(app, ["aggregator", "status", "--config", str(toml), *args])


def _ready(agg: Aggregator) -> None:
    for b in BOXES:  # verified, online boxes: a round is due but for the budget
        agg.boxes[b] = BoxInfo(Ed25519PrivateKey.generate().public_key(), True)


def test_a_round_past_the_budget_is_not_started_and_status_says_why(
    fleet: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    nowhere = SimpleNamespace(host="127.0.0.1", port=1)  # refused before any connection
    # z = 1, q = 1: 1 round costs eps 4.73, 2 cost 7.08, 3 cost 9.01 at delta 1e-5
    cfg = _config(fleet, nowhere, tmp_path, "flbud0", 1.0, rounds=3)
    agg = Aggregator(parse_config(cfg), clock=lambda: now[0])
    _ready(agg)
    with caplog.at_level(logging.ERROR, "edgeagent.federation.aggregator"):
        agg.tick()
    assert agg.round is None and "in_progress" not in agg.state
    assert agg.state["next_round"] == 1 and agg.state["rounds"] == []
    dp = agg.state["dp"]
    assert dp["refusals"] == 1 and dp["refused"]["round"] == 1
    assert dp["refused"]["projected_epsilon"] == pytest.approx(9.01, abs=0.01)
    assert "2 more round(s) fit" in dp["refused"]["reason"]
    assert any("not started (DP budget)" in r.getMessage() for r in caplog.records)
    assert agg.done.is_set()  # the run loop ends: only a new configuration changes this
    agg.tick()  # the same instant: no second refusal, no log flood
    assert agg.state["dp"]["refusals"] == 1
    now[0] += 61.0
    agg.tick()
    assert agg.state["dp"]["refusals"] == 2 and agg.round is None

    rep = status_report(tmp_path / "agg")
    assert rep["dp"]["refusals"] == 2 and rep["dp_sampling"] == SAMPLING
    assert rep["dp"]["epsilon_spent"] == 0.0 and rep["dp"]["rounds_left"] == 2
    out = _status(cfg, tmp_path)
    assert out.exit_code == 0, out.output
    assert "epsilon     0.000 spent at delta 1e-05, z = 1, q = 1" in out.output
    assert "budget      8: 8.000 left, 2 more round(s) fit" in out.output
    assert "stopped     round 1 not started (2 time(s)): epsilon after 3 more" in out.output
    doc = json.loads(_status(cfg, tmp_path, "--json").output)
    assert doc["dp"]["epsilon_budget"] == 8.0 and doc["dp"]["budget_left"] == 8.0

    # two planned rounds fit: the same state starts them (no refusal recorded any more)
    cfg["aggregator"]["rounds"] = 2
    agg2 = Aggregator(parse_config(cfg), clock=lambda: now[0])
    assert not agg2._budget_refuses(now[0]) and "refused" not in agg2.state["dp"]
    # no budget: never refused, and status says there is none
    cfg["aggregator"] |= {"rounds": 50, "epsilon_budget": float("inf")}
    agg3 = Aggregator(parse_config(cfg), clock=lambda: now[0])
    assert not agg3._budget_refuses(now[0])
    assert "budget      none" in _status(cfg, tmp_path).output


def test_rounds_without_noise_are_no_dp_rounds_and_say_so(fleet: Pki, tmp_path: Path) -> None:
    nowhere = SimpleNamespace(host="127.0.0.1", port=1)
    cfg = _config(fleet, nowhere, tmp_path, "flbud1", 0.0, rounds=100)
    agg = Aggregator(parse_config(cfg))
    assert not agg._budget_refuses(0.0)
    assert "DP off (federation.noise_multiplier = 0)" in _status(cfg, tmp_path).output
    # a release without noise voids every later claim: a DP round is then refused
    agg.store.account(0.0, 1.0)
    agg.noise_multiplier = 1.0
    assert agg._budget_refuses(0.0)
    assert "without noise" in agg.state["dp"]["refused"]["reason"]


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(fleet, tmp_path_factory.mktemp("budgetbroker"))
    yield b
    b.stop()


def test_epsilon_spent_survives_a_restart_and_still_binds(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path
) -> None:
    (tmp_path / "m.onnx").write_bytes(syn_model)
    dim = get_params(parse_model(syn_model)).size
    rng = np.random.default_rng(2)
    deltas = {b: (rng.normal(0, 0.05, dim).astype(np.float32), 30) for b in BOXES}
    # z = 2: one round costs eps 2.17, two cost 3.19; the budget 3 allows exactly one
    cfg = _config(fleet, broker, tmp_path, "flbud2", 2.0, rounds=1, epsilon_budget=3.0)
    clients = start_clients(fleet, broker, syn_model, deltas, "flbud2")
    try:
        agg = Aggregator(parse_config(cfg))
        agg.start()
        t = threading.Thread(target=agg.run, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), agg.state["rounds"]
        agg.close()
    finally:
        for c in clients:
            c.stop()
    one = DpAccountant(1e-5)
    one.step(2.0, 1.0)
    assert agg.state["dp_events"] == [[2.0, 1.0]]
    assert agg.epsilon() == pytest.approx(one.epsilon())

    # (z = 2 over 3 boxes may drown the count and abort the round: released all the same,
    # accounted all the same, and the next round was then refused in that first run)
    cfg["aggregator"]["rounds"] = 0  # run on: the next round is the one projected
    again = Aggregator(parse_config(cfg))
    assert again.epsilon() == pytest.approx(one.epsilon())  # read back, not started over
    dp = status_report(tmp_path / "agg")["dp"]
    assert dp["epsilon_spent"] == pytest.approx(one.epsilon())
    assert dp["budget_left"] == pytest.approx(3.0 - one.epsilon()) and dp["rounds_left"] == 0
    _ready(again)
    before = again.state["dp"].get("refusals", 0)
    again.tick()
    assert again.round is None and again.state["dp"]["refusals"] == before + 1
    assert again.state["dp"]["refused"]["projected_epsilon"] == pytest.approx(3.19, abs=0.01)
    out = _status(cfg, tmp_path)
    assert f"epsilon     {one.epsilon():.3f} spent" in out.output
    assert "0 more round(s) fit" in out.output
