"""What the BLE source needs of BlueZ beyond bleak: is the bus there, connect the robust
way, close an event loop bleak ran on without leaving tasks behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["close_loop", "connect_client", "system_bus_problem"]


#: Where the D-Bus system bus listens unless ``DBUS_SYSTEM_BUS_ADDRESS`` says otherwise.
DEFAULT_SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"


def system_bus_problem(env: dict[str, str] | None = None) -> str | None:
    """Why bleak cannot reach BlueZ's bus (the socket is missing), with what to do; or None.

    Checked before scanning because bleak's own error for a missing socket is a bare
    ``FileNotFoundError`` that names neither the bus nor BlueZ.
    """
    address = (env if env is not None else os.environ).get(
        "DBUS_SYSTEM_BUS_ADDRESS", DEFAULT_SYSTEM_BUS
    )
    for part in address.split(";"):
        kind, _, params = part.partition(":")
        opts = dict(kv.split("=", 1) for kv in params.split(",") if "=" in kv)
        if kind == "unix" and "path" in opts and not os.path.exists(opts["path"]):
            return (
                f"no D-Bus system bus socket at {opts['path']}: BLE needs the system bus and "
                "BlueZ (Debian/Raspberry Pi OS: apt-get install dbus bluez, then "
                "systemctl start dbus bluetooth)"
            )
    return None


#: Tries inside one establish_connection call; our RetryPolicy paces the calls themselves.
CONNECT_ATTEMPTS = 2


async def connect_client(
    client_class: Any,
    dev: Any,
    name: str,
    on_disconnect: Callable[[Any], None],
    timeout_s: float,
) -> Any:
    """Connect through bleak-retry-connector's ``establish_connection``.

    Why not ``BleakClient.connect`` alone: on BlueZ a device that dropped may still be
    "connected" in bluetoothd (a stale connection the next connect trips over) and its
    cached GATT database may be stale after a firmware update. establish_connection
    disconnects stale connections first, clears BlueZ's cache after a failed service
    discovery and turns BlueZ's error strings into typed errors with advice.
    """
    from bleak_retry_connector import establish_connection

    return await establish_connection(
        client_class,
        dev,
        name,
        disconnected_callback=on_disconnect,
        max_attempts=CONNECT_ATTEMPTS,
        timeout=timeout_s,
    )


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close an event loop bleak ran on, in order, leaving no task pending.

    bleak keeps one BlueZ manager per loop, with a D-Bus connection and a task that
    waits for it to drop. Closing the loop under them leaves that task pending
    ("Task was destroyed but it is pending!" at exit) and the manager in bleak's
    table. So: our tasks are already done; disconnect the manager's bus and let its
    monitor finish, cancel whatever is left, then shut the loop down.
    """
    try:
        from bleak.backends.bluezdbus import manager as bluez
    except ImportError:  # another platform's backend: nothing of BlueZ's to close
        bluez = None  # type: ignore[assignment]
    mgr = bluez._global_instances.pop(loop, None) if bluez is not None else None
    bus = getattr(mgr, "_bus", None)
    if bus is not None:
        with contextlib.suppress(Exception):
            bus.disconnect()
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if pending:  # the monitor ends on the disconnect; give it a moment
            loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    except Exception:
        log.debug("closing the BLE event loop", exc_info=True)
    finally:
        loop.close()
