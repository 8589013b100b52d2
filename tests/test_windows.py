"""Windower: alignment, coverage, gaps, closing rules, bad input, memory and speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import ConfigError
from edgeagent.pipeline.windows import Window, WindowCounters, Windower
from edgeagent.streams import Gap, SampleBlock, Stream
from tests.pipeline_synth import blocks


def _series(
    stream: Stream, hz: float, t0: float, t1: float, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(math.ceil((t0 - offset) * hz), math.ceil((t1 - offset) * hz)) / hz + offset
    n_ch = {Stream.ECG: 1, Stream.ACC: 3, Stream.SKIN_TEMP: 1, Stream.ENV: 2}[stream]
    # Values encode the timestamp so tests can check what landed where.
    return t, np.repeat(t[:, None], n_ch, axis=1).astype(np.float32)


def _dropped(c: WindowCounters) -> int:
    return c.duplicate + c.out_of_order + c.nonfinite + c.late + c.future


def _feed(w: Windower, device: str, stream: Stream, t: np.ndarray, v: np.ndarray) -> None:
    for b in blocks(device, stream, t, v, block_s=0.5):
        w.push(b)


def _multi(w: Windower, t1: float, t0: float = 0.0) -> None:
    """ECG 250 Hz, ACC 50 Hz, skin temp 1 Hz, env 0.2 Hz from three devices, interleaved."""
    parts = [
        ("chest", Stream.ECG, *_series(Stream.ECG, 250.0, t0, t1, offset=0.0013)),
        ("wrist", Stream.ACC, *_series(Stream.ACC, 50.0, t0, t1, offset=0.007)),
        ("wrist", Stream.SKIN_TEMP, *_series(Stream.SKIN_TEMP, 1.0, t0, t1, offset=0.3)),
        ("hub", Stream.ENV, *_series(Stream.ENV, 0.2, t0, t1, offset=1.1)),
    ]
    bl = [b for dev, s, t, v in parts for b in blocks(dev, s, t, v, block_s=0.5)]
    bl.sort(key=lambda b: float(b.t[-1]))
    for b in bl:
        w.push(b)


def test_streams_at_different_rates_and_offsets_are_aligned() -> None:
    w = Windower(patient="p7")
    _multi(w, 30.0)
    ws = w.pop_ready()
    assert [x.start for x in ws] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0]
    expected_n = {Stream.ECG: 2500, Stream.ACC: 500, Stream.SKIN_TEMP: 10, Stream.ENV: 2}
    for x in ws:
        assert x.patient == "p7" and x.end - x.start == 10.0
        assert x.present == frozenset(expected_n) and x.closed_by == "watermark"
        for s, (t, v) in x.data.items():
            assert t.dtype == np.float64 and v.dtype == np.float32
            assert len(t) == expected_n[s], s
            assert t[0] >= x.start and t[-1] < x.end
            np.testing.assert_allclose(v[:, 0], t, atol=1e-3)  # samples not shuffled
        assert x.coverage == dict.fromkeys(expected_n, 1.0)
        assert x.gaps == ()
        assert x.devices[Stream.ECG] == "chest" and x.devices[Stream.ENV] == "hub"
        assert x.rates[Stream.ECG] == pytest.approx(250.0)
        assert x.rates[Stream.ENV] == pytest.approx(0.2)


def test_custom_length_and_hop() -> None:
    w = Windower(length_s=5.0, hop_s=5.0)
    _multi(w, 31.0)
    ws = w.pop_ready()
    assert [(x.start, x.end) for x in ws] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25)]
    assert all(len(x.data[Stream.ECG][0]) == 1250 for x in ws)


def test_hole_gives_exact_coverage_and_explicit_gap() -> None:
    w = Windower()
    t, v = _series(Stream.ECG, 250.0, 0.0, 30.0)
    keep = (t < 12.0) | (t >= 14.0)  # 2 s hole
    _feed(w, "chest", Stream.ECG, t[keep], v[keep])
    ws = {x.start: x for x in w.pop_ready()}
    hit = ws[10.0]
    assert hit.coverage[Stream.ECG] == pytest.approx(0.8)
    assert len(hit.data[Stream.ECG][0]) == 2000
    assert len(hit.gaps) == 1
    g = hit.gaps[0]
    assert (g.device, g.stream, g.reason) == ("chest", Stream.ECG, "hole")
    assert g.start == pytest.approx(12.0 - 1 / 250) and g.end == pytest.approx(14.0)
    # No interpolation: nothing inside the hole.
    tt = hit.data[Stream.ECG][0]
    assert not np.any((tt > 12.0 - 1e-9) & (tt < 14.0 - 1e-9))
    # The same hole seen from a window that starts inside it: still a "hole".
    assert ws[12.0].gaps == (Gap("chest", Stream.ECG, 12.0, g.end, "hole"),)
    assert ws[12.0].coverage[Stream.ECG] == pytest.approx(0.8)
    assert ws[0.0].coverage[Stream.ECG] == 1.0 and ws[0.0].gaps == ()
    assert ws[16.0].coverage[Stream.ECG] == 1.0
    assert w.counters.holes == 1


def test_source_gap_is_reported_clipped_and_replaces_detected_hole() -> None:
    w = Windower()
    t, v = _series(Stream.ECG, 250.0, 0.0, 30.0)
    keep = (t < 12.0) | (t >= 14.0)
    bl = blocks("chest", Stream.ECG, t[keep], v[keep])
    for b in bl:
        if b.t[0] >= 14.0 and not w.counters.gaps_in:
            w.push_gap(Gap("chest", None, 11.996, 14.0, "link lost"))
        w.push(b)
    ws = {x.start: x for x in w.pop_ready() + w.flush()}
    assert ws[4.0].gaps == (Gap("chest", None, 11.996, 14.0, "link lost"),)
    y = ws[12.0]
    assert y.gaps == (Gap("chest", None, 12.0, 14.0, "link lost"),)  # clipped to the window


def test_stream_present_in_part_of_window_and_absent_stream() -> None:
    w = Windower()
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 0.0, 30.0))
    _feed(w, "wrist", Stream.SKIN_TEMP, *_series(Stream.SKIN_TEMP, 1.0, 15.0, 30.0, 0.5))
    ws = {x.start: x for x in w.pop_ready()}
    early = ws[0.0]
    assert early.present == {Stream.ECG}
    assert early.coverage[Stream.SKIN_TEMP] == 0.0
    assert Gap("wrist", Stream.SKIN_TEMP, 0.0, 10.0, "no data") in early.gaps
    mid = ws[8.0]
    assert mid.coverage[Stream.SKIN_TEMP] == pytest.approx(0.3)
    assert [g for g in mid.gaps if g.stream == Stream.SKIN_TEMP] == [
        Gap("wrist", Stream.SKIN_TEMP, 8.0, 15.5, "no data")
    ]


def test_window_waits_for_slow_stream_then_closes_by_lateness() -> None:
    w = Windower(lateness_s=5.0)
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 0.0, 10.6))
    _feed(w, "wrist", Stream.SKIN_TEMP, *_series(Stream.SKIN_TEMP, 1.0, 0.0, 8.0, 0.3))
    assert w.pop_ready() == []  # temp is active (3 s behind) and has not passed 10 s
    assert w.pop_ready(now=14.99) == []
    (x,) = w.pop_ready(now=15.0)
    assert x.closed_by == "lateness" and x.start == 0.0
    assert x.coverage[Stream.SKIN_TEMP] == pytest.approx(0.8)
    assert Gap("wrist", Stream.SKIN_TEMP, 7.3, 10.0, "no data") in x.gaps
    assert w.counters.windows_lateness == 1


def test_slow_stream_arriving_in_time_closes_by_watermark() -> None:
    w = Windower(lateness_s=5.0)
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 0.0, 10.6))
    _feed(w, "wrist", Stream.SKIN_TEMP, *_series(Stream.SKIN_TEMP, 1.0, 0.0, 8.0, 0.3))
    assert w.pop_ready(now=11.0) == []
    _feed(w, "wrist", Stream.SKIN_TEMP, *_series(Stream.SKIN_TEMP, 1.0, 8.0, 11.0, 0.3))
    (x,) = w.pop_ready(now=11.5)
    assert x.closed_by == "watermark" and x.coverage[Stream.SKIN_TEMP] == 1.0


def test_dead_stream_cannot_stall_other_streams_without_a_clock() -> None:
    w = Windower(lateness_s=5.0)
    _feed(w, "wrist", Stream.SKIN_TEMP, *_series(Stream.SKIN_TEMP, 1.0, 0.0, 4.0, 0.3))
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 0.0, 40.0))
    ws = w.pop_ready()
    assert ws and ws[-1].end >= 38.0
    assert all(x.closed_by == "watermark" for x in ws)
    assert ws[-1].coverage[Stream.SKIN_TEMP] == 0.0


def test_source_gap_advances_watermark() -> None:
    w = Windower(lateness_s=5.0)
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 0.0, 10.6))
    _feed(w, "wrist", Stream.SKIN_TEMP, *_series(Stream.SKIN_TEMP, 1.0, 0.0, 8.0, 0.3))
    assert w.pop_ready() == []
    w.push_gap(Gap("wrist", Stream.SKIN_TEMP, 7.3, 10.5, "disconnected"))
    (x,) = w.pop_ready()
    assert x.closed_by == "watermark"
    assert Gap("wrist", Stream.SKIN_TEMP, 7.3, 10.0, "disconnected") in x.gaps


def test_late_samples_are_counted_and_dropped() -> None:
    w = Windower(lateness_s=5.0)
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 0.0, 11.0))
    (x,) = w.pop_ready()
    assert (x.start, w.next_start) == (0.0, 2.0)
    late_t = np.array([0.5, 1.0, 1.5, 2.5, 9.5])
    w.push(SampleBlock("wrist", Stream.SKIN_TEMP, late_t, np.full((5, 1), 36.0, np.float32)))
    assert w.counters.late == 3  # before 2.0: no window to come can hold them
    assert w.counters.late_missed == 2  # 2.5 and 9.5 missed window 0 but are kept
    nxt = w.pop_ready(now=20.0)[0]
    np.testing.assert_array_equal(nxt.data[Stream.SKIN_TEMP][0], [2.5, 9.5])


def test_out_of_order_duplicate_and_nan_are_counted_and_dropped() -> None:
    w = Windower()
    t = np.arange(0.0, 12.0, 0.004)
    v = np.ones((t.shape[0], 1), np.float32)
    w.push(SampleBlock("c", Stream.ECG, t[:1000], v[:1000]))
    # Overlapping resend (duplicates), an older block (out of order), NaN/inf values.
    w.push(SampleBlock("c", Stream.ECG, t[990:1000].copy(), v[990:1000]))
    w.push(SampleBlock("c", Stream.ECG, t[500:505] - 0.001, v[500:505]))
    bad = v[1000:].copy()
    bad[[3, 7]] = np.nan
    bad[11] = np.inf
    tt = t[1000:].copy()
    tt[20] = np.nan
    w.push(SampleBlock("c", Stream.ECG, tt, bad))
    # A block whose timestamps go backwards inside it.
    w.push(
        SampleBlock("c", Stream.ECG, np.array([12.0, 11.0001, 12.004]), np.ones((3, 1), np.float32))
    )
    c = w.counters
    assert (c.duplicate, c.out_of_order, c.nonfinite) == (10, 6, 4)
    assert (
        c.samples_in
        == c.samples_kept + c.duplicate + c.out_of_order + c.nonfinite + c.late + c.future
    )
    (x, *_) = w.pop_ready()
    tx, vx = x.data[Stream.ECG]
    assert np.all(np.diff(tx) > 0) and np.isfinite(vx).all()
    assert len(tx) == 2500 - 4  # three bad values and one NaN timestamp


def test_samples_from_the_future_are_dropped_when_now_is_given() -> None:
    w = Windower()
    t, v = _series(Stream.ECG, 250.0, 0.0, 12.0)
    w.push(SampleBlock("c", Stream.ECG, t, v), now=12.0)
    bogus = np.array([1e9])
    w.push(SampleBlock("c", Stream.ECG, bogus, np.ones((1, 1), np.float32)), now=12.0)
    assert w.counters.future == 1
    w.push(SampleBlock("c", Stream.ECG, t + 12.0, v), now=24.0)
    assert w.counters.samples_kept == 2 * t.shape[0]
    assert [x.start for x in w.pop_ready(now=24.0)] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]


def test_empty_and_all_nan_blocks_are_harmless() -> None:
    w = Windower()
    w.push(SampleBlock("c", Stream.ECG, np.empty(0), np.empty((0, 1), np.float32)))
    w.push(SampleBlock("c", Stream.ECG, np.array([np.nan]), np.ones((1, 1), np.float32)))
    assert w.pop_ready(now=1e9) == [] and w.flush() == []
    assert w.next_start is None
    w.push_gap(Gap("c", Stream.ECG, 5.0, float("nan"), "bad"))
    w.push_gap(Gap("c", Stream.ECG, 5.0, 4.0, "reversed"))
    assert w.counters.bad_gaps == 2


def test_long_outage_does_not_emit_a_burst_of_empty_windows() -> None:
    w = Windower()
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 0.0, 20.0))
    ws = w.pop_ready()
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 3600.0, 3630.0))
    ws += w.pop_ready()
    assert ws and all(Stream.ECG in x.present for x in ws)
    assert len(ws) <= 2 * (30 // 2)
    assert w.counters.windows_skipped_empty >= 1


def test_two_devices_same_stream_uses_the_better_one() -> None:
    w = Windower()
    t, v = _series(Stream.ECG, 250.0, 0.0, 25.0)
    _feed(w, "strap", Stream.ECG, t, v)
    sparse = t < 5.0
    _feed(w, "shirt", Stream.ECG, t[sparse] + 0.001, v[sparse])
    w.push_gap(Gap("shirt", Stream.ECG, 5.0, 9.0, "link lost"))
    x = w.pop_ready()[0]
    assert x.devices[Stream.ECG] == "strap" and x.coverage[Stream.ECG] == 1.0
    assert x.gaps == ()  # the unused device's outage is not this window's gap


def test_memory_stays_bounded() -> None:
    w = Windower()
    peak = 0
    for sec in range(600):
        t = sec + np.arange(250) / 250.0
        w.push(SampleBlock("c", Stream.ECG, t, np.zeros((250, 1), np.float32)))
        w.pop_ready(now=sec + 1.0)
        peak = max(peak, sum(len(b) for b in w._buffers.values()))
    assert peak <= (10.0 + 2.0 + 1.0) * 250 + 1
    # Never popped: the buffer still stops at max_buffer_s.
    w2 = Windower(max_buffer_s=20.0)
    for sec in range(120):
        t = sec + np.arange(250) / 250.0
        w2.push(SampleBlock("c", Stream.ECG, t, np.zeros((250, 1), np.float32)))
    assert sum(len(b) for b in w2._buffers.values()) <= 21 * 250
    assert w2.counters.overflow >= 99 * 250


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"length_s": 0.0}, "windows.length_s"),
        ({"hop_s": 11.0}, "windows.hop_s"),
        ({"hop_s": float("nan")}, "windows.hop_s"),
        ({"lateness_s": -1.0}, "windows.lateness_s"),
        ({"max_buffer_s": 5.0}, "windows.max_buffer_s"),
    ],
)
def test_bad_settings_name_the_key(kw: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        Windower(**kw)
    assert e.value.key == key


def test_push_cost_does_not_grow_per_sample() -> None:
    """A per-sample Python loop would make a 200k-sample block take ~100 ms+."""
    w = Windower(max_buffer_s=1000.0)
    t = np.arange(200_000) / 250.0
    blk = SampleBlock("c", Stream.ECG, t, np.zeros((t.shape[0], 1), np.float32))
    t0 = time.perf_counter()
    w.push(blk)
    assert time.perf_counter() - t0 < 0.05


def test_fifty_wearables_ingest_under_a_quarter_core() -> None:
    """Sizing target: 50 patients (ECG 250 Hz + ACC 50 Hz + temp) in real time on <25 % of a core.

    Windowing only (features are measured in bench/); 20 s of data in 0.25 s
    blocks per stream, popped once per simulated second.
    """
    seconds = 20
    rng = np.random.default_rng(0)
    ecg = rng.normal(0, 100, (seconds * 250, 1)).astype(np.float32)
    acc = rng.normal(0, 100, (seconds * 50, 3)).astype(np.float32)
    wins = [Windower(patient=f"p{i}") for i in range(50)]
    n_windows = 0
    t0 = time.perf_counter()
    for q in range(seconds * 4):
        e0, e1 = q * 250 // 4, (q + 1) * 250 // 4
        a0, a1 = q * 50 // 4, (q + 1) * 50 // 4
        te = np.arange(e0, e1) / 250.0
        ta = np.arange(a0, a1) / 50.0
        for w in wins:
            w.push(SampleBlock("chest", Stream.ECG, te, ecg[e0:e1]))
            w.push(SampleBlock("wrist", Stream.ACC, ta, acc[a0:a1]))
        if q % 4 == 3:
            tt = np.array([q / 4.0])
            for w in wins:
                w.push(
                    SampleBlock("wrist", Stream.SKIN_TEMP, tt, np.full((1, 1), 36.0, np.float32))
                )
                n_windows += len(w.pop_ready(now=(q + 1) / 4.0))
    elapsed = time.perf_counter() - t0
    assert n_windows >= 50 * 4
    assert elapsed < 0.25 * seconds, f"{elapsed:.2f} s for {seconds} s of 50 wearables"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.floats(-5.0, 40.0), st.just(math.nan)),
            st.integers(0, 60),
            st.sampled_from([Stream.ECG, Stream.SKIN_TEMP]),
            st.booleans(),
        ),
        max_size=40,
    ),
    st.floats(0.0, 60.0),
)
def test_any_block_sequence_keeps_invariants(
    spec: list[tuple[float, int, Stream, bool]], now: float
) -> None:
    w = Windower(patient="h")
    out: list[Window] = []
    for start, n, stream, poison in spec:
        hz = 250.0 if stream == Stream.ECG else 1.0
        t = start + np.arange(n) / hz
        v = np.ones((n, 1), np.float32)
        if poison and n:
            v[n // 2] = np.nan
        w.push(SampleBlock("d", stream, t, v), now=now if poison else None)
        out += w.pop_ready(now=now)
    out += w.flush()
    c = w.counters
    assert (
        c.samples_in
        == c.samples_kept + c.duplicate + c.out_of_order + c.nonfinite + c.late + c.future
    )
    starts = [x.start for x in out]
    assert starts == sorted(set(starts))
    for x in out:
        assert x.present
        for s, (t, v) in x.data.items():
            assert np.all(np.diff(t) > 0) and np.isfinite(v).all()
            assert t[0] >= x.start and t[-1] < x.end
            assert 0.0 <= x.coverage[s] <= 1.0
        for g in x.gaps:
            assert x.start <= g.start <= g.end <= x.end


def test_forget_device_and_status() -> None:
    w = Windower(patient="p1")
    _feed(w, "chest", Stream.ECG, *_series(Stream.ECG, 250.0, 0.0, 12.0))
    _feed(w, "old", Stream.SKIN_TEMP, *_series(Stream.SKIN_TEMP, 1.0, 0.0, 3.0, 0.5))
    w.push_gap(Gap("old", None, 3.0, 4.0, "unpaired"))
    st_ = w.status()
    assert st_["patient"] == "p1" and st_["counters"]["samples_kept"] == 3003
    assert st_["streams"]["chest/ecg"]["rate_hz"] == pytest.approx(250.0)
    assert st_["streams"]["old/skin_temp"]["buffered"] == 3
    assert w.forget("old") == 3 and w.forget("nobody") == 0
    (x,) = w.pop_ready()
    assert Stream.SKIN_TEMP not in x.coverage and x.gaps == ()
    assert "old/skin_temp" not in w.status()["streams"]
