"""A serial wearable (smart textile) on a real pseudo-terminal.

This is the *device* side of the serial link, written from the wire
specification (docs/wire-protocol.md, "## Serial") without importing the
agent: its own COBS encoder, its own table-driven CRC-16/CCITT-FALSE and its
own packing. Both sides are bound by the same test vectors in their tests, so
a mistake in either shows up as a failing vector instead of two matching bugs.

``PtyDevice`` serves frames on an ``os.openpty()`` pair and exposes the slave
through a stable symlink, so that the port can vanish (pty closed, link
removed) and come back (new pty, link re-pointed) like a USB adapter being
unplugged. Faults are injected per packet from a seeded RNG, and a ledger
records exactly which sample frames left the device intact, which were
corrupted and which were never sent, so tests can demand exact accounting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

# --------------------------------------------------------------------------- wire constants

FRAME_HELLO = 0x01
FRAME_SAMPLES = 0x02
FRAME_HEARTBEAT = 0x03
PROTOCOL_VERSION = 1
MAX_PAYLOAD = 2048

ENC_INT16 = 1
ENC_INT24 = 2
ENC_INT32 = 3
ENC_FLOAT32 = 4
_ENC_LIMITS = {ENC_INT16: 2**15 - 1, ENC_INT24: 2**23 - 1, ENC_INT32: 2**31 - 1}
_ENC_WIDTH = {ENC_INT16: 2, ENC_INT24: 3, ENC_INT32: 4, ENC_FLOAT32: 4}


@dataclass(frozen=True, slots=True)
class WireStream:
    """How one stream is put on the wire: code, encoding, scale (units per count)."""

    code: int
    channels: int
    encoding: int
    scale: float
    irregular: bool = False  # one sample per frame, period 0 (event-stamped data)


# Resolution choices: ECG 1 uV in int24 (ample headroom for saturation faults),
# ACC 1 mg in int16 (+-32 g), temperatures/humidity 0.01 in int16, HR 0.1 bpm,
# RR 1 ms.
WIRE_STREAMS: dict[str, WireStream] = {
    "ecg": WireStream(1, 1, ENC_INT24, 1.0),
    "acc": WireStream(2, 3, ENC_INT16, 1.0),
    "skin_temp": WireStream(3, 1, ENC_INT16, 0.01),
    "env": WireStream(4, 2, ENC_INT16, 0.01),
    "hr": WireStream(5, 1, ENC_INT16, 0.1),
    "rr": WireStream(6, 1, ENC_INT16, 0.001, irregular=True),
}

_CRC_TABLE: list[int] = []
for _i in range(256):
    _c = _i << 8
    for _ in range(8):
        _c = ((_c << 1) ^ 0x1021) if _c & 0x8000 else (_c << 1)
    _CRC_TABLE.append(_c & 0xFFFF)


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor."""
    crc = 0xFFFF
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing (Cheshire & Baker 1999), without the delimiter."""
    out = bytearray()
    block = bytearray()
    for b in data:
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def packet(frame_type: int, seq: int, body: bytes) -> bytes:
    """One packet on the wire: COBS([type][seq LE][body][crc LE]) + 0x00."""
    payload = struct.pack("<BH", frame_type, seq & 0xFFFF) + body
    payload += struct.pack("<H", crc16_ccitt_false(payload))
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return cobs_encode(payload) + b"\x00"


def quantise(values: np.ndarray, ws: WireStream) -> np.ndarray:
    """Physical values -> wire counts, saturating at the encoding's range like an ADC."""
    if ws.encoding == ENC_FLOAT32:
        return np.asarray(values, dtype=np.float32)
    lim = _ENC_LIMITS[ws.encoding]
    counts = np.rint(np.asarray(values, dtype=np.float64) / ws.scale)
    counts = np.nan_to_num(counts, nan=0.0, posinf=lim, neginf=-lim)
    return np.clip(counts, -lim, lim).astype(np.int64)


