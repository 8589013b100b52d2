"""``edgeagent doctor``: everything a field engineer checks first, in one command.

Each check is a small function returning a :class:`Check` (ok / warn / fail /
skip with a one-line detail and, on trouble, the fix). Checks never raise:
an unexpected exception becomes a failed check naming it. Exit code is 1 when
any check failed, so ``doctor`` can gate scripts and the support bundle.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import shutil
import socket
import sqlite3
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, JSON_OPTION, default_config_path, echo_json
from edgeagent.daemon.telemetry import outbox_stats_from
from edgeagent.errors import ConfigError, ControlError
from edgeagent.ops.config import Config, load_config

# A certificate expiring sooner than this is a warning: renewal takes a visit.
CERT_WARN_DAYS = 30
# Below these the outbox and model store cannot keep a day of data on a Pi.
DISK_FAIL_BYTES = 100 * 2**20
DISK_WARN_BYTES = 500 * 2**20
# No real box runs before this; an earlier clock means no RTC and no NTP yet.
CLOCK_FLOOR = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
NET_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Check:
    """One doctor verdict."""

    name: str
    status: str  # "ok" | "warn" | "fail" | "skip"
    detail: str
    fix: str = ""


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "warn", detail, fix)


def _fail(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "fail", detail, fix)


def _skip(name: str, detail: str) -> Check:
    return Check(name, "skip", detail)


# -- individual checks ------------------------------------------------------------


def check_dbus(cfg: Config) -> list[Check]:
    """The system bus answers and BlueZ (org.bluez) is on it."""
    name = "dbus/bluez"
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
    try:
        from dbus_fast import BusType, Message
        from dbus_fast.aio import MessageBus
    except ImportError:
        return [_fail(name, "dbus-fast is not installed", "pip install dbus-fast")]

    async def probe() -> bool:
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        try:
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=["org.bluez"],
                )
            )
            return bool(reply.body and reply.body[0])
        finally:
            bus.disconnect()

    try:
        has_bluez = asyncio.run(asyncio.wait_for(probe(), NET_TIMEOUT_S))
    except Exception as exc:
        level = _fail if cfg.devices.ble.enabled else _warn
        return [
            level(
                name,
                f"system bus {address} unreachable: {type(exc).__name__}: {exc}",
                "start dbus (systemctl start dbus) or check DBUS_SYSTEM_BUS_ADDRESS",
            )
        ]
    if has_bluez:
        return [_ok(name, f"system bus reachable, org.bluez present ({address})")]
    level = _fail if cfg.devices.ble.enabled else _warn
    return [
        level(
            name,
            "system bus reachable but BlueZ (org.bluez) is not running",
            "systemctl start bluetooth",
        )
    ]


def check_serial(cfg: Config) -> list[Check]:
    """Every configured serial port exists, is a character device and is read/writable."""
    if not cfg.devices.serial:
        return [_skip("serial", "no serial devices configured")]
    out = []
    for dev in cfg.devices.serial:
        name = f"serial {dev.device_id}"
        p = Path(dev.port)
        try:
            st = p.stat()
        except FileNotFoundError:
            out.append(
                _fail(
                    name, f"{p} does not exist", "plug the device in; check `edgeagent serial list`"
                )
            )
            continue
        except OSError as exc:
            out.append(_fail(name, f"{p}: {exc.strerror}"))
            continue
        if not stat.S_ISCHR(st.st_mode):
            out.append(_fail(name, f"{p} is not a character device", "point port at /dev/tty*"))
        elif not os.access(p, os.R_OK | os.W_OK):
            out.append(
                _fail(
                    name,
                    f"{p} is not readable and writable by uid {os.getuid()}",
                    "add the service user to group dialout (SupplementaryGroups=dialout)",
                )
            )
        else:
            out.append(_ok(name, f"{p} read/write OK"))
    return out


def _load_cert(path: Path) -> Any:
    from cryptography import x509

    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def check_certificates(cfg: Config, now: dt.datetime | None = None) -> list[Check]:
    """CA and client certificate parse, are valid now, not expiring soon; key matches cert."""
    fed = cfg.federation
    files = [("ca", fed.ca_file), ("client cert", fed.cert_file)]
    if all(p is None for _, p in files):
        return [_skip("certificates", "no TLS files configured")]
    now = now or dt.datetime.now(dt.UTC)
    out: list[Check] = []
    for what, path in files:
        if path is None:
            continue
        name = f"cert {what}"
        try:
            cert = _load_cert(path)
        except FileNotFoundError:
            out.append(_fail(name, f"{path} does not exist", "install the fleet PKI files"))
            continue
        except (OSError, ValueError) as exc:
            out.append(_fail(name, f"{path} is not a certificate: {exc}"))
            continue
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        left = (end - now).days
        subject = cert.subject.rfc4514_string()
        if now < start:
            out.append(
                _fail(
                    name,
                    f"{subject} not valid before {start:%Y-%m-%d} (clock is {now:%Y-%m-%d})",
                    "fix the clock (NTP) or reissue",
                )
            )
        elif now > end:
            out.append(_fail(name, f"{subject} expired {end:%Y-%m-%d}", "reissue the certificate"))
        elif left < CERT_WARN_DAYS:
            out.append(_warn(name, f"{subject} expires in {left} days", "plan a reissue"))
        else:
            out.append(_ok(name, f"{subject} valid until {end:%Y-%m-%d} ({left} days)"))
    if fed.cert_file is not None and fed.key_file is not None:
        out.append(_check_key_matches(fed.cert_file, fed.key_file, cfg))
    if fed.cert_file is not None and fed.cert_file.is_file():
        from edgeagent.cli.config import identity_problem

        problem = identity_problem(cfg)
        if problem is not None:
            out.append(_fail("cert identity", problem.problem, "issue or install the right one"))
        elif fed.enabled:
            out.append(_ok("cert identity", f"certificate CN is {cfg.agent.box_id!r}"))
    if not fed.enabled:  # not used yet: report, but do not fail the box for it
        out = [
            Check(c.name, "warn", c.detail + " (federation disabled)", c.fix)
            if c.status == "fail"
            else c
            for c in out
        ]
    return out


def _check_key_matches(cert_path: Path, key_path: Path, cfg: Config) -> Check:
    from cryptography.hazmat.primitives import serialization

    name = "cert key"
    pw = cfg.federation.key_password
    try:
        key = serialization.load_pem_private_key(
            key_path.read_bytes(), password=pw.get_secret_value().encode() if pw else None
        )
        cert = _load_cert(cert_path)
    except FileNotFoundError as exc:
        return _fail(name, f"{exc.filename} does not exist")
    except PermissionError:
        return _fail(name, f"{key_path} not readable", "chmod 0640 and group-own by the service")
    except (OSError, ValueError, TypeError) as exc:
        return _fail(name, f"{key_path}: {exc}", "check key_file and key_password")
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, fmt) != cert.public_key().public_bytes(enc, fmt):
        return _fail(name, f"{key_path} does not belong to {cert_path}", "install the matching key")
    return _ok(name, "private key matches the client certificate")


def check_broker(cfg: Config) -> list[Check]:
    """TCP connect to the broker, then (if tls) a full TLS handshake with our identity."""
    fed = cfg.federation
    if not fed.enabled:
        return [_skip("broker", "federation disabled")]
    name = "broker"
    target = f"{fed.broker_host}:{fed.broker_port}"
    t0 = time.monotonic()
    try:
        raw = socket.create_connection((fed.broker_host, fed.broker_port), timeout=NET_TIMEOUT_S)
    except OSError as exc:
        return [
            _fail(
                name,
                f"TCP {target}: {exc.strerror or exc}",
                "check network, DNS and firewall",
            )
        ]
    tcp_ms = (time.monotonic() - t0) * 1000
    checks = [_ok("broker tcp", f"TCP {target} connected in {tcp_ms:.0f} ms")]
    if not fed.tls:
        raw.close()
        checks.append(_warn("broker tls", "tls = false: traffic is not encrypted", "enable TLS"))
        return checks
    try:
        ctx = ssl.create_default_context(cafile=str(fed.ca_file) if fed.ca_file else None)
        if fed.cert_file and fed.key_file:
            pw = fed.key_password.get_secret_value() if fed.key_password else None
            ctx.load_cert_chain(str(fed.cert_file), str(fed.key_file), password=pw)
        with ctx.wrap_socket(raw, server_hostname=fed.broker_host) as tls:
            tls.settimeout(NET_TIMEOUT_S)
            version = tls.version()
            peer = tls.getpeercert() or {}
        checks.append(
            _ok(
                "broker tls",
                f"TLS handshake OK ({version}), broker cert until {peer.get('notAfter')}",
            )
        )
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        checks.append(
            _fail(
                "broker tls",
                f"TLS handshake with {target} failed: {exc}",
                "check ca_file/cert_file/key_file and the clock",
            )
        )
    return checks


def check_clock(now: dt.datetime | None = None) -> list[Check]:
    """The clock is plausible and, when systemd-timesyncd tells us, synchronised."""
    now = now or dt.datetime.now(dt.UTC)
    if now < CLOCK_FLOOR:
        return [
            _fail(
                "clock",
                f"system time {now:%Y-%m-%d %H:%M} UTC is before {CLOCK_FLOOR:%Y-%m-%d}",
                "enable NTP (timedatectl set-ntp true) or fit an RTC",
            )
        ]
    if Path("/run/systemd/timesync/synchronized").exists():
        return [_ok("clock", f"{now:%Y-%m-%d %H:%M:%S} UTC, NTP synchronised")]
    return [
        _warn(
            "clock",
            f"{now:%Y-%m-%d %H:%M:%S} UTC; NTP synchronisation not confirmed",
            "timedatectl set-ntp true (certificates and timestamps depend on it)",
        )
    ]


def _existing_parent(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(cfg: Config) -> list[Check]:
    """Free space under the state directory against the daemon's floor, and that it is writable."""
    from edgeagent.ops.disk import RESERVE_NAME, check_writable

    sd = cfg.agent.state_dir
    base = _existing_parent(sd)
    usage = shutil.disk_usage(base)
    floor = cfg.outbox.min_free_bytes
    reserve = sd / RESERVE_NAME
    held = reserve.stat().st_size if reserve.exists() else 0
    detail = (
        f"{usage.free} bytes ({usage.free / 2**20:.0f} MiB) free of "
        f"{usage.total / 2**30:.1f} GiB at {base}; floor {floor}, reserve held {held}"
    )
    out: list[Check] = []
    if usage.free < floor:
        out.append(_fail("disk", f"disk pressure: {detail}",
                         "free space: below the floor only alerts are stored"))  # fmt: skip
    elif usage.free < DISK_FAIL_BYTES:
        out.append(_fail("disk", detail, "free space: purge old logs or outbox"))
    elif usage.free < DISK_WARN_BYTES:
        out.append(_warn("disk", detail, "free space soon"))
    else:
        out.append(_ok("disk", detail))
    if not sd.exists():
        out.append(_warn("state dir", f"{sd} does not exist yet", "systemd creates it on start"))
        return out
    why = check_writable(sd, "state directory")
    if why is not None:
        out.append(_fail("state dir", why))
    else:
        out.append(_ok("state dir", f"{sd} writable"))
    return out


