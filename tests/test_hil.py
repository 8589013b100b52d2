"""edgelab.hil: bench files are validated key by key; the link checks catch real faults.

The checks are fed hand-built runs with a known defect each (wrong rate, a
hole with no gap, bad scale, time going backwards ...) so every one is
shown to fail when it should, and to pass on a clean run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeagent.errors import BenchError
from edgeagent.streams import Gap, LinkCounters, SampleBlock, Stream
from edgelab.hil import (
    HilBench,
    LinkRun,
    Tolerances,
    bench_from_options,
    check_accounting,
    check_decoding,
    check_framing,
    check_reconnect,
    load_bench,
    parse_bench,
)

FULL = """
[bench]
name = "pi5-lab-1"

[serial]
port = "/dev/edgeagent/0403-6001-A10K"
baudrate = 230400
device_id = "textile-07"
streams = ["ecg", "acc"]
rates_hz = { ecg = 250.0, acc = 50.0 }
duration_s = 30
replug_cmd = "uhubctl -l 1-1 -p 2 -a cycle -d 3"

[ble]
address = "f0:ea:00:00:00:01"
kind = "wristband"
replug_cmd = "ssh sim-box systemctl restart ea-sim"
"""


def test_full_bench_file(tmp_path: Path) -> None:
    f = tmp_path / "bench.toml"
    f.write_text(FULL)
    b = load_bench(f)
    assert b.bench.name == "pi5-lab-1"
    assert (
        b.serial is not None and b.serial.baudrate == 230400 and b.serial.streams == ("ecg", "acc")
    )
    assert b.ble is not None and b.ble.address == "F0:EA:00:00:00:01" and b.ble.kind == "wristband"
    assert b.describes("serial") and b.describes("ble")


def test_empty_bench_describes_nothing() -> None:
    b = bench_from_options()
    assert b == HilBench() and not b.describes("serial") and not b.describes("ble")


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[serial]\nport = "/dev/ttyUSB0"\nbaud = 9600\n', "serial.baud", "Extra inputs"),
        ("[serial]\nbaudrate = 9600\n", "serial.port", "Field required"),
        ('[serial]\nport = "/dev/x"\nstreams = ["ecg", "ppg"]\n', "serial.streams", "ppg"),
        ('[serial]\nport = "/dev/x"\nrates_hz = { ecg = -1 }\n', "serial.rates_hz", "0 < Hz"),
        ('[serial]\nport = "/dev/x"\nduration_s = 0\n', "serial.duration_s", "greater than 0"),
        ('[ble]\naddress = "AA:BB:CC"\n', "ble.address", "not a Bluetooth address"),
        ('[ble]\naddress = "AA:BB:CC:DD:EE:FF"\nkind = "ring"\n', "ble.kind", "chest_strap"),
        ('[usb]\nport = "x"\n', "usb", "Extra inputs"),
    ],
)
def test_bad_bench_names_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    f = tmp_path / "bench.toml"
    f.write_text(text)
    with pytest.raises(BenchError) as ei:
        load_bench(f)
    assert ei.value.key == key and words in str(ei.value) and str(f) in str(ei.value)


def test_unreadable_and_non_toml_files(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="No such file"):
        load_bench(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[serial\nport=")
    with pytest.raises(BenchError, match="not TOML"):
        load_bench(bad)


def test_options_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "bench.toml"
    f.write_text(FULL)
    b = bench_from_options(f, serial="/dev/ttyACM0", ble="aa:bb:cc:dd:ee:ff", duration_s=5)
    assert b.serial is not None and b.serial.port == "/dev/ttyACM0" and b.serial.duration_s == 5
    assert b.serial.device_id == "textile-07"  # the rest of the table is kept
    assert b.ble is not None and b.ble.address == "AA:BB:CC:DD:EE:FF" and b.ble.duration_s == 5
    only = bench_from_options(ble="AA:BB:CC:DD:EE:01", ble_kind="wristband")
    assert only.serial is None and only.ble is not None and only.ble.kind == "wristband"
    with pytest.raises(BenchError, match="command-line options"):
        bench_from_options(ble="nope")


def test_parse_bench_accepts_a_mapping() -> None:
    assert parse_bench({"serial": {"port": "/dev/x"}}).serial is not None


# ---------------------------------------------------------------------- checks


def _clean(hz: float = 50.0, seconds: float = 10.0, t0: float = 1000.0) -> LinkRun:
    run = LinkRun("dev")
    t = t0 + np.arange(int(hz * seconds)) / hz
    acc = np.tile(np.array([[10.0, -20.0, 990.0]], np.float32), (len(t), 1))
    for i in range(0, len(t), 25):
        run.blocks.append(SampleBlock("dev", Stream.ACC, t[i : i + 25], acc[i : i + 25]))
    run.counters = LinkCounters(frames_ok=len(run.blocks), samples_ok=len(t))
    return run


TOL = Tolerances(0.0, 0.0, 0.005)


def test_clean_run_passes_every_check() -> None:
    run = _clean()
    assert check_framing(run, TOL) == []
    assert check_decoding(run, ["acc"]) == []
    assert check_accounting(run, {"acc": 50.0}, TOL) == []


def test_framing_catches_bad_frames_and_miscounts() -> None:
    run = _clean()
    run.counters.bad_crc = 2
    assert any("bad frames" in p for p in check_framing(run, TOL))
    assert check_framing(run, Tolerances(0.2, 0.0, 0.005)) == []
    run.counters.bad_crc = 0
    run.counters.samples_ok += 1
    assert any("samples_ok" in p for p in check_framing(run, TOL))
    assert check_framing(LinkRun("x"), TOL) == ["no frame decoded"]


def test_decoding_catches_missing_streams_scale_and_time() -> None:
    run = _clean()
    assert check_decoding(run, ["acc", "ecg"]) == ["ecg: no samples"]
    scaled = LinkRun(
        "dev", [SampleBlock("dev", b.stream, b.t, b.values / 1000.0) for b in run.blocks]
    )
    assert any("gravity" in p for p in check_decoding(scaled, ["acc"]))  # g read as mg
    big = LinkRun("dev", [SampleBlock("dev", b.stream, b.t, b.values * 100.0) for b in run.blocks])
    assert any("outside" in p for p in check_decoding(big, ["acc"]))
    back = LinkRun("dev", list(reversed(run.blocks)))
    assert any("not strictly increasing" in p for p in check_decoding(back, ["acc"]))
    nan = _clean()
    nan.blocks[0].values[0, 0] = np.nan
    assert any("non-finite" in p for p in check_decoding(nan, ["acc"]))


def test_accounting_catches_wrong_rate_and_unreported_holes() -> None:
    run = _clean()
    assert any("rate" in p for p in check_accounting(run, {"acc": 52.0}, TOL))
    holed = LinkRun("dev", run.blocks[:5] + run.blocks[10:], counters=run.counters)
    problems = check_accounting(holed, {"acc": 50.0}, TOL)
    assert any("received" in p for p in problems)  # 5 frames vanished without a gap
    hole = (float(run.blocks[4].t[-1]), float(run.blocks[10].t[0]))
    holed.gaps.append(Gap("dev", Stream.ACC, *hole, "lost frames"))
    lenient = Tolerances(0.0, 0.3, 0.005)
    assert check_accounting(holed, {"acc": 50.0}, lenient) == []  # now it is accounted for
    assert any("lost in gaps" in p for p in check_accounting(holed, {"acc": 50.0}, TOL))
    wide = LinkRun("dev", holed.blocks, [Gap("dev", None, *hole, "link down")], holed.counters)
    assert check_accounting(wide, {"acc": 50.0}, lenient) == []  # device-wide gaps count too


def test_reconnect_check() -> None:
    run = _clean()
    since = float(run.blocks[4].t[-1])
    problems = check_reconnect(run, since, ["acc"])
    assert any("reconnects" in p for p in problems) and any("no gap" in p for p in problems)
    run.counters.reconnects = 1
    run.gaps.append(Gap("dev", None, since, since + 2.0, "link down"))
    assert check_reconnect(run, since, ["acc"]) == []
    late = LinkRun("dev", run.blocks, [Gap("dev", None, since, 1e12, "link down")], run.counters)
    assert any("no data after" in p for p in check_reconnect(late, since, ["acc"]))
