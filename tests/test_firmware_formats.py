"""The simulator replays real records: its own WFDB/EDF reader, serial and BLE paths alike."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial

from firmware_sim import __main__ as cli
from firmware_sim.feeds import PMD_ECG_HZ, RecordingFeed
from firmware_sim.formats import RecordFileError, read_record, record_kind, resample
from firmware_sim.recording import open_player
from tests.real_ecg import record_path
from tests.test_firmware_recording import _drain

wfdb = pytest.importorskip("wfdb", reason="the formats extra (wfdb) is not installed")


def _slice_100(dst: Path, seconds: int) -> Path:
    """Record 100's first ``seconds`` as a WFDB record (signal and annotations) in ``dst``."""
    src = record_path("100")
    rec = wfdb.rdrecord(str(src), sampto=360 * seconds, physical=False)
    rec.record_name = "s100"
    rec.file_name = ["s100.dat"] * rec.n_sig
    rec.wrsamp(write_dir=str(dst))
    ann = wfdb.rdann(str(src), "atr", sampto=360 * seconds)
    aux = list(ann.aux_note)
    aux[0] = "(AFIB"  # one episode, to see labels travel
    wfdb.wrann(
        "s100", "atr", ann.sample, symbol=ann.symbol, aux_note=aux, fs=360, write_dir=str(dst)
    )
    return dst / "s100"


def test_device_reader_matches_wfdb_in_microvolts() -> None:
    path = record_path("100")
    chunk = read_record(path)
    t, v = chunk.streams["ecg"]
    ref = wfdb.rdrecord(str(path), channels=[0])
    np.testing.assert_allclose(v[:, 0], ref.p_signal[:, 0] * 1000, atol=1e-3)
    assert t[1] == pytest.approx(1 / 360) and chunk.labels == []
    assert read_record(str(path) + ".hea", lead="V5").streams["ecg"][1].shape == v.shape
    t, _ = read_record(record_path("03700181")).streams["ecg"]
    assert 1 / np.median(np.diff(t)) == pytest.approx(500.0)  # 4 samples per 125 Hz frame


def test_device_reader_refuses_with_the_file_named(tmp_path: Path) -> None:
    with pytest.raises(RecordFileError, match="no lead 'X'"):
        read_record(record_path("100"), lead="X")
    (tmp_path / "r.hea").write_text("garbage\n")
    with pytest.raises(RecordFileError, match=r"r: cannot read WFDB record"):
        read_record(tmp_path / "r")
    (tmp_path / "x.edf").write_bytes(b"0       " + b"?" * 300)
    with pytest.raises(RecordFileError, match=r"x\.edf: not a readable EDF"):
        read_record(tmp_path / "x.edf")
    assert record_kind(tmp_path) is None
    with pytest.raises(RecordFileError, match="not a WFDB record"):
        read_record(tmp_path / "nothing")


def test_resample_keeps_a_slow_wave_and_the_grid() -> None:
    t = np.arange(0, 10, 1 / 360)
    v = (1000 * np.sin(2 * np.pi * 1.5 * t)).astype(np.float32)[:, None]
    t2, v2 = resample(t, v, 130.0)
    assert np.allclose(np.diff(t2), 1 / 130)
    np.testing.assert_allclose(v2[:, 0], 1000 * np.sin(2 * np.pi * 1.5 * t2), atol=15.0)


def test_replay_of_a_wfdb_record_reaches_the_agent_over_serial(
    tmp_path: Path, pty_device: Callable[..., Any], serial_source: Callable[..., Any]
) -> None:
    """WFDB record -> simulated textile on a pty -> the agent's SerialSource, every sample."""
    player = open_player(_slice_100(tmp_path, 8))
    assert [lab.kind for lab in player.labels] == ["af"]
    pty_device(generator=player, realtime=False, duration_s=player.duration)
    _src, got = serial_source()
    want = len(player.recording.streams["ecg"][0])
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline and got.n("ecg") < want:
        time.sleep(0.05)
    assert got.n("ecg") == want == 8 * 360
    ecg = np.concatenate([b.values for b in got.blocks if b.stream == "ecg"])
    np.testing.assert_allclose(ecg, player.recording.streams["ecg"][1], atol=0.5 + 1e-6)
    t = np.concatenate([b.t for b in got.blocks if b.stream == "ecg"])
    assert 1 / np.median(np.diff(t)) == pytest.approx(360.0, rel=1e-3)


