"""WFDB records in: the real PhysioNet records in ../shared, and every way a copy can be broken."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import RecordingError
from edgeagent.sources.wfdb_record import read_wfdb, record_base
from edgeagent.streams import Stream
from tests.real_ecg import record_path

wfdb = pytest.importorskip("wfdb", reason="the formats extra (wfdb) is not installed")


def _copy(name: str, dst: Path) -> Path:
    """Copy every file of record ``name`` into ``dst`` (writable)."""
    src = record_path(name)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.parent.glob(f"{name}.*"):
        shutil.copyfile(f, dst / f.name)
    return dst / name


def _write(dst: Path, name: str, d: np.ndarray, fs: float, gain: float = 200.0) -> Path:
    """A one-lead WFDB record (format 16) from digital samples ``d`` (mV = d / gain)."""
    wfdb.wrsamp(
        name,
        fs=fs,
        units=["mV"],
        sig_name=["MLII"],
        d_signal=np.asarray(d, np.int64).reshape(-1, 1),
        fmt=["16"],
        adc_gain=[gain],
        baseline=[0],
        write_dir=str(dst),
    )
    return dst / name


@pytest.mark.parametrize(
    ("name", "lead", "fs", "seconds"),
    [
        ("100", "MLII", 360.0, 1805.6),
        ("a103l", "II", 250.0, 330.0),  # a .mat signal file
        ("v102s", "II", 250.0, 300.0),
        ("s0010_re", "ii", 1000.0, 38.4),
        ("03700181", "MCL1", 500.0, 600.0),  # 125 Hz frames, 4 ECG samples per frame
    ],
)
def test_real_records_read_with_their_lead_rate_and_units(
    name: str, lead: str, fs: float, seconds: float
) -> None:
    rec = read_wfdb(record_path(name))
    assert rec.meta["lead"] == lead and rec.meta["format"] == "wfdb"
    assert rec.rate(Stream.ECG) == pytest.approx(fs, rel=1e-6)
    assert rec.duration == pytest.approx(seconds, abs=0.5)
    assert rec.streams == (Stream.ECG,)
    uv = rec.data[Stream.ECG][1][:, 0]
    # Physical units: an ECG lead spans a few hundred to a few thousand microvolts.
    p1, p99 = np.percentile(uv, [1, 99])
    assert 200 < p99 - p1 < 5000, (p1, p99)


def test_record_100_values_beats_and_no_fault_labels() -> None:
    path = record_path("100")
    rec = read_wfdb(path)
    ref = wfdb.rdrecord(str(path), channels=[0])
    np.testing.assert_allclose(rec.data[Stream.ECG][1][:, 0], ref.p_signal[:, 0] * 1000, atol=1e-3)
    assert rec.beats is not None and len(rec.beats) == 2273
    assert rec.beats.counts() == {"N": 2239, "S": 33, "V": 1, "F": 0, "Q": 0}
    assert rec.labels == []  # normal sinus rhythm throughout, no flat or clipped stretch
    assert rec.rejected == {}


@pytest.mark.parametrize("form", ["{}", "{}.hea", "{}.dat", "{}.atr"])
def test_record_named_with_or_without_extension(form: str) -> None:
    base = record_path("100")
    assert record_base(form.format(base)) == base
    assert len(read_wfdb(form.format(base), annotations="none").data[Stream.ECG][0]) == 650000


def test_lead_by_name_any_case_or_index_and_unknown_lead() -> None:
    path = record_path("100")
    assert read_wfdb(path, lead="v5").meta["lead"] == "V5"
    assert read_wfdb(path, lead="1").meta["lead"] == "V5"
    with pytest.raises(RecordingError, match=r"100\.hea: no lead 'V2'.*'MLII' \(mV\), 'V5' \(mV\)"):
        read_wfdb(path, lead="V2")


def test_non_voltage_signal_is_refused() -> None:
    with pytest.raises(RecordingError, match="'ABP' is in 'mmHg', not a voltage"):
        read_wfdb(record_path("03700181"), lead="ABP")


def test_missing_signal_file_names_it(tmp_path: Path) -> None:
    base = _copy("100", tmp_path)
    (tmp_path / "100.dat").unlink()
    with pytest.raises(RecordingError, match=r"100\.dat: signal file named by 100\.hea is missing"):
        read_wfdb(base)


def test_truncated_signal_file_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    base = _copy("100", tmp_path)
    with open(tmp_path / "100.dat", "r+b") as fh:
        fh.truncate(100_001)  # mid-frame: 33,333 whole frames of 3 bytes
    rec = read_wfdb(base)
    assert len(rec.data[Stream.ECG][0]) == 33_333
    assert any("truncated" in n and "33333 of the 650000" in n for n in rec.notes)
    assert rec.beats is not None and rec.beats.t.max() < 33_333 / 360
    assert any("annotations past the readable signal" in n for n in rec.notes)
    (tmp_path / "100.dat").write_bytes(b"")
    with pytest.raises(RecordingError, match=r"100\.dat: empty"):
        read_wfdb(base)


def test_truncated_mat_signal_file_is_refused(tmp_path: Path) -> None:
    base = _copy("a103l", tmp_path)
    with open(tmp_path / "a103l.mat", "r+b") as fh:
        fh.truncate(200_000)
    with pytest.raises(RecordingError, match=r"a103l\.mat: truncated: .*cannot be read in part"):
        read_wfdb(base)


@pytest.mark.parametrize(
    "header",
    [
        "100 2 360\n100.dat 212 200 11 1024 995 -22131 0 MLII\n",  # one signal line of two
        "this is not a header\n",
        "",
    ],
)
def test_bad_header_names_the_file(tmp_path: Path, header: str) -> None:
    base = _copy("100", tmp_path)
    (tmp_path / "100.hea").write_text(header)
    with pytest.raises(RecordingError, match=r"100\.hea: (bad WFDB header|the header lists)"):
        read_wfdb(base)


def test_no_header_at_all(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no WFDB header"):
        read_wfdb(tmp_path / "nothing")


def test_annotations_of_another_record_are_refused(tmp_path: Path) -> None:
    base = _copy("s0010_re", tmp_path)
    shutil.copyfile(record_path("100").with_suffix(".atr"), tmp_path / "s0010_re.atr")
    with pytest.raises(RecordingError, match=r"s0010_re\.atr: annotations run to .*another record"):
        read_wfdb(base)
    assert read_wfdb(base, annotations="none").beats is None


def test_named_annotator_must_exist_default_may_not(tmp_path: Path) -> None:
    rec = read_wfdb(record_path("v102s"))
    assert rec.beats is None and any("no .atr annotations" in n for n in rec.notes)
    with pytest.raises(RecordingError, match=r"100\.qrs: annotation file not found"):
        read_wfdb(record_path("100"), annotations="qrs")


def test_corrupt_annotation_file_names_it(tmp_path: Path) -> None:
    base = _copy("100", tmp_path)
    (tmp_path / "100.atr").write_bytes(b"\xff" * 7)
    with pytest.raises(RecordingError, match=r"100\.atr: bad annotation file"):
        read_wfdb(base)


def test_flat_line_becomes_a_lead_off_label(tmp_path: Path) -> None:
    d = wfdb.rdrecord(str(record_path("100")), channels=[0], sampto=360 * 60, physical=False)
    x = d.d_signal[:, 0].astype(np.int64) - 1024
    x[360 * 20 : 360 * 35] = x[360 * 20]  # 15 s with the electrode off
    rec = read_wfdb(_write(tmp_path, "flat", x, 360.0))
    (lab,) = [lab for lab in rec.labels if lab[2] == "lead_off"]
    assert lab[0] == pytest.approx(20.0, abs=0.01) and lab[1] == pytest.approx(35.0, abs=0.01)
    assert any("lead_off 15.0 s labelled as sensor fault" in n for n in rec.notes)
    whole = read_wfdb(_write(tmp_path, "dead", np.zeros(360 * 30), 360.0))
    assert whole.labels == [(0.0, pytest.approx(30.0, abs=0.01), "lead_off")]
    assert any("flat line over the whole record" in n for n in whole.notes)


def test_clipped_signal_becomes_a_saturation_label(tmp_path: Path) -> None:
    d = wfdb.rdrecord(str(record_path("100")), channels=[0], sampto=360 * 60, physical=False)
    x = d.d_signal[:, 0].astype(np.int64) - 1024
    t = np.arange(x.size) / 360.0
    x = x + np.where((t >= 30) & (t < 34), 1500, 0)  # motion drives the amplifier to its rail
    x = np.clip(x, -2048, 1000)
    rec = read_wfdb(_write(tmp_path, "clip", x, 360.0))
    sat = [lab for lab in rec.labels if lab[2] == "saturation"]
    assert len(sat) == 1 and sat[0][0] == pytest.approx(30.0, abs=0.1)
    assert sat[0][1] == pytest.approx(34.0, abs=0.1)
    assert any("saturation" in n for n in rec.notes)


@pytest.mark.parametrize(("fs", "ok"), [(50.0, False), (125.0, True), (1000.0, True)])
def test_rates(tmp_path: Path, fs: float, ok: bool) -> None:
    n = int(fs * 20)
    x = (np.sin(np.arange(n) / fs * 2 * np.pi * 1.2) * 200).astype(np.int64)
    base = _write(tmp_path, f"r{int(fs)}", x, fs)
    if ok:
        assert read_wfdb(base).rate(Stream.ECG) == pytest.approx(fs)
    else:
        with pytest.raises(RecordingError, match="below 100 Hz"):
            read_wfdb(base)


def test_without_the_formats_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from edgeagent.sources.edf import read_edf

    monkeypatch.setitem(sys.modules, "wfdb", None)  # import wfdb -> ImportError
    monkeypatch.setitem(sys.modules, "pyedflib", None)
    with pytest.raises(
        RecordingError, match=r"needs the 'wfdb' package: pip install 'edgeagent\[formats\]'"
    ):
        read_wfdb(record_path("100"))
    (tmp_path / "x.edf").write_bytes(b"0       ")
    with pytest.raises(RecordingError, match=r"needs the 'pyedflib' package"):
        read_edf(tmp_path / "x.edf")


@pytest.fixture(scope="module")
def small_record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Record 100's first 10 s (signal and beat annotations) as a small WFDB record."""
    d = tmp_path_factory.mktemp("small")
    src = record_path("100")
    rec = wfdb.rdrecord(str(src), sampto=3600, physical=False)
    rec.record_name, rec.file_name = "s", ["s.dat"] * rec.n_sig
    rec.wrsamp(write_dir=str(d))
    ann = wfdb.rdann(str(src), "atr", sampto=3600)
    wfdb.wrann(
        "s", "atr", ann.sample, symbol=ann.symbol, aux_note=ann.aux_note, fs=360, write_dir=str(d)
    )
    return d


@settings(max_examples=200, deadline=None)
@given(
    which=st.sampled_from(["hea", "atr", "dat"]),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_any_corruption_reads_or_fails_with_a_recording_error(
    small_record: Path, tmp_path_factory: pytest.TempPathFactory, which: str,
    edits: list[tuple[float, int]], cut: float | None,
) -> None:  # fmt: skip
    """Bytes flipped or cut anywhere in any file: a Recording or a RecordingError, no crash."""
    d = tmp_path_factory.mktemp("fuzz")
    for f in small_record.iterdir():
        shutil.copyfile(f, d / f.name)
    target = d / f"s.{which}"
    data = bytearray(target.read_bytes())
    for pos, value in edits:
        data[min(int(pos * len(data)), len(data) - 1)] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    target.write_bytes(bytes(data))
    try:
        rec = read_wfdb(d / "s")
    except RecordingError as exc:
        assert str(d) in str(exc)  # names the file
        return
    assert rec.streams == (Stream.ECG,) or rec.data[Stream.ECG][0].size == 0
