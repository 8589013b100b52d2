"""edgeagent.recording: tolerant reading, counted rejections, clear errors, ordered replay."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeagent.errors import RecordingError
from edgeagent.recording import Recording, read_recording
from edgeagent.streams import CHANNELS, SampleBlock, Stream


def _write(d: Path, name: str, text: str | bytes) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / name
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text, encoding="utf-8")
    return f


def _ecg_csv(n: int = 5, rate: float = 250.0) -> str:
    rows = "".join(f"{k / rate:.6f},{100.0 * k:.2f}\n" for k in range(n))
    return "t,uv\n" + rows


# --------------------------------------------------------------------------- happy paths


def test_reads_canonical_streams_and_labels(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", _ecg_csv(10))
    _write(tmp_path, "acc.csv", "t,x,y,z\n0.0,1,2,1000\n0.02,3,4,998\n")
    _write(tmp_path, "env.csv", "t,celsius,humidity\n0,21.5,40\n5,21.6,41\n")
    _write(tmp_path, "labels.csv", "start,end,kind\n1.0,2.5,af\n0.2,0.4,lead_off\n")
    rec = read_recording(tmp_path)
    assert rec.streams == (Stream.ECG, Stream.ACC, Stream.ENV)
    t, v = rec.data[Stream.ECG]
    assert t.dtype == np.float64 and v.dtype == np.float32 and v.shape == (10, 1)
    np.testing.assert_allclose(v[:, 0], 100.0 * np.arange(10))
    np.testing.assert_array_equal(rec.data[Stream.ACC][1][1], [3, 4, 998])
    assert rec.labels == [(0.2, 0.4, "lead_off"), (1.0, 2.5, "af")]
    assert rec.rejected == {} and rec.total_rejected == 0
    assert rec.start == 0.0 and rec.end == 5.0 and rec.duration == 5.0
    assert rec.rate(Stream.ECG) == pytest.approx(250.0)
    assert math.isnan(Recording(tmp_path, {Stream.HR: (np.zeros(1), np.zeros((1, 1)))}).rate("hr"))


def test_ecg_alone_at_360_hz(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", _ecg_csv(3600, rate=360.0))
    rec = read_recording(tmp_path)
    assert rec.streams == (Stream.ECG,)
    assert rec.rate("ecg") == pytest.approx(360.0, rel=1e-3)
    assert rec.labels == []
    blocks = list(rec.blocks(device="mitdb"))
    assert [len(b) for b in blocks] == [360] * 10
    assert all(b.device == "mitdb" and b.stream is Stream.ECG for b in blocks)


@pytest.mark.parametrize(
    ("header", "sep"),
    [
        ("T , UV", ","),
        ('"t","uv"', ","),
        ("time (s),ECG [uV],lead_ii", ","),
        ("Timestamp;ecg_uv", ";"),
        ("t\tuv", "\t"),
        ("t uv", " "),
    ],
)
def test_header_variations(tmp_path: Path, header: str, sep: str) -> None:
    extra = sep + "7" if "lead_ii" in header else ""
    body = "".join(f"{k * 0.004:.3f}{sep}{k}{extra}\n" for k in range(5))
    _write(tmp_path, "ECG.CSV", header + "\n" + body)
    rec = read_recording(tmp_path)
    np.testing.assert_allclose(rec.data[Stream.ECG][1][:, 0], np.arange(5))
    if "lead_ii" in header:
        assert any("extra columns ignored" in n and "lead_ii" in n for n in rec.notes)


@pytest.mark.parametrize(
    ("name", "header", "row", "want_t", "want_v"),
    [
        ("ecg.csv", "t (ms),ECG (mV)", "1500,1.25", 1.5, [1250.0]),
        (
            "acc.csv",
            "time [s], x (g), y (g), z (m/s^2)",
            "2,0.5,-1,9.80665",
            2.0,
            [500, -1000, 1000],
        ),
        ("skin_temp.csv", "t,temperature (°F)", "0,98.6", 0.0, [37.0]),
        ("rr.csv", "t (s),RR (ms)", "3,812", 3.0, [0.812]),
        ("hr.csv", "Time (us),HR (1/min)", "5000000,61", 5.0, [61.0]),
    ],
)
def test_stated_units_are_converted_with_a_note(
    tmp_path: Path, name: str, header: str, row: str, want_t: float, want_v: list[float]
) -> None:
    _write(tmp_path, name, f"{header}\n{row}\n")
    rec = read_recording(tmp_path)
    ((t, v),) = rec.data.values()
    assert t[0] == pytest.approx(want_t)
    np.testing.assert_allclose(v[0], want_v, rtol=1e-5)
    assert any("converted from" in n for n in rec.notes)


def test_unknown_unit_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", "t (fortnights),uv\n0,1\n")
    with pytest.raises(RecordingError, match=r"line 1: unit 'fortnights' of column 't'"):
        read_recording(tmp_path)


def test_label_times_in_ms(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", _ecg_csv())
    _write(tmp_path, "labels.csv", "start (ms),end (ms),kind\n1500,2500,pvc\n")
    assert read_recording(tmp_path).labels == [(1.5, 2.5, "pvc")]


def test_bom_crlf_comments_blank_lines_and_quotes(tmp_path: Path) -> None:
    text = (
        '# exported by bench-logger 2.1\r\n\r\nt,bpm\r\n0,"61.5"\r\n# pause\r\n1,62\r\n\r\n2,63\r\n'
    )
    _write(tmp_path, "hr.csv", b"\xef\xbb\xbf" + text.encode())
    rec = read_recording(tmp_path)
    np.testing.assert_allclose(rec.data[Stream.HR][0], [0, 1, 2])
    np.testing.assert_allclose(rec.data[Stream.HR][1][:, 0], [61.5, 62, 63])


def test_unknown_files_are_noted_not_fatal(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", _ecg_csv())
    _write(tmp_path, "spo2.csv", "t,pct\n0,98\n")
    _write(tmp_path, "README.txt", "hello")
    rec = read_recording(tmp_path)
    assert rec.streams == (Stream.ECG,)
    assert any("spo2.csv" in n for n in rec.notes)


def test_stream_filter(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", _ecg_csv())
    _write(tmp_path, "hr.csv", "t,bpm\n0,60\n")
    assert read_recording(tmp_path, streams=["hr"]).streams == (Stream.HR,)


def test_header_only_file_gives_an_empty_stream(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", _ecg_csv())
    _write(tmp_path, "rr.csv", "t,seconds\n")
    rec = read_recording(tmp_path)
    assert rec.streams == (Stream.ECG,)
    assert rec.data[Stream.RR][0].shape == (0,) and rec.data[Stream.RR][1].shape == (0, 1)
    assert any("rr.csv: no valid rows" in n for n in rec.notes)


# --------------------------------------------------------------------------- counted rejections


def test_bad_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        "t,uv",
        "0.0,1",
        "0.1,nan",  # non-finite
        "0.2,inf",  # non-finite
        "0.3,",  # empty value -> non-finite
        "0.4,5",
        "0.4,6",  # duplicate stamp
        "99.0,7",  # isolated forward spike
        "0.5,8",
        "0.45,9",  # clock stepped back
        "0.6,10",
        "t,uv",  # header repeated by a logger restart
        "0.7,11",
        "0.8,1e40",  # finite but not representable in float32
        "0.9,12",
        "1.0,abc",  # malformed (isolated)
        "1.1,13",
        "1.2",  # truncated last line (no newline)
    ]
    _write(tmp_path, "ecg.csv", "\n".join(rows))
    rec = read_recording(tmp_path)
    t, v = rec.data[Stream.ECG]
    np.testing.assert_allclose(t, [0.0, 0.4, 0.5, 0.6, 0.7, 0.9, 1.1])
    np.testing.assert_allclose(v[:, 0], [1, 5, 8, 10, 11, 12, 13])
    assert rec.rejected["ecg"] == {
        "non_finite": 3,
        "duplicate": 1,
        "out_of_order": 2,
        "repeated_header": 1,
        "out_of_range": 1,
        "malformed": 1,
        "truncated": 1,
    }
    assert rec.total_rejected == 10
    assert any("line 16" in n for n in rec.notes)  # first malformed row is named


def test_fast_path_counts_nan_and_order(tmp_path: Path) -> None:
    t = np.arange(1000) / 100.0
    v = np.sin(t)
    v[[10, 20]] = np.nan
    t[500] = t[499]  # duplicate
    t[700] = 3.0  # backwards
    body = "".join(f"{a!r},{b!r}\n" for a, b in zip(t.tolist(), v.tolist(), strict=True))
    _write(tmp_path, "skin_temp.csv", "t,celsius\n" + body)
    rec = read_recording(tmp_path)
    assert rec.rejected["skin_temp"] == {"non_finite": 2, "duplicate": 1, "out_of_order": 1}
    assert len(rec.data[Stream.SKIN_TEMP][0]) == 996
    assert np.all(np.diff(rec.data[Stream.SKIN_TEMP][0]) > 0)


def test_labels_rejections(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", _ecg_csv())
    _write(
        tmp_path,
        "labels.csv",
        "Onset, Offset, Annotation, note\n"
        "10, 20, AF , paroxysmal\n"
        "5, 4, pvc\n"
        "x, 3, fall\n"
        "nan, 3, fall\n"
        '30, 40, "st_change", "quoted, with comma"\n',
    )
    rec = read_recording(tmp_path)
    assert rec.labels == [(10.0, 20.0, "af"), (30.0, 40.0, "st_change")]
    assert rec.rejected["labels"] == {"bad_interval": 1, "malformed": 1, "non_finite": 1}


# --------------------------------------------------------------------------- clear errors


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no such directory"):
        read_recording(tmp_path / "nope")
    f = _write(tmp_path, "ecg.csv", _ecg_csv())
    with pytest.raises(RecordingError, match="not a directory"):
        read_recording(f)


def test_no_stream_files(tmp_path: Path) -> None:
    _write(tmp_path, "labels.csv", "start,end,kind\n")
    with pytest.raises(RecordingError, match=r"no stream files found .*ecg\.csv"):
        read_recording(tmp_path)


def test_missing_column_names_file_line_and_column(tmp_path: Path) -> None:
    f = _write(tmp_path, "acc.csv", "# comment\nt,x,y\n0,1,2\n")
    with pytest.raises(RecordingError) as err:
        read_recording(tmp_path)
    assert err.value.path == str(f)
    assert "line 2" in str(err.value) and "'z'" in str(err.value) and "t,x,y,z" in str(err.value)


def test_headerless_file_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", "0.0,1\n0.004,2\n")
    with pytest.raises(RecordingError, match="no header row"):
        read_recording(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty file"),
        (b"# only a comment\n\n", "empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"t,uv\n0,\xff\xfe1\n", "not UTF-8"),
        (
            b"t,uv\n" + b"garbage,row\n" * 20 + b"0,1\n",
            r"unreadable: 20 of 21 rows malformed, first at line 2",
        ),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, match: str) -> None:
    _write(tmp_path, "ecg.csv", content)
    with pytest.raises(RecordingError, match=match) as err:
        read_recording(tmp_path)
    assert "ecg.csv" in str(err.value)


def test_two_files_for_one_stream(tmp_path: Path) -> None:
    _write(tmp_path, "ecg.csv", _ecg_csv())
    _write(tmp_path, "ECG.csv", _ecg_csv())
    if len(list(tmp_path.iterdir())) < 2:
        pytest.skip("case-insensitive file system")
    with pytest.raises(RecordingError, match="two files for stream 'ecg'"):
        read_recording(tmp_path)


# --------------------------------------------------------------------------- blocks


def _multi(tmp_path: Path) -> Recording:
    _write(tmp_path, "ecg.csv", _ecg_csv(2500))  # 10 s at 250 Hz
    acc = "".join(f"{k / 50:.4f},0,0,1000\n" for k in range(500))
    _write(tmp_path, "acc.csv", "t,x,y,z\n" + acc)
    _write(tmp_path, "hr.csv", "t,bpm\n" + "".join(f"{k + 0.5},{60 + k}\n" for k in range(10)))
    _write(tmp_path, "rr.csv", "t,seconds\n0.8,0.8\n1.7,0.9\n5.2,3.5\n")
    return read_recording(tmp_path)


@pytest.mark.parametrize("block_s", [0.25, 1.0, 3.0, 100.0])
def test_blocks_cover_everything_once_in_time_order(tmp_path: Path, block_s: float) -> None:
    rec = _multi(tmp_path)
    blocks = list(rec.blocks(block_s=block_s))
    assert all(isinstance(b, SampleBlock) for b in blocks)
    for s in rec.streams:
        t = np.concatenate([b.t for b in blocks if b.stream is s])
        v = np.concatenate([b.values for b in blocks if b.stream is s])
        np.testing.assert_array_equal(t, rec.data[s][0])
        np.testing.assert_array_equal(v, rec.data[s][1])
        assert v.shape[1] == len(CHANNELS[s])
    bins = [math.floor((b.t[0] - rec.start) / block_s) for b in blocks]
    assert bins == sorted(bins)
    for b in blocks:  # a block never straddles a bin edge
        assert math.floor((b.t[-1] - rec.start) / block_s) == math.floor(
            (b.t[0] - rec.start) / block_s
        )
    # Within a bin, blocks come in order of their last sample (live delivery order).
    for i in range(len(blocks) - 1):
        if bins[i] == bins[i + 1]:
            assert blocks[i].t[-1] <= blocks[i + 1].t[-1]


def test_blocks_are_read_only_and_filterable(tmp_path: Path) -> None:
    rec = _multi(tmp_path)
    b = next(rec.blocks(streams=[Stream.HR]))
    assert b.stream is Stream.HR
    with pytest.raises(ValueError):
        b.values[0, 0] = 1.0
    with pytest.raises(ValueError):
        next(rec.blocks(block_s=0.0))


# --------------------------------------------------------------------------- with the simulator


def test_round_trip_with_the_simulator_recording(tmp_path: Path) -> None:
    from firmware_sim.physiology import Label, SimConfig, make_patient, simulate
    from firmware_sim.recording import record

    cfg = SimConfig(episodes=(Label(5.0, 25.0, "pvc"), Label(28.0, 60.0, "lead_off")))
    summary = record(tmp_path, make_patient(2, seed=1), 40.0, cfg, chunk_s=7.0)
    rec = read_recording(tmp_path)
    ref = simulate(make_patient(2, seed=1), 40.0, cfg)
    assert {s.value for s in rec.streams} == set(ref.streams)
    tol = {"ecg": 0.006, "acc": 0.06, "skin_temp": 6e-4, "env": 0.006, "hr": 0.006, "rr": 6e-5}
    for name, (t, v) in ref.streams.items():
        rt, rv = rec.data[Stream(name)]
        np.testing.assert_allclose(rt, t, atol=1e-6)
        np.testing.assert_allclose(rv, v, atol=tol[name], rtol=1e-6)
    # Labels: the lead_off episode is clipped to the recorded span.
    assert rec.labels == [(5.0, 25.0, "pvc"), (28.0, 40.0, "lead_off")]
    assert [(lab.start, lab.end, lab.kind) for lab in summary.labels] == rec.labels
    assert rec.rejected == {}


def test_reading_a_million_row_ecg_is_fast(tmp_path: Path) -> None:
    n = 1_000_000
    arr = np.column_stack([np.arange(n) / 250.0, 800.0 * np.sin(np.arange(n) / 40.0)])
    with open(tmp_path / "ecg.csv", "w") as fh:
        fh.write("t,uv\n")
        fh.write(("%.6f,%.2f\n" * n) % tuple(arr.ravel().tolist()))
    t0 = time.perf_counter()
    rec = read_recording(tmp_path)
    took = time.perf_counter() - t0
    assert len(rec.data[Stream.ECG][0]) == n
    assert took < 4.0, f"1M-row ECG took {took:.2f} s"
    # A logger crash at the end (bad row, cut line) must not fall back to a slow path.
    with open(tmp_path / "ecg.csv", "a") as fh:
        fh.write("4000.0,oops\n4000.1,")
    t0 = time.perf_counter()
    rec = read_recording(tmp_path)
    took = time.perf_counter() - t0
    assert len(rec.data[Stream.ECG][0]) == n
    assert rec.rejected["ecg"] == {"malformed": 1, "non_finite": 1}
    assert took < 8.0, f"1M-row ECG with a bad tail took {took:.2f} s"


# --------------------------------------------------------------------------- properties


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ts=st.lists(
        st.one_of(
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
            st.just(float("nan")),
            st.just(float("inf")),
            st.sampled_from([0.0, 1.0, 2.0]),
        ),
        min_size=0,
        max_size=60,
    )
)
def test_any_timestamps_give_strictly_increasing_output_with_full_accounting(
    tmp_path: Path, ts: list[float]
) -> None:
    d = tmp_path / "p"
    body = "".join(f"{t!r},{i}\n" for i, t in enumerate(ts))
    _write(d, "hr.csv", "t,bpm\n" + body)
    rec = read_recording(d)
    t, v = rec.data[Stream.HR]
    assert np.all(np.diff(t) > 0)
    assert len(t) + rec.total_rejected == len(ts)
    # Kept rows are a subsequence of the input, values travelling with their stamps.
    idx = v[:, 0].astype(int)
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(t, np.asarray(ts, dtype=float)[idx])


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.text(alphabet='t,uv0123456789.-e\n#;\t "naif', max_size=300).map(str.encode),
    )
)
def test_arbitrary_bytes_never_crash(tmp_path: Path, data: bytes) -> None:
    d = tmp_path / "fuzz"
    _write(d, "ecg.csv", data)
    _write(d, "labels.csv", data)
    try:
        rec = read_recording(d)
    except RecordingError:
        return
    t, v = rec.data[Stream.ECG]
    assert np.all(np.isfinite(t)) and np.all(np.isfinite(v))
    assert np.all(np.diff(t) > 0)
