"""Local control socket: the running daemon answers ``edgeagent status``.

Protocol: the client connects to an AF_UNIX stream socket, sends one JSON
object on one line (``{"cmd": "status"}``) and reads one JSON line back
(``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``). One
request per connection keeps both sides trivial and stateless. Requests are
size-capped and time-bounded so a stuck or hostile local client cannot wedge
the daemon; a bad request gets an error reply and a counter, never a crash.
The socket file is created 0660 so only root and the service's group can ask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeagent.errors import ControlError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
# A local client that has not sent its line by then is gone or misbehaving.
CLIENT_TIMEOUT_S = 2.0

Handler = Callable[[Mapping[str, Any]], Any]


class ControlServer:
    """Serves registered commands on a unix socket from one background thread.

    Handlers run on the server thread one at a time; they must be quick (read
    a snapshot, not compute one from scratch).
    """

    def __init__(self, path: str | Path, handlers: Mapping[str, Handler]) -> None:
        self.path = Path(path)
        self.handlers: dict[str, Handler] = dict(handlers)
        self.handlers.setdefault("ping", lambda _req: "pong")
        self.handlers.setdefault("commands", lambda _req: sorted(self.handlers))
        self.requests = 0
        self.rejected = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Bind (replacing a stale socket file, refusing a live one) and start serving."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                raise ControlError(str(self.path), "another daemon is already listening here")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o117)  # socket file 0660 from birth: no window with wider rights
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise ControlError(str(self.path), f"cannot bind: {exc.strerror}") from exc
        finally:
            os.umask(old_umask)
        sock.listen(8)
        sock.settimeout(0.2)  # lets the loop notice stop() without a wake-up pipe
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and remove the socket file (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_TIMEOUT_S)
        try:
            line = _read_line(conn)
        except (OSError, ValueError) as exc:
            self.rejected += 1
            _reply(conn, {"ok": False, "error": f"bad request: {exc}"})
            return
        reply = self.dispatch(line)
        _reply(conn, reply)

    def dispatch(self, line: bytes) -> dict[str, Any]:
        """Decode one request line and run its handler (pure apart from the handler)."""
        self.requests += 1
        try:
            req = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.rejected += 1
            return {"ok": False, "error": "bad request: not JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            self.rejected += 1
            return {"ok": False, "error": 'bad request: expected {"cmd": "<name>"}'}
        handler = self.handlers.get(req["cmd"])
        if handler is None:
            self.rejected += 1
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown command {req['cmd']!r}; known: {known}"}
        try:
            return {"ok": True, "result": handler(req)}
        except Exception as exc:  # a handler bug must not kill the control thread
            log.exception("control command %s failed", req["cmd"])
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _read_line(conn: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST_BYTES:
            raise ValueError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    if not buf:
        raise ValueError("empty request")
    return bytes(buf.split(b"\n", 1)[0])


def _reply(conn: socket.socket, obj: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(obj, default=str).encode() + b"\n")


def daemon_listening(path: str | Path) -> bool:
    """True when something accepts connections on the control socket (a daemon runs)."""
    return _alive(Path(path))


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def request(path: str | Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """Ask the daemon one command; returns its result or raises ControlError saying why."""
    p = str(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        try:
            s.connect(p)
        except FileNotFoundError:
            raise ControlError(
                p, "no such socket; is the daemon running? (systemctl status edgeagent)"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                p, "connection refused; the daemon is not running (stale socket)"
            ) from None
        except PermissionError:
            raise ControlError(
                p, "permission denied; run as root or a member of the service's group"
            ) from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise ControlError(p, f"no answer within {timeout:g} s; the daemon may be stuck") from None
    except OSError as exc:
        raise ControlError(p, f"socket error: {exc.strerror or exc}") from None
    finally:
        s.close()
    try:
        reply = json.loads(buf)
    except json.JSONDecodeError:
        raise ControlError(p, "the daemon sent a malformed reply") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        err = reply.get("error", "unknown error") if isinstance(reply, dict) else "malformed reply"
        raise ControlError(p, str(err))
    return reply.get("result")
