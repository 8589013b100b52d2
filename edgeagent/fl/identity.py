"""Signing identities of boxes and the aggregator, checked against the fleet CA.

Why certificates travel with messages: a box only holds ``ca.crt`` and its own
files, and the aggregator learns boxes as they say hello. Each side therefore
sends its Ed25519 identity certificate (issued by ``Pki.issue_identity``) and
the receiver checks, with the CA alone, that the key is bound to the name it
speaks for. A certificate from another CA, an expired one, or one naming
another box is refused (``ProtocolError`` with reason ``foreign_ca``,
``expired`` or ``wrong_identity``), so nobody can enter a round with a key the
fleet did not issue. Pure: bytes in, key out; no file or network I/O here
except the small loaders at the bottom.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from edgeagent.errors import PkiError, ProtocolError


@dataclass(frozen=True)
class Identity:
    """Our own signing identity: the private key and the certificate (DER) we present."""

    name: str
    key: Ed25519PrivateKey
    cert_der: bytes

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()


def verify_identity_cert(
    cert_der: bytes, ca: x509.Certificate, expect: str | None
) -> Ed25519PublicKey:
    """The Ed25519 key of a CA-issued identity certificate named ``expect`` (any name if None)."""
    try:
        cert = x509.load_der_x509_certificate(bytes(cert_der))
    except (ValueError, TypeError) as exc:
        raise ProtocolError("bad_certificate", f"not a DER certificate: {exc}") from exc
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ProtocolError("foreign_ca", "certificate not issued by this fleet's CA") from exc
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ProtocolError("expired", "identity certificate outside its validity period")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    if expect is not None and name != expect:
        raise ProtocolError("wrong_identity", f"certificate names {name!r}, sender is {expect!r}")
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ProtocolError("bad_certificate", "identity certificate does not hold an Ed25519 key")
    return key


def known_key_verifier(
    keys: Mapping[str, Ed25519PublicKey],
) -> Callable[[str, bytes], Ed25519PublicKey]:
    """A SecAgg+ peer check for the aggregator: the certificate must hold the key it knows.

    The aggregator verified each box's certificate against the CA when the box
    said hello (``keys`` holds the result), so here it only checks that the
    certificate a box presents in a round carries that same key.
    """

    def verify(node: str, cert_der: bytes) -> Ed25519PublicKey:
        known = keys.get(node)
        if known is None:
            raise ProtocolError("unknown_sender", f"no verified identity for {node!r}")
        try:
            key = x509.load_der_x509_certificate(bytes(cert_der)).public_key()
        except (ValueError, TypeError) as exc:
            raise ProtocolError("bad_certificate", f"not a DER certificate: {exc}") from exc
        if (
            not isinstance(key, Ed25519PublicKey)
            or key.public_bytes_raw() != known.public_bytes_raw()
        ):
            raise ProtocolError("wrong_identity", f"certificate of {node!r} holds another key")
        return known

    return verify


def load_ca(path: Path) -> x509.Certificate:
    """The fleet CA certificate (PEM)."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read CA certificate {path}: {exc}") from exc


def identity_paths(tls_cert: Path) -> tuple[Path, Path]:
    """``(key, cert)`` of the signing identity issued next to a TLS client certificate."""
    p = Path(tls_cert)
    stem = p.name.removesuffix(".crt")
    return p.with_name(f"{stem}.sign.key"), p.with_name(f"{stem}.sign.crt")


def load_identity(
    tls_cert: Path, ca: x509.Certificate, name: str, key_path: Path | None = None
) -> Identity:
    """Load and self-check our signing identity (issued by ``edgeagent pki issue``).

    ``key_path`` overrides where the private key is read from (a systemd
    credential, ``[federation] signing_key_file``); the certificate stays beside
    the TLS certificate.
    """
    default_key, cert_path = identity_paths(tls_cert)
    key_path = Path(key_path) if key_path is not None else default_key
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(
            f"cannot read signing identity {key_path} / {cert_path}: {exc}; "
            f"re-issue with `edgeagent pki issue {name} --force`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise PkiError(f"{key_path} is not an Ed25519 private key")
    der = cert.public_bytes(serialization.Encoding.DER)
    try:
        pub = verify_identity_cert(der, ca, name)
    except ProtocolError as exc:
        raise PkiError(f"{cert_path}: {exc}") from exc
    if pub.public_bytes_raw() != key.public_key().public_bytes_raw():
        raise PkiError(f"{key_path} does not match {cert_path}")
    return Identity(name, key, der)
