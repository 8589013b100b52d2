"""Stage 2: the fleet's PKI and the MQTT broker the federated rounds use (or why none)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgelab.demo.options import FLEET, BrokerInfo, DemoOptions


def demo_pki(root: Path, boxes: Sequence[str]) -> Any:
    """The demo fleet's PKI under ``<out>/pki``, kept across runs and completed as needed.

    Kept so that an external broker (``--broker HOST:PORT``) can be set up once
    with ``pki/ca.crt``, ``pki/broker.crt`` and ``pki/broker.key``.
    """
    from edgeagent.ops.pki import AGGREGATOR_ID, Pki

    pki = Pki.open(root) if (root / "ca.crt").is_file() else Pki.init(root, fleet=FLEET)
    for name in (AGGREGATOR_ID, *boxes):
        if not pki.client_files(name).cert.is_file():
            if name == AGGREGATOR_ID:
                pki.issue_aggregator()
            else:
                pki.issue(name)
    return pki


def start_broker(opts: DemoOptions, workdir: Path, pki: Any) -> BrokerInfo:
    """Start or locate the MQTT broker the federated rounds use (or say why there is none)."""
    from edgeagent.errors import BrokerError
    from edgelab.broker import Broker, find_mosquitto

    if opts.hubs < 2:
        return BrokerInfo(None, None, "in-memory", "secure aggregation needs at least 2 hubs")
    if opts.broker == "none":
        return BrokerInfo(None, None, "in-memory", "--broker none: rounds run in memory")
    if opts.broker not in ("embedded", "mosquitto"):
        host, _, port = opts.broker.rpartition(":")
        return BrokerInfo(
            host, int(port), "real", f"external broker {opts.broker} (must trust {pki.ca_cert})"
        )
    try:
        find_mosquitto()
    except BrokerError as exc:
        if opts.broker == "mosquitto":
            raise
        reason = f"{exc}"
        try:
            import amqtt  # noqa: F401

            reason += (
                "; amqtt is installed but speaks MQTT 3.1.1 without mTLS identities, "
                "which the fleet ACL and signed rounds need"
            )
        except ImportError:
            reason += "; amqtt is not installed either"
        return BrokerInfo(None, None, "in-memory", reason + ": rounds run in memory")
    broker = Broker(pki, workdir / "broker")
    try:
        broker.start()
    except BrokerError as exc:
        if opts.broker == "mosquitto":
            raise
        return BrokerInfo(
            None, None, "in-memory", f"mosquitto failed to start ({exc}): rounds run in memory"
        )
    return BrokerInfo(
        broker.host, broker.port, "real", "mosquitto subprocess on 127.0.0.1 (TLS, ACL)", broker
    )