def check_outbox(cfg: Config) -> list[Check]:
    """The store-and-forward database is sound; reports depth and drops."""
    from edgeagent.ops import dbcheck

    path = cfg.agent.state_dir / "outbox.sqlite3"
    if not path.exists():
        return [_skip("outbox", f"no outbox yet at {path}")]
    moved = sorted(path.parent.glob(path.name + ".corrupt-*"))
    aside = [_warn("outbox", f"{len(moved)} corrupt file(s) set aside, newest {moved[-1].name}",
                   "keep for analysis or delete")] if moved else []  # fmt: skip
    verdict = dbcheck.check(path)
    if not verdict.ok:
        fix = "the daemon moves it aside and salvages it at its next start"
        return [*aside, _fail("outbox", f"{path}: {verdict.reason}", fix)]
    try:
        from edgeagent.transport.outbox import Outbox
    except ImportError:
        Outbox = None
    try:
        if Outbox is not None:
            ob = Outbox(path)
            try:
                verdict = ob.integrity_check()
                stats = ob.stats()
            finally:
                ob.close()
            ob_stats = outbox_stats_from(stats)
            detail = f"{ob_stats.depth} queued, {ob_stats.bytes} bytes, {ob_stats.dropped} dropped"
        else:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            try:
                verdict = str(db.execute("PRAGMA quick_check").fetchone()[0])
            finally:
                db.close()
            detail = f"{path.stat().st_size} bytes"
    except Exception as exc:
        return [_fail("outbox", f"{path}: {exc}", "move the file aside; the agent recreates it")]
    if verdict != "ok":
        return [*aside, _fail("outbox", f"integrity check: {verdict}", "move the file aside")]
    return [*aside, _ok("outbox", f"integrity ok; {detail}")]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model(cfg: Config) -> list[Check]:
    """The model to run loads in onnxruntime with the configured providers; registry hash ok."""
    import onnxruntime as ort

    from edgeagent.providers import choose_from_config, open_session

    out: list[Check] = []
    available = set(ort.get_available_providers())
    missing = [p for p in cfg.detection.execution_providers if p not in available]
    if missing:
        out.append(
            _fail(
                "onnx providers",
                f"{missing} not available (have {sorted(available)})",
                "install the matching onnxruntime build or use CPUExecutionProvider",
            )
        )
    choice = choose_from_config(cfg.detection, cfg.agent.state_dir, tuple(available))
    gpu_fix = "install the GPU onnxruntime build (docs/operations.md) or list only CPU"
    if choice.fell_back:
        out.append(_warn("inference backend", choice.reason, gpu_fix))
    else:
        out.append(_ok("inference backend", choice.reason))
    data: bytes | None = None
    label = ""
    registry_db = cfg.agent.state_dir / "models.sqlite"
    # The daemon runs the registry's active model; detection.model_path only seeds an
    # empty registry. Check the same model, and say what the daemon falls back to.
    if registry_db.exists():
        try:
            data, label, problem = _registry_model(cfg)
        except Exception as exc:
            return [*out, _fail("model", f"registry: {type(exc).__name__}: {exc}")]
        if problem is not None:
            out.append(_fail("model", problem, "edgeagent model activate <good version>"))
            if data is None:
                return out
    if data is None and cfg.detection.model_path is not None:
        p = cfg.detection.model_path
        try:
            data = p.read_bytes()
        except OSError as exc:
            return [*out, _fail("model", f"{p}: {exc.strerror}", "fix detection.model_path")]
        label = f"{p} sha256 {_sha256(p)[:12]}"
    if data is None:
        return [*out, _warn("model", "no model configured or registered yet")]
    try:
        sess, applied = open_session(data, choice)
        inputs = ", ".join(f"{i.name}{i.shape}" for i in sess.get_inputs())
    except Exception as exc:
        return [*out, _fail("model", f"{label}: onnxruntime cannot load it: {exc}")]
    out.append(_ok("model", f"{label} loads; inputs {inputs}"))
    if applied != choice:  # onnxruntime dropped a provider when the session started
        out.append(_warn("inference backend", applied.reason, gpu_fix))
    return out


