"""A box whose certificate names another box, against the real broker and daemon.

The broker takes the certificate's CN as the box's identity, so every publish
under ``node/<box_id>/`` is refused (PUBACK 0x87). Config validate and doctor
must say so before start, and the running daemon must keep what it cannot
deliver, report itself degraded and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.outbox import Outbox
from edgelab.broker import Broker
from tests.plugins.ops import CLI, NotifyListener, write_toml


def _config(data: dict[str, Any], pki: Pki, broker: Broker, box: str, cert_of: str) -> dict:
    own, other = pki.client_files(box), pki.client_files(cert_of)
    data["agent"]["box_id"] = box
    data["agent"]["fleet"] = "testfleet"
    data["federation"] = {
        "enabled": True,
        "broker_host": broker.host,
        "broker_port": broker.port,
        "ca_file": str(own.ca),
        "cert_file": str(other.cert),
        "key_file": str(other.key),
    }
    return data


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_validate_and_doctor_refuse_a_certificate_of_another_box(
    ops_config_data: dict[str, Any], tmp_path: Path, pki: Pki, mosquitto_broker: Broker
) -> None:
    wrong = _config(ops_config_data, pki, mosquitto_broker, "box-a", "box-b")
    path = write_toml(tmp_path / "c.toml", wrong)
    res = _cli("config", "validate", "-c", str(path), "--json")
    assert res.returncode == 2, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["errors"][0]["key"] == "federation.cert_file"
    assert "'box-b'" in doc["errors"][0]["problem"] and "'box-a'" in doc["errors"][0]["problem"]
    res = _cli("doctor", "-c", str(path), "--json")
    assert res.returncode == 1
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["cert identity"]["status"] == "fail"
    assert checks["broker tls"]["status"] == "ok"  # the handshake alone cannot tell

    right = _config(ops_config_data, pki, mosquitto_broker, "box-a", "box-a")
    good = write_toml(tmp_path / "g.toml", right)
    assert _cli("config", "validate", "-c", str(good)).returncode == 0


def test_daemon_keeps_refused_messages_and_reports_degraded(
    ops_config_data: dict[str, Any],
    tmp_path: Path,
    tmp_state: Path,
    pki: Pki,
    mosquitto_broker: Broker,
    notify_socket: NotifyListener,
) -> None:
    data = _config(ops_config_data, pki, mosquitto_broker, "box-a", "box-b")
    path = write_toml(tmp_path / "c.toml", data)
    ob = Outbox.in_state_dir(tmp_state)
    ob.put(topics.alert("testfleet", "box-a"), b'{"alert": 1}', "alert", msg_id="a-1")
    ob.close()
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_socket.path))
    proc = subprocess.Popen([*CLI, "run", "-c", str(path)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        notify_socket.wait_for("READY", "1", timeout=20.0)
        deadline = time.monotonic() + 20
        snap: dict[str, Any] = {}
        while time.monotonic() < deadline:
            res = _cli("status", "-c", str(path), "--json")
            snap = json.loads(res.stdout) if res.returncode == 0 else {}
            if snap.get("degraded"):
                break
            time.sleep(0.5)
        assert snap.get("degraded"), snap
        assert "0x87" in snap["degraded"][0] and "box_id" in snap["degraded"][0]
        assert snap["counters"]["outbox_rejected"] == 0
        assert snap["counters"]["outbox_refused_kept"] >= 1
        checks = {c["name"]: c for c in json.loads(_cli("doctor", "-c", str(path), "--json")
                                                   .stdout)["checks"]}  # fmt: skip
        assert checks["daemon"]["status"] == "fail" and "degraded" in checks["daemon"]["detail"]
        stats = json.loads(_cli("outbox", "stats", "-c", str(path), "--json").stdout)
        assert stats["by_kind"]["alert"]["rows"] == 1  # accepted data is never deleted
        assert not any(k.startswith("rejected") for k in stats["counters"]), stats["counters"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "not authorised" in out
