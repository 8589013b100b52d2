"""Sans-I/O codec for the serial wearable link (smart textile / wired hub).

Wire format (docs/wire-protocol.md, "## Serial", is the normative text):
every packet is COBS-encoded and terminated by one 0x00 byte. The decoded
payload is ``[type u8][seq u16 LE][body][crc u16 LE]`` where the CRC is
CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over ``type + seq + body``.

Why COBS + 0x00: a UART has no framing of its own, and a byte lost or flipped
anywhere must cost at most the frame it hit. With a delimiter that never
appears inside an encoded packet the decoder resynchronises at the very next
0x00, and the CRC rejects whatever the corruption produced.

Use it like h11: ``feed(bytes)`` whatever the port returned, then call
``next_frame()`` until it returns ``None``. Bad packets never raise; they are
counted (``bad_crc``, ``malformed``, ``bytes_dropped``, ``resyncs``) and the
last reason is kept in ``last_error`` for logs. Memory is bounded: a stream of
garbage without any 0x00 is discarded as it arrives, never buffered.
"""

from __future__ import annotations

import binascii
import math
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import numpy as np
from cobs import cobs

from edgeagent.errors import FrameError
from edgeagent.streams import CHANNELS, LinkCounters, Stream

DELIMITER: Final = 0x00
# Largest decoded payload (type+seq+body+crc) a device may send. 2 KiB holds
# 0.5 s of int24 ECG at 1 kHz; anything longer is a corrupt or foreign stream.
MAX_PAYLOAD: Final = 2048
# COBS adds one byte per 254 plus one; +1 for the delimiter.
MAX_ENCODED: Final = MAX_PAYLOAD + MAX_PAYLOAD // 254 + 2
PROTOCOL_VERSION: Final = 1
# Bound on decoded-but-unread frames, so a caller that never drains cannot
# make the decoder grow without limit either (oldest are dropped and counted).
MAX_PENDING_FRAMES: Final = 4096


class FrameType(IntEnum):
    """The ``type`` byte."""

    HELLO = 0x01  # device identity; sent on every (re)connection and every few seconds
    SAMPLES = 0x02  # one block of consecutive samples of one stream
    HEARTBEAT = 0x03  # device clock while nothing else is sent


class Encoding(IntEnum):
    """How sample values are stored; physical value = raw * scale (float32 maths)."""

    INT16 = 1
    INT24 = 2
    INT32 = 3
    FLOAT32 = 4


ENCODING_WIDTH: Final[dict[Encoding, int]] = {
    Encoding.INT16: 2,
    Encoding.INT24: 3,
    Encoding.INT32: 4,
    Encoding.FLOAT32: 4,
}

# Stream codes on the wire. Never renumber: deployed firmware depends on them.
STREAM_CODE: Final[dict[Stream, int]] = {
    Stream.ECG: 1,
    Stream.ACC: 2,
    Stream.SKIN_TEMP: 3,
    Stream.ENV: 4,
    Stream.HR: 5,
    Stream.RR: 6,
}
CODE_STREAM: Final[dict[int, Stream]] = {v: k for k, v in STREAM_CODE.items()}

_HEAD = struct.Struct("<BH")  # type, seq
_CRC = struct.Struct("<H")
_SAMPLES_HEAD = struct.Struct("<BBBHQIf")  # stream, enc, channels, n, t0_ns, period_ns, scale
_HEARTBEAT = struct.Struct("<QI")  # device_ns, boot_id
_HELLO_HEAD = struct.Struct("<BI")  # protocol version, boot_id
_MIN_PAYLOAD = _HEAD.size + _CRC.size


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (check value 0x29B1 for b"123456789")."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True, slots=True)
class Hello:
    """Who is on the other end. A new ``boot_id`` means the device restarted."""

    seq: int
    protocol_version: int
    boot_id: int
    firmware: str
    device_id: str
    streams: tuple[Stream, ...]


