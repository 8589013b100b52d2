"""``edgeagent pki``: create the fleet CA, the broker certificate and box certificates.

Field set-up runs ``pki init`` once on a trusted machine and ``pki issue BOX``
per box, then copies ``ca.crt`` + ``clients/BOX.{crt,key}`` to the box. Tests
and the demo use the same code (:mod:`edgeagent.ops.pki`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeagent.cli import app
from edgeagent.cli.human import human
from edgeagent.errors import PkiError
from edgeagent.ops.pki import DEFAULT_BROKER_HOSTS, MAX_INTAKE_WORKERS, Pki

pki_app = typer.Typer(help="Fleet PKI: CA, broker and per-box certificates.", no_args_is_help=True)
app.add_typer(pki_app, name="pki")

_DIR = typer.Option(Path("pki"), "--dir", help="PKI directory (created by init).")
_JSON = typer.Option(False, "--json", help="Print JSON.")


def _fail(exc: PkiError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def _emit(doc: dict[str, object], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for k, v in doc.items():
            typer.echo(f"{k:14} {human(v)}")


@pki_app.command("init")
def init(
    directory: Path = _DIR,
    fleet: str = typer.Option("default", help="Fleet name, recorded in the CA subject."),
    broker_host: list[str] = typer.Option(  # noqa: B008
        list(DEFAULT_BROKER_HOSTS), "--broker-host", help="Names/IPs the broker is reached by."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA (locks out boxes)."),
    as_json: bool = _JSON,
) -> None:
    """Create the fleet CA, the broker certificate and the aggregator's certificate."""
    try:
        pki = Pki.init(directory, fleet=fleet, broker_hosts=broker_host, force=force)
        pki.issue_aggregator(force=force)
    except PkiError as exc:
        raise _fail(exc) from exc
    _emit(pki.describe(), as_json)


@pki_app.command("issue")
def issue(
    box_id: str = typer.Argument(..., help="Box id: its MQTT identity and topic level."),
    directory: Path = _DIR,
    force: bool = typer.Option(False, "--force", help="Re-issue (the old key stops working)."),
    as_json: bool = _JSON,
) -> None:
    """Issue a client certificate for one box (CN = BOX_ID)."""
    try:
        files = Pki.open(directory).issue(box_id, force=force)
    except PkiError as exc:
        raise _fail(exc) from exc
    _emit({"box": box_id, "ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)},
          as_json)  # fmt: skip


@pki_app.command("issue-consumer")
def issue_consumer(
    directory: Path = _DIR,
    force: bool = typer.Option(False, "--force", help="Re-issue (the old key stops working)."),
    role: str = typer.Option(
        "alerts",
        "--role",
        help="alerts: `edgeagent alerts follow` (reads alerts); ward: a ward system that "
        "also sends signed verdicts on them (node/<box>/feedback).",
    ),
    as_json: bool = _JSON,
) -> None:
    """Issue the TLS certificate of an alert consumer (CN = its role: alerts or ward)."""
    try:
        files = Pki.open(directory).issue_consumer(force=force, role=role)
    except PkiError as exc:
        raise _fail(exc) from exc
    _emit({"consumer": role, "ca": str(files.ca), "cert": str(files.cert),
           "key": str(files.key)}, as_json)  # fmt: skip


@pki_app.command("issue-intake")
def issue_intake(
    worker: int = typer.Argument(..., min=0, max=MAX_INTAKE_WORKERS - 1, help="Worker number."),
    directory: Path = _DIR,
    force: bool = typer.Option(False, "--force", help="Re-issue (the old key stops working)."),
    as_json: bool = _JSON,
) -> None:
    """Issue the TLS certificate of aggregator intake worker N (CN = intake-N)."""
    try:
        files = Pki.open(directory).issue_intake(worker, force=force)
    except PkiError as exc:
        raise _fail(exc) from exc
    _emit({"worker": worker, "ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)},
          as_json)  # fmt: skip


@pki_app.command("show")
def show(directory: Path = _DIR, as_json: bool = _JSON) -> None:
    """Show the CA subject, its expiry and the issued client names."""
    try:
        doc = Pki.open(directory).describe()
    except PkiError as exc:
        raise _fail(exc) from exc
    _emit(doc, as_json)


@pki_app.command("revoke")
def revoke_box(
    box_id: str = typer.Argument(..., help="Box id to revoke."),
    directory: Path = _DIR,
    as_json: bool = _JSON,
) -> None:
    """Revoke a box: add it to revoked.txt and rewrite the CRL (crl.pem).

    Restart the broker with the new crl.pem (it refuses the box's TLS
    certificate), and copy revoked.txt to [federation] revoked_file on the
    aggregator and the boxes (they refuse its hello and its round keys).
    """
    from edgeagent.ops.revocation import revoke

    try:
        deny, crl = revoke(Pki.open(directory), box_id)
    except PkiError as exc:
        raise _fail(exc) from exc
    _emit({"revoked": box_id, "deny_list": str(deny), "crl": str(crl)}, as_json)
