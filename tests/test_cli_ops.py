"""Field-engineer CLI: config, run/status against a real daemon, doctor, serial, logs, bundle."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.cli.doctor import check_certificates, check_dbus
from edgeagent.cli.logs import AGGREGATOR_UNIT, journal_command, journald_available, unit_of
from edgeagent.ops.config import parse_config
from edgeagent.ops.pki import Pki
from tests.plugins.ops import CLI, Daemon, NotifyListener, write_toml

_register()
runner = CliRunner()


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def _checks(result: Any) -> dict[str, dict[str, str]]:
    data = json.loads(result.stdout)
    return {c["name"]: c for c in data["checks"]}


# -- config ----------------------------------------------------------------------


def test_config_validate_ok_and_show_redacts(
    ops_config_data: dict[str, Any], tmp_path: Path
) -> None:
    ops_config_data["federation"] = {"password": "hunter2", "username": "box"}
    path = write_toml(tmp_path / "c.toml", ops_config_data)
    res = cli("config", "validate", "--config", str(path), "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["ok"] is True
    res = cli("config", "validate", "-c", str(path))
    assert res.exit_code == 0 and "OK (box box-0001" in res.stdout
    for extra in ([], ["--json"]):
        res = cli("config", "show", "-c", str(path), *extra)
        assert res.exit_code == 0
        assert "hunter2" not in res.stdout and "<redacted>" in res.stdout
    shown = json.loads(cli("config", "show", "-c", str(path), "--json").stdout)
    assert shown["federation"]["username"] == "box"


def test_config_validate_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nbox_id = "x y"\n[windows]\nlength_s = 5\nhop_s = 9\n[nope]\n')
    res = cli("config", "validate", "-c", str(bad), "--json")
    assert res.exit_code == 2
    errors = {e["key"]: e for e in json.loads(res.stdout)["errors"]}
    assert set(errors) == {"agent.box_id", "windows.hop_s", "nope"}
    assert errors["windows.hop_s"]["value"] == 9
    res = cli("config", "validate", "-c", str(bad))
    assert res.exit_code == 2
    assert "windows.hop_s = 9: must not exceed length_s" in res.stderr


def test_config_from_environment(ops_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEAGENT_CONFIG", str(ops_config))
    assert cli("config", "validate").exit_code == 0
    monkeypatch.setenv("EDGEAGENT_CONFIG", "/nonexistent/config.toml")
    res = cli("config", "validate")
    assert res.exit_code == 2 and "file not found" in res.stderr


# -- run + status against a real daemon subprocess ------------------------------------


def test_daemon_status_watchdog_and_clean_sigterm(daemon: Daemon, tmp_state: Path) -> None:
    res = cli("status", "-c", str(daemon.config), "--json")
    assert res.exit_code == 0, res.output
    snap = json.loads(res.stdout)
    assert snap["state"] == "running" and snap["box_id"] == "box-0001"
    assert snap["liveness"]["ok"] is True
    assert snap["watchdog_s"] == 1.0
    human = cli("status", "--socket", str(daemon.socket_path))
    assert human.exit_code == 0 and "box-0001" in human.stdout and "pipeline" in human.stdout

    # The pipeline is idle (no devices): known-idle keeps the watchdog fed.
    daemon.notify.wait_for("WATCHDOG", "1", timeout=5)
    daemon.notify.drain(1.2)
    assert daemon.notify.count("WATCHDOG", "1") >= 2

    code, out = daemon.stop(signal.SIGTERM)
    assert code == 0, out
    daemon.notify.wait_for("STOPPING", "1", timeout=5)
    assert "stopping: SIGTERM" in out
    assert not daemon.socket_path.exists()
    saved = json.loads((tmp_state / "status.json").read_text())
    assert saved["state"] == "stopped"
    assert not [p for p in tmp_state.iterdir() if p.name.endswith(".tmp")]


def test_daemon_stops_on_sigint_too(daemon: Daemon) -> None:
    code, out = daemon.stop(signal.SIGINT)
    assert code == 0, out
    assert "stopping: SIGINT" in out


def test_run_refuses_invalid_config_without_ready(
    tmp_path: Path, notify_socket: NotifyListener
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\n")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path)}
    res = subprocess.run(
        [*CLI, "run", "-c", str(bad)], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "agent.box_id" in res.stderr
    assert not any("READY" in m for m in notify_socket.drain(0.1))


def test_status_without_daemon_is_a_clear_error(ops_config: Path) -> None:
    res = cli("status", "-c", str(ops_config))
    assert res.exit_code == 1 and "is the daemon running" in res.stderr
    res = cli("status", "-c", str(ops_config), "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["ok"] is False
    assert json.loads(res.stdout)["error"]["type"] == "ControlError"


def test_status_falls_back_to_the_last_saved_snapshot_marked_stale(
    ops_config: Path, tmp_state: Path
) -> None:
    import time

    snap = {"box_id": "box-s", "state": "running", "time": time.time() - 600, "links": {},
            "counters": {"detection_windows": 3}, "degraded": []}  # fmt: skip
    (tmp_state / "status.json").write_text(json.dumps(snap))
    res = cli("status", "-c", str(ops_config), "--json")
    assert res.exit_code == 1  # nothing answers, whatever the file says
    doc = json.loads(res.stdout)
    assert doc["box_id"] == "box-s" and doc["counters"]["detection_windows"] == 3
    assert 590 < doc["stale"]["age_s"] < 700 and "daemon" in doc["stale"]["daemon_error"]
    res = cli("status", "-c", str(ops_config))
    assert "STALE" in res.stderr and "10 min ago" in res.stderr and "box-s" in res.stdout


def test_errors_are_json_under_json_and_version_flag(tmp_path: Path) -> None:
    import subprocess

    res = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("edgeagent ")
    res = cli("version", "--json")
    libs = json.loads(res.stdout)
    assert {"bleak", "numpy", "onnxruntime", "paho-mqtt", "pyserial"} <= set(libs)
    assert "?" not in libs.values() and "not installed" not in libs.values()
    res = cli("model", "show", "--state-dir", str(tmp_path / "none"), "--json")
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["type"] == "ModelError"
    res = cli("config", "validate", "-c", str(tmp_path / "missing.toml"), "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["error"]["type"] == "ConfigError"


def test_read_only_verbs_create_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    res = cli("model", "list", "--state-dir", str(state), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    res = cli("model", "list", "--state-dir", str(state))
    assert "no models registered" in res.stdout
    assert not state.exists()


# -- doctor -----------------------------------------------------------------------


def _tiny_onnx(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_doctor_all_local_checks(
    ops_config_data: dict[str, Any],
    tmp_path: Path,
    tmp_state: Path,
    serial_link: Path,
    pty_device: Any,
) -> None:
    from edgeagent.transport.outbox import Outbox

    pty_device()
    with Outbox.in_state_dir(tmp_state) as ob:
        ob.put("edgeagent/v1/f/node/box-0001/status", b"{}", retain=True)
    ops_config_data["devices"] = {
        "serial": [{"port": str(serial_link), "device_id": "tex-1", "patient": "p1"}]
    }
    ops_config_data["detection"] = {"model_path": str(_tiny_onnx(tmp_path / "m.onnx"))}
    path = write_toml(tmp_path / "c.toml", ops_config_data)
    res = cli("doctor", "-c", str(path), "--json")
    checks = _checks(res)
    assert checks["config"]["status"] == "ok"
    assert checks["serial tex-1"]["status"] == "ok"
    assert checks["outbox"]["status"] == "ok" and "1 queued" in checks["outbox"]["detail"]
    assert checks["model"]["status"] == "ok" and "x[1, 3]" in checks["model"]["detail"]
    assert checks["disk"]["status"] == "ok" and checks["state dir"]["status"] == "ok"
    assert checks["broker"]["status"] == "skip"
    assert checks["daemon"]["status"] == "warn"  # not running: informational
    failed = [n for n, c in checks.items() if c["status"] == "fail"]
    assert res.exit_code == (1 if failed else 0)
    human = cli("doctor", "-c", str(path))
    assert "edgeagent doctor" in human.stdout


def test_doctor_fails_on_real_problems(
    ops_config_data: dict[str, Any], tmp_path: Path, tmp_state: Path
) -> None:
    (tmp_state / "outbox.sqlite3").write_bytes(b"this is not a database" * 100)
    garbage = tmp_path / "bad.onnx"
    garbage.write_bytes(b"\x00garbage")
    ops_config_data["devices"] = {
        "serial": [{"port": str(tmp_path / "ttyGONE"), "device_id": "t", "patient": "p"}]
    }
    ops_config_data["detection"] = {
        "model_path": str(garbage),
        "execution_providers": ["NoSuchExecutionProvider"],
    }
    path = write_toml(tmp_path / "c.toml", ops_config_data)
    res = cli("doctor", "-c", str(path), "--json")
    assert res.exit_code == 1
    checks = _checks(res)
    assert (
        checks["serial t"]["status"] == "fail" and "does not exist" in checks["serial t"]["detail"]
    )
    assert checks["outbox"]["status"] == "fail"
    assert checks["model"]["status"] == "fail"
    assert checks["onnx providers"]["status"] == "fail"


def test_doctor_with_broken_config_fails_fast(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\n")
    res = cli("doctor", "-c", str(bad), "--json")
    assert res.exit_code == 1
    assert _checks(res)["config"]["status"] == "fail"


def _fed_config(ops_config_data: dict[str, Any], pki: Pki, box: str, port: int) -> dict[str, Any]:
    files = pki.client_files(box)
    ops_config_data["agent"]["box_id"] = box  # the certificate must name this box
    ops_config_data["federation"] = {
        "enabled": True,
        "broker_host": "localhost",
        "broker_port": port,
        "ca_file": str(files.ca),
        "cert_file": str(files.cert),
        "key_file": str(files.key),
    }
    return ops_config_data


def test_doctor_broker_tcp_tls_and_certificates(
    ops_config_data: dict[str, Any], tmp_path: Path, pki: Pki, mosquitto_broker: Any
) -> None:
    data = _fed_config(ops_config_data, pki, "box-a", mosquitto_broker.port)
    path = write_toml(tmp_path / "c.toml", data)
    checks = _checks(cli("doctor", "-c", str(path), "--json"))
    assert checks["broker tcp"]["status"] == "ok"
    assert checks["broker tls"]["status"] == "ok", checks["broker tls"]
    assert checks["cert ca"]["status"] == "ok"
    assert checks["cert client cert"]["status"] == "ok"
    assert checks["cert key"]["status"] == "ok"

    mosquitto_broker.stop()
    checks = _checks(cli("doctor", "-c", str(path), "--json"))
    assert checks["broker"]["status"] == "fail" and "TCP" in checks["broker"]["detail"]


def test_doctor_rejects_foreign_identity(
    ops_config_data: dict[str, Any],
    tmp_path: Path,
    pki: Pki,
    foreign_pki: Pki,
    mosquitto_broker: Any,
) -> None:
    data = _fed_config(ops_config_data, pki, "box-a", mosquitto_broker.port)
    data["federation"]["key_file"] = str(foreign_pki.client_files("box-a").key)
    path = write_toml(tmp_path / "c.toml", data)
    res = cli("doctor", "-c", str(path), "--json")
    assert res.exit_code == 1
    checks = _checks(res)
    assert checks["cert key"]["status"] == "fail"
    assert "does not belong" in checks["cert key"]["detail"]


def test_certificate_expiry_windows(ops_config_data: dict[str, Any], pki: Pki) -> None:
    cfg = parse_config(_fed_config(ops_config_data, pki, "box-b", 8883))
    now = dt.datetime.now(dt.UTC)
    assert {c.status for c in check_certificates(cfg, now)} == {"ok"}
    late = {c.name: c for c in check_certificates(cfg, now + dt.timedelta(days=3651))}
    assert late["cert ca"].status == "fail" and "expired" in late["cert ca"].detail
    soon = {c.name: c for c in check_certificates(cfg, now + dt.timedelta(days=810))}
    assert (
        soon["cert client cert"].status == "warn"
        and "expires in" in soon["cert client cert"].detail
    )
    early = {c.name: c for c in check_certificates(cfg, now - dt.timedelta(days=2))}
    assert early["cert ca"].status == "fail" and "clock" in early["cert ca"].fix


def test_doctor_dbus_bus_without_bluez(
    dbus_system_bus: str, ops_config_data: dict[str, Any]
) -> None:
    cfg = parse_config(ops_config_data)
    [check] = check_dbus(cfg)
    assert check.status == "warn" and "BlueZ" in check.detail  # BLE disabled: a warning
    ops_config_data["devices"] = {"ble": {"enabled": True}}
    [check] = check_dbus(parse_config(ops_config_data))
    assert check.status == "fail"


# -- serial, logs, support bundle ---------------------------------------------------------


def test_serial_list_shows_configured_and_detected(
    ops_config_data: dict[str, Any],
    tmp_path: Path,
    serial_link: Path,
    pty_device: Any,
) -> None:
    pty_device()
    ops_config_data["devices"] = {
        "serial": [
            {"port": str(serial_link), "device_id": "tex-1", "patient": "p1"},
            {"port": str(tmp_path / "ttyGONE"), "device_id": "tex-2", "patient": "p2"},
        ]
    }
    path = write_toml(tmp_path / "c.toml", ops_config_data)
    res = cli("serial", "list", "-c", str(path), "--json")
    assert res.exit_code == 0
    rows = {r["configured_as"]: r for r in json.loads(res.stdout) if r["configured_as"]}
    assert rows["tex-1 (patient p1)"]["access"] == "rw"
    assert rows["tex-2 (patient p2)"]["access"] == "missing"
    assert rows["tex-2 (patient p2)"]["detected"] is False
    assert cli("serial", "list", "-c", str(path)).exit_code == 0


def test_logs_explains_a_missing_journal() -> None:
    problem = journald_available()
    if problem is None:
        pytest.skip("journald present here; the missing-journal path cannot be shown")
    res = cli("logs")
    assert res.exit_code == 1
    assert "journald" in res.stderr or "journalctl" in res.stderr
    assert "edgeagent run" in res.stderr


def test_journal_command_is_built_from_options() -> None:
    assert journal_command("edgeagent", 50, True, "1 hour ago", True) == [
        "journalctl", "--no-pager", "-u", "edgeagent", "-n", "50", "-o", "json",
        "-f", "--since", "1 hour ago",
    ]  # fmt: skip


def test_logs_take_the_unit_and_the_box_from_the_config(tmp_path: Path) -> None:
    box = parse_config({"agent": {"box_id": "box-3", "state_dir": str(tmp_path)}})
    agg = parse_config({"agent": {"box_id": "aggregator", "state_dir": str(tmp_path)},
                        "aggregator": {"min_boxes": 2}})  # fmt: skip
    assert unit_of(box) == "edgeagent" and unit_of(None) == "edgeagent"
    assert unit_of(agg) == AGGREGATOR_UNIT
    assert journal_command("edgeagent", 5, False, None, False, "box-3") == [
        "journalctl", "--no-pager", "-u", "edgeagent", "-n", "5", "EDGEAGENT_BOX=box-3",
        "-o", "short-iso",
    ]  # fmt: skip
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nbox_id = "no spaces allowed"\n')
    res = cli("logs", "-c", str(bad), "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["ok"] is False


def test_journal_entries_name_the_box() -> None:
    from edgeagent.cli.run import BOX_FIELD, journal_fields

    rec = logging.LogRecord("edgeagent.x", logging.INFO, __file__, 1, "hello", None, None)
    assert f"{BOX_FIELD}=box-3\n".encode() in journal_fields(rec, "hello", "box-3")
    assert BOX_FIELD.encode() not in journal_fields(rec, "hello")


def test_pki_verbs_take_the_directory_fleet_host_and_box_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every verb takes -c: the PKI directory is the one holding federation.ca_file."""
    monkeypatch.chdir(tmp_path)  # a stray ./pki would show up here
    d = tmp_path / "etc" / "pki"
    cfg = write_toml(tmp_path / "box.toml", {
        "agent": {"box_id": "box-9", "fleet": "ward7", "state_dir": str(tmp_path / "state")},
        "federation": {"enabled": True, "broker_host": "broker.ward7.example",
                       "ca_file": str(d / "ca.crt"), "cert_file": str(d / "clients/box-9.crt"),
                       "key_file": str(d / "clients/box-9.key")},
    })  # fmt: skip
    res = cli("pki", "init", "-c", str(cfg), "--json")
    assert res.exit_code == 0, res.output
    assert (d / "ca.crt").is_file() and not (tmp_path / "pki").exists()
    doc = json.loads(res.stdout)
    assert "ward7" in json.dumps(doc)
    from cryptography import x509

    san = x509.load_pem_x509_certificate((d / "broker.crt").read_bytes()).extensions
    names = san.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "broker.ward7.example" in names.get_values_for_type(x509.DNSName)
    res = cli("pki", "issue", "-c", str(cfg), "--json")  # BOX_ID from the config
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["box"] == "box-9" and (d / "clients/box-9.crt").is_file()
    assert "box-9" in cli("pki", "show", "-c", str(cfg)).stdout
    # --dir still wins; errors are JSON under --json
    res = cli("pki", "show", "--dir", str(tmp_path / "nowhere"), "-c", str(cfg), "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["ok"] is False


def test_every_verb_takes_config() -> None:
    """The field rule: every verb takes -c/--config. Not the verbs that touch no box:
    ``version``, ``import`` (converts a file into a recording) and the lab's ``demo`` and
    ``pilot`` (each builds its own fleet in a temporary directory)."""
    import typer.main

    def leaves(cmd: Any, path: tuple[str, ...]) -> Any:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from leaves(sub, (*path, name))
        else:
            yield path, cmd

    missing = [
        " ".join(path)
        for path, cmd in leaves(typer.main.get_command(app), ())
        if path not in {("version",), ("import",), ("demo",), ("pilot",)}
        and not {"-c", "--config"} <= {o for p in cmd.params for o in getattr(p, "opts", [])}
    ]
    assert not missing, f"verbs without -c/--config: {missing}"


def test_support_bundle_has_everything_but_secrets(
    ops_config_data: dict[str, Any], tmp_path: Path, daemon: Daemon
) -> None:
    ops_config_data["federation"] = {"password": "hunter2-secret", "username": "box"}
    path = write_toml(tmp_path / "c.toml", ops_config_data)
    out = tmp_path / "bundle" / "support.tar.gz"
    res = cli("support-bundle", "-o", str(out), "-c", str(path), "--json")
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout)
    assert manifest["box_id"] == "box-0001"
    assert (out.stat().st_mode & 0o077) == 0
    with tarfile.open(out) as tar:
        members = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert {
        "manifest.json",
        "config.redacted.toml",
        "config.redacted.json",
        "doctor.json",
        "versions.json",
        "status.json",
        "counters.json",
        "logs.txt",
    } <= set(members)
    assert all(b"hunter2-secret" not in blob for blob in members.values())
    status = json.loads(members["status.json"])
    assert status["source"] == "daemon" and status["status"]["state"] == "running"
    assert "pipeline_processed" in json.loads(members["counters.json"])
    assert json.loads(members["versions.json"])["edgeagent"]
    human = cli("support-bundle", "-o", str(tmp_path / "b2.tgz"), "-c", str(path))
    assert human.exit_code == 0 and "wrote" in human.stdout