def test_replay_of_a_wfdb_record_reaches_the_agent_over_ble(
    bluez_sim: Any, ble_source: Callable[..., Any]
) -> None:
    """WFDB record -> simulated Polar strap (ECG resampled to 130 Hz) -> the agent's BleSource."""
    from firmware_sim.bluez import CHEST_STRAP, Peripheral

    feed = RecordingFeed(record_path("100"), ecg_hz=PMD_ECG_HZ)
    strap = bluez_sim.call(
        bluez_sim.sim.add, Peripheral("AA:00:00:00:00:01", "Polar H10 R1", CHEST_STRAP, feed=feed)
    )
    src, got = ble_source()
    assert got.wait_for(lambda: got.n(strap.address, "ecg") > 400, timeout=15.0)
    src.stop()
    blocks = [b for b in got.blocks if b.device == strap.address and b.stream == "ecg"]
    t = np.concatenate([b.t for b in blocks])
    uv = np.concatenate([b.values for b in blocks])[:, 0]
    assert 1 / np.median(np.diff(t)) == pytest.approx(130.0, rel=1e-3)
    # What arrived is a contiguous run of the resampled record, to the microvolt.
    _, ref_v = resample(*read_record(record_path("100")).streams["ecg"], PMD_ECG_HZ)
    sent_t = strap.sent("ecg")
    i0 = round(sent_t[0] * PMD_ECG_HZ)
    np.testing.assert_allclose(uv, ref_v[i0 : i0 + len(uv), 0], atol=0.5 + 1e-6)


def test_cli_replay_wfdb_and_bad_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _slice_100(tmp_path, 3)
    link = tmp_path / "tty-wfdb"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "replay", f"{rec}.hea", "--link", str(link),
         "--fast"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15.0
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
    assert "replaying" in out and "(3.0 s)" in out
    assert len(data) > 3 * 360 * 3  # the ECG samples, int24 each
    (tmp_path / "bad.hea").write_text("bad 1 360 100\nbad.dat 16 200 16 0 0 0 0 MLII\n")
    assert cli.main(["replay", str(tmp_path / "bad"), "--link", str(tmp_path / "l")]) == 2
    assert "bad" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["serve-ble", "--recording", "{bad}", "--seconds", "1"],
        ["serve", "--pty", "{link}", "--recording", "{bad}", "--duration", "1"],
        ["serve", "--pty", "{link}", "--recording", "{good}", "--lead", "V9", "--duration", "1"],
    ],
)
def test_serve_refuses_a_bad_recording_before_opening_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    (tmp_path / "bad.hea").write_text("not a header\n")
    fill = {
        "bad": str(tmp_path / "bad"),
        "link": str(tmp_path / "tty"),
        "good": str(record_path("100")),
    }
    assert cli.main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "--recording" in err and ("bad" in err or "V9" in err)
    assert not os.path.lexists(tmp_path / "tty")


def test_cli_replay_ble_reaches_the_agent(tmp_path: Path, dbus_system_bus: str) -> None:
    """``replay SRC --ble``: a WFDB record on a simulated strap, read by the agent's BleSource."""
    from edgeagent.sources.ble import BleSource, DeviceFilter
    from tests.plugins.ble import BLE_FAST_RETRY, BleCollected

    rec = _slice_100(tmp_path, 10)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "replay", str(rec), "--ble",
         "--bus", dbus_system_bus],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    got = BleCollected()
    src = BleSource(
        DeviceFilter(),
        got.blocks.append,
        got.gaps.append,
        got.events.append,
        retry=BLE_FAST_RETRY,
        scan_s=0.5,
        rescan_s=0.5,
        seed=1,
    )
    try:
        src.start()
        ok = got.wait_for(lambda: sum(len(b) for b in got.blocks if b.stream == "ecg") > 300, 15.0)
        src.stop()
        out, err = proc.communicate(timeout=20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ok, (proc.returncode, err)
    assert proc.returncode == 0, err
    assert "as a BLE chest strap" in out
    t = np.concatenate([b.t for b in got.blocks if b.stream == "ecg"])
    assert 1 / np.median(np.diff(t)) == pytest.approx(130.0, rel=1e-3)
    uv = np.concatenate([b.values for b in got.blocks if b.stream == "ecg"])[:, 0]
    assert 300 < np.ptp(uv) < 3000  # record 100's MLII in microvolts, not millivolts
