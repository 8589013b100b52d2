"""Fleet PKI: the certificates the broker and the boxes use, and the `pki` CLI."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.errors import PkiError
from edgeagent.ops.pki import AGGREGATOR_ID, Pki, TlsFiles, common_name, validate_box_id


def _cert(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def test_init_and_issue_build_a_verifiable_chain(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki", fleet="ward7")
    files = pki.issue("box-1")
    ca = _cert(pki.ca_cert)
    leaf = _cert(files.cert)
    broker = _cert(pki.broker_files().cert)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    leaf.verify_directly_issued_by(ca)
    broker.verify_directly_issued_by(ca)
    assert common_name(files.cert) == "box-1"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "ward7" in ca.subject.rfc4514_string()


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki")
    files = pki.issue("box-1")
    for key in (pki.ca_key, pki.broker_files().key, files.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_existing_material_is_not_overwritten_without_force(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki")
    first = pki.issue("box-1").cert.read_bytes()
    with pytest.raises(PkiError, match="already exists"):
        Pki.init(tmp_path / "pki")
    with pytest.raises(PkiError, match="already has a certificate"):
        pki.issue("box-1")
    assert pki.issue("box-1", force=True).cert.read_bytes() != first


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a/b",
        "box+",
        "box#",
        "-lead",
        ".hidden",
        "x" * 65,
        "sp ace",
        "é",
        AGGREGATOR_ID,
        "ca",
        "intake-0",
        "ward",
        "alerts",
    ],
)
def test_box_ids_that_cannot_be_topic_levels_or_are_reserved_are_refused(bad: str) -> None:
    with pytest.raises(PkiError):
        validate_box_id(bad)


@pytest.mark.parametrize("good", ["box-1", "B0X_2.hall", "a", "x" * 64])
def test_valid_box_ids_pass(good: str) -> None:
    assert validate_box_id(good) == good


def test_open_without_ca_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="pki init"):
        Pki.open(tmp_path)


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "ca.crt", tmp_path / "x.crt", tmp_path / "x.key")
    with pytest.raises(PkiError, match=r"ca\.crt"):
        files.check()


def test_aggregator_identity_is_issued_separately(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki")
    files = pki.issue_aggregator()
    assert common_name(files.cert) == AGGREGATOR_ID
    assert pki.issued() == [AGGREGATOR_ID]


def test_consumer_roles_alerts_reads_ward_also_signs(tmp_path: Path) -> None:
    """The ward's verdicts are signed (boxes check them), the alerts consumer signs nothing."""
    _register()
    d = tmp_path / "pki"
    pki = Pki.init(d)
    r = CliRunner().invoke(app, ["pki", "issue-consumer", "--dir", str(d), "--role", "ward",
                                 "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert common_name(pki.client_files("ward").cert) == "ward"
    key, cert = pki.identity_files("ward")
    assert key.is_file() and common_name(cert) == "ward"
    pki.issue_consumer()
    assert not pki.identity_files("alerts")[1].exists()
    with pytest.raises(PkiError, match="role"):
        pki.issue_consumer(role="nurse")


def test_cli_init_issue_show(tmp_path: Path) -> None:
    _register()
    runner = CliRunner()
    d = tmp_path / "pki"
    r = runner.invoke(app, ["pki", "init", "--dir", str(d), "--fleet", "ward7", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["clients"] == ["aggregator"]
    r = runner.invoke(app, ["pki", "issue", "box-9", "--dir", str(d), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert common_name(Path(out["cert"])) == "box-9"
    r = runner.invoke(app, ["pki", "issue", "a/b", "--dir", str(d)])
    assert r.exit_code == 2
    assert "not allowed" in r.output
    r = runner.invoke(app, ["pki", "show", "--dir", str(d), "--json"])
    assert json.loads(r.output)["clients"] == ["aggregator", "box-9"]


def test_intake_workers_get_their_own_certificates(tmp_path: Path) -> None:
    """CN intake-<n>: the broker names each worker's connection after its certificate."""
    _register()
    pki = Pki.init(tmp_path / "pki")
    res = CliRunner().invoke(app, ["pki", "issue-intake", "3", "--dir", str(pki.root), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert common_name(Path(doc["cert"])) == "intake-3" and Path(doc["key"]).is_file()
    assert not pki.identity_files("intake-3")[1].exists()  # workers sign as the aggregator
    res = CliRunner().invoke(app, ["pki", "issue-intake", "16", "--dir", str(pki.root)])
    assert res.exit_code != 0  # the shipped ACL names intake-0 .. intake-15
