"""Control socket: real AF_UNIX server and client, bad requests answered, never fatal."""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.daemon.control import MAX_REQUEST_BYTES, ControlServer, request
from edgeagent.errors import ControlError


@pytest.fixture
def server(short_dir: Path) -> Iterator[ControlServer]:
    calls: list[Any] = []

    def boom(_req: Any) -> None:
        raise RuntimeError("handler bug")

    srv = ControlServer(
        short_dir / "ctl.sock",
        {"status": lambda req: {"state": "running", "n": len(calls)}, "boom": boom},
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _raw(path: Path, payload: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(4096):
            buf += chunk
        return buf
    finally:
        s.close()


def test_status_round_trip(server: ControlServer) -> None:
    assert request(server.path, "status") == {"state": "running", "n": 0}
    assert request(server.path, "ping") == "pong"
    assert "status" in request(server.path, "commands")
    assert server.requests == 3


def test_socket_file_is_not_world_accessible(server: ControlServer) -> None:
    mode = stat.S_IMODE(server.path.stat().st_mode)
    assert mode & 0o007 == 0


def test_unknown_command_and_handler_errors_are_replies(server: ControlServer) -> None:
    with pytest.raises(ControlError, match="unknown command 'nope'"):
        request(server.path, "nope")
    with pytest.raises(ControlError, match="RuntimeError: handler bug"):
        request(server.path, "boom")
    assert request(server.path, "ping") == "pong"  # still serving


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"not json\n", b"not JSON"),
        (b"[1, 2]\n", b"expected"),
        (b'{"cmd": 5}\n', b"expected"),
        (b"\n", b"not JSON"),
        (b"", b"empty request"),
        (b"x" * (MAX_REQUEST_BYTES + 10), b"larger than"),
    ],
)
def test_malformed_requests_are_rejected_and_counted(
    server: ControlServer, payload: bytes, words: bytes
) -> None:
    reply = _raw(server.path, payload)
    assert b'"ok": false' in reply and words in reply
    assert server.rejected == 1
    assert request(server.path, "ping") == "pong"


def test_client_errors_say_what_to_do(short_dir: Path) -> None:
    with pytest.raises(ControlError, match="is the daemon running"):
        request(short_dir / "absent.sock", "status")
    stale = short_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # socket file left behind, nobody listening
    with pytest.raises(ControlError, match="not running"):
        request(stale, "status")


def test_client_times_out_on_a_stuck_daemon(short_dir: Path) -> None:
    path = short_dir / "stuck.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)  # accepts into the backlog but never answers
    try:
        with pytest.raises(ControlError, match="no answer within"):
            request(path, "status", timeout=0.3)
    finally:
        s.close()


def test_stale_socket_is_replaced_and_live_one_refused(short_dir: Path) -> None:
    path = short_dir / "ctl.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    first = ControlServer(path, {})
    first.start()
    try:
        assert request(path, "ping") == "pong"
        second = ControlServer(path, {})
        with pytest.raises(ControlError, match="already listening"):
            second.start()
        assert request(path, "ping") == "pong"
    finally:
        first.stop()
    assert not path.exists()
    first.stop()  # idempotent
