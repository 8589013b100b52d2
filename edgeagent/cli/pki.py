"""``edgeagent pki``: create the fleet CA, the broker certificate and box certificates.

Field set-up runs ``pki init`` once on a trusted machine and ``pki issue BOX``
per box, then copies ``ca.crt`` + ``clients/BOX.{crt,key}`` to the box. Tests
and the demo use the same code (:mod:`edgeagent.ops.pki`).

Like every verb, these take ``-c/--config``: the PKI directory is the one that
holds the config's ``federation.ca_file`` (the layout ``pki`` writes, and the
example config names), ``init`` takes the fleet and the broker's host name from
it and ``issue`` the box id. ``--dir`` and the arguments override it; without
either, ``./pki`` (a PKI machine need not hold any box's config).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, config_if_any, fail
from edgeagent.cli.human import human
from edgeagent.errors import PkiError
from edgeagent.ops.config import Config
from edgeagent.ops.pki import DEFAULT_BROKER_HOSTS, MAX_INTAKE_WORKERS, Pki

pki_app = typer.Typer(help="Fleet PKI: CA, broker and per-box certificates.", no_args_is_help=True)
app.add_typer(pki_app, name="pki")

_DIR = typer.Option(
    None,
    "--dir",
    help="PKI directory (created by init). Default: the directory of the config's "
    "federation.ca_file, else ./pki.",
    show_default=False,
)
_JSON = typer.Option(False, "--json", help="Print JSON.")
#: Without --dir and without a config that names federation.ca_file.
DEFAULT_DIR = Path("pki")


def pki_dir(directory: Path | None, cfg: Config | None) -> Path:
    """``--dir``, else the directory holding the config's CA certificate, else ./pki."""
    if directory is not None:
        return directory
    if cfg is not None and cfg.federation.ca_file is not None:
        return cfg.federation.ca_file.parent
    return DEFAULT_DIR


def _open(directory: Path | None, config: Path | None, as_json: bool) -> Pki:
    return Pki.open(pki_dir(directory, config_if_any(config, as_json)))


def _emit(doc: dict[str, object], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for k, v in doc.items():
            typer.echo(f"{k:14} {human(v)}")


@pki_app.command("init")
def init(
    directory: Path | None = _DIR,
    config: Path | None = CONFIG_OPTION,
    fleet: str | None = typer.Option(
        None, help="Fleet name, recorded in the CA subject. Default: agent.fleet, else default."
    ),
    broker_host: list[str] | None = typer.Option(  # noqa: B008
        None,
        "--broker-host",
        help="Names/IPs the broker is reached by. Default: localhost, 127.0.0.1, ::1 and the "
        "config's federation.broker_host.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA (locks out boxes)."),
    as_json: bool = _JSON,
) -> None:
    """Create the fleet CA, the broker certificate and the aggregator's certificate."""
    cfg = config_if_any(config, as_json)
    hosts = list(broker_host or DEFAULT_BROKER_HOSTS)
    if not broker_host and cfg is not None and cfg.federation.broker_host not in hosts:
        hosts.append(cfg.federation.broker_host)
    fleet = fleet or (cfg.agent.fleet if cfg is not None else "default")
    try:
        pki = Pki.init(pki_dir(directory, cfg), fleet=fleet, broker_hosts=hosts, force=force)
        pki.issue_aggregator(force=force)
    except PkiError as exc:
        raise fail(exc, as_json) from exc
    _emit(pki.describe(), as_json)


@pki_app.command("issue")
def issue(
    box_id: str | None = typer.Argument(
        None, help="Box id: its MQTT identity and topic level. Default: the config's box_id."
    ),
    directory: Path | None = _DIR,
    config: Path | None = CONFIG_OPTION,
    force: bool = typer.Option(False, "--force", help="Re-issue (the old key stops working)."),
    as_json: bool = _JSON,
) -> None:
    """Issue a client certificate for one box (CN = BOX_ID)."""
    cfg = config_if_any(config, as_json)
    if box_id is None:
        if cfg is None:
            raise fail(PkiError("name the box (BOX_ID) or give its config (-c)"), as_json)
        box_id = cfg.agent.box_id
    try:
        files = Pki.open(pki_dir(directory, cfg)).issue(box_id, force=force)
    except PkiError as exc:
        raise fail(exc, as_json) from exc
    _emit({"box": box_id, "ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)},
          as_json)  # fmt: skip


@pki_app.command("issue-consumer")
def issue_consumer(
    directory: Path | None = _DIR,
    config: Path | None = CONFIG_OPTION,
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
        files = _open(directory, config, as_json).issue_consumer(force=force, role=role)
    except PkiError as exc:
        raise fail(exc, as_json) from exc
    _emit({"consumer": role, "ca": str(files.ca), "cert": str(files.cert),
           "key": str(files.key)}, as_json)  # fmt: skip


@pki_app.command("issue-intake")
def issue_intake(
    worker: int = typer.Argument(..., min=0, max=MAX_INTAKE_WORKERS - 1, help="Worker number."),
    directory: Path | None = _DIR,
    config: Path | None = CONFIG_OPTION,
    force: bool = typer.Option(False, "--force", help="Re-issue (the old key stops working)."),
    as_json: bool = _JSON,
) -> None:
    """Issue the TLS certificate of aggregator intake worker N (CN = intake-N)."""
    try:
        files = _open(directory, config, as_json).issue_intake(worker, force=force)
    except PkiError as exc:
        raise fail(exc, as_json) from exc
    _emit({"worker": worker, "ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)},
          as_json)  # fmt: skip


@pki_app.command("show")
def show(
    directory: Path | None = _DIR, config: Path | None = CONFIG_OPTION, as_json: bool = _JSON
) -> None:
    """Show the CA subject, its expiry and the issued client names."""
    try:
        doc = _open(directory, config, as_json).describe()
    except PkiError as exc:
        raise fail(exc, as_json) from exc
    _emit(doc, as_json)


@pki_app.command("revoke")
def revoke_box(
    box_id: str = typer.Argument(..., help="Box id to revoke."),
    directory: Path | None = _DIR,
    config: Path | None = CONFIG_OPTION,
    as_json: bool = _JSON,
) -> None:
    """Revoke a box: add it to revoked.txt and rewrite the CRL (crl.pem).

    Restart the broker with the new crl.pem (it refuses the box's TLS
    certificate), and copy revoked.txt to [federation] revoked_file on the
    aggregator and the boxes (they refuse its hello and its round keys).
    """
    from edgeagent.ops.revocation import revoke

    try:
        deny, crl = revoke(_open(directory, config, as_json), box_id)
    except PkiError as exc:
        raise fail(exc, as_json) from exc
    _emit({"revoked": box_id, "deny_list": str(deny), "crl": str(crl)}, as_json)
