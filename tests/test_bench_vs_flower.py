"""bench/vs_flower.py's own parts: Flower's TLS material, per-process accounting."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

from tests.plugins.ops import REPO

sys.path.insert(0, str(REPO / "bench"))
import vs_flower


def test_tls_material_serves_a_handshake_to_127_0_0_1(tmp_path: Path) -> None:
    tls = vs_flower.make_tls(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls["cert"], tls["key"])
    client_ctx = ssl.create_default_context(cafile=str(tls["ca"]))  # hostname checked
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def serve() -> None:
            conn, _ = srv.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"ok")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with (
            socket.create_connection(srv.getsockname(), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c,
        ):
            assert c.recv(2) == b"ok"
        t.join(5)


def test_monitor_lists_every_process_of_a_tree_under_its_label() -> None:
    code = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', " \
           "'import time; time.sleep(3)']); time.sleep(3); p.wait()"  # fmt: skip
    root = subprocess.Popen([sys.executable, "-c", code, "--box"])
    try:
        mon = vs_flower.TreeMonitor({"c0": root.pid}).start()
        threading.Event().wait(1.5)
        mon.stop()
    finally:
        root.wait(10)
    rows = {r["process"]: r for r in mon.processes(["c0"])}
    assert rows["edgeagent box"]["count"] == 1  # the root, labelled by its --box argument
    child = [r for k, r in rows.items() if k != "edgeagent box"]
    assert len(child) == 1 and child[0]["count"] == 1 and child[0]["peak_rss_mb_max"] > 1
    assert mon.peak["c0"] >= sum(r["peak_rss_mb_max"] for r in rows.values()) * 2**20 * 0.9


def test_patched_setting_shortens_only_the_3_s_polls(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(vs_flower.SITECUSTOMIZE)
    code = ("import time; t = time.monotonic(); time.sleep(3); a = time.monotonic() - t; "
            "t = time.monotonic(); time.sleep(0.3); print(a, time.monotonic() - t)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path)}, check=True, timeout=30)  # fmt: skip
    three, short = map(float, out.stdout.split())
    assert three < 1.0 and short >= 0.3
