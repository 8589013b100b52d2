"""Whole serial path on real ptys: physiology -> device framing + faults -> pty ->
SerialSource -> Windower, with exact accounting against the device's ledger."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeagent.pipeline.windows import Window, Windower
from edgeagent.sources.retry import RetryPolicy
from edgeagent.sources.serial import SerialSource
from edgeagent.streams import Gap, SampleBlock, Stream
from firmware_sim.physiology import Generator, SimConfig, make_patient
from firmware_sim.serialdev import FaultConfig, PtyDevice

STREAMS = ("ecg", "acc", "skin_temp", "env", "hr", "rr")
DURATION_S = 90.0


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_faulty_link_exact_accounting_and_reconnect(tmp_path: Path) -> None:
    link = tmp_path / "ttyTEXTILE0"
    faults = FaultConfig(
        bit_flip=0.01,
        drop_byte=0.005,
        dup_byte=0.005,
        cut_short=0.005,
        garbage=0.01,
        dup_frame=0.01,
        vanish_every_s=30.0,
        vanish_for_s=2.0,
        seed=11,
    )
    gen = Generator(make_patient(2, seed=5), SimConfig())
    dev = PtyDevice(link, gen, seed=7, duration_s=DURATION_S, faults=faults).start()

    windower = Windower(10.0, 2.0, patient="p2")
    blocks: list[SampleBlock] = []
    gaps: list[Gap] = []
    windows: list[Window] = []
    lock = threading.Lock()

    def on_block(b: SampleBlock) -> None:
        with lock:
            blocks.append(b)
            windower.push(b)
            windows.extend(windower.pop_ready())

    def on_gap(g: Gap) -> None:
        with lock:
            gaps.append(g)
            windower.push_gap(g)

    src = SerialSource(
        str(link),
        "textile-01",
        on_block,
        on_gap,
        retry=RetryPolicy(base_s=0.02, cap_s=0.2),
        max_skew_s=None,  # the device runs faster than real time
    )
    src.start()
    try:
        assert dev.wait_done(60.0), "device did not finish"
        assert dev.error is None
        counts = dev.ledger.counts
        expected_ok = (
            counts.get("hello_intact", 0)
            + counts.get("samples_intact", 0)
            + counts.get("heartbeat_intact", 0)
            + counts.get("duplicates_sent", 0)
        )
        assert _wait(lambda: src.counters.frames_ok >= expected_ok, 10.0), (counts, src.counters)
        time.sleep(0.2)
    finally:
        src.stop()
        dev.stop()

    c = src.counters
    led = dev.ledger
    # Faults really happened, of every kind asked for.
    for kind in ("bit_flip", "drop_byte", "dup_byte", "cut_short"):
        assert counts.get(f"fault_{kind}", 0) > 0, kind
    assert counts["garbage_bursts"] > 0 and counts["duplicates_sent"] > 0
    assert counts["vanishes"] == 2

    # Every packet that left intact was decoded once; nothing else was.
    assert c.frames_ok == expected_ok
    # Every sample sent in an intact frame arrived exactly once, bit for bit, in order.
    for s in STREAMS:
        got = [b for b in blocks if b.stream == s]
        assert sum(len(b) for b in got) == led.n_samples(s), s
        if got:
            np.testing.assert_array_equal(np.concatenate([b.values for b in got]), led.samples(s))
            t = np.concatenate([b.t for b in got])
            assert np.all(np.diff(t) > 0), f"{s} agent time not increasing"
    assert c.samples_ok == sum(led.n_samples(s) for s in STREAMS)
    # Every lost sample frame between delivered ones shows up as missing; duplicates dropped.
    assert c.frames_missing == sum(led.missing_between(s) for s in STREAMS)
    assert c.duplicates == counts["duplicates_sent"]
    # Every directly corrupted packet was rejected and counted (a flip can split one in two).
    direct = sum(counts.get(f"fault_{k}", 0) for k in ("bit_flip", "drop_byte", "dup_byte"))
    assert c.bad_crc + c.malformed >= direct + counts["fault_cut_short"]
    assert c.bytes_dropped > 0 and c.resyncs > 0
    # The port vanished twice and came back twice; each outage is a device-wide gap.
    assert c.reconnects == 2
    link_gaps = [g for g in gaps if g.reason == "link down"]
    assert len(link_gaps) == 2 and all(g.stream is None and g.end > g.start for g in link_gaps)
    per_stream = [g for g in gaps if g.stream is not None]
    assert len(per_stream) == c.seq_gaps

    # The windower got it all in order and shows the outages.
    windows.extend(windower.flush())
    wc = windower.counters
    assert wc.samples_in == c.samples_ok
    assert wc.nonfinite == wc.duplicate == wc.out_of_order == 0
    assert len(windows) >= int((DURATION_S - 10.0) / 2.0) - 2
    hit = [w for w in windows if any(g.reason == "link down" for g in w.gaps)]
    assert hit, "no window reports the link-down gap"
    assert min(w.coverage[Stream.ECG] for w in hit) < 0.95
    # ECG coverage matches the reported gaps: what is missing is what the gaps say.
    for w in windows:
        spans = sorted((g.start, g.end) for g in w.gaps if g.stream in (None, Stream.ECG))
        union, cur_a, cur_b = 0.0, None, None
        for a, b in spans:
            if cur_b is None or a > cur_b:
                union += 0.0 if cur_b is None or cur_a is None else cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        if cur_a is not None and cur_b is not None:
            union += cur_b - cur_a
        assert abs(w.coverage[Stream.ECG] - (1.0 - union / w.length)) < 0.02, w.start