def samples_body(ws: WireStream, t0_ns: int, period_ns: int, counts: np.ndarray) -> bytes:
    """SAMPLES body: 21-byte header then samples, channel-interleaved, little-endian."""
    n = counts.shape[0]
    head = struct.pack("<BBBHQIf", ws.code, ws.encoding, ws.channels, n, t0_ns, period_ns, ws.scale)
    flat = counts.reshape(-1)
    if ws.encoding == ENC_INT16:
        data = flat.astype("<i2").tobytes()
    elif ws.encoding == ENC_INT32:
        data = flat.astype("<i4").tobytes()
    elif ws.encoding == ENC_FLOAT32:
        data = flat.astype("<f4").tobytes()
    else:  # int24: low three bytes of the two's complement int32
        data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in flat)
    return head + data


def hello_body(boot_id: int, firmware: str, device_id: str, streams: list[str]) -> bytes:
    """HELLO body: version, boot id, length-prefixed firmware and id, stream codes."""
    fw = firmware.encode()[:255]
    dev = device_id.encode()[:255]
    codes = bytes(WIRE_STREAMS[s].code for s in streams)
    return (
        struct.pack("<BI", PROTOCOL_VERSION, boot_id)
        + bytes([len(fw)])
        + fw
        + bytes([len(dev)])
        + dev
        + bytes([len(codes)])
        + codes
    )


def heartbeat_body(device_ns: int, boot_id: int) -> bytes:
    """HEARTBEAT body: device clock (ns since boot) and boot id."""
    return struct.pack("<QI", device_ns, boot_id)


# --------------------------------------------------------------------------- samples


class ChunkLike(Protocol):
    """What the device needs from a simulator chunk (firmware_sim.physiology.Chunk)."""

    streams: dict[str, tuple[np.ndarray, np.ndarray]]


class GeneratorLike(Protocol):
    """``firmware_sim.physiology.Generator`` or anything with the same ``advance``."""

    def advance(self, seconds: float) -> ChunkLike: ...


@dataclass
class _Chunk:
    streams: dict[str, tuple[np.ndarray, np.ndarray]]
    labels: list[object] = field(default_factory=list)


