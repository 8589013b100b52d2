"""Fleet PKI: one CA, one broker certificate, one client certificate per box.

Why certificates and not passwords: the broker (Mosquitto with
``use_identity_as_username``) takes the certificate's common name as the
MQTT user name, and the shipped ACL lets a user write only under
``node/<its own CN>/``. A box therefore cannot speak for another box without
that box's private key, and nothing secret ever travels in a CONNECT packet.

The same code builds the material for tests, the demo and field set-up
(``edgeagent pki init`` / ``edgeagent pki issue BOX_ID``). Layout of a PKI
directory::

    ca.crt  ca.key                  fleet CA (keep ca.key offline in the field)
    broker.crt  broker.key          server certificate (SAN: localhost, 127.0.0.1, ...)
    clients/<name>.crt  .key        one per box, plus "aggregator"
    clients/<name>.sign.crt .sign.key   Ed25519 identity for signed federated
                                    messages and models (CN = name, same CA)

Keys are ECDSA P-256: small, fast to generate on a Pi, supported by
Mosquitto/OpenSSL and every MQTT client library.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeagent.errors import PkiError

#: The identity the aggregator connects with; the ACL grants it the fleet-wide topics,
#: so no box may be issued under this name.
AGGREGATOR_ID = "aggregator"
#: The documented alert consumer (``edgeagent alerts follow``): reads every box's alerts.
CONSUMER_ID = "alerts"
#: The ward system: reads every box's alerts and sends clinicians' verdicts on them
#: (``node/<box>/feedback``, signed with its Ed25519 identity; boxes accept no other signer).
WARD_ID = "ward"
#: ``pki issue-consumer --role``: the CN each consumer role gets.
CONSUMER_ROLES = {"alerts": CONSUMER_ID, "ward": WARD_ID}
RESERVED_IDS = frozenset({AGGREGATOR_ID, CONSUMER_ID, WARD_ID, "broker", "ca"})
#: Intake workers' certificate CNs are ``intake-<n>``; the shipped ACL names n = 0..15.
INTAKE_PREFIX = "intake-"
MAX_INTAKE_WORKERS = 16

# A box id becomes one MQTT topic level and a file name: no '/', '+', '#', no dots first.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

DEFAULT_BROKER_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 825  # the CA/Browser cap; long enough for a field deployment cycle


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths a TLS endpoint needs: the CA to trust, its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def check(self) -> TlsFiles:
        """Raise :class:`PkiError` naming the first missing file (clearer than an SSL error)."""
        for what, p in (("CA certificate", self.ca), ("certificate", self.cert), ("key", self.key)):
            if not Path(p).is_file():
                raise PkiError(f"{what} {p} does not exist; run `edgeagent pki init/issue` first")
        return self


def intake_id(worker: int | str) -> str:
    """The CN (and MQTT client id) of intake worker ``worker``."""
    return f"{INTAKE_PREFIX}{worker}"


def validate_box_id(box_id: str) -> str:
    """Return ``box_id`` if it can be a topic level, an MQTT user and a file name.

    Raises :class:`PkiError` otherwise, saying what is allowed.
    """
    if not isinstance(box_id, str) or not _ID_RE.match(box_id):
        raise PkiError(
            f"box id {box_id!r} is not allowed: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    if box_id in RESERVED_IDS or box_id.startswith(INTAKE_PREFIX):
        raise PkiError(f"box id {box_id!r} is reserved for fleet services; pick another name")
    return box_id


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # Create with 0600 from the start so the key is never world-readable, even briefly.
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an EC private key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read certificate {path}: {exc}") from exc


class Pki:
    """A fleet PKI rooted at a directory. Construct with :meth:`init` or :meth:`open`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths --------------------------------------------------------------
    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def clients_dir(self) -> Path:
        return self.root / "clients"

    def broker_files(self) -> TlsFiles:
        """The broker's server certificate, key and the CA it checks clients against."""
        return TlsFiles(self.ca_cert, self.root / "broker.crt", self.root / "broker.key")

    def client_files(self, name: str) -> TlsFiles:
        """TLS files of an issued client (a box or the aggregator)."""
        return TlsFiles(
            self.ca_cert, self.clients_dir / f"{name}.crt", self.clients_dir / f"{name}.key"
        )

    def identity_files(self, name: str) -> tuple[Path, Path]:
        """``(key, cert)`` of the Ed25519 signing identity issued with a client certificate."""
        return self.clients_dir / f"{name}.sign.key", self.clients_dir / f"{name}.sign.crt"

    def issued(self) -> list[str]:
        """Names of all issued client certificates, sorted."""
        if not self.clients_dir.is_dir():
            return []
        return sorted(
            p.stem for p in self.clients_dir.glob("*.crt") if not p.stem.endswith(".sign")
        )

    # -- construction -------------------------------------------------------
    @classmethod
    def open(cls, root: Path) -> Pki:
        """Open an existing PKI; raises :class:`PkiError` if there is no CA."""
        pki = cls(root)
        if not pki.ca_cert.is_file() or not pki.ca_key.is_file():
            raise PkiError(f"no fleet CA in {root}; run `edgeagent pki init --dir {root}`")
        return pki

    @classmethod
    def init(
        cls,
        root: Path,
        fleet: str = "default",
        broker_hosts: Iterable[str] = DEFAULT_BROKER_HOSTS,
        *,
        force: bool = False,
    ) -> Pki:
        """Create the CA and the broker certificate in ``root``.

        Refuses to overwrite an existing CA unless ``force``: replacing it silently
        would lock every issued box out of the broker.
        """
        pki = cls(root)
        if pki.ca_cert.exists() and not force:
            raise PkiError(f"{pki.ca_cert} already exists; pass force=True / --force to replace it")
        pki.root.mkdir(parents=True, exist_ok=True)
        os.chmod(pki.root, 0o700)
        pki.clients_dir.mkdir(exist_ok=True)

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeagent"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, fleet),
                x509.NameAttribute(NameOID.COMMON_NAME, f"edgeagent fleet CA ({fleet})"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_key(pki.ca_key, key)
        _write_cert(pki.ca_cert, cert)
        pki._issue_leaf("broker", server=True, hosts=tuple(broker_hosts), out=pki.broker_files())
        return pki

    def issue(self, box_id: str, *, force: bool = False) -> TlsFiles:
        """Issue a client certificate whose CN is ``box_id`` (validated, not reserved)."""
        validate_box_id(box_id)
        return self._issue_client(box_id, force=force)

    def issue_aggregator(self, *, force: bool = False) -> TlsFiles:
        """Issue the aggregator's client certificate (CN ``aggregator``, fleet-wide ACL)."""
        return self._issue_client(AGGREGATOR_ID, force=force)

    def issue_consumer(self, *, force: bool = False, role: str = "alerts") -> TlsFiles:
        """Issue a consumer's TLS certificate: ``alerts`` (reads alerts, writes nothing) or
        ``ward`` (reads alerts, writes clinicians' verdicts, with a signing identity).

        Its own identity, not the aggregator's: the broker binds a client id to its
        certificate's CN, so a consumer holding the aggregator's certificate would
        disconnect the aggregator, and the other way round. The ward is a role apart
        from ``alerts`` because its verdicts train models: a dashboard or a pager that
        only shows alerts must not hold a key that can label them.
        """
        cn = CONSUMER_ROLES.get(role)
        if cn is None:
            raise PkiError(f"consumer role {role!r}: use one of {', '.join(CONSUMER_ROLES)}")
        return self._issue_client(cn, force=force, identity=cn == WARD_ID)

    def issue_intake(self, worker: int | str, *, force: bool = False) -> TlsFiles:
        """Issue the TLS certificate of intake worker ``worker`` (CN ``intake-<worker>``).

        Why a certificate per worker: the broker binds each connection's client
        id to its certificate's CN, so two processes with one certificate would
        keep disconnecting each other. Workers sign with the aggregator's identity.
        """
        return self._issue_client(intake_id(worker), force=force, identity=False)

    def _issue_client(self, name: str, *, force: bool, identity: bool = True) -> TlsFiles:
        files = self.client_files(name)
        if files.cert.exists() and not force:
            raise PkiError(f"{name!r} already has a certificate ({files.cert}); pass --force")
        self.clients_dir.mkdir(parents=True, exist_ok=True)
        self._issue_leaf(name, server=False, hosts=(), out=files)
        if identity:
            self.issue_identity(name, force=True)
        return files

    def issue_identity(self, name: str, *, force: bool = False) -> tuple[Path, Path]:
        """Ed25519 signing key + a CA-signed certificate binding it to ``name`` (CN).

        Why a second key: TLS keys are ECDSA P-256 (what Mosquitto and every
        client library take), while federated envelopes and global models are
        signed with Ed25519. The certificate lets the other side check, with
        only ``ca.crt``, that a signing key belongs to the box it speaks for.
        """
        key_path, cert_path = self.identity_files(name)
        if cert_path.exists() and not force:
            raise PkiError(f"{name!r} already has a signing identity ({cert_path}); pass --force")
        ca_key = _load_key(self.ca_key)
        ca_cert = _load_cert(self.ca_cert)
        key = ed25519.Ed25519PrivateKey.generate()
        now = _now()
        cert = (
            _leaf_builder(name, key.public_key(), ca_cert, now)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.clients_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _write_cert(cert_path, cert)
        return key_path, cert_path

    def _issue_leaf(self, cn: str, *, server: bool, hosts: tuple[str, ...], out: TlsFiles) -> None:
        ca = Pki.open(self.root)
        ca_key = _load_key(ca.ca_key)
        ca_cert = _load_cert(ca.ca_cert)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            _leaf_builder(cn, key.public_key(), ca_cert, now)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if server:
            sans: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(out.key, key)
        _write_cert(out.cert, cert)

    # -- inspection ---------------------------------------------------------
    def describe(self) -> dict[str, object]:
        """A JSON-able summary (CA subject, expiry, issued names) for the CLI."""
        ca = _load_cert(self.ca_cert)
        return {
            "dir": str(self.root),
            "ca_subject": ca.subject.rfc4514_string(),
            "ca_not_after": ca.not_valid_after_utc.isoformat(),
            "broker_cert": str(self.broker_files().cert),
            "clients": self.issued(),
        }


def common_name(cert_path: Path) -> str:
    """The CN of a certificate file: the identity the broker will see."""
    attrs = _load_cert(Path(cert_path)).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise PkiError(f"{cert_path} has no common name")
    return str(attrs[0].value)


def _leaf_builder(
    cn: str,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    ca_cert: x509.Certificate,
    now: dt.datetime,
) -> x509.CertificateBuilder:
    """What every leaf the fleet CA signs shares: subject, issuer, validity, not a CA."""
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeagent"),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
