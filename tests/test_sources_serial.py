"""FrameMapper (pure clock/seq logic) and SerialSource (thread, port, backoff) on real ptys."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeagent.codecs.serial_frame import Heartbeat, Hello, SampleFrame
from edgeagent.errors import SourceError
from edgeagent.sources.retry import RetryPolicy
from edgeagent.sources.serial import MAX_SLEW, FrameMapper, SerialSource
from edgeagent.streams import Gap, SampleBlock, Stream
from firmware_sim.serialdev import PtyDevice
from tests.plugins.serial import Collected

NOW = 1_700_000_000.0
MS = 1_000_000


def _ecg(seq: int, t0_ns: int, n: int = 50, period: int = 4 * MS) -> SampleFrame:
    vals = np.arange(n, dtype=np.float32).reshape(n, 1) + seq
    return SampleFrame(seq, Stream.ECG, t0_ns, period, vals)


def _blocks(items: list[SampleBlock | Gap]) -> list[SampleBlock]:
    return [i for i in items if isinstance(i, SampleBlock)]


def _gaps(items: list[SampleBlock | Gap]) -> list[Gap]:
    return [i for i in items if isinstance(i, Gap)]


def test_first_frame_anchors_last_sample_at_arrival() -> None:
    m = FrameMapper("d1")
    (block,) = _blocks(m.feed(_ecg(0, 10**9), NOW))
    assert block.device == "d1" and block.stream is Stream.ECG and block.seq == 0
    assert block.t[-1] == pytest.approx(NOW)
    # float64 epoch seconds resolve ~0.24 us at 1.7e9 s.
    np.testing.assert_allclose(np.diff(block.t), 0.004, atol=1e-6)
    assert m.counters.samples_ok == 50 and m.counters.extra["clock_anchors"] == 1


def test_next_frame_continues_on_the_same_grid() -> None:
    m = FrameMapper("d1")
    a = _blocks(m.feed(_ecg(0, 0), NOW))[0]
    b = _blocks(m.feed(_ecg(1, 200 * MS), NOW + 0.3))[0]
    assert b.t[0] - a.t[-1] == pytest.approx(0.004, abs=1e-6)


def test_duplicate_frame_is_not_delivered_twice() -> None:
    m = FrameMapper("d1")
    m.feed(_ecg(0, 0), NOW)
    assert m.feed(_ecg(0, 0), NOW + 0.01) == []
    assert m.counters.duplicates == 1 and m.counters.samples_ok == 50


def test_seq_gap_reports_stream_gap_and_counts() -> None:
    m = FrameMapper("d1")
    a = _blocks(m.feed(_ecg(0, 0), NOW))[0]
    out = m.feed(_ecg(3, 600 * MS), NOW + 0.6)
    (gap,) = _gaps(out)
    (b,) = _blocks(out)
    assert gap.stream is Stream.ECG and gap.reason == "2 frame(s) lost"
    assert gap.start == pytest.approx(a.t[-1]) and gap.end == pytest.approx(b.t[0])
    assert (m.counters.seq_gaps, m.counters.frames_missing) == (1, 2)
    assert out.index(gap) < out.index(b)  # gap first, so windows see it before the data


def test_link_down_gap_covers_the_outage() -> None:
    m = FrameMapper("d1")
    a = _blocks(m.feed(_ecg(0, 0), NOW))[0]
    m.link_down(NOW + 0.1)
    out = m.feed(_ecg(1, 200 * MS), NOW + 2.0)
    (gap,) = _gaps(out)
    assert gap.stream is None and gap.reason == "link down"
    assert gap.start == pytest.approx(a.t[-1]) and gap.end == pytest.approx(_blocks(out)[0].t[0])
    assert m.feed(_ecg(2, 400 * MS), NOW + 2.2) != [] and not _gaps(m.feed(_ecg(3, 600 * MS), NOW))


def test_new_boot_id_resets_anchor_and_sequence() -> None:
    m = FrameMapper("d1")
    m.feed(Hello(0, 1, 111, "fw", "dev", (Stream.ECG,)), NOW)
    m.feed(_ecg(40, 50 * 10**9), NOW)
    out = m.feed(Hello(0, 1, 222, "fw", "dev", (Stream.ECG,)), NOW + 5)
    (gap,) = _gaps(out)
    assert gap.stream is None and gap.reason == "device restarted"
    # After the restart device time starts again near zero: not a duplicate.
    (block,) = _blocks(m.feed(_ecg(0, 10**9), NOW + 6))
    assert block.t[-1] == pytest.approx(NOW + 6)
    assert m.counters.extra["device_restarts"] == 1 and m.counters.duplicates == 0


def test_clock_going_back_without_hello_is_a_restart() -> None:
    m = FrameMapper("d1")
    m.feed(_ecg(40, 100 * 10**9), NOW)
    out = m.feed(_ecg(0, 2 * 10**9), NOW + 1)
    assert [g.reason for g in _gaps(out)] == ["device clock went back (restart)"]
    assert len(_blocks(out)) == 1


def test_heartbeat_with_other_boot_means_restart() -> None:
    m = FrameMapper("d1")
    m.feed(Heartbeat(0, 5, 7), NOW)
    m.feed(_ecg(0, 0), NOW)
    assert _gaps(m.feed(Heartbeat(1, 6, 8), NOW + 1))
    assert m.counters.extra["heartbeats"] == 2


@pytest.mark.parametrize("rate", [1.01, 0.99])
def test_drift_is_slewed_and_time_stays_monotonic(rate: float) -> None:
    m = FrameMapper("d1", max_skew_s=0.5)
    last = -np.inf
    lags = []
    for k in range(3000):  # 600 s of device time, agent clock runs at `rate`
        device_t = k * 0.2
        now = NOW + (device_t + 0.2) * rate
        (block,) = _blocks(m.feed(_ecg(k & 0xFFFF, int(device_t * 1e9)), now))
        assert block.t[0] > last
        gaps = np.diff(block.t)
        assert np.all(gaps > 0)
        last = block.t[-1]
        lags.append(now - block.t[-1])
    assert m.counters.extra["clock_slews"] > 0
    # 1 % drift exceeds the 500 ppm slew, so the lag grows, but only by the difference.
    max_growth = (abs(rate - 1) - MAX_SLEW) * 600 + 0.5 + 0.01
    assert abs(lags[-1]) <= max_growth
    assert abs(lags[-1]) > 0.5


def test_no_slewing_when_disabled() -> None:
    m = FrameMapper("d1", max_skew_s=None)
    m.feed(_ecg(0, 0), NOW)
    m.feed(_ecg(1, 200 * MS), NOW + 100)
    assert "clock_slews" not in m.counters.extra


# ----------------------------------------------------------------- SerialSource on ptys

SourceFactory = Callable[..., tuple[SerialSource, Collected]]
DeviceFactory = Callable[..., PtyDevice]


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_source_reads_device_and_stops_promptly(
    pty_device: DeviceFactory, serial_source: SourceFactory
) -> None:
    dev = pty_device(seed=1, realtime=True)
    src, got = serial_source()
    assert _wait(lambda: got.n("ecg") >= 100)
    assert src.state == "open"
    assert src.device_info is not None and src.device_info.device_id == "textile-01"
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 1.0
    assert src.state == "stopped"
    assert dev.error is None


def test_realtime_device_maps_to_wall_clock(
    pty_device: DeviceFactory, serial_source: SourceFactory
) -> None:
    pty_device(seed=3, realtime=True)
    _, got = serial_source(max_skew_s=2.0)
    assert _wait(lambda: got.n("ecg") >= 250)
    newest = max(b.t[-1] for b in got.blocks)
    assert abs(time.time() - newest) < 0.5


def test_missing_port_backs_off_until_it_appears(
    serial_link: Path, pty_device: DeviceFactory, serial_source: SourceFactory
) -> None:
    src, got = serial_source()
    assert _wait(lambda: src.state == "backoff")
    assert isinstance(src.last_error, FileNotFoundError | OSError)
    pty_device(seed=1)
    assert _wait(lambda: got.n("acc") > 0)
    assert src.state == "open" and src.counters.reconnects == 0


def test_backoff_state_stops_promptly(serial_source: SourceFactory) -> None:
    src, _ = serial_source(retry=RetryPolicy(base_s=5.0, cap_s=5.0))
    assert _wait(lambda: src.state == "backoff")
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 1.0


def test_directory_is_given_up_with_advice(tmp_path: Path, serial_source: SourceFactory) -> None:
    src, _ = serial_source(port=tmp_path)
    assert _wait(lambda: src.state == "failed")
    assert isinstance(src.last_error, SourceError)
    assert src.last_error.advice


def test_give_up_after_policy(serial_source: SourceFactory) -> None:
    src, _ = serial_source(retry=RetryPolicy(base_s=0.01, cap_s=0.02, give_up_after=3))
    assert _wait(lambda: src.state == "failed")
    assert isinstance(src.last_error, SourceError)


def test_vanish_and_return_reconnects_with_a_link_gap(
    pty_device: DeviceFactory, serial_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    dev = pty_device(seed=5, realtime=True)
    src, got = serial_source()
    assert _wait(lambda: got.n("ecg") >= 100)
    caplog.set_level(logging.INFO, logger="edgeagent.sources.serial")
    dev.vanish(0.3)
    assert _wait(
        lambda: src.counters.reconnects == 1 and any(g.reason == "link down" for g in got.gaps)
    )
    # the way back is logged, and the error it had does not linger in status
    assert _wait(lambda: any("back on" in r.getMessage() for r in caplog.records))
    assert src.last_error is None
    before = got.n("ecg")
    assert _wait(lambda: got.n("ecg") > before + 50)
    (gap,) = [g for g in got.gaps if g.reason == "link down"]
    assert gap.stream is None and gap.end - gap.start >= 0.25


def test_callback_errors_are_counted_not_fatal(pty_device: DeviceFactory, tmp_path: Path) -> None:
    pty_device(seed=1)
    seen: list[SampleBlock] = []

    def flaky(block: SampleBlock) -> None:
        seen.append(block)
        if len(seen) % 2:
            raise RuntimeError("consumer bug")

    src = SerialSource(
        str(tmp_path / "ttyTEXTILE0"), "t", flaky, retry=RetryPolicy(base_s=0.02), max_skew_s=None
    )
    src.start()
    try:
        assert _wait(lambda: len(seen) > 10)
        assert src.counters.extra["callback_errors"] >= 5 and src.state == "open"
    finally:
        src.stop()
