"""Revoking a box: a CRL for the broker and a deny-list for the aggregator and the boxes.

Why both: the broker checks TLS client certificates against the CRL
(``crlfile``), so a revoked box can no longer connect at all; but identity
certificates (the Ed25519 keys that sign rounds) travel inside messages, and
a neighbour's certificate reaches a box through the aggregator. So the
aggregator refuses a revoked box's hello and never invites it, and each box
refuses it as a SecAgg+ neighbour (``FlClient._verify_peer``). The deny-list is
a plain file of box ids (``revoked.txt`` in the PKI directory) that operators
copy next to the aggregator's and the boxes' configuration
(``[federation] revoked_file``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from edgeagent.atomic import write_atomic
from edgeagent.errors import PkiError
from edgeagent.ops.pki import Pki, validate_box_id

DENY_LIST = "revoked.txt"
CRL_FILE = "crl.pem"
#: How long a CRL is valid; the broker refuses every client once it has expired,
#: so ``pki revoke`` (or ``pki crl``) must be rerun before then.
CRL_DAYS = 365


def deny_list_path(pki: Pki) -> Path:
    return pki.root / DENY_LIST


def crl_path(pki: Pki) -> Path:
    return pki.root / CRL_FILE


def read_deny_list(path: Path | None) -> frozenset[str]:
    """Box ids in a deny-list file (one per line, ``#`` comments); empty if ``path`` is None."""
    if path is None:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PkiError(f"cannot read deny-list {path}: {exc}") from exc
    return frozenset(ln.split("#", 1)[0].strip() for ln in lines) - {""}


def _serials(pki: Pki, name: str) -> list[int]:
    out = []
    for path in (pki.client_files(name).cert, pki.identity_files(name)[1]):
        if path.is_file():
            out.append(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)
    return out


def write_crl(pki: Pki) -> Path:
    """(Re)write the CA-signed CRL listing every certificate of every denied box."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=CRL_DAYS))
    )
    for name in sorted(read_deny_list(deny_list_path(pki)) if deny_list_path(pki).exists() else ()):
        for serial in _serials(pki, name):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    path = crl_path(pki)
    write_atomic(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


def revoke(pki: Pki, box_id: str) -> tuple[Path, Path]:
    """Add ``box_id`` to the deny-list and rewrite the CRL; returns both paths."""
    validate_box_id(box_id)
    if box_id not in pki.issued():
        raise PkiError(f"no certificate issued to {box_id!r} in {pki.root}")
    path = deny_list_path(pki)
    denied = read_deny_list(path) if path.exists() else frozenset()
    text = "".join(f"{n}\n" for n in sorted(denied | {box_id}))
    write_atomic(path, text.encode())
    return path, write_crl(pki)