def test_support_bundle_with_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\n")
    out = tmp_path / "s.tgz"
    res = cli("support-bundle", "-o", str(out), "-c", str(bad), "--json")
    assert res.exit_code == 0
    with tarfile.open(out) as tar:
        names = {Path(m.name).name for m in tar.getmembers()}
    assert "config-errors.json" in names and "config.redacted.toml" not in names


def test_journal_lines_carry_syslog_priority() -> None:
    import logging

    from edgeagent.cli.run import _JournalFormatter

    fmt = _JournalFormatter("%(name)s: %(message)s")
    rec = logging.LogRecord("edgeagent.x", logging.ERROR, __file__, 1, "bad %s", ("link",), None)
    assert fmt.format(rec) == "<3>edgeagent.x: bad link"
    rec.levelname, rec.levelno = "INFO", logging.INFO
    assert fmt.format(rec).startswith("<6>")


def test_doctor_reports_disk_pressure_with_the_free_bytes_and_set_aside_outboxes(
    ops_config_data: dict[str, Any], tmp_path: Path, tmp_state: Path
) -> None:
    from edgeagent.transport.outbox import Outbox

    Outbox.in_state_dir(tmp_state).close()
    (tmp_state / "outbox.sqlite3.corrupt-20260101T000000Z").write_bytes(b"x")
    ops_config_data["outbox"] = {"min_free_bytes": 2**62}  # any real disk is "short"
    path = write_toml(tmp_path / "c.toml", ops_config_data)
    checks = {}
    for c in json.loads(cli("doctor", "-c", str(path), "--json").stdout)["checks"]:
        checks.setdefault(c["name"], []).append(c)
    (disk,) = checks["disk"]
    assert disk["status"] == "fail" and disk["detail"].startswith("disk pressure: ")
    assert "bytes (" in disk["detail"] and f"floor {2**62}" in disk["detail"]
    statuses = {c["status"] for c in checks["outbox"]}
    assert statuses == {"warn", "ok"}  # sound file, one set aside


