"""Fixtures for the transport area: fleet PKI material and a real Mosquitto broker.

``pki`` is session-scoped (certificates take milliseconds but never change);
``mosquitto_broker`` is a fresh broker per test (outage tests stop and start it
on the same port); ``mosquitto_broker_module`` is shared by a test module when
tests only publish and subscribe. Both use the shipped config and ACL from
``edgeagent/data``, so the tests exercise the policy a field broker runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeagent.errors import BrokerError
from edgeagent.ops.pki import Pki
from edgelab.broker import Broker, find_mosquitto

#: Boxes issued in the shared ``pki`` fixture (plus the aggregator identity).
TEST_BOXES = ("box-a", "box-b", "box-c")
TEST_FLEET = "testfleet"


def _require_mosquitto() -> None:
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A fleet CA, broker certificate, client certs for TEST_BOXES and the aggregator."""
    p = Pki.init(tmp_path_factory.mktemp("pki"), fleet=TEST_FLEET)
    for box in TEST_BOXES:
        p.issue(box)
    p.issue_aggregator()
    for worker in range(2):
        p.issue_intake(worker)
    return p


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA with a client cert named like a real box ("box-a")."""
    p = Pki.init(tmp_path_factory.mktemp("foreign_pki"), fleet="elsewhere")
    p.issue("box-a")
    return p


def _broker(pki: Pki, data_dir: Path) -> Iterator[Broker]:
    _require_mosquitto()
    broker = Broker(pki, data_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_broker(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    """A running broker for one test; ``.stop()``/``.start()`` keep the same port."""
    yield from _broker(pki, tmp_path / "broker")


@pytest.fixture(scope="module")
def mosquitto_broker_module(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker shared by one test module (do not stop it inside a test)."""
    yield from _broker(pki, tmp_path_factory.mktemp("broker"))