def _registry_model(cfg: Config) -> tuple[bytes | None, str, str | None]:
    """(bytes, label, problem) of the model the daemon would load from the registry,
    without changing the registry: the active one, or the fallback it would take."""
    from edgeagent.model.registry import ModelRegistry
    from edgeagent.pipeline.lifecycle import fallback_sources, model_problem

    reg = ModelRegistry(cfg.agent.state_dir)
    rec = reg.active()
    if rec is None:
        return None, "", None
    problem = model_problem(reg, rec)
    if problem is None:
        verdict = reg.verify(rec.version)
        if not verdict.get("ok"):
            return None, rec.label, f"{rec.label}: {verdict.get('error')}"
        return reg.load_bytes(rec), f"{rec.label} (signature {verdict.get('signature')})", None
    why = f"active model {rec.label} cannot run ({problem}); the daemon falls back to "
    prev = reg.last_good(exclude=rec.version)
    if prev is not None and model_problem(reg, prev) is None:
        return reg.load_bytes(prev), f"fallback {prev.label}", why + f"{prev.label}"
    for path in fallback_sources(cfg.detection.model_path):
        return path.read_bytes(), f"fallback {path}", why + str(path)
    return None, rec.label, why + "nothing: no intact model anywhere"


def check_daemon(cfg: Config) -> list[Check]:
    """Is a daemon answering on the control socket (informational)."""
    from edgeagent.daemon.control import request

    try:
        snap = request(cfg.control.socket_path, "status", timeout=NET_TIMEOUT_S)
    except ControlError as exc:
        return [_warn("daemon", exc.problem)]
    live = (snap or {}).get("liveness") or {}
    if live and not live.get("ok", True):
        return [_fail("daemon", f"running but {live.get('summary')}", "see `edgeagent logs`")]
    degraded = (snap or {}).get("degraded") or []
    if degraded:
        return [_fail("daemon", "running but degraded: " + "; ".join(degraded), "see the detail")]
    return [_ok("daemon", f"running, state {snap.get('state')}, {live.get('summary', '')}")]


