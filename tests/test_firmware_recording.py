"""firmware_sim.recording and the firmware_sim CLI: write, read back, replay on a real pty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial

from firmware_sim import __main__ as cli
from firmware_sim.physiology import Chunk, Generator, Label, SimConfig, make_patient, simulate
from firmware_sim.recording import (
    RecordingFormatError,
    RecordingPlayer,
    RecordingWriter,
    read_recording,
    record,
)

CFG = SimConfig(episodes=(Label(4.0, 24.0, "tachycardia"), Label(26.0, 50.0, "lead_off")))
TOL = {"ecg": 0.006, "acc": 0.06, "skin_temp": 6e-4, "env": 0.006, "hr": 0.006, "rr": 6e-5}


def test_record_then_read_round_trip(tmp_path: Path) -> None:
    p = make_patient(1, seed=3)
    summary = record(tmp_path, p, 30.0, CFG, chunk_s=4.0)
    ref = simulate(p, 30.0, CFG)
    back = read_recording(tmp_path)
    assert set(back.streams) == set(ref.streams)
    for name, (t, v) in ref.streams.items():
        np.testing.assert_allclose(back.streams[name][0], t, atol=1e-6)
        np.testing.assert_allclose(back.streams[name][1], v, atol=TOL[name], rtol=1e-6)
        assert summary.rows[name] == len(t)
    # Each episode once (chunks repeat spanning labels), clipped to the 30 s recorded.
    assert back.labels == [Label(4.0, 24.0, "tachycardia"), Label(26.0, 30.0, "lead_off")]
    assert summary.labels == back.labels
    assert (tmp_path / "ecg.csv").read_text().startswith("t,uv\n0.000000,")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["profile"]["patient_id"] == p.patient_id and meta["rows"]["ecg"] == 7500


def test_record_subset_of_streams_and_bad_arguments(tmp_path: Path) -> None:
    record(tmp_path, make_patient(0), 5.0, streams=["ecg", "hr"])
    assert sorted(f.name for f in tmp_path.glob("*.csv")) == ["ecg.csv", "hr.csv", "labels.csv"]
    with pytest.raises(ValueError, match="unknown streams"):
        record(tmp_path / "x", make_patient(0), 5.0, streams=["ppg"])
    with pytest.raises(ValueError, match="seconds"):
        record(tmp_path / "y", make_patient(0), 0.0)


def test_writer_dedupes_and_clips_labels(tmp_path: Path) -> None:
    lab = Label(-5.0, 3.0, "fall")
    t = np.arange(10) / 2.0
    chunk = Chunk({"hr": (t, np.full((10, 1), 60.0, np.float32))}, [lab], 0.0, 5.0)
    with RecordingWriter(tmp_path) as w:
        w.write(chunk)
        w.write(Chunk({"hr": (t + 5.0, np.full((10, 1), 61.0, np.float32))}, [lab], 5.0, 10.0))
    assert (tmp_path / "labels.csv").read_text() == "start,end,kind\n0.000,3.000,fall\n"
    assert w.rows == {"hr": 20}
    with pytest.raises(RuntimeError):
        w.write(chunk)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("ecg.csv", "time,uv\n0,1\n", "header"),
        ("ecg.csv", "t,uv\n0,abc\n", "ecg.csv"),
        ("labels.csv", "start,end,kind\n1,2\n", "bad label row 2"),
    ],
)
def test_device_reader_is_strict(tmp_path: Path, name: str, text: str, match: str) -> None:
    if name == "labels.csv":
        (tmp_path / "hr.csv").write_text("t,bpm\n0,60\n")
    (tmp_path / name).write_text(text)
    with pytest.raises(RecordingFormatError, match=match):
        read_recording(tmp_path)


def test_device_reader_needs_a_directory_with_streams(tmp_path: Path) -> None:
    with pytest.raises(RecordingFormatError, match="not a directory"):
        read_recording(tmp_path / "missing")
    with pytest.raises(RecordingFormatError, match="no stream files"):
        read_recording(tmp_path)


def test_player_replays_the_recording_exactly(tmp_path: Path) -> None:
    rec = simulate(make_patient(2), 12.0, CFG)
    shifted = Chunk(
        {k: (t + 1000.25, v) for k, (t, v) in rec.streams.items()},
        [Label(1004.0, 1010.0, "af")],
        1000.25,
        1012.25,
    )
    player = RecordingPlayer(shifted)
    assert player.offset == 1000.0 and player.duration == pytest.approx(12.25, abs=0.01)
    assert player.labels == [Label(4.0, 10.0, "af")]
    parts = [player.advance(s) for s in [0.3, 0.0, 5.0, 0.004, 8.0]]
    assert player.now == pytest.approx(13.304)
    for name, (t, v) in rec.streams.items():
        tt = np.concatenate([p.streams[name][0] for p in parts])
        vv = np.concatenate([p.streams[name][1] for p in parts])
        np.testing.assert_allclose(tt, t + 0.25)
        np.testing.assert_array_equal(vv, v)
    assert parts[0].labels == [] and parts[2].labels == [Label(4.0, 10.0, "af")]


def _drain(port: serial.Serial, done: Callable[[], bool], limit_s: float = 10.0) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            # Ask only for what is buffered: pyserial drops a partial read when the
            # device closes the pty mid-call.
            chunk = port.read(max(1, port.in_waiting))
        except serial.SerialException:  # the device closed the pty: all sent
            break
        out += chunk
        if not chunk and done():
            break
    return bytes(out)


def test_replay_through_the_pty_device(tmp_path: Path) -> None:
    """A recording served by the real pty device: every sample leaves intact, quantised."""
    from firmware_sim.serialdev import WIRE_STREAMS, PtyDevice

    record(tmp_path / "rec", make_patient(3), 6.0, CFG)
    player = RecordingPlayer(read_recording(tmp_path / "rec"))
    link = tmp_path / "tty0"
    dev = PtyDevice(link, player, realtime=False, duration_s=player.duration).start()
    try:
        with serial.Serial(str(link), timeout=0.1) as port:
            data = _drain(port, lambda: dev.wait_done(0.0))
        assert dev.wait_done(5.0)
    finally:
        dev.stop()
    assert dev.error is None and data
    src = player.recording.streams
    for name, (_, v) in src.items():
        got = dev.ledger.samples(name)
        scale = WIRE_STREAMS[name].scale
        assert got.shape == v.shape, name
        np.testing.assert_allclose(got, v, atol=scale / 2 + 1e-6, err_msg=name)


def test_replay_reaches_the_agent(
    tmp_path: Path, pty_device: Callable[..., Any], serial_source: Callable[..., Any]
) -> None:
    """Recording -> simulated textile on a pty -> SerialSource: the agent gets every sample."""
    record(tmp_path / "rec", make_patient(4), 5.0, SimConfig(anomaly_rate_per_hour=0))
    player = RecordingPlayer(read_recording(tmp_path / "rec"))
    pty_device(generator=player, realtime=False, duration_s=player.duration)
    _src, got = serial_source()
    want = {k: len(t) for k, (t, _) in player.recording.streams.items()}
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline and any(got.n(k) < n for k, n in want.items()):
        time.sleep(0.05)
    for name, n in want.items():
        assert got.n(name) == n, name
    ecg = np.concatenate([b.values for b in got.blocks if b.stream == "ecg"])
    np.testing.assert_allclose(ecg, player.recording.streams["ecg"][1], atol=0.5 + 1e-6)


# --------------------------------------------------------------------------- CLI


def test_cli_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "session"
    rc = cli.main(
        ["record", str(out), "--seconds", "20", "--seed", "4", "--patient", "2",
         "--kinds", "tachycardia,lead_off", "--anomaly-rate", "400", "--fault-rate", "100",
         "--ecg-hz", "130"]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "patient-002" in text and "ecg" in text
    ecg = np.loadtxt(out / "ecg.csv", delimiter=",", skiprows=1)
    assert len(ecg) == 20 * 130
    kinds = {ln.split(",")[2] for ln in (out / "labels.csv").read_text().splitlines()[1:]}
    assert kinds <= {"tachycardia", "lead_off"}
    # Same arguments, same files (deterministic from the seed).
    rc = cli.main(["record", str(tmp_path / "again"), "--seconds", "20", "--seed", "4",
                   "--patient", "2", "--kinds", "tachycardia,lead_off", "--anomaly-rate", "400",
                   "--fault-rate", "100", "--ecg-hz", "130"])  # fmt: skip
    assert rc == 0
    assert (out / "ecg.csv").read_bytes() == (tmp_path / "again" / "ecg.csv").read_bytes()


@pytest.mark.parametrize(
    "argv",
    [
        ["record", "X", "--seconds", "-3"],
        ["record", "X", "--seconds", "5", "--kinds", "sneezing"],
        ["record", "X", "--seconds", "5", "--ecg-hz", "0"],
    ],
)
def test_cli_record_bad_values(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("X", str(tmp_path / "o")) for a in argv]
    assert cli.main(argv) == 2
    assert "record:" in capsys.readouterr().err


def test_cli_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["record", "out"])  # --seconds is required
    assert e.value.code == 2


def test_cli_replay_bad_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", str(tmp_path / "none"), "--link", str(tmp_path / "l")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_plugin_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device module adds a subcommand by defining CLI_COMMANDS; broken ones are reported."""
    pkg = tmp_path / "plugpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(
        textwrap.dedent(
            """
            def add(p):
                p.add_argument("--n", type=int, default=1)

            def run(args):
                return 40 + args.n

            CLI_COMMANDS = {"hello": ("say hello", add, run)}
            """
        )
    )
    (pkg / "bad.py").write_text("raise RuntimeError('half-written module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    problems = cli.load_plugins(["plugpkg.good", "plugpkg.bad", "plugpkg.absent"])
    assert problems == ["plugpkg.bad: RuntimeError: half-written module"]
    args = cli.build_parser(problems).parse_args(["hello", "--n", "2"])
    assert args._run(args) == 42
    assert "half-written" in cli.build_parser(problems).format_help()


def test_cli_replay_subprocess_serves_a_pty(tmp_path: Path) -> None:
    record(tmp_path / "rec", make_patient(5), 3.0, SimConfig(anomaly_rate_per_hour=0))
    link = tmp_path / "tty-replay"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "replay", str(tmp_path / "rec"),
         "--link", str(link), "--fast"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10.0
        while not os.path.lexists(link) and time.monotonic() < deadline:
            time.sleep(0.02)
        with serial.Serial(str(link), timeout=0.1) as port:
            data = _drain(port, lambda: proc.poll() is not None)
        out, err = proc.communicate(timeout=10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "replaying" in out and "done:" in out
    assert len(data) > 3 * 250 * 3  # at least the ECG samples, int24 each


def test_generator_and_player_are_interchangeable(tmp_path: Path) -> None:
    """Both expose ``advance`` returning Chunk-shaped data, which devices rely on."""
    g = Generator(make_patient(0), SimConfig(anomaly_rate_per_hour=0))
    record(tmp_path, make_patient(0), 2.0, SimConfig(anomaly_rate_per_hour=0))
    player = RecordingPlayer(read_recording(tmp_path))
    a, b = g.advance(1.0), player.advance(1.0)
    assert set(a.streams) == set(b.streams)
    for k in a.streams:
        assert a.streams[k][1].shape[1] == b.streams[k][1].shape[1]
