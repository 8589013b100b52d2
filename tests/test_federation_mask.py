"""The round's parameter mask: boxes send only the announced groups' coordinates.

Pure parts first (group indices, clip and noise on the selected coordinates,
scatter back), then the announcement (the mask is part of the signed body: a
changed mask is refused), then whole rounds over a real Mosquitto with the
real aggregator and box classes, SecAgg+ and plaintext: every box sends the
same length, and the coordinates outside the mask keep the global's values.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest

from edgeagent.errors import ConfigError, ModelError, ProtocolError
from edgeagent.federation.aggregator import Aggregator
from edgeagent.federation.client import FlClient
from edgeagent.fl.aggregate import ClientUpdate, weighted_fedavg
from edgeagent.fl.constants import AGGREGATOR, BROADCAST, Key, Stage
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.messages import Message, encode
from edgeagent.fl.privacy import add_gaussian_noise, fedavg_payload, l2_clip, scatter, select
from edgeagent.fl.wire import Announcement, announcement_body, parse_announcement
from edgeagent.model.graph import get_params, parse_model, read_meta, sha256_hex
from edgeagent.model.meta import PARAM_GROUPS, ModelSpec, group_indices, n_params, param_layout
from edgeagent.model.nn import ae_param_mask
from edgeagent.ops.config import parse_config
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message as MqttMessage
from edgeagent.transport.mqtt import MqttLink
from edgelab.broker import Broker
from tests.fl_support import (
    FixedLearner,
    aggregator_config,
    make_fleet,
    start_broker,
    start_clients,
)

BOXES = ("box-a", "box-b", "box-c")
SPEC = ModelSpec(n_features=5, classes=("normal", "af", "sensor_fault"), hidden=8, latent=3)
CLIP, N_CAP = 1.0, 100


# -- pure: groups, clip and noise on the mask, scatter --------------------------------------------


def test_groups_partition_the_layout_in_layout_order() -> None:
    ae = group_indices(SPEC, ["ae"])
    head = group_indices(SPEC, ["head"])
    both = group_indices(SPEC, ["head", "ae"])  # name order does not matter
    assert np.array_equal(both, np.arange(n_params(SPEC)))
    assert not set(ae.tolist()) & set(head.tolist())
    assert np.array_equal(np.flatnonzero(ae_param_mask(SPEC)), ae)
    names = {n for g in PARAM_GROUPS.values() for n in g}
    assert names == {n for n, _ in param_layout(SPEC)}
    for bad in (["nope"], []):
        with pytest.raises(ModelError):
            group_indices(SPEC, bad)


def test_clip_spends_its_budget_on_the_masked_coordinates_alone() -> None:
    idx = group_indices(SPEC, ["ae"])
    delta = np.full(n_params(SPEC), 100.0)  # huge outside the mask ...
    delta[idx] = 0.001  # ... small inside: the whole vector would be clipped to nothing
    pay = fedavg_payload(select(delta, idx), 40, CLIP, N_CAP)
    assert pay.shape == (idx.size + 1,) and pay[-1] == 40
    np.testing.assert_allclose(pay[:-1], 40 * 0.001)  # inside the clip: untouched
    delta[idx] = 1.0  # now the masked part is long: clipped to CLIP by its own norm
    clipped, norm = l2_clip(select(delta, idx), CLIP)
    assert norm == pytest.approx(np.sqrt(idx.size))
    assert np.linalg.norm(clipped) == pytest.approx(CLIP)


def test_noise_lands_on_the_masked_coordinates_alone() -> None:
    idx = group_indices(SPEC, ["ae"])
    size = n_params(SPEC)
    rng = np.random.default_rng(1)
    noised = add_gaussian_noise(np.zeros(idx.size), 0.5, rng)
    full = scatter(noised, idx, size)
    outside = np.setdiff1d(np.arange(size), idx)
    assert np.all(full[outside] == 0.0) and np.array_equal(full[idx], noised)
    # same z, fewer coordinates: a smaller total noise norm (std * sqrt(coordinates))
    whole = add_gaussian_noise(np.zeros(size), 0.5, rng)
    assert np.linalg.norm(full) < np.linalg.norm(whole)
    with pytest.raises(ValueError):
        scatter(noised[:-1], idx, size)
    with pytest.raises(ValueError):
        scatter(np.zeros(size - 1), None, size)
    np.testing.assert_array_equal(select(whole, None), whole)


# -- the announcement ------------------------------------------------------------------------------


def test_announced_groups_round_trip_and_bad_ones_are_refused() -> None:
    base = Announcement(BOXES, "ab" * 32, 5.0, b"cert", groups=("head", "ae"))
    body = announcement_body(base)
    assert body["groups"] == ["ae", "head"]
    assert parse_announcement(body).groups == ("ae", "head")
    no_key = announcement_body(Announcement(BOXES, "ab" * 32, 5.0, b"cert"))
    assert "groups" not in no_key and parse_announcement(no_key).groups == ()
    for bad in ([], ["ae", "ae"], "ae", [1], ["x" * 33], ["g"] * 17):
        with pytest.raises(ProtocolError) as err:
            parse_announcement({**body, "groups": bad})
        assert err.value.reason == "bad_body"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_fleet(tmp_path_factory.mktemp("maskpki"), BOXES)


def _announce(fleet: Pki, syn_model: bytes, name: str, round_id: int, groups: tuple[str, ...],
              tamper: list[str] | None = None) -> MqttMessage:  # fmt: skip
    ca = load_ca(fleet.ca_cert)
    agg = load_identity(fleet.client_files(AGGREGATOR).cert, ca, AGGREGATOR)
    ann = Announcement(BOXES, sha256_hex(syn_model), 5.0, agg.cert_der, groups=groups)
    msg = Message(AGGREGATOR, BROADCAST, round_id, Stage.SETUP, 0, os.urandom(16),
                  announcement_body(ann))  # fmt: skip
    data = encode(msg, agg.key)
    if tamper is not None:  # rewrite the mask inside the signed payload, keep the signature
        outer = cbor2.loads(data)
        inner = cbor2.loads(outer[Key.PAYLOAD.value])
        inner[Key.BODY.value]["groups"] = tamper
        outer[Key.PAYLOAD.value] = cbor2.dumps(inner, canonical=True)
        data = cbor2.dumps(outer)
    return MqttMessage(topics.announce(name, round_id), data, 1, True)


def _box(fleet: Pki, syn_model: bytes, name: str, spec: ModelSpec | None) -> FlClient:
    ca = load_ca(fleet.ca_cert)
    files = fleet.client_files(BOXES[0])
    link = MqttLink(BOXES[0], "127.0.0.1", 1, files, name, identity=BOXES[0])  # never connected
    dim = get_params(parse_model(syn_model)).size
    return FlClient(BOXES[0], name, load_identity(files.cert, ca, BOXES[0]), ca,
                    FixedLearner(np.zeros(dim, np.float32), 50), link,
                    global_sha256=sha256_hex(syn_model), spec=spec)  # fmt: skip


def test_a_changed_mask_is_refused_and_an_unusable_one_sits_the_round_out(
    fleet: Pki, syn_model: bytes
) -> None:
    spec = read_meta(parse_model(syn_model)).spec
    box = _box(fleet, syn_model, "flmask0", spec)
    # the aggregator announced "ae"; someone on the way widens it to every group
    with pytest.raises(ProtocolError) as err:
        box.handle(_announce(fleet, syn_model, "flmask0", 1, ("ae",), tamper=["ae", "head"]))
    assert err.value.reason == "bad_signature" and box.current is None
    # a group this box does not know: no round joined
    with pytest.raises(ProtocolError) as err:
        box.handle(_announce(fleet, syn_model, "flmask0", 2, ("ae", "lstm")))
    assert err.value.reason == "bad_mask" and box.current is None
    # a subset of groups needs the model's layout; a box without it cannot line up its sums
    blind = _box(fleet, syn_model, "flmask1", None)
    with pytest.raises(ProtocolError) as err:
        blind.handle(_announce(fleet, syn_model, "flmask1", 1, ("ae",)))
    assert err.value.reason == "bad_mask" and blind.current is None
    # every group is the whole vector: that needs no layout
    blind.handle(_announce(fleet, syn_model, "flmask1", 2, tuple(PARAM_GROUPS)))
    assert blind.current is not None and blind.current.round_id == 2
    # and the signed, known mask is taken
    box.handle(_announce(fleet, syn_model, "flmask0", 3, ("ae",)))
    assert box.current is not None and box._mask_idx is not None
    np.testing.assert_array_equal(box._mask_idx, group_indices(spec, ["ae"]))


def test_config_names_known_groups_and_a_budget_above_zero() -> None:
    base = {"agent": {"box_id": "aggregator"}}
    cfg = parse_config({**base, "aggregator": {"train_groups": ["head", "ae"]}})
    assert cfg.aggregator.train_groups == ("ae", "head")
    assert cfg.aggregator.epsilon_budget == 8.0 and cfg.aggregator.dp_delta == 1e-5
    assert parse_config({**base, "aggregator": {"epsilon_budget": float("inf")}})
    for bad in (
        {"train_groups": ["ae", "lstm"]},
        {"train_groups": []},
        {"train_groups": ["ae", "ae"]},
        {"epsilon_budget": 0},
        {"epsilon_budget": float("nan")},
    ):
        with pytest.raises(ConfigError) as err:
            parse_config({**base, "aggregator": bad})
        assert "aggregator." in str(err.value), err.value


# -- whole rounds over a real broker -------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(fleet, tmp_path_factory.mktemp("maskbroker"))
    yield b
    b.stop()


def _run(agg: Aggregator, timeout: float = 60.0) -> None:
    agg.start()
    t = threading.Thread(target=agg.run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        agg.request_stop()
        t.join(5)
        pytest.fail(f"aggregator did not finish in {timeout} s: {agg.state['rounds']}")
    agg.close()


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("secure", [True, False], ids=["secagg", "plaintext"])
def test_masked_round_sends_the_mask_and_keeps_the_rest_of_the_global(
    fleet: Pki, broker: Broker, syn_model: bytes, tmp_path: Path, secure: bool
) -> None:
    name = f"flmask{'s' if secure else 'p'}"
    model = tmp_path / "m.onnx"
    model.write_bytes(syn_model)
    w0 = get_params(parse_model(syn_model))
    spec = read_meta(parse_model(syn_model)).spec
    idx = group_indices(spec, ["ae"])
    rng = np.random.default_rng(5)
    # every box changed every coordinate: only the announced ones may travel
    deltas = {b: (rng.normal(0, 0.05, w0.size).astype(np.float32), 20 + 10 * i)
              for i, b in enumerate(BOXES)}  # fmt: skip
    policy: dict[str, Any] = {"rounds": 1, "train_groups": ["ae"]}
    if not secure:
        policy |= {"secure_aggregation": False, "noise": "central"}
    cfg = aggregator_config(fleet, broker, tmp_path / "agg", model, name, **policy)
    clients = start_clients(fleet, broker, syn_model, deltas, name, spec=spec,
                            allow_plaintext=not secure)  # fmt: skip
    try:
        agg = Aggregator(parse_config(cfg))
        _run(agg)
        rec = agg.state["rounds"][-1]
        assert rec["status"] == "completed" and rec["survivors"] == list(BOXES), rec
        assert rec["mask"] == {"groups": ["ae"], "sent": int(idx.size), "params": int(w0.size)}
        w1 = get_params(parse_model(agg.model_bytes or b""))
        outside = np.setdiff1d(np.arange(w0.size), idx)
        np.testing.assert_array_equal(w1[outside], w0[outside])  # the head: exactly the global's
        ups = [ClientUpdate(b, d[idx], n) for b, (d, n) in deltas.items()]
        want = weighted_fedavg(ups, clip=CLIP, n_cap=N_CAP)
        np.testing.assert_allclose(w1[idx], w0[idx] + want.astype(np.float32), atol=2e-5)
        # each survivor's vector had the round's one length (the sum refuses any other), and
        # each box's whole upload is below what the unmasked float32 vector alone would be
        assert _wait(lambda: all(c.rounds for c in clients)), [c.status() for c in clients]
        for c in clients:
            assert c.rounds[-1]["bytes_up"] < 4 * w0.size, c.rounds[-1]
    finally:
        for c in clients:
            c.stop()