@dataclass(frozen=True, slots=True, eq=False)
class SampleFrame:
    """Consecutive samples of one stream in device time (ns since device boot).

    ``values`` are already scaled to physical units (float32, one column per
    channel). ``period_ns`` is 0 only for single-sample frames (irregular
    streams such as RR intervals).
    """

    seq: int
    stream: Stream
    t0_ns: int
    period_ns: int
    values: np.ndarray

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.values.shape[0])

    @property
    def end_ns(self) -> int:
        """Device time of the last sample."""
        return self.t0_ns + (self.n - 1) * self.period_ns

    def times_ns(self) -> np.ndarray:
        """Device time of every sample (int64 ns)."""
        return self.t0_ns + np.arange(self.n, dtype=np.int64) * self.period_ns


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Keep-alive carrying the device clock, so silence is distinguishable from loss."""

    seq: int
    device_ns: int
    boot_id: int


Frame = Hello | SampleFrame | Heartbeat


# --------------------------------------------------------------------------- encode


def encode_packet(frame_type: int, seq: int, body: bytes) -> bytes:
    """COBS-encode ``[type][seq][body][crc]`` and append the 0x00 delimiter."""
    if not 0 <= frame_type <= 0xFF or not 0 <= seq <= 0xFFFF:
        raise ValueError(f"type {frame_type} / seq {seq} out of range")
    payload = _HEAD.pack(frame_type, seq) + body
    payload += _CRC.pack(crc16(payload))
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return cobs.encode(payload) + b"\x00"


def encode_samples(
    seq: int,
    stream: Stream,
    t0_ns: int,
    period_ns: int,
    raw: np.ndarray,
    encoding: Encoding,
    scale: float,
) -> bytes:
    """Encode integer (or float32) ``raw`` samples, shape (n, channels), as one packet.

    The agent never sends samples; this exists so the codec can be tested as a
    round trip and so benchmarks can make traffic without the simulator.
    """
    raw = np.asarray(raw)
    n_ch = len(CHANNELS[stream])
    if raw.ndim != 2 or raw.shape[1] != n_ch or raw.shape[0] < 1:
        raise ValueError(f"{stream} raw must have shape (n>=1, {n_ch}), got {raw.shape}")
    head = _SAMPLES_HEAD.pack(
        STREAM_CODE[stream], encoding, n_ch, raw.shape[0], t0_ns, period_ns, scale
    )
    flat = raw.reshape(-1)
    if encoding is Encoding.INT16:
        data = flat.astype("<i2").tobytes()
    elif encoding is Encoding.INT32:
        data = flat.astype("<i4").tobytes()
    elif encoding is Encoding.FLOAT32:
        data = flat.astype("<f4").tobytes()
    else:
        data = flat.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return encode_packet(FrameType.SAMPLES, seq, head + data)


def encode_hello(
    seq: int, boot_id: int, firmware: str, device_id: str, streams: tuple[Stream, ...]
) -> bytes:
    """Encode a HELLO packet."""
    fw = firmware.encode()
    dev = device_id.encode()
    body = (
        _HELLO_HEAD.pack(PROTOCOL_VERSION, boot_id)
        + bytes([len(fw)])
        + fw
        + bytes([len(dev)])
        + dev
        + bytes([len(streams)])
        + bytes(STREAM_CODE[s] for s in streams)
    )
    return encode_packet(FrameType.HELLO, seq, body)


def encode_heartbeat(seq: int, device_ns: int, boot_id: int) -> bytes:
    """Encode a HEARTBEAT packet."""
    return encode_packet(FrameType.HEARTBEAT, seq, _HEARTBEAT.pack(device_ns, boot_id))


# --------------------------------------------------------------------------- decode


def _decode_values(enc: Encoding, data: bytes, n: int, ch: int, scale: float) -> np.ndarray:
    if enc is Encoding.INT16:
        raw = np.frombuffer(data, dtype="<i2").astype(np.float32)
    elif enc is Encoding.INT32:
        raw = np.frombuffer(data, dtype="<i4").astype(np.float32)
    elif enc is Encoding.FLOAT32:
        raw = np.frombuffer(data, dtype="<f4").astype(np.float32)
    else:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        raw = (v - ((v & 0x800000) << 1)).astype(np.float32)
    vals = raw * np.float32(scale)
    return vals.reshape(n, ch)


def parse_payload(payload: bytes) -> Frame:
    """Turn one COBS-decoded payload into a frame, or raise ``FrameError``.

    ``FrameError.reason`` is ``"bad_crc"`` or ``"malformed"``, the two counter
    names, so callers count without string matching on details.
    """
    if len(payload) < _MIN_PAYLOAD:
        raise FrameError("malformed", f"payload of {len(payload)} bytes is shorter than 5")
    (crc,) = _CRC.unpack_from(payload, len(payload) - 2)
    if crc16(payload[:-2]) != crc:
        raise FrameError("bad_crc", f"crc 0x{crc:04x} does not match")
    ftype, seq = _HEAD.unpack_from(payload, 0)
    body = payload[_HEAD.size : -2]
    if ftype == FrameType.SAMPLES:
        return _parse_samples(seq, body)
    if ftype == FrameType.HEARTBEAT:
        if len(body) != _HEARTBEAT.size:
            raise FrameError("malformed", f"heartbeat body of {len(body)} bytes, expected 12")
        device_ns, boot_id = _HEARTBEAT.unpack(body)
        return Heartbeat(seq, device_ns, boot_id)
    if ftype == FrameType.HELLO:
        return _parse_hello(seq, body)
    raise FrameError("malformed", f"unknown frame type 0x{ftype:02x}")


def _parse_samples(seq: int, body: bytes) -> SampleFrame:
    if len(body) < _SAMPLES_HEAD.size:
        raise FrameError("malformed", f"samples body of {len(body)} bytes is too short")
    code, enc_code, ch, n, t0_ns, period_ns, scale = _SAMPLES_HEAD.unpack_from(body, 0)
    stream = CODE_STREAM.get(code)
    if stream is None:
        raise FrameError("malformed", f"unknown stream code {code}")
    try:
        enc = Encoding(enc_code)
    except ValueError:
        raise FrameError("malformed", f"unknown sample encoding {enc_code}") from None
    if ch != len(CHANNELS[stream]):
        raise FrameError("malformed", f"{stream} has {len(CHANNELS[stream])} channels, got {ch}")
    if n < 1:
        raise FrameError("malformed", "frame carries no samples")
    if period_ns == 0 and n > 1:
        raise FrameError("malformed", f"period 0 with {n} samples")
    if not math.isfinite(scale) or scale == 0.0:
        raise FrameError("malformed", f"scale {scale} is not a finite non-zero number")
    expected = _SAMPLES_HEAD.size + n * ch * ENCODING_WIDTH[enc]
    if len(body) != expected:
        raise FrameError("malformed", f"samples body of {len(body)} bytes, expected {expected}")
    values = _decode_values(enc, body[_SAMPLES_HEAD.size :], n, ch, scale)
    if enc is Encoding.FLOAT32 and not np.isfinite(values).all():
        raise FrameError("malformed", "non-finite sample value")
    return SampleFrame(seq, stream, t0_ns, period_ns, values)


def _parse_hello(seq: int, body: bytes) -> Hello:
    try:
        version, boot_id = _HELLO_HEAD.unpack_from(body, 0)
        pos = _HELLO_HEAD.size
        fw_len = body[pos]
        firmware = body[pos + 1 : pos + 1 + fw_len].decode()
        pos += 1 + fw_len
        id_len = body[pos]
        device_id = body[pos + 1 : pos + 1 + id_len].decode()
        pos += 1 + id_len
        n_streams = body[pos]
        codes = body[pos + 1 : pos + 1 + n_streams]
        pos += 1 + n_streams
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise FrameError("malformed", f"hello body unreadable: {exc}") from None
    if pos != len(body) or len(codes) != n_streams or len(firmware.encode()) != fw_len:
        raise FrameError("malformed", "hello body length does not match its fields")
    if len(device_id.encode()) != id_len:
        raise FrameError("malformed", "hello device id truncated")
    if version != PROTOCOL_VERSION:
        raise FrameError("malformed", f"protocol version {version}, this agent speaks 1")
    try:
        streams = tuple(CODE_STREAM[c] for c in codes)
    except KeyError as exc:
        raise FrameError("malformed", f"unknown stream code {exc.args[0]} in hello") from None
    return Hello(seq, version, boot_id, firmware, device_id, streams)


class FrameDecoder:
    """Feed bytes, take frames. Counts everything it throws away.

    Counters go into a ``LinkCounters`` (pass the source's own so that one
    object shows the whole link): ``frames_ok``, ``bad_crc``, ``malformed``
    (bad COBS, oversize, unknown type, inconsistent body), ``bytes_dropped``
    (every byte of a rejected packet, delimiter included) and ``resyncs``
    (how many times the decoder lost sync and found it again: one per run of
    consecutive bad packets that ends at a good frame).
    """

    def __init__(self, counters: LinkCounters | None = None, max_payload: int = MAX_PAYLOAD):
        self.counters = counters if counters is not None else LinkCounters()
        self.max_encoded = max_payload + max_payload // 254 + 2
        self.last_error: FrameError | None = None
        self._buf = bytearray()
        self._discarding = False  # inside an oversize packet: drop until the next 0x00
        self._out_of_sync = False  # a bad packet was seen since the last good frame
        self._frames: deque[Frame] = deque()

    def feed(self, data: bytes) -> None:
        """Take bytes as read from the port (any split, any amount)."""
        start = 0
        end = len(data)
        while start < end:
            idx = data.find(b"\x00", start)
            if idx < 0:
                self._append_partial(data[start:])
                return
            chunk = data[start:idx]
            start = idx + 1
            if self._discarding:
                self._discarding = False
                self.counters.bytes_dropped += len(chunk) + 1
                continue
            if self._buf:
                self._buf += chunk
                packet = bytes(self._buf)
                self._buf.clear()
            else:
                packet = chunk
            if packet:
                self._packet(packet)

    def _append_partial(self, chunk: bytes) -> None:
        if self._discarding:
            self.counters.bytes_dropped += len(chunk)
            return
        if len(self._buf) + len(chunk) > self.max_encoded - 1:
            # No delimiter within the longest legal packet: cannot be a frame.
            self.counters.bytes_dropped += len(self._buf) + len(chunk)
            self._buf.clear()
            self._discarding = True
            self._reject(FrameError("malformed", "no delimiter within the maximum frame length"))
            return
        self._buf += chunk

    def _reject(self, err: FrameError) -> None:
        self.last_error = err
        if err.reason == "bad_crc":
            self.counters.bad_crc += 1
        else:
            self.counters.malformed += 1
        self._out_of_sync = True

    def _packet(self, packet: bytes) -> None:
        if len(packet) + 1 > self.max_encoded:
            self.counters.bytes_dropped += len(packet) + 1
            self._reject(FrameError("malformed", f"packet of {len(packet)} bytes is oversize"))
            return
        try:
            payload = cobs.decode(packet)
            frame = parse_payload(payload)
        except cobs.DecodeError as exc:
            self.counters.bytes_dropped += len(packet) + 1
            self._reject(FrameError("malformed", f"bad COBS: {exc}"))
            return
        except FrameError as exc:
            self.counters.bytes_dropped += len(packet) + 1
            self._reject(exc)
            return
        self.counters.frames_ok += 1
        if self._out_of_sync:
            self._out_of_sync = False
            self.counters.resyncs += 1
        if len(self._frames) >= MAX_PENDING_FRAMES:
            self._frames.popleft()
            self.counters.extra["frames_overflowed"] = (
                self.counters.extra.get("frames_overflowed", 0) + 1
            )
        self._frames.append(frame)

    def next_frame(self) -> Frame | None:
        """The next decoded frame, or ``None`` when more bytes are needed."""
        return self._frames.popleft() if self._frames else None

    def frames(self) -> list[Frame]:
        """Drain every decoded frame."""
        out = list(self._frames)
        self._frames.clear()
        return out

    def reset(self) -> None:
        """Forget a partial packet (call when the port is reopened)."""
        if self._buf:
            self.counters.bytes_dropped += len(self._buf)
        self._buf.clear()
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete packet (never above ``max_encoded``)."""
        return len(self._buf)