CHECKS: list[tuple[str, Callable[[Config], list[Check]]]] = [
    ("clock", lambda _c: check_clock()),
    ("disk", check_disk),
    ("serial", check_serial),
    ("dbus", check_dbus),
    ("certificates", check_certificates),
    ("broker", check_broker),
    ("outbox", check_outbox),
    ("model", check_model),
    ("daemon", check_daemon),
]


def run_checks(config: Path | None, on_step: Callable[[str], None] | None = None) -> list[Check]:
    """Run every check; a broken config is itself a failed check (others then skip)."""
    path = config or default_config_path()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return [
            _fail("config", str(exc), f"edgeagent config validate --config {path}"),
            *check_clock(),
        ]
    results = [_ok("config", f"{path} valid")]
    for label, fn in CHECKS:
        if on_step:
            on_step(label)
        try:
            results.extend(fn(cfg))
        except Exception as exc:  # a doctor must not die of what it diagnoses
            results.append(_fail(label, f"check crashed: {type(exc).__name__}: {exc}"))
    return results


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


@app.command()
def doctor(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check D-Bus/BlueZ, serial permissions, broker TCP+TLS, certificates, clock,
    disk, outbox and model; exit 1 if anything failed."""
    if as_json:
        results = run_checks(config)
    else:
        err = Console(stderr=True)
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("checking", total=len(CHECKS))

            def step(label: str) -> None:
                progress.update(task, advance=1, description=f"checking {label}")

            results = run_checks(config, step)
    failed = [r for r in results if r.status == "fail"]
    if as_json:
        echo_json({"ok": not failed, "checks": [asdict(r) for r in results]})
    else:
        t = Table(title="edgeagent doctor")
        for col in ("check", "status", "detail", "fix"):
            t.add_column(col, overflow="fold")
        for r in results:
            t.add_row(r.name, f"[{_STYLE[r.status]}]{r.status}[/]", r.detail, r.fix)
        Console().print(t)
    if failed:
        raise typer.Exit(1)
