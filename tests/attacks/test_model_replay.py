"""Model replay: an old genuine global model republished with a huge version label.

Before release signatures, the signature covered only the model hash, so an
attacker holding an old publication (anyone who could write ``model/current``:
a broker operator, an intake-worker host with the aggregator's broker
credentials) relabelled it version 2^62; the box took it and refused every
later genuine model as stale. The release signature binds fleet, version,
round and hash, so the relabelled copy is refused and the genuine next model
is still taken. Played over a real Mosquitto: the box is a running ``FlClient``,
which takes its first model as the file (``model/current``) and later ones as
parameter vectors (``model/params``), so the attack is played on both channels.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.federation.client import FlClient
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.wire import ModelPublication, ParamsPublication, encode_model, encode_params
from edgeagent.model.graph import frame_sha256, get_params, parse_model, sha256_hex
from edgeagent.model.signing import sign_hash, sign_release
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import MqttLink
from edgelab.broker import Broker
from tests.fl_support import FixedLearner, make_fleet, start_broker

FLEET = "flreplay"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_fleet(tmp_path_factory.mktemp("replaypki"), ("box-a",))


@pytest.fixture(scope="module")
def broker(fleet: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(fleet, tmp_path_factory.mktemp("replaybroker"))
    yield b
    b.stop()


def _pub(ident, data: bytes, version: int, round_id: int, fleet: str = FLEET) -> bytes:
    sha = sha256_hex(data)
    return encode_model(
        ModelPublication(
            round_id=round_id,
            version=version,
            sha256=sha,
            signature=sign_hash(ident.key, sha),
            cert_der=ident.cert_der,
            onnx=data,
            release_sig=sign_release(ident.key, fleet, version, round_id, sha),
        )
    )


def _wait(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _params(ident, data: bytes, version: int, round_id: int, fleet: str = FLEET,
            label: int | None = None) -> bytes:  # fmt: skip
    """A parameter publication of ``data``, signed as ``version`` (labelled ``label``)."""
    sha = sha256_hex(data)
    model = parse_model(data)
    return encode_params(
        ParamsPublication(
            round_id=round_id,
            version=version if label is None else label,
            sha256=sha,
            signature=sign_hash(ident.key, sha),
            cert_der=ident.cert_der,
            frame=frame_sha256(model),
            params=get_params(model).astype("<f4").tobytes(),
            release_sig=sign_release(ident.key, fleet, version, round_id, sha),
        )
    )


def test_relabelled_old_model_is_refused_and_later_models_still_taken(
    fleet: Pki, broker: Broker, syn_model: bytes, syn_model_other: bytes, tmp_path: Path
) -> None:
    import numpy as np

    from edgeagent.model.graph import get_params, parse_model

    ca = load_ca(fleet.ca_cert)
    agg = load_identity(fleet.client_files("aggregator").cert, ca, "aggregator")
    files = fleet.client_files("box-a")
    w0 = get_params(parse_model(syn_model))
    link = MqttLink("box-a", broker.host, broker.port, files, FLEET, identity="box-a")
    box = FlClient("box-a", FLEET, load_identity(files.cert, ca, "box-a"), ca,
                   FixedLearner(np.zeros(w0.size, np.float32), 10), link,
                   global_sha256=sha256_hex(syn_model), state_dir=tmp_path)  # fmt: skip
    pub = MqttLink("agg-pub", broker.host, broker.port, fleet.client_files("aggregator"), FLEET,
                   identity="aggregator", status=False).connect(timeout=10)  # fmt: skip
    topic, vectors = topics.model_current(FLEET), topics.model_params(FLEET)
    box.start()
    try:
        old = _pub(agg, syn_model_other, 1, 1)
        assert pub.publish(topic, old, retain=True).wait(5) < 0x80
        assert _wait(lambda: box.global_version == 1)
        # the box now has a base and listens for vectors only: the attack is v1's vector and
        # signatures, relabelled as version 2^62 (the file carries the same labels and is
        # checked by the same code, tests/test_federation_client.py)
        relabelled_vec = _params(agg, syn_model_other, 1, 1, label=2**62)
        assert pub.publish(vectors, relabelled_vec, retain=True).wait(5) < 0x80
        assert _wait(lambda: box.counters["bad_model_signature"] == 1)
        # ... and a genuine release of another fleet (same CA) is no better
        other = _params(agg, syn_model, 9, 9, "otherfleet")
        assert pub.publish(vectors, other, retain=True).wait(5) < 0x80
        assert _wait(lambda: box.counters["bad_model_signature"] == 2)
        assert box.global_version == 1
        # the next genuine model is still taken, published as the aggregator does: file, vector
        assert pub.publish(topic, _pub(agg, syn_model, 2, 2), retain=True).wait(5) < 0x80
        assert pub.publish(vectors, _params(agg, syn_model, 2, 2), retain=True).wait(5) < 0x80
        assert _wait(lambda: box.global_version == 2 and box.global_sha == sha256_hex(syn_model))
    finally:
        for t in (topic, vectors):
            pub.publish(t, b"", retain=True).wait(5)
        pub.close()
        box.stop()
