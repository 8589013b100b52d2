"""BLE HIL: the same framing, decoding, accounting and reconnect checks on a BLE link.

``ble_target`` = ``sim``: unmodified bleak against the BlueZ-compatible
simulator on a private D-Bus (exact against the peripheral's ledger);
``hw``: the bench's wearable through the host's real BlueZ (a strap, or
``python -m firmware_sim serve --ble usb:0`` on a second box), skipped with
the reason when no address is described.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from edgeagent.sources.ble import BleSource, DeviceFilter, LinkEvent
from edgeagent.sources.retry import RetryPolicy
from edgeagent.streams import Gap, LinkCounters, SampleBlock
from edgelab.hil import (
    LinkRun,
    Tolerances,
    check_accounting,
    check_decoding,
    check_framing,
    check_reconnect,
)
from tests.plugins.hil import BleTarget, run_replug, wait_until

pytestmark = pytest.mark.hil

RETRY = RetryPolicy(base_s=0.1, cap_s=1.0, jitter=0.5)


@dataclass
class BleRun:
    """One BLE HIL session's results."""

    run: LinkRun
    events: list[LinkEvent]
    sent: dict[str, int] | None  # simulator: samples it sent per stream
    outage_since: float


def _session(target: BleTarget, request: pytest.FixtureRequest, *, replug: bool = False) -> BleRun:
    b = target.bench
    addr = b.address
    sim: Any = None
    periph: Any = None
    if target.kind == "sim":
        from firmware_sim.bluez import CHEST_STRAP, Peripheral
        from firmware_sim.feeds import PhysiologyFeed

        sim = request.getfixturevalue("bluez_sim")
        periph = Peripheral(addr, "EA-strap-hil", kind=CHEST_STRAP, feed=PhysiologyFeed(1, seed=3))
        sim.call(sim.sim.add, periph)
    run = LinkRun(addr)
    events: list[LinkEvent] = []
    lock = threading.Lock()

    def on_block(blk: SampleBlock) -> None:
        with lock:
            run.blocks.append(blk)

    def on_gap(g: Gap) -> None:
        with lock:
            run.gaps.append(g)

    src = BleSource(
        DeviceFilter(addresses=frozenset({addr})),
        on_block,
        on_gap,
        events.append,
        retry=RETRY,
        scan_s=0.5 if sim is not None else 3.0,
        rescan_s=0.5 if sim is not None else 2.0,
        seed=1,
    )
    since = -math.inf
    sent: dict[str, int] | None = None
    src.start()
    try:
        streaming = wait_until(lambda: run.n("ecg") > 0, b.connect_timeout_s, 0.05)
        assert streaming, f"no ECG from {addr} within {b.connect_timeout_s} s: {events[-5:]}"
        time.sleep(b.duration_s / 2)
        if replug:
            since = time.time()
            if sim is not None:
                sim.run(sim.sim.vanish(addr, b.replug_down_s), timeout=b.replug_down_s + 10)
            else:
                assert b.replug_cmd is not None
                run_replug(b.replug_cmd)
                time.sleep(b.replug_down_s)
            n0 = run.n("ecg")
            assert wait_until(lambda: run.n("ecg") > n0, b.connect_timeout_s, 0.05), events[-5:]
        time.sleep(b.duration_s / 2)
        if sim is not None:
            # Freeze the device (its samples stop being sent), then wait for the last ones.
            sim.call(setattr, periph.faults, "stalled_until", math.inf)
            sent = {s: len(sim.call(periph.sent, s)) for s in ("ecg", "acc", "hr", "rr")}
            assert wait_until(lambda: all(run.n(s) >= sent[s] for s in sent), 5.0), (sent, run)
    finally:
        src.stop()
    run.counters = src.counters.get(addr, LinkCounters())
    return BleRun(run, events, sent, since)


def _problems(target: BleTarget, res: BleRun) -> list[str]:
    tol = target.tolerances
    out = [f"framing: {p}" for p in check_framing(res.run, tol)]
    out += [f"decoding: {p}" for p in check_decoding(res.run, target.streams)]
    out += [f"accounting: {p}" for p in check_accounting(res.run, target.rates_hz, tol)]
    malformed = [e for e in res.events if e.kind == "malformed"]
    if malformed and tol.max_bad_frame_ratio == 0.0:
        out.append(f"framing: malformed notifications {malformed[:3]}")
    return out


def _exact(res: BleRun) -> None:
    assert res.sent is not None
    for s, n in res.sent.items():
        assert res.run.n(s) == n, (s, res.run.n(s), n)
    assert res.run.counters.duplicates == 0


def test_ble_stream(ble_target: BleTarget, request: pytest.FixtureRequest) -> None:
    """Connect, subscribe, stream: framing, decoding, accounting."""
    res = _session(ble_target, request)
    problems = _problems(ble_target, res)
    assert not problems, "\n".join(problems)
    kinds = [e.kind for e in res.events]
    assert "connected" in kinds and "subscribed" in kinds
    if ble_target.kind == "sim":
        _exact(res)
        assert res.run.gaps == [] and res.run.counters.reconnects == 0
        t, _ = res.run.stream("ecg")
        assert np.all(np.diff(t) > 0)


def test_ble_reconnect(ble_target: BleTarget, request: pytest.FixtureRequest) -> None:
    """The wearable leaves range and comes back: reconnect, gaps for the outage, data resumes."""
    if ble_target.kind == "hw" and ble_target.bench.replug_cmd is None:
        pytest.skip("no replug_cmd in the bench's [ble] table: cannot take the wearable away")
    res = _session(ble_target, request, replug=True)
    regular = list(ble_target.rates_hz)
    problems = check_reconnect(res.run, res.outage_since, regular)
    lenient = Tolerances(0.0, 1.0, ble_target.tolerances.rate_tolerance)
    problems += [
        f"accounting: {p}" for p in check_accounting(res.run, ble_target.rates_hz, lenient)
    ]
    assert not problems, "\n".join(problems)
    if ble_target.kind == "sim":
        _exact(res)
        assert res.run.counters.reconnects == 1
        outage = [g for g in res.run.gaps if g.reason == "disconnected"]
        assert {str(g.stream) for g in outage} >= {"ecg", "acc"}
        assert all(g.end - g.start >= ble_target.bench.replug_down_s * 0.9 for g in outage)
