"""Serial HIL: framing, decoding, sample accounting, gaps and reconnects on a serial link.

Each test runs on ``serial_target`` = ``sim`` (PtyDevice on a pty, exact
ledger accounting, CI) and ``hw`` (the bench's port, tolerances from the
bench; skipped with the reason when no port is described). The checks are
the shared ones in :mod:`edgelab.hil`; the simulator additionally proves
exactness against its ledger.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeagent.codecs.serial_frame import Hello
from edgeagent.sources.retry import RetryPolicy
from edgeagent.sources.serial import DEFAULT_MAX_SKEW_S, SerialSource
from edgeagent.streams import Gap, SampleBlock
from edgelab.hil import (
    LinkRun,
    SerialBench,
    Tolerances,
    check_accounting,
    check_decoding,
    check_framing,
    check_reconnect,
)
from firmware_sim.physiology import Generator, SimConfig, make_patient
from firmware_sim.serialdev import FaultConfig, Ledger, PtyDevice
from tests.plugins.hil import SerialTarget, run_replug, wait_until

pytestmark = pytest.mark.hil

RETRY = RetryPolicy(base_s=0.05, cap_s=0.5, jitter=0.5)


@dataclass
class SerialRun:
    """One HIL session's results."""

    run: LinkRun
    hello: Hello | None
    ledger: Ledger | None
    outage_since: float


def _sim_device(target: SerialTarget, faults: FaultConfig | None = None) -> PtyDevice:
    gen = Generator(make_patient(1, seed=3), SimConfig())
    return PtyDevice(
        target.bench.port,
        gen,
        device_id=target.bench.device_id or "textile-hil",
        seed=3,
        realtime=target.realtime,
        duration_s=target.bench.duration_s,
        faults=faults,
        streams=target.bench.streams,
    ).start()


def _session(target: SerialTarget, *, replug: bool = False) -> SerialRun:
    b = target.bench
    run = LinkRun(b.device_id or "hil-serial")
    lock = threading.Lock()

    def on_block(blk: SampleBlock) -> None:
        with lock:
            run.blocks.append(blk)

    def on_gap(g: Gap) -> None:
        with lock:
            run.gaps.append(g)

    dev: PtyDevice | None = None
    if target.kind == "sim":
        # A scheduled vanish in device time: deterministic, and data is lost as on a replug.
        faults = FaultConfig(vanish_every_s=b.duration_s / 2, vanish_for_s=2.0, seed=3)
        dev = _sim_device(target, faults if replug else None)
    src = SerialSource(
        b.port,
        run.device,
        on_block,
        on_gap,
        baudrate=b.baudrate,
        retry=RETRY,
        rng=random.Random(0),
        max_skew_s=None if target.fast else DEFAULT_MAX_SKEW_S,
    )
    run.counters = src.counters
    since = -math.inf
    src.start()
    try:
        if dev is not None:
            assert dev.wait_done(60.0), "simulated device did not finish"
            assert dev.error is None, dev.error
            c = dev.ledger.counts
            ok = sum(c.get(k, 0) for k in ("hello_intact", "samples_intact", "heartbeat_intact"))
            assert wait_until(lambda: src.counters.frames_ok >= ok, 10.0), (c, src.counters)
            time.sleep(0.1)
        else:
            time.sleep(b.duration_s / 2)
            if replug:
                assert b.replug_cmd is not None
                since = time.time()
                run_replug(b.replug_cmd)
                time.sleep(b.replug_down_s)
            time.sleep(b.duration_s / 2)
    finally:
        src.stop()
        if dev is not None:
            dev.stop()
    return SerialRun(run, src.device_info, dev.ledger if dev is not None else None, since)


