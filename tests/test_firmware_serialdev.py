"""The simulated serial wearable: its own encoder vs the spec vectors, framing, faults, pty."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import serial

from firmware_sim.physiology import Generator, SimConfig, make_patient
from firmware_sim.serialdev import (
    WIRE_STREAMS,
    FaultConfig,
    FaultInjector,
    Framer,
    Ledger,
    PtyDevice,
    SineGenerator,
    cobs_encode,
    crc16_ccitt_false,
    heartbeat_body,
    hello_body,
    packet,
    quantise,
    samples_body,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-protocol.md"

# The same vectors as tests/test_serial_frame.py, from docs/wire-protocol.md.
VECTORS = {
    "heartbeat": "03 03 01 01 04 ca 9a 3b 01 01 01 07 04 03 02 01 fd e8 00",
    "skin_temp": "08 02 02 01 03 01 01 01 01 05 f2 05 2a 01 01 01 01 01 01 01 09 0a d7 23 3c 42 0e "
    "90 89 00",
    "ecg": "03 02 07 05 01 02 01 03 01 04 5e d0 b2 01 01 01 01 03 09 3d 01 01 03 80 3f "
    "01 01 06 ff ff ff e8 03 03 a0 49 00",
    "hello": "02 01 01 14 01 ef be ad de 03 31 2e 30 04 74 78 2d 31 02 01 02 09 1e 00",
}


def test_vectors_in_docs() -> None:
    doc = " ".join(DOC.read_text().split())
    for v in VECTORS.values():
        assert v in doc


def test_device_encoder_matches_vectors() -> None:
    assert (
        packet(0x03, 1, heartbeat_body(1_000_000_000, 0x01020304)).hex(" ") == VECTORS["heartbeat"]
    )
    body = samples_body(WIRE_STREAMS["skin_temp"], 5_000_000_000, 0, np.array([[3650]]))
    assert packet(0x02, 0x0102, body).hex(" ") == VECTORS["skin_temp"]
    body = samples_body(
        WIRE_STREAMS["ecg"], 3_000_000_000, 4_000_000, np.array([[0], [-1], [1000]])
    )
    assert packet(0x02, 7, body).hex(" ") == VECTORS["ecg"]
    body = hello_body(0xDEADBEEF, "1.0", "tx-1", ["ecg", "acc"])
    assert packet(0x01, 0, body).hex(" ") == VECTORS["hello"]


def test_crc_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1


@pytest.mark.parametrize(
    ("raw", "enc"),
    [
        # Examples from Cheshire & Baker / the COBS Wikipedia article.
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255)) + b"\x01"),
    ],
)
def test_cobs_reference_examples(raw: bytes, enc: bytes) -> None:
    assert cobs_encode(raw) == enc


def test_quantise_saturates_like_an_adc() -> None:
    ws = WIRE_STREAMS["acc"]
    q = quantise(np.array([[1e9, -1e9, np.nan]]), ws)
    assert q.tolist() == [[32767, -32767, 0]]
    assert quantise(np.array([[36.504]]), WIRE_STREAMS["skin_temp"]).tolist() == [[3650]]


def test_framer_runs_and_seq_per_stream() -> None:
    framer = Framer(boot_offset_ns=1_000)
    gen = SineGenerator(seed=1)
    frames = framer.frames(gen.advance(0.2)) + framer.frames(gen.advance(0.2))
    ecg = [f for f in frames if f.stream == "ecg"]
    assert [f.seq for f in ecg] == [0, 1]
    assert all(f.values is not None and f.values.shape == (50, 1) for f in ecg)
    assert [f.period_ns for f in ecg] == [4_000_000, 4_000_000]
    assert ecg[1].t0_ns == 1_000 + 200_000_000
    acc = [f for f in frames if f.stream == "acc"]
    assert [f.seq for f in acc] == [0, 1] and acc[0].values is not None
    assert acc[0].values.shape == (10, 3)
    rr = [f for f in framer.frames(gen.advance(5.0)) if f.stream == "rr"]
    assert rr and all(f.period_ns == 0 and f.values is not None for f in rr)
    assert all(f.values.shape == (1, 1) for f in rr if f.values is not None)


def test_framer_on_physiology_generator_keeps_every_sample() -> None:
    gen = Generator(make_patient(0, seed=1), SimConfig())
    framer = Framer()
    n_in: dict[str, int] = {}
    n_out: dict[str, int] = {}
    for _ in range(10):
        chunk = gen.advance(0.5)
        for name, (t, _) in chunk.streams.items():
            n_in[name] = n_in.get(name, 0) + len(t)
        for f in framer.frames(chunk):
            assert f.values is not None
            n_out[f.stream] = n_out.get(f.stream, 0) + f.values.shape[0]
    assert {k: v for k, v in n_in.items() if v} == n_out


def test_fault_injector_is_deterministic_and_reports_collateral() -> None:
    data = packet(0x02, 1, samples_body(WIRE_STREAMS["hr"], 0, 0, np.array([[700]])))
    cfg = FaultConfig(cut_short=1.0, seed=4)
    inj, ledger = FaultInjector(cfg), Ledger()
    chunks, intact = inj.apply(data, ledger)
    assert not intact and inj.pending_merge and not chunks[-1].endswith(b"\x00")
    # The next packet merges with the cut one: the injector says it is lost too.
    inj2 = FaultInjector(FaultConfig(seed=4))
    inj2.pending_merge = True
    _, intact2 = inj2.apply(data, ledger)
    assert not intact2
    a = [FaultInjector(FaultConfig(bit_flip=0.5, seed=9)).apply(data, Ledger()) for _ in range(2)]
    assert a[0] == a[1]


@pytest.mark.parametrize("fault", ["bit_flip", "drop_byte", "dup_byte"])
def test_byte_faults_keep_the_delimiter(fault: str) -> None:
    data = packet(0x03, 1, heartbeat_body(5, 6))
    inj = FaultInjector(FaultConfig(**{fault: 1.0}, seed=1))  # type: ignore[arg-type]
    ledger = Ledger()
    (out,), intact = inj.apply(data, ledger)
    assert not intact and out != data and out.endswith(b"\x00")
    assert ledger.counts[f"fault_{fault}"] == 1


def test_fault_config_parse() -> None:
    cfg = FaultConfig.parse("bit_flip=0.01, garbage=0.5,vanish_every_s=20", seed=3)
    assert (cfg.bit_flip, cfg.garbage, cfg.vanish_every_s, cfg.seed) == (0.01, 0.5, 20.0, 3)
    with pytest.raises(ValueError, match="unknown fault"):
        FaultConfig.parse("bitflip=1")
    with pytest.raises(ValueError, match="needs a number"):
        FaultConfig.parse("garbage=lots")


def test_pty_device_waits_for_reader_then_hello_first(tmp_path: Path) -> None:
    link = tmp_path / "tty0"
    dev = PtyDevice(link, seed=2, duration_s=1.0).start()
    try:
        time.sleep(0.2)
        assert link.is_symlink() and os.path.exists(link)
        assert dev.ledger.counts == {}  # fast mode: nothing generated without a reader
        with serial.Serial(str(link), timeout=0.2) as port:
            assert dev.wait_done(5.0)
            time.sleep(0.1)
            data = port.read(200_000)
        assert data.startswith(bytes.fromhex("02 01"))  # HELLO: COBS code, type 0x01
        assert dev.ledger.counts["hello_intact"] == 1
        assert dev.ledger.n_samples("ecg") == 250
    finally:
        dev.stop()
    assert not link.exists()
    assert dev.error is None


def test_pty_device_vanish_and_return(tmp_path: Path) -> None:
    link = tmp_path / "tty0"
    dev = PtyDevice(link, seed=2, realtime=True, drain_s=0.0).start()
    try:
        dev.vanish(0.3)
        deadline = time.monotonic() + 2.0
        while os.path.lexists(link) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.lexists(link)
        while not os.path.lexists(link) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.path.lexists(link)
        assert dev.ledger.counts["vanishes"] == 1
        # Real time without a reader: data is lost and recorded as such.
        time.sleep(0.5)
        assert dev.ledger.counts.get("unsent_no_reader", 0) > 0
        with serial.Serial(str(link), timeout=0.1) as port:  # the new pty is usable
            assert port.is_open
    finally:
        dev.stop()


def test_serve_serial_entry_point(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from edgeagent.sources.serial import SerialSource

    link = tmp_path / "ttyCLI"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "firmware_sim.serve_serial", "--link", str(link), "--fast"),
            *("--duration", "2", "--sine", "--faults", "bit_flip=0.2", "--seed", "4"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        first = json.loads(proc.stdout.readline())
        assert first["port"] == str(link)
        blocks: list[object] = []
        src = SerialSource(str(link), "cli", blocks.append, max_skew_s=None)
        src.start()
        last = json.loads(proc.stdout.readline())
        assert proc.wait(10) == 0
        time.sleep(0.2)
        src.stop()
    finally:
        proc.kill()
    ledger = last["ledger"]
    assert ledger["samples_intact"] > 0 and ledger.get("fault_bit_flip", 0) > 0
    assert src.counters.frames_ok == sum(
        ledger.get(k, 0) for k in ("samples_intact", "hello_intact", "heartbeat_intact")
    )


def test_serve_serial_rejects_bad_faults() -> None:
    from firmware_sim.serve_serial import main

    assert main(["--faults", "nope=1"]) == 2