class SeqKind(IntEnum):
    """How a sample frame relates to the previous one of its stream."""

    FIRST = 0
    NEXT = 1
    GAP = 2
    DUPLICATE = 3


@dataclass(slots=True)
class _StreamPos:
    seq: int
    end_ns: int


class SeqTracker:
    """Per-stream sequence judgement: in order, gap (how many lost), or duplicate.

    Device time is the duplicate guard: a frame whose first sample is not
    after the last delivered sample of its stream is a duplicate (a re-sent or
    duplicated frame) and must be dropped, whatever its seq says; this also
    keeps delivered time strictly increasing. For a newer frame the 16-bit seq
    difference tells how many frames were lost in between.
    """

    def __init__(self) -> None:
        self._pos: dict[Stream, _StreamPos] = {}

    def judge(self, frame: SampleFrame) -> tuple[SeqKind, int]:
        """Return ``(kind, frames_missing)`` and advance on FIRST/NEXT/GAP."""
        pos = self._pos.get(frame.stream)
        if pos is None:
            self._pos[frame.stream] = _StreamPos(frame.seq, frame.end_ns)
            return SeqKind.FIRST, 0
        if frame.t0_ns <= pos.end_ns:
            return SeqKind.DUPLICATE, 0
        diff = (frame.seq - pos.seq) & 0xFFFF
        pos.seq = frame.seq
        pos.end_ns = frame.end_ns
        if diff == 1:
            return SeqKind.NEXT, 0
        return SeqKind.GAP, (diff - 1) & 0xFFFF

    def last_end_ns(self, stream: Stream) -> int | None:
        """Device time of the last accepted sample of ``stream``."""
        pos = self._pos.get(stream)
        return None if pos is None else pos.end_ns

    def reset(self, stream: Stream | None = None) -> None:
        """Forget one stream (or all, after a device reboot)."""
        if stream is None:
            self._pos.clear()
        else:
            self._pos.pop(stream, None)