def _stream_problems(target: SerialTarget, res: SerialRun) -> list[str]:
    b, tol = target.bench, target.tolerances
    problems = [f"framing: {p}" for p in check_framing(res.run, tol)]
    problems += [f"decoding: {p}" for p in check_decoding(res.run, b.streams)]
    rates = {s: hz for s, hz in b.rates_hz.items() if s in b.streams}
    problems += [f"accounting: {p}" for p in check_accounting(res.run, rates, tol)]
    if res.hello is None:
        problems.append("identity: no HELLO received")
    elif b.device_id is not None and res.hello.device_id != b.device_id:
        problems.append(f"identity: HELLO says {res.hello.device_id!r}, bench {b.device_id!r}")
    return problems


def _exact_against_ledger(res: SerialRun, streams: tuple[str, ...]) -> None:
    """The simulator knows what it sent: every sample arrives once, bit for bit."""
    led = res.ledger
    assert led is not None
    for s in streams:
        t, v = res.run.stream(s)
        assert len(t) == led.n_samples(s), s
        if len(t):
            np.testing.assert_array_equal(v, led.samples(s))
    c = res.run.counters
    assert c.frames_missing == sum(led.missing_between(s) for s in streams)


def test_serial_stream(serial_target: SerialTarget) -> None:
    """Framing, decoding and accounting on a clean link."""
    res = _session(serial_target)
    problems = _stream_problems(serial_target, res)
    assert not problems, "\n".join(problems)
    if serial_target.kind == "sim":
        _exact_against_ledger(res, serial_target.bench.streams)
        assert res.run.gaps == [] and res.run.counters.reconnects == 0


def test_serial_reconnect(serial_target: SerialTarget) -> None:
    """The device goes away mid-run and comes back: reconnect, outage gap, data resumes."""
    if serial_target.kind == "hw" and serial_target.bench.replug_cmd is None:
        pytest.skip("no replug_cmd in the bench's [serial] table: cannot unplug the device")
    res = _session(serial_target, replug=True)
    regular = [s for s in serial_target.bench.streams if s in serial_target.bench.rates_hz]
    problems = check_reconnect(res.run, res.outage_since, regular)
    problems += [
        f"accounting: {p}"
        for p in check_accounting(
            res.run,
            {s: serial_target.bench.rates_hz[s] for s in regular},
            Tolerances(
                serial_target.tolerances.max_bad_frame_ratio,
                1.0,  # the outage itself is loss; every second of it must be a reported gap
                serial_target.tolerances.rate_tolerance,
            ),
        )
    ]
    assert not problems, "\n".join(problems)
    if serial_target.kind == "sim":
        assert res.ledger is not None and res.ledger.counts["vanishes"] == 1
        assert res.run.counters.reconnects == 1
        _exact_against_ledger(res, serial_target.bench.streams)


def test_hardware_path_through_a_null_modem(null_modem: Any, tmp_path: Path) -> None:
    """The ``hw`` code path in CI: ``firmware_sim serve --serial`` on one real tty, the
    agent on the other end of a null modem, judged with a hardware bench's tolerances."""
    nm = null_modem()
    ledger_file = tmp_path / "ledger.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "firmware_sim",
            "serve",
            "--serial",
            str(nm.links[0]),
            "--seed",
            "4",
            "--device-id",
            "textile-nm",
            "--duration",
            "30",
            "--ledger",
            str(ledger_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        bench = SerialBench(port=str(nm.links[1]), device_id="textile-nm", duration_s=4.0)
        tol = Tolerances(bench.max_bad_frame_ratio, bench.max_loss_ratio, bench.rate_tolerance)
        target = SerialTarget("hw", bench, tol, tmp_path)
        res = _session(target)
        problems = _stream_problems(target, res)
        assert not problems, "\n".join(problems)
        proc.terminate()  # the device stops cleanly on SIGTERM and writes its ledger
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    sent = json.loads(ledger_file.read_text())
    got = sum(len(b) for b in res.run.blocks)
    # The device ran before and after the agent's 4 s: a good part arrived, never more.
    assert 0.5 * sent["sample_values_sent"] < got <= sent["sample_values_sent"], (got, sent)