def _error_with_traceback() -> logging.LogRecord:
    import sys

    try:
        raise ValueError("broken frame")
    except ValueError:
        exc = sys.exc_info()
    return logging.LogRecord("edgeagent.x", logging.ERROR, __file__, 7, "failed", (), exc)


def test_tracebacks_keep_their_priority_on_every_line() -> None:
    from edgeagent.cli.run import _JournalFormatter

    lines = _JournalFormatter("%(name)s: %(message)s").format(_error_with_traceback())
    assert len(lines.splitlines()) > 3 and all(x.startswith("<3>") for x in lines.splitlines())


def test_journal_handler_sends_structured_entries(short_dir: Path) -> None:
    import socket

    from edgeagent.cli.run import JournalHandler

    path = short_dir / "journal.sock"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(path))
    handler = JournalHandler(str(path))
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        handler.handle(_error_with_traceback())
        data = journal.recv(65536)
    finally:
        handler.close()
        journal.close()
    fields: dict[str, str] = {}
    while data:  # parse the native protocol back
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            k, _, v = line.partition(b"=")
            fields[k.decode()], data = v.decode(), rest
        else:
            n = int.from_bytes(rest[:8], "little")
            fields[line.decode()], data = rest[8 : 8 + n].decode(), rest[8 + n + 1 :]
    assert fields["PRIORITY"] == "3" and fields["LOGGER"] == "edgeagent.x"
    assert fields["SYSLOG_IDENTIFIER"] == "edgeagent" and fields["CODE_LINE"] == "7"
    assert fields["MESSAGE"].startswith("failed\nTraceback") and "broken frame" in fields["MESSAGE"]
