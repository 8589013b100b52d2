"""sd_notify: message building (pure) and sending to a real datagram socket."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from edgeagent.daemon.sdnotify import (
    MAX_STATUS_CHARS,
    Notifier,
    build,
    parse,
    socket_address,
    watchdog_interval,
)
from tests.plugins.ops import NotifyListener


def test_build_orders_assignments_and_ends_with_newline() -> None:
    msg = build(ready=True, status="running 3 components", mainpid=42)
    assert msg == b"READY=1\nSTATUS=running 3 components\nMAINPID=42\n"
    assert parse(msg) == {"READY": "1", "STATUS": "running 3 components", "MAINPID": "42"}


def test_status_cannot_inject_assignments() -> None:
    msg = build(status="ok\nREADY=1\nWATCHDOG=1")
    assert parse(msg) == {"STATUS": "ok READY=1 WATCHDOG=1"}


def test_long_status_is_cut_visibly() -> None:
    msg = parse(build(status="x" * 5000))
    assert len(msg["STATUS"]) == MAX_STATUS_CHARS
    assert msg["STATUS"].endswith("...")


def test_build_rejects_empty_and_bad_keys() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build()
    with pytest.raises(ValueError, match="upper-case"):
        build(extra={"bad key": "1"})
    assert parse(build(stopping=True, extra={"X_EDGE": "1"})) == {"STOPPING": "1", "X_EDGE": "1"}


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == b"\0abc"
    with pytest.raises(ValueError):
        socket_address("relative/path")


@pytest.mark.parametrize(
    ("env", "pid", "expected"),
    [
        ({}, 1, None),
        ({"WATCHDOG_USEC": "30000000"}, 1, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 1, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, 1, None),  # meant for another pid
        ({"WATCHDOG_USEC": "0"}, 1, None),
        ({"WATCHDOG_USEC": "junk"}, 1, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], pid: int, expected: float | None) -> None:
    assert watchdog_interval(env, pid) == expected


def test_notifier_sends_to_a_real_socket(notify_socket: NotifyListener) -> None:
    n = Notifier(str(notify_socket.path))
    assert n.enabled
    assert n.ready("up")
    assert n.watchdog()
    assert n.stopping("bye")
    n.close()
    got = notify_socket.drain(0.2)
    assert got == [
        {"READY": "1", "STATUS": "up", "MAINPID": str(os.getpid())},
        {"WATCHDOG": "1"},
        {"STOPPING": "1", "STATUS": "bye"},
    ]
    assert n.sent == 3 and n.failed == 0


def test_notifier_abstract_namespace() -> None:
    name = f"edgeagent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).status("hello")
        assert parse(sock.recv(1024)) == {"STATUS": "hello"}
    finally:
        sock.close()


def test_notifier_without_systemd_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False
    assert n.sent == 0


def test_notifier_counts_failures_instead_of_raising(tmp_path: object) -> None:
    n = Notifier("/nonexistent/dir/notify.sock")
    assert n.watchdog() is False
    assert n.failed == 1
