"""The agent's serial frame codec: spec vectors, round trips, garbage, resync, bounds."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeagent.codecs.serial_frame import (
    CHANNELS,
    MAX_PAYLOAD,
    Encoding,
    FrameDecoder,
    FrameType,
    Heartbeat,
    Hello,
    SampleFrame,
    SeqKind,
    SeqTracker,
    crc16,
    encode_hello,
    encode_packet,
    encode_samples,
)
from edgeagent.streams import Stream

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-protocol.md"

# Test vectors from docs/wire-protocol.md ("Serial test vectors"); the device
# simulator's tests check the same bytes against its own encoder.
V_HEARTBEAT = "03 03 01 01 04 ca 9a 3b 01 01 01 07 04 03 02 01 fd e8 00"
V_SKIN_TEMP = (
    "08 02 02 01 03 01 01 01 01 05 f2 05 2a 01 01 01 01 01 01 01 09 0a d7 23 3c 42 0e 90 89 00"
)
V_ECG = (
    "03 02 07 05 01 02 01 03 01 04 5e d0 b2 01 01 01 01 03 09 3d 01 01 03 80 3f "
    "01 01 06 ff ff ff e8 03 03 a0 49 00"
)
V_HELLO = "02 01 01 14 01 ef be ad de 03 31 2e 30 04 74 78 2d 31 02 01 02 09 1e 00"


def _b(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


def _decode_all(data: bytes) -> tuple[list[object], FrameDecoder]:
    dec = FrameDecoder()
    dec.feed(data)
    return dec.frames(), dec


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("vector", [V_HEARTBEAT, V_SKIN_TEMP, V_ECG, V_HELLO])
def test_vectors_are_published_in_the_docs(vector: str) -> None:
    assert vector in " ".join(DOC.read_text().split())


def test_vector_heartbeat() -> None:
    from edgeagent.codecs.serial_frame import encode_heartbeat

    assert encode_heartbeat(1, 1_000_000_000, 0x01020304) == _b(V_HEARTBEAT)
    (frame,), _ = _decode_all(_b(V_HEARTBEAT))
    assert frame == Heartbeat(seq=1, device_ns=1_000_000_000, boot_id=0x01020304)


def test_vector_skin_temp() -> None:
    raw = np.array([[3650]])
    assert encode_samples(0x0102, Stream.SKIN_TEMP, 5 * 10**9, 0, raw, Encoding.INT16, 0.01) == _b(
        V_SKIN_TEMP
    )
    (frame,), _ = _decode_all(_b(V_SKIN_TEMP))
    assert isinstance(frame, SampleFrame)
    assert (frame.seq, frame.stream, frame.t0_ns, frame.period_ns) == (
        0x0102,
        Stream.SKIN_TEMP,
        5 * 10**9,
        0,
    )
    assert frame.values.dtype == np.float32
    assert frame.values[0, 0] == pytest.approx(36.5, abs=1e-4)


def test_vector_ecg_int24_signs() -> None:
    raw = np.array([[0], [-1], [1000]])
    assert encode_samples(7, Stream.ECG, 3 * 10**9, 4_000_000, raw, Encoding.INT24, 1.0) == _b(
        V_ECG
    )
    (frame,), _ = _decode_all(_b(V_ECG))
    assert isinstance(frame, SampleFrame)
    assert frame.values[:, 0].tolist() == [0.0, -1.0, 1000.0]
    assert frame.times_ns().tolist() == [3_000_000_000, 3_004_000_000, 3_008_000_000]
    assert frame.end_ns == 3_008_000_000


def test_vector_hello() -> None:
    assert encode_hello(0, 0xDEADBEEF, "1.0", "tx-1", (Stream.ECG, Stream.ACC)) == _b(V_HELLO)
    (frame,), _ = _decode_all(_b(V_HELLO))
    assert frame == Hello(0, 1, 0xDEADBEEF, "1.0", "tx-1", (Stream.ECG, Stream.ACC))


# ----------------------------------------------------------------- round trips

_LIMITS = {Encoding.INT16: 2**15 - 1, Encoding.INT24: 2**23 - 1, Encoding.INT32: 2**31 - 1}


@st.composite
def sample_frames(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    stream = draw(st.sampled_from(list(Stream)))
    enc = draw(st.sampled_from([Encoding.INT16, Encoding.INT24, Encoding.INT32]))
    ch = len(CHANNELS[stream])
    width = {Encoding.INT16: 2, Encoding.INT24: 3, Encoding.INT32: 4}[enc]
    max_n = min(64, (MAX_PAYLOAD - 26) // (ch * width))
    n = draw(st.integers(1, max_n))
    lim = _LIMITS[enc]
    raw = np.array(draw(st.lists(st.integers(-lim, lim), min_size=n * ch, max_size=n * ch)))
    raw = raw.reshape(n, ch)
    period = 0 if n == 1 else draw(st.integers(1, 2**32 - 1))
    seq = draw(st.integers(0, 0xFFFF))
    t0 = draw(st.integers(0, 2**63))
    scale = draw(st.sampled_from([1.0, 0.01, 0.001, 0.1, 2.5]))
    data = encode_samples(seq, stream, t0, period, raw, enc, scale)
    return data, {"stream": stream, "raw": raw, "seq": seq, "t0": t0, "period": period, "s": scale}


@given(st.lists(sample_frames(), min_size=1, max_size=8), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_any_split(
    frames: list[tuple[bytes, dict[str, object]]], data: st.DataObject
) -> None:
    stream_bytes = b"".join(f for f, _ in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream_bytes)), max_size=6)))
    dec = FrameDecoder()
    prev = 0
    for c in [*cuts, len(stream_bytes)]:
        dec.feed(stream_bytes[prev:c])
        prev = c
    got = dec.frames()
    assert len(got) == len(frames)
    assert dec.counters.frames_ok == len(frames)
    assert dec.counters.bad_crc == dec.counters.malformed == dec.counters.bytes_dropped == 0
    for frame, (_, meta) in zip(got, frames, strict=True):
        assert isinstance(frame, SampleFrame)
        assert frame.stream == meta["stream"] and frame.seq == meta["seq"]
        assert frame.t0_ns == meta["t0"] and frame.period_ns == meta["period"]
        expect = np.asarray(meta["raw"]).astype(np.float32) * np.float32(meta["s"])
        np.testing.assert_array_equal(frame.values, expect)


# ----------------------------------------------------------------- garbage


def _reference_valid_segments(data: bytes) -> tuple[int, int]:
    """(non-empty complete segments, segments with a valid CRC), computed independently."""
    from firmware_sim.serialdev import crc16_ccitt_false

    segments = [s for s in data.split(b"\x00")[:-1] if s]
    valid = 0
    for s in segments:
        try:
            p = cobs.decode(s)
        except cobs.DecodeError:
            continue
        if len(p) >= 5 and crc16_ccitt_false(p[:-2]) == struct.unpack("<H", p[-2:])[0]:
            valid += 1
    return len(segments), valid


@given(st.binary(max_size=3000), st.integers(1, 512))
@settings(max_examples=300, deadline=None)
def test_garbage_never_crashes_nor_yields_bad_crc(garbage: bytes, chunk: int) -> None:
    dec = FrameDecoder()
    for i in range(0, len(garbage), chunk):
        dec.feed(garbage[i : i + chunk])
        assert dec.buffered < dec.max_encoded
    frames = dec.frames()
    segments, valid = _reference_valid_segments(garbage)
    # Only packets whose CRC really checks out may come out as frames.
    assert len(frames) <= valid
    c = dec.counters
    if all(len(s) < dec.max_encoded - 1 for s in garbage.split(b"\x00")):
        assert c.frames_ok + c.bad_crc + c.malformed == segments
        bad = [seg for seg in garbage.split(b"\x00")[:-1] if seg and not _ok(seg)]
        assert c.bytes_dropped == sum(len(seg) + 1 for seg in bad)


def _ok(segment: bytes) -> bool:
    dec = FrameDecoder()
    dec.feed(segment + b"\x00")
    return dec.counters.frames_ok == 1


@given(st.lists(sample_frames(), min_size=3, max_size=6), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_resync_after_corruption_recovers_next_frame(
    frames: list[tuple[bytes, dict[str, object]]], data: st.DataObject
) -> None:
    victim = data.draw(st.integers(0, len(frames) - 1))
    raw = bytearray(frames[victim][0])
    body_len = len(raw) - 1  # never touch the delimiter
    i = data.draw(st.integers(0, body_len - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    garbage = data.draw(st.binary(max_size=40)) + b"\x00"
    stream_bytes = b"".join(
        (bytes(raw) if k == victim else f) + (garbage if k == victim else b"")
        for k, (f, _) in enumerate(frames)
    )
    dec = FrameDecoder()
    dec.feed(stream_bytes)
    got = dec.frames()
    expected_seqs = [m["seq"] for k, (_, m) in enumerate(frames) if k != victim]
    assert [f.seq for f in got if isinstance(f, SampleFrame)][: len(expected_seqs)] == expected_seqs
    assert dec.counters.bad_crc + dec.counters.malformed >= 1
    if victim < len(frames) - 1:
        assert dec.counters.resyncs == 1


def test_resync_counts_runs_and_bytes() -> None:
    a = encode_samples(1, Stream.HR, 10, 0, np.array([[700]]), Encoding.INT16, 0.1)
    b = encode_samples(2, Stream.HR, 20, 0, np.array([[710]]), Encoding.INT16, 0.1)
    noise = b"\x11\x22\x33\x00\x44\x00"  # two bad packets, 6 bytes
    frames, dec = _decode_all(a + noise + b)
    assert [f.seq for f in frames] == [1, 2]  # type: ignore[attr-defined]
    c = dec.counters
    assert (c.frames_ok, c.resyncs, c.bytes_dropped) == (2, 1, 6)
    assert c.bad_crc + c.malformed == 2
    assert dec.last_error is not None


def test_garbage_without_delimiter_is_bounded_then_recovers() -> None:
    dec = FrameDecoder()
    blob = bytes(range(1, 256)) * 200  # 51 000 bytes, no 0x00
    for i in range(0, len(blob), 1000):
        dec.feed(blob[i : i + 1000])
        assert dec.buffered < dec.max_encoded
    good = encode_samples(5, Stream.HR, 1, 0, np.array([[600]]), Encoding.INT16, 0.1)
    dec.feed(b"\x00" + good)
    (frame,) = dec.frames()
    assert isinstance(frame, SampleFrame) and frame.seq == 5
    assert dec.counters.bytes_dropped == len(blob) + 1
    assert dec.counters.malformed == 1 and dec.counters.resyncs == 1


def _samples_body(code: int, enc: int, ch: int, n: int, period: int, scale: float) -> bytes:
    return struct.pack("<BBBHQIf", code, enc, ch, n, 0, period, scale)


@pytest.mark.parametrize(
    ("frame_type", "body", "why"),
    [
        (0x7F, b"", "unknown frame type"),
        (FrameType.SAMPLES, b"\x01\x02", "too short"),
        (FrameType.SAMPLES, _samples_body(99, 1, 1, 1, 0, 1.0) + b"\0\0", "unknown stream"),
        (FrameType.SAMPLES, _samples_body(1, 9, 1, 1, 0, 1.0) + b"\0\0", "unknown sample encoding"),
        (FrameType.SAMPLES, _samples_body(2, 1, 1, 1, 0, 1.0) + b"\0\0", "channels"),
        (FrameType.SAMPLES, _samples_body(1, 1, 1, 0, 0, 1.0), "no samples"),
        (FrameType.SAMPLES, _samples_body(1, 1, 1, 2, 0, 1.0) + b"\0" * 4, "period 0"),
        (FrameType.SAMPLES, _samples_body(1, 1, 1, 1, 0, float("nan")) + b"\0\0", "scale"),
        (FrameType.SAMPLES, _samples_body(1, 1, 1, 2, 5, 1.0) + b"\0\0", "expected"),
        (
            FrameType.SAMPLES,
            _samples_body(1, 4, 1, 1, 0, 1.0) + struct.pack("<f", float("inf")),
            "non-finite",
        ),
        (FrameType.HEARTBEAT, b"\x00" * 11, "heartbeat"),
        (FrameType.HELLO, b"\x02" + b"\0" * 4 + b"\0\0\0", "protocol version"),
        (FrameType.HELLO, b"\x01" + b"\0" * 4 + b"\x05ab", "hello"),
        (FrameType.HELLO, b"\x01" + b"\0" * 4 + b"\x00\x00\x01\x63", "unknown stream code"),
        (FrameType.HELLO, b"\x01" + b"\0" * 4 + b"\x02\xff\xfe\x00\x00", "unreadable"),
    ],
)
def test_malformed_bodies_are_counted_not_raised(frame_type: int, body: bytes, why: str) -> None:
    frames, dec = _decode_all(encode_packet(frame_type, 3, body))
    assert frames == []
    assert dec.counters.malformed == 1 and dec.counters.bad_crc == 0
    assert dec.last_error is not None and why in str(dec.last_error)


def test_bad_crc_counted_separately() -> None:
    good = bytearray(cobs.decode(_b(V_HEARTBEAT)[:-1]))
    good[-1] ^= 0x01
    frames, dec = _decode_all(cobs.encode(bytes(good)) + b"\x00")
    assert frames == [] and dec.counters.bad_crc == 1 and dec.counters.malformed == 0


def test_encoder_refuses_what_the_decoder_would_reject() -> None:
    with pytest.raises(ValueError):
        encode_packet(FrameType.SAMPLES, 0, b"\x00" * MAX_PAYLOAD)
    with pytest.raises(ValueError):
        encode_samples(0, Stream.ACC, 0, 1, np.zeros((2, 1)), Encoding.INT16, 1.0)
    with pytest.raises(ValueError):
        encode_packet(FrameType.SAMPLES, 70000, b"")


def test_reset_drops_partial_packet() -> None:
    dec = FrameDecoder()
    dec.feed(_b(V_HELLO)[:10])
    assert dec.buffered == 10
    dec.reset()
    assert dec.buffered == 0 and dec.counters.bytes_dropped == 10
    dec.feed(_b(V_HELLO))
    assert isinstance(dec.next_frame(), Hello)
    assert dec.next_frame() is None


# ----------------------------------------------------------------- sequence tracking


def _sf(seq: int, t0: int, n: int = 2, period: int = 10, stream: Stream = Stream.HR) -> SampleFrame:
    return SampleFrame(seq, stream, t0, period, np.zeros((n, 1), dtype=np.float32))


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([_sf(5, 0), _sf(6, 20)], [(SeqKind.FIRST, 0), (SeqKind.NEXT, 0)]),
        ([_sf(5, 0), _sf(8, 60)], [(SeqKind.FIRST, 0), (SeqKind.GAP, 2)]),
        ([_sf(5, 0), _sf(5, 0)], [(SeqKind.FIRST, 0), (SeqKind.DUPLICATE, 0)]),
        # An old frame re-sent later (seq behind, time not newer) is a duplicate.
        (
            [_sf(5, 0), _sf(6, 20), _sf(5, 0)],
            [(SeqKind.FIRST, 0), (SeqKind.NEXT, 0), (SeqKind.DUPLICATE, 0)],
        ),
        ([_sf(0xFFFF, 0), _sf(0, 20)], [(SeqKind.FIRST, 0), (SeqKind.NEXT, 0)]),
        ([_sf(0xFFFE, 0), _sf(1, 60)], [(SeqKind.FIRST, 0), (SeqKind.GAP, 2)]),
        # Overlapping time with a new seq still cannot deliver samples twice.
        ([_sf(1, 0), _sf(2, 10)], [(SeqKind.FIRST, 0), (SeqKind.DUPLICATE, 0)]),
    ],
)
def test_seq_tracker_table(frames: list[SampleFrame], expected: list[tuple[SeqKind, int]]) -> None:
    tr = SeqTracker()
    assert [tr.judge(f) for f in frames] == expected


def test_seq_tracker_streams_are_independent_and_resettable() -> None:
    tr = SeqTracker()
    assert tr.judge(_sf(1, 0, stream=Stream.HR))[0] is SeqKind.FIRST
    assert tr.judge(_sf(9, 0, stream=Stream.RR))[0] is SeqKind.FIRST
    assert tr.judge(_sf(2, 20, stream=Stream.HR))[0] is SeqKind.NEXT
    assert tr.last_end_ns(Stream.HR) == 30
    tr.reset(Stream.HR)
    assert tr.last_end_ns(Stream.HR) is None and tr.last_end_ns(Stream.RR) == 10
    tr.reset()
    assert tr.judge(_sf(9, 0, stream=Stream.RR))[0] is SeqKind.FIRST
