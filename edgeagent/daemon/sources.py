"""The sensor sources as daemon components: one per configured serial port, one BLE manager.

The sources themselves (``edgeagent.sources``) know nothing of the daemon; these wrappers
put their blocks on the bus and their link state into liveness and status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

from edgeagent.daemon.components import ORDER_SOURCE, Component, Context
from edgeagent.daemon.health import Liveness
from edgeagent.streams import Gap, SampleBlock

log = logging.getLogger(__name__)


class SerialComponent:
    """Adapts a ``SerialSource`` (sources/serial.py) to the Component protocol.

    Liveness: each block is progress. While the reader thread runs, a link
    that is connecting, backing off, open-but-silent or given up is *known
    idle*: restarting the daemon would not make a device talk, and the state
    is shown per link in the status. A reader thread that died without
    reaching ``stopped``/``failed`` stops reporting, so the watchdog fires.
    """

    order = ORDER_SOURCE

    def __init__(self, source: Any, device_id: str, patient: str, liveness: Liveness) -> None:
        self.source = source
        self.device_id = device_id
        self.patient = patient
        self.name = f"serial:{device_id}"
        self.liveness = liveness

    def on_block(self) -> None:
        self.liveness.progress(self.name)

    def start(self) -> None:
        self.source.start()

    def tick(self) -> None:
        state = str(getattr(self.source, "state", "unknown"))
        if state in ("stopped", "failed") or self.source.alive:
            note = "link open, no data" if state == "open" else f"link {state}"
            self.liveness.idle(self.name, note)

    def stop(self) -> None:
        self.source.stop()

    def status(self) -> Mapping[str, Any]:
        counters = getattr(self.source, "counters", None)
        err = getattr(self.source, "last_error", None)
        return {
            "links": {
                self.device_id: {
                    "kind": "serial",
                    "patient": self.patient,
                    "port": getattr(self.source, "port", None),
                    "state": str(getattr(self.source, "state", "unknown")),
                    "last_error": str(err) if err is not None else None,
                    "counters": counters.as_dict() if counters is not None else {},
                }
            }
        }


class BleComponent:
    """Adapts the ``BleSource`` (sources/ble.py, one for every wearable) to a Component.

    Blocks and gaps of configured wearables are relabelled from the BLE
    address to the configured ``device_id``, so everything downstream sees
    the same ids as in the config and status. Liveness: each block is
    progress; every tick schedules an idle report *on the source's own event
    loop*, so a wedged loop (not just a dead thread) stops the watchdog,
    while searching for or reconnecting to absent wearables is known idle.
    """

    name = "ble"
    order = ORDER_SOURCE

    def __init__(self, liveness: Liveness, ids: Mapping[str, str]) -> None:
        self.liveness = liveness
        self.ids = {a.upper(): d for a, d in ids.items()}
        self.source: Any = None
        self._stopping = False

    def relabel(self, item: SampleBlock | Gap) -> SampleBlock | Gap:
        device_id = self.ids.get(item.device.upper())
        if device_id is None:
            return item
        if isinstance(item, SampleBlock):
            return SampleBlock(device_id, item.stream, item.t, item.values, item.seq)
        return dataclasses.replace(item, device=device_id)

    def start(self) -> None:
        self.source.start()

    def tick(self) -> None:
        loop = self.source.loop
        state = str(getattr(self.source, "state", "unknown"))
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.liveness.idle, self.name, f"ble {state}")
        elif self._stopping:
            self.liveness.idle(self.name, "stopped")

    def stop(self) -> None:
        self._stopping = True
        self.source.stop()

    def status(self) -> Mapping[str, Any]:
        links: dict[str, Any] = {}
        for addr, info in dict(getattr(self.source, "links", {})).items():
            counters = self.source.counters.get(addr)
            links[self.ids.get(addr.upper(), addr)] = {
                "kind": "ble",
                **info.as_dict(),
                "counters": counters.as_dict() if counters is not None else {},
            }
        return {"links": links}


def ble_device_filter(ble: Any) -> dict[str, Any]:
    """DeviceFilter arguments from ``[devices.ble]``: allow-list (or the configured
    addresses), name prefixes as one anchored pattern, advertised services."""
    addresses = set(ble.allow) or {d.address for d in ble.device}
    pattern = (
        "^(?:" + "|".join(re.escape(p) for p in ble.name_prefixes) + ")"
        if ble.name_prefixes
        else None
    )
    return {
        "addresses": frozenset(addresses),
        "name_pattern": pattern,
        "service_uuids": frozenset(ble.service_uuids),
    }


def serial_factory(ctx: Context) -> list[Component]:
    """One SerialComponent per ``[[devices.serial]]`` once sources/serial.py exists."""
    if not ctx.config.devices.serial:
        return []
    try:
        from edgeagent.sources.serial import SerialSource
    except ImportError as exc:
        log.warning("serial devices configured but serial sources are unavailable: %s", exc)
        ctx.counters.add("serial_unavailable", len(ctx.config.devices.serial))
        return []
    out: list[Component] = []
    stall = ctx.config.status.stall_after_s
    for dev in ctx.config.devices.serial:
        holder: dict[str, SerialComponent] = {}

        def on_block(block: SampleBlock, _h: dict[str, SerialComponent] = holder) -> None:
            ctx.bus.put(block)
            _h["c"].on_block()

        source = SerialSource(
            dev.port, dev.device_id, on_block=on_block, on_gap=ctx.bus.put, baudrate=dev.baudrate
        )
        comp = SerialComponent(source, dev.device_id, dev.patient, ctx.liveness)
        holder["c"] = comp
        ctx.liveness.register(comp.name, stall)
        out.append(comp)
    return out


def ble_factory(ctx: Context) -> list[Component]:
    """One BleComponent when ``[devices.ble] enabled = true``."""
    ble = ctx.config.devices.ble
    if not ble.enabled:
        return []
    try:
        from edgeagent.sources.ble import BleSource, DeviceFilter
    except ImportError as exc:
        log.warning("BLE enabled but BLE sources are unavailable: %s", exc)
        ctx.counters.add("ble_unavailable")
        return []
    comp = BleComponent(ctx.liveness, {d.address: d.device_id for d in ble.device})

    def on_block(block: SampleBlock) -> None:
        ctx.bus.put(comp.relabel(block))
        ctx.liveness.progress(comp.name)

    def on_gap(gap: Gap) -> None:
        ctx.bus.put(comp.relabel(gap))

    comp.source = BleSource(
        DeviceFilter(**ble_device_filter(ble)),
        on_block,
        on_gap,
        scan_s=min(ble.scan_timeout_s, 5.0),
    )
    ctx.liveness.register(comp.name, ctx.config.status.stall_after_s)
    return [comp]