class SineGenerator:
    """Small deterministic stand-in for the physiology simulator.

    Regular streams at fixed rates with seeded sinusoids plus noise; RR beats
    at a seeded, slightly varying interval. Continuous across ``advance`` calls:
    sample k of a stream is always at ``k / rate``.
    """

    RATES: ClassVar[dict[str, float]] = {
        "ecg": 250.0,
        "acc": 50.0,
        "skin_temp": 1.0,
        "env": 0.2,
        "hr": 1.0,
    }

    def __init__(self, seed: int = 0, streams: tuple[str, ...] | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self.streams = streams or ("ecg", "acc", "skin_temp", "env", "hr", "rr")
        self._k = dict.fromkeys(self.streams, 0)
        self._now = 0.0
        self._next_beat = 0.8

    def advance(self, seconds: float) -> _Chunk:
        """Samples with ``now <= t < now + seconds``."""
        end = self._now + seconds
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in self.streams:
            if name == "rr":
                continue
            rate = self.RATES[name]
            k0 = self._k[name]
            k1 = int(np.ceil(end * rate - 1e-9))
            k = np.arange(k0, max(k0, k1))
            self._k[name] = max(k0, k1)
            t = k / rate
            out[name] = (t, self._values(name, t))
        if "rr" in self.streams:
            beats: list[float] = []
            rrs: list[float] = []
            while self._next_beat < end:
                rr = float(0.8 + 0.05 * self._rng.standard_normal())
                beats.append(self._next_beat)
                rrs.append(rr)
                self._next_beat += rr
            out["rr"] = (np.asarray(beats), np.asarray(rrs, dtype=np.float32).reshape(-1, 1))
        self._now = end
        return _Chunk(out)

    def _values(self, name: str, t: np.ndarray) -> np.ndarray:
        n = t.shape[0]
        noise = self._rng.standard_normal
        if name == "ecg":
            v = 800.0 * np.sin(2 * np.pi * 1.2 * t) ** 15 + 20.0 * noise(n)
            return v.reshape(-1, 1).astype(np.float32)
        if name == "acc":
            base = np.array([0.0, 0.0, 1000.0])
            v = base + 50.0 * np.sin(2 * np.pi * 0.5 * t)[:, None] + 10.0 * noise((n, 3))
            return v.astype(np.float32)
        if name == "skin_temp":
            return (
                (33.5 + 0.2 * np.sin(t / 60.0) + 0.01 * noise(n)).reshape(-1, 1).astype(np.float32)
            )
        if name == "env":
            return np.stack([22.0 + 0.1 * noise(n), 45.0 + noise(n)], axis=1).astype(np.float32)
        return (72.0 + 3.0 * np.sin(t / 30.0)).reshape(-1, 1).astype(np.float32)


# --------------------------------------------------------------------------- framing


@dataclass(frozen=True, slots=True)
class DeviceFrame:
    """One packet the device is about to send, with what the ledger needs."""

    data: bytes
    kind: str  # "samples" | "hello" | "heartbeat"
    ready_s: float  # simulation time at which the device can send it
    stream: str = ""
    seq: int = 0
    t0_ns: int = 0
    period_ns: int = 0
    values: np.ndarray | None = None  # physical values the agent must reconstruct


class Framer:
    """Turns simulator chunks into packets: per-stream seq counters, device clock.

    Device clock = ``boot_offset_ns`` + simulation time, in integer ns. Frames
    carry at most ``max_samples`` samples and only runs with a constant period;
    irregular streams (RR) go one sample per frame.
    """

    def __init__(self, boot_offset_ns: int = 3_000_000_000) -> None:
        self.boot_offset_ns = boot_offset_ns
        self._seq: dict[str, int] = {}
        self._ctl_seq = 0

    def device_ns(self, sim_t: float) -> int:
        """Device clock at simulation time ``sim_t``."""
        return self.boot_offset_ns + round(sim_t * 1e9)

    def _next_seq(self, stream: str) -> int:
        s = self._seq.get(stream, 0)
        self._seq[stream] = (s + 1) & 0xFFFF
        return s

    def _ctl(self) -> int:
        seq = self._ctl_seq
        self._ctl_seq = (seq + 1) & 0xFFFF
        return seq

    def hello(
        self, sim_t: float, boot_id: int, firmware: str, device_id: str, streams: list[str]
    ) -> DeviceFrame:
        """A HELLO packet (control seq counter, shared with heartbeats)."""
        seq = self._ctl()
        body = hello_body(boot_id, firmware, device_id, streams)
        return DeviceFrame(packet(FRAME_HELLO, seq, body), "hello", sim_t, seq=seq)

    def heartbeat(self, sim_t: float, boot_id: int) -> DeviceFrame:
        """A HEARTBEAT packet carrying the device clock at ``sim_t``."""
        seq = self._ctl()
        body = heartbeat_body(self.device_ns(sim_t), boot_id)
        return DeviceFrame(packet(FRAME_HEARTBEAT, seq, body), "heartbeat", sim_t, seq=seq)

    def frames(self, chunk: ChunkLike) -> list[DeviceFrame]:
        """Packets for every stream in ``chunk``, ordered by the time they are ready."""
        out: list[DeviceFrame] = []
        for name, (t, values) in chunk.streams.items():
            ws = WIRE_STREAMS.get(name)
            if ws is None or len(t) == 0:
                continue
            values = np.asarray(values, dtype=np.float32).reshape(len(t), ws.channels)
            tns = self.boot_offset_ns + np.rint(np.asarray(t, dtype=np.float64) * 1e9).astype(
                np.int64
            )
            for a, b, period in self._runs(tns, ws):
                counts = quantise(values[a:b], ws)
                seq = self._next_seq(name)
                body = samples_body(ws, int(tns[a]), period, counts)
                phys = (counts.astype(np.float32) * np.float32(ws.scale)).astype(np.float32)
                out.append(
                    DeviceFrame(
                        packet(FRAME_SAMPLES, seq, body),
                        "samples",
                        float(t[b - 1]),
                        name,
                        seq,
                        int(tns[a]),
                        period,
                        phys,
                    )
                )
        out.sort(key=lambda f: f.ready_s)
        return out

    @staticmethod
    def _runs(tns: np.ndarray, ws: WireStream) -> list[tuple[int, int, int]]:
        n = len(tns)
        max_n = (MAX_PAYLOAD - 5 - 21) // (ws.channels * _ENC_WIDTH[ws.encoding])
        if ws.irregular or n == 1:
            return [(i, i + 1, 0) for i in range(n)]
        d = np.diff(tns)
        period = int(np.median(d))
        runs: list[tuple[int, int, int]] = []
        a = 0
        for i in range(1, n + 1):
            # Allow 1 us of rounding between the simulator's float times and ns.
            if i == n or abs(int(d[i - 1]) - period) > 1000 or i - a >= max_n:
                runs.append((a, i, period if i - a > 1 else 0))
                a = i
        return runs


# --------------------------------------------------------------------------- faults and ledger


@dataclass(frozen=True)
class FaultConfig:
    """Per-packet fault probabilities (0..1) and scheduled port vanishes.

    Byte-level faults never touch the packet's own trailing 0x00, so each one
    costs exactly that packet; ``cut_short`` (packet stops mid-way, no
    delimiter) and a ``garbage`` burst that does not end in 0x00 also cost the
    packet sent after them, and the ledger records that collateral loss.
    """

    bit_flip: float = 0.0
    drop_byte: float = 0.0
    dup_byte: float = 0.0
    cut_short: float = 0.0
    garbage: float = 0.0  # a burst of 1..64 random bytes before the packet
    dup_frame: float = 0.0  # an intact sample packet sent twice
    vanish_every_s: float | None = None  # device seconds between port vanishes
    vanish_for_s: float = 1.0  # device seconds of data lost per vanish
    seed: int = 0

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> FaultConfig:
        """Parse ``"bit_flip=0.01,garbage=0.005,vanish_every_s=20"`` (CLI form)."""
        kw: dict[str, float] = {}
        names = {f for f in cls.__dataclass_fields__ if f != "seed"}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, val = part.partition("=")
            if key not in names:
                raise ValueError(f"unknown fault {key!r}; choose from {sorted(names)}")
            try:
                kw[key] = float(val)
            except ValueError:
                raise ValueError(f"fault {key!r} needs a number, got {val!r}") from None
        return cls(**kw, seed=seed)  # type: ignore[arg-type]


@dataclass
class Ledger:
    """What the device did, for exact accounting in tests.

    ``intact`` holds every sample frame that left the device unmodified (the
    agent must deliver each exactly once); ``lost`` holds (stream, seq) of
    sample frames corrupted, lost as collateral or not sent (no reader, port
    vanished). Counts cover every packet kind.
    """

    intact: list[DeviceFrame] = field(default_factory=list)
    lost: list[tuple[str, int]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def bump(self, key: str, by: int = 1) -> None:
        """Add to one counter."""
        self.counts[key] = self.counts.get(key, 0) + by

    def samples(self, stream: str) -> np.ndarray:
        """Concatenated physical values of ``stream`` in intact frames, in send order."""
        vals = [f.values for f in self.intact if f.stream == stream and f.values is not None]
        if not vals:
            return np.zeros((0, WIRE_STREAMS[stream].channels), dtype=np.float32)
        return np.concatenate(vals)

    def n_samples(self, stream: str) -> int:
        """Number of samples of ``stream`` in intact frames."""
        return len(self.samples(stream))

    def missing_between(self, stream: str) -> int:
        """Lost frames of ``stream`` whose seq lies between its first and last intact frame."""
        seqs = [f.seq for f in self.intact if f.stream == stream]
        if not seqs:
            return 0
        lo, hi = min(seqs), max(seqs)
        return sum(1 for s, q in self.lost if s == stream and lo < q < hi)


class FaultInjector:
    """Applies ``FaultConfig`` to packets; pure apart from its seeded RNG."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.pending_merge = False  # previous bytes ended without a delimiter

    def apply(self, data: bytes, ledger: Ledger) -> tuple[list[bytes], bool]:
        """Return ``(chunks_to_write, intact)`` for one packet.

        ``intact`` is False if the packet will not reach the agent whole.
        """
        cfg = self.config
        rng = self.rng
        chunks: list[bytes] = []
        merged = self.pending_merge
        self.pending_merge = False
        if cfg.garbage and rng.random() < cfg.garbage:
            burst = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            chunks.append(burst)
            ledger.bump("garbage_bursts")
            if burst[-1] != 0:
                merged = True
        body, end = bytearray(data[:-1]), data[-1:]
        fault = ""
        r = rng.random()
        for name in ("bit_flip", "drop_byte", "dup_byte", "cut_short"):
            p = getattr(cfg, name)
            if r < p:
                fault = name
                break
            r -= p
        if fault == "bit_flip":
            i = rng.randrange(len(body))
            body[i] ^= 1 << rng.randrange(8)
        elif fault == "drop_byte":
            del body[rng.randrange(len(body))]
        elif fault == "dup_byte":
            i = rng.randrange(len(body))
            body.insert(i, body[i])
        elif fault == "cut_short":
            del body[rng.randint(1, len(body) - 1) :]
            end = b""
            self.pending_merge = True
        if fault:
            ledger.bump(f"fault_{fault}")
        chunks.append(bytes(body) + end)
        return chunks, not fault and not merged


# --------------------------------------------------------------------------- pty device


class PtyDevice:
    """A serial wearable served on a real pty, reachable through ``link`` (a symlink).

    A background thread draws samples from ``generator``, frames them and
    writes them to the pty master, paced in real time (``realtime=True``) or
    as fast as the reader takes them. It only sends while a reader has the
    port open (a pty master sees POLLHUP otherwise); in fast mode it waits for
    one, in real-time mode the data of that time is lost and recorded so.
    """

    def __init__(
        self,
        link: str | os.PathLike[str],
        generator: GeneratorLike | None = None,
        *,
        device_id: str = "textile-01",
        firmware: str = "sim-serial-1.0",
        seed: int = 0,
        realtime: bool = False,
        frame_s: float = 0.2,
        duration_s: float | None = None,
        faults: FaultConfig | None = None,
        hello_every_s: float = 5.0,
        heartbeat_every_s: float = 1.0,
        settle_s: float = 0.05,
        drain_s: float = 5.0,
        vanish_wall_s: float = 0.3,
        boot_id: int | None = None,
        streams: tuple[str, ...] | None = None,
    ) -> None:
        self.link = Path(link)
        self.generator: GeneratorLike = generator or SineGenerator(seed, streams)
        self.device_id = device_id
        self.firmware = firmware
        self.realtime = realtime
        self.frame_s = frame_s
        self.duration_s = duration_s
        self.faults = FaultInjector(faults or FaultConfig(seed=seed))
        self.hello_every_s = hello_every_s
        self.heartbeat_every_s = heartbeat_every_s
        self.settle_s = settle_s
        self.drain_s = drain_s
        self.vanish_wall_s = vanish_wall_s
        self.boot_id = boot_id if boot_id is not None else random.Random(seed).getrandbits(32)
        self.stream_names = list(streams or getattr(self.generator, "streams", WIRE_STREAMS))
        self.framer = Framer()
        self.ledger = Ledger()
        self.sim_t = 0.0
        self._master: int | None = None
        self._slave_name = ""
        self._attached = False
        self._stop = threading.Event()
        self._done = threading.Event()
        self._vanish_request: float | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- pty plumbing

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        name = os.ttyname(slave)
        self._slave_name = name
        # Close our slave end: with no process holding it the master reports
        # POLLHUP, which is how the device knows whether a reader is attached.
        os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(name, tmp)
        os.replace(tmp, self.link)
        self._attached = False

    def _close_pty(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        if self._master is not None:
            os.close(self._master)
            self._master = None
        self._attached = False
        self.faults.pending_merge = False

    def _reader_present(self) -> bool:
        if self._master is None:
            return False
        p = select.poll()
        p.register(self._master, select.POLLHUP)
        return not any(ev & select.POLLHUP for _, ev in p.poll(0))

    def _pending_input(self) -> int:
        """Bytes written but not yet read by the reader (the slave's input queue)."""
        try:
            fd = os.open(self._slave_name, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0
        finally:
            os.close(fd)

    def _drain(self) -> None:
        """Before the port goes, let the reader take what was already written.

        The ledger counts those frames as sent, so they must really arrive;
        waits at most ``drain_s`` (a reader that stopped reading loses them).
        """
        deadline = time.monotonic() + self.drain_s
        quiet = 0
        # Bytes written to the master reach the slave's queue through the tty
        # flip buffer a moment later, so one empty reading is not proof: ask
        # for several in a row.
        while self._master is not None and time.monotonic() < deadline and quiet < 5:
            if not self._reader_present():
                return
            quiet = quiet + 1 if self._pending_input() == 0 else 0
            time.sleep(0.005)

    def _wait_reader(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if self._reader_present():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return False

    def _write_all(self, data: bytes) -> bool:
        """Write every byte unless the reader leaves or we are stopped."""
        view = memoryview(data)
        assert self._master is not None
        p = select.poll()
        p.register(self._master, select.POLLOUT | select.POLLHUP)
        while view:
            if self._stop.is_set():
                return False
            events = p.poll(100)
            if any(ev & select.POLLHUP for _, ev in events):
                return False
            if not events:
                continue
            try:
                n = os.write(self._master, view)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return False
            view = view[n:]
        return True

    # -- life cycle

    def start(self) -> PtyDevice:
        """Create the pty and link, start the sender thread."""
        self.link.parent.mkdir(parents=True, exist_ok=True)
        self._open_pty()
        self._thread = threading.Thread(target=self._run, name="pty-device", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop sending, let the reader take what was sent, close the pty, remove the link.

        Closing the master discards whatever the reader has not read yet, and
        the ledger already counts it as sent, hence the drain first.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._drain()
        self._close_pty()

    def wait_done(self, timeout: float) -> bool:
        """Wait until ``duration_s`` of device time has been sent."""
        return self._done.wait(timeout)

    def vanish(self, down_wall_s: float = 0.3) -> None:
        """Ask the sender to drop the port now for ``down_wall_s`` seconds."""
        self._vanish_request = down_wall_s

    def __enter__(self) -> PtyDevice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sender

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced to tests via .error
            self.error = exc
        finally:
            self._done.set()

    def _lose(self, frame: DeviceFrame, why: str) -> None:
        with self._lock:
            self.ledger.bump(why)
            if frame.kind == "samples":
                self.ledger.lost.append((frame.stream, frame.seq))

    def _ensure_reader(self) -> bool:
        """True if a reader is attached now (sending a HELLO on a new attachment)."""
        present = self._reader_present()
        if not present and not self.realtime:
            present = self._wait_reader(None)
        if present and not self._attached:
            # pyserial flushes the input buffer while opening: let it finish.
            time.sleep(self.settle_s)
            self._attached = True
            # Bytes of a packet cut short before were flushed by the open.
            self.faults.pending_merge = False
            self._emit(self._hello())
        elif not present:
            self._attached = False
        return present

    def _emit(self, frame: DeviceFrame) -> None:
        chunks, intact = self.faults.apply(frame.data, self.ledger)
        for c in chunks:
            if not self._write_all(c):
                self._attached = False
                self._lose(frame, "unsent_no_reader")
                return
        with self._lock:
            if intact:
                self.ledger.bump(f"{frame.kind}_intact")
                if frame.kind == "samples":
                    self.ledger.intact.append(frame)
            else:
                self.ledger.bump(f"{frame.kind}_corrupted")
                if frame.kind == "samples":
                    self.ledger.lost.append((frame.stream, frame.seq))
        cfg = self.faults.config
        if (
            intact
            and frame.kind == "samples"
            and cfg.dup_frame
            and self.faults.rng.random() < cfg.dup_frame
            and self._write_all(frame.data)
        ):
            with self._lock:
                self.ledger.bump("duplicates_sent")

    def _hello(self) -> DeviceFrame:
        return self.framer.hello(
            self.sim_t, self.boot_id, self.firmware, self.device_id, self.stream_names
        )

    def _do_vanish(self, down_wall_s: float, skip_sim_s: float) -> None:
        self._drain()
        self._close_pty()
        with self._lock:
            self.ledger.bump("vanishes")
        t_gone = time.monotonic()
        self._skip(skip_sim_s)
        self._stop.wait(down_wall_s)
        if self._stop.is_set():
            return
        if self.realtime:
            # A real device keeps sampling while unplugged: what it measured
            # during the outage is lost, not sent late.
            self._skip(time.monotonic() - t_gone - skip_sim_s)
        self._open_pty()

    def _skip(self, seconds: float) -> None:
        """Generate ``seconds`` of data that never leaves the device."""
        end = self.sim_t + seconds
        while self.sim_t < end - 1e-9:
            for f in self.framer.frames(self.generator.advance(self.frame_s)):
                self._lose(f, "unsent_vanished")
            self.sim_t += self.frame_s

    def _loop(self) -> None:
        wall0 = time.monotonic()
        sim0 = self.sim_t
        next_hello = self.sim_t + self.hello_every_s
        next_beat = self.sim_t + self.heartbeat_every_s
        cfg = self.faults.config
        next_vanish = self.sim_t + cfg.vanish_every_s if cfg.vanish_every_s else None
        while not self._stop.is_set():
            if self.duration_s is not None and self.sim_t >= sim0 + self.duration_s - 1e-9:
                self._done.set()
                return
            if self._vanish_request is not None:
                down, self._vanish_request = self._vanish_request, None
                self._do_vanish(down, 0.0)
                continue
            if next_vanish is not None and self.sim_t >= next_vanish:
                next_vanish += cfg.vanish_every_s or 0.0
                self._do_vanish(self.vanish_wall_s, cfg.vanish_for_s)
                continue
            frames = self.framer.frames(self.generator.advance(self.frame_s))
            self.sim_t += self.frame_s
            if self.sim_t >= next_hello:
                next_hello += self.hello_every_s
                frames.append(self._hello())
            if self.sim_t >= next_beat:
                next_beat += self.heartbeat_every_s
                frames.append(self.framer.heartbeat(self.sim_t, self.boot_id))
            if self.realtime:
                delay = wall0 + (self.sim_t - sim0) - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            for f in frames:
                if self._stop.is_set():
                    return
                if self._ensure_reader():
                    self._emit(f)
                else:
                    self._lose(f, "unsent_no_reader")


def serve(
    link: str,
    *,
    seed: int = 0,
    realtime: bool = True,
    faults: FaultConfig | None = None,
    duration_s: float | None = None,
    generator: GeneratorLike | None = None,
    on_ready: Callable[[PtyDevice], None] | None = None,
) -> Ledger:
    """Run a device until interrupted (or ``duration_s``); return its ledger."""
    dev = PtyDevice(
        link, generator, seed=seed, realtime=realtime, faults=faults, duration_s=duration_s
    )
    dev.start()
    if on_ready is not None:
        on_ready(dev)
    try:
        while not dev.wait_done(0.5):
            pass
    finally:
        dev.stop()
    if dev.error is not None:
        raise dev.error
    return dev.ledger
