"""Stage 4: BLE chest straps on the BlueZ simulator, read through unmodified bleak."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from typing import Any

from edgelab.demo.hubs import Hub
from edgelab.demo.options import HOP_S, WINDOW_S, DemoOptions, Part

log = logging.getLogger(__name__)


class BleSkipped(Exception):
    """BLE cannot run here; the message says why (shown in the summary's parts list)."""


class BleStage:
    """Chest straps on the BlueZ simulator, read by the agent's ``BleSource`` through
    unmodified bleak over a private ``dbus-daemon`` (never the machine's system bus).

    Each hub gets one strap worn by the same patient index; its windows are
    scored by that hub's detector as a second patient record ("<patient>-strap").
    Ground truth is tracked on the serial path only (the strap's feed keeps none).
    """

    def __init__(self, hubs: list[Hub], opts: DemoOptions) -> None:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise BleSkipped("dbus-daemon is not installed (Debian: apt-get install dbus)")
        from edgeagent.pipeline.windows import Windower
        from edgeagent.sources.ble import BleSource, DeviceFilter
        from edgeagent.sources.retry import RetryPolicy
        from firmware_sim.bluez import CHEST_STRAP, BluezSim, BluezSimThread, Peripheral
        from firmware_sim.feeds import PhysiologyFeed

        self.proc = subprocess.Popen(
            [exe, "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.proc.kill()
            raise BleSkipped("dbus-daemon started but printed no bus address")
        # bleak reads the system bus address from here: point it at the private bus.
        self._old_env = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        self.sim_thread = BluezSimThread(BluezSim(bus_address=self.address))
        try:
            self.sim_thread.start()
        except BaseException:
            self.close()
            raise
        self.lock = threading.Lock()
        self.hub_of: dict[str, Hub] = {}
        self.periph: dict[str, Any] = {}
        self.windowers: dict[str, Any] = {}
        self.received: dict[str, dict[str, int]] = {}
        self.windows: dict[str, int] = {}
        self.gaps = 0
        self.events: list[str] = []
        for h in hubs:
            addr = f"C0:DE:00:00:00:{h.index + 1:02X}"
            p = Peripheral(
                addr,
                f"Polar H10 {h.name}",
                kind=CHEST_STRAP,
                feed=PhysiologyFeed(h.index + 1, seed=opts.seed),
            )
            self.sim_thread.call(self.sim_thread.sim.add, p)
            self.hub_of[addr] = h
            self.periph[addr] = p
            self.windowers[addr] = Windower(WINDOW_S, HOP_S, patient=f"{h.patient}-strap")
            self.received[addr] = {}
            self.windows[addr] = 0
        self.source = BleSource(
            DeviceFilter(addresses=frozenset(self.hub_of)),
            self._on_block,
            self._on_gap,
            self._on_event,
            retry=RetryPolicy(base_s=0.2, cap_s=1.0),
            scan_s=0.5,
            rescan_s=0.5,
            seed=opts.seed,
        )
        self.source.start()

    def _on_block(self, block: Any) -> None:
        addr = block.device.upper()
        h = self.hub_of.get(addr)
        if h is None:
            return
        with self.lock:
            r = self.received[addr]
            r[str(block.stream)] = r.get(str(block.stream), 0) + len(block)
            win = self.windowers[addr]
            win.push(block)
            ready = win.pop_ready()
            self.windows[addr] += len(ready)
        for w in ready:
            h.detector.process(w)

    def _on_gap(self, gap: Any) -> None:
        with self.lock:
            self.gaps += 1
            w = self.windowers.get(gap.device.upper())
            if w is not None:
                w.push_gap(gap)

    def _on_event(self, ev: Any) -> None:
        self.events.append(f"{ev.device} {ev.kind} {ev.detail}".strip())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Live per-strap sample totals and window counts for the progress display."""
        with self.lock:
            return {
                self.hub_of[a].name: {"received": dict(r), "windows": self.windows[a]}
                for a, r in self.received.items()
            }

    def stop(self) -> dict[str, Any]:
        """Stop the source and the simulator; return per-strap accounting."""
        with contextlib.suppress(Exception):
            self.source.stop()
        out: dict[str, Any] = {}
        for addr, p in self.periph.items():
            h = self.hub_of[addr]
            streams = {}
            for s, n in sorted(self.received[addr].items()):
                streams[s] = {"sent": len(p.sent(s)), "received": int(n)}
            counters = self.source.counters.get(addr) or self.source.counters.get(addr.lower())
            out[h.name] = {
                "device": addr,
                "patient": f"{h.patient}-strap",
                "streams": streams,
                "windows": self.windows[addr],
                "link": counters.as_dict() if counters is not None else {},
            }
        with contextlib.suppress(Exception):
            self.sim_thread.stop()
        self.close()
        return out

    def close(self) -> None:
        """Stop the private dbus-daemon and restore the bus address bleak reads."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self._old_env is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self._old_env


def start_ble(hubs: list[Hub], opts: DemoOptions) -> tuple[BleStage | None, Part]:
    """The BLE stage if it can run here, and the parts list entry saying how it ran or why not."""
    if not opts.ble:
        return None, Part("BLE wearables", False, "skipped", "--no-ble")
    try:
        ble = BleStage(hubs, opts)
    except BleSkipped as exc:
        return None, Part("BLE wearables", False, "skipped", str(exc))
    except Exception as exc:
        log.exception("BLE failed to start")
        return None, Part("BLE wearables", False, "skipped", f"failed to start: {exc}")
    how = (
        f"{opts.hubs} chest straps on the BlueZ simulator over a private "
        "dbus-daemon, read through unmodified bleak (wall-clock pace)"
    )
    return ble, Part("BLE wearables", True, "real", how)
