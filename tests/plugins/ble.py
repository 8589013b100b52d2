"""Fixtures for the BLE tests: the BlueZ simulator on a private bus, and a BleSource on it.

``bluez_sim`` needs ``dbus_system_bus`` (tests/conftest.py), so bleak's real
BlueZ backend talks to our simulator through a real dbus-daemon; nothing in
bleak is patched. Everything started here is stopped at teardown.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edgeagent.sources.ble import BleSource, DeviceFilter, LinkEvent
from edgeagent.sources.retry import RetryPolicy
from edgeagent.streams import Gap, SampleBlock
from firmware_sim.bluez import BluezSim, BluezSimThread

# Tests reconnect fast; production uses the default ladder.
BLE_FAST_RETRY = RetryPolicy(base_s=0.1, cap_s=0.5, jitter=0.5)


class _PendingTasks(logging.Handler):
    """Collects asyncio's "Task was destroyed but it is pending!" reports."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "Task was destroyed but it is pending" in msg:
            self.seen.append(msg.splitlines()[-1][:300])


@pytest.fixture
def bluez_sim(dbus_system_bus: str) -> Iterator[BluezSimThread]:
    """A running BlueZ-compatible simulator owning org.bluez on the private bus.

    Fails the test when it leaves a pending asyncio task behind (bleak's bus monitor
    included): everything the test opened on an event loop must be closed in order.
    """
    pending = _PendingTasks()
    logging.getLogger("asyncio").addHandler(pending)
    th = BluezSimThread(BluezSim(bus_address=dbus_system_bus))
    th.start()
    try:
        yield th
    finally:
        th.stop()
        gc.collect()  # destroyed tasks are reported when collected
        logging.getLogger("asyncio").removeHandler(pending)
    assert not pending.seen, f"tasks left pending: {pending.seen}"


class BleCollected:
    """Everything a BleSource delivered, in arrival order."""

    def __init__(self) -> None:
        self.blocks: list[SampleBlock] = []
        self.gaps: list[Gap] = []
        self.events: list[LinkEvent] = []

    def n(self, device: str, stream: str) -> int:
        """Samples received for one device and stream."""
        return sum(len(b) for b in self.blocks if b.device == device and b.stream == stream)

    def kinds(self, device: str) -> list[str]:
        """Event kinds seen for a device."""
        return [e.kind for e in self.events if e.device == device]

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``pred`` until true or ``timeout`` (bounded waiting for async links)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return pred()


@pytest.fixture
def ble_source(
    bluez_sim: BluezSimThread,
) -> Iterator[Callable[..., tuple[BleSource, BleCollected]]]:
    """Factory: ``ble_source(filter=None, **kwargs)`` starts a BleSource collecting into lists."""
    started: list[BleSource] = []

    def make(
        device_filter: DeviceFilter | None = None, **kwargs: Any
    ) -> tuple[BleSource, BleCollected]:
        got = BleCollected()
        kwargs.setdefault("retry", BLE_FAST_RETRY)
        kwargs.setdefault("scan_s", 0.5)
        kwargs.setdefault("rescan_s", 0.5)
        kwargs.setdefault("seed", 1)
        src = BleSource(
            device_filter or DeviceFilter(),
            got.blocks.append,
            got.gaps.append,
            got.events.append,
            **kwargs,
        )
        src.start()
        started.append(src)
        return src, got

    yield make
    for s in started:
        s.stop()
