"""Revoking a box: the broker refuses its TLS certificate, the aggregator its hello, boxes its keys.

``edgeagent pki revoke BOX`` writes the deny-list and a CA-signed CRL; a
Mosquitto restarted on the shipped configuration (``crlfile``) refuses the
revoked box's connection while others connect; the aggregator and the boxes,
given the deny-list (``[federation] revoked_file``), refuse it in rounds.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from typer.testing import CliRunner

from edgeagent.errors import ProtocolError, TransportError
from edgeagent.federation.aggregator import Aggregator
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.wire import encode_hello
from edgeagent.ops.config import parse_config
from edgeagent.ops.revocation import crl_path, deny_list_path, read_deny_list
from edgeagent.transport import topics
from edgeagent.transport.mqtt import Message as MqttMessage
from edgeagent.transport.mqtt import MqttLink
from tests.fl_support import aggregator_config, make_fleet, start_broker

FLEET = "flrevoke"


def test_revoked_box_is_refused_by_broker_aggregator_and_boxes(
    tmp_path: Path, syn_model: bytes
) -> None:
    from edgeagent.cli import _register, app

    pki = make_fleet(tmp_path / "pki", ("box-a", "box-r"))
    _register()
    out = CliRunner().invoke(app, ["pki", "revoke", "box-r", "--dir", str(pki.root)])
    assert out.exit_code == 0, out.output
    assert read_deny_list(deny_list_path(pki)) == {"box-r"}
    crl = x509.load_pem_x509_crl(crl_path(pki).read_bytes())
    revoked = {r.serial_number for r in crl}
    tls = x509.load_pem_x509_certificate(pki.client_files("box-r").cert.read_bytes())
    assert tls.serial_number in revoked and len(revoked) == 2  # TLS + identity certificate
    bad = CliRunner().invoke(app, ["pki", "revoke", "nobody", "--dir", str(pki.root)])
    assert bad.exit_code == 2 and "no certificate" in bad.output

    # the broker (shipped config, CRL rendered in) refuses the revoked TLS certificate
    broker = start_broker(pki, tmp_path / "broker")
    try:
        with pytest.raises(TransportError):
            MqttLink("box-r", broker.host, broker.port, pki.client_files("box-r"), FLEET,
                     identity="box-r", status=False).connect(timeout=5)  # fmt: skip
        ok = MqttLink("box-a", broker.host, broker.port, pki.client_files("box-a"), FLEET,
                      identity="box-a", status=False).connect(timeout=10)  # fmt: skip
        ok.close()
    finally:
        broker.stop()

    # the aggregator, given the deny-list, refuses the revoked box's (valid) hello
    ca = load_ca(pki.ca_cert)
    model = tmp_path / "m.onnx"
    model.write_bytes(syn_model)
    cfg = aggregator_config(pki, SimpleNamespace(host="127.0.0.1", port=9), tmp_path / "agg",
                            model, FLEET)  # fmt: skip
    cfg["federation"]["revoked_file"] = str(deny_list_path(pki))
    agg = Aggregator(parse_config(cfg))
    for box in ("box-r", "box-a"):
        ident = load_identity(pki.client_files(box).cert, ca, box)
        hello = encode_hello(box, 1.0, ident.cert_der, ident.key)
        agg.on_message(MqttMessage(topics.node(FLEET, box, "hello"), hello, 1, True))
    assert set(agg.boxes) == {"box-a"} and agg.refused["revoked"] == 1

    # a box refuses the revoked box as a SecAgg+ neighbour, whatever its certificate says
    from edgeagent.federation.client import FlClient
    from tests.fl_support import FixedLearner

    files = pki.client_files("box-a")
    link = MqttLink("box-a", "127.0.0.1", 9, files, FLEET, identity="box-a")
    box = FlClient("box-a", FLEET, load_identity(files.cert, ca, "box-a"), ca,
                   FixedLearner(__import__("numpy").zeros(3, "float32"), 5), link,
                   revoked=read_deny_list(deny_list_path(pki)))  # fmt: skip
    r_cert = load_identity(pki.client_files("box-r").cert, ca, "box-r").cert_der
    with pytest.raises(ProtocolError, match="revoked"):
        box._verify_peer("box-r", r_cert)
