"""EDF / EDF+ in: a file written from real record 100 with pyedflib, and broken copies of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import RecordingError
from edgeagent.sources.edf import is_edf, read_edf
from edgeagent.streams import Stream
from tests.real_ecg import record_path

pyedflib = pytest.importorskip("pyedflib", reason="the formats extra (pyedflib) is not installed")
wfdb = pytest.importorskip("wfdb", reason="the formats extra (wfdb) is not installed")

SECONDS = 60


def write_edf_from_100(out: Path, seconds: int = SECONDS, unit: str = "uV") -> np.ndarray:
    """EDF+ of record 100's first ``seconds``: MLII and V5 in ``unit``, beats and episodes.

    Returns MLII in µV as written (before the EDF's 16-bit quantisation).
    """
    base = record_path("100")
    rec = wfdb.rdrecord(str(base), sampto=360 * seconds)
    ann = wfdb.rdann(str(base), "atr", sampto=360 * seconds)
    scale = {"uV": 1000.0, "mV": 1.0}[unit]
    w = pyedflib.EdfWriter(str(out), 2, file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        w.set_number_of_annotation_signals(4)  # room for ~1.3 beats per 1-s data record
        headers = []
        for name in ("MLII", "V5"):
            headers.append(
                {
                    "label": name,
                    "dimension": unit,
                    "sample_frequency": 360,
                    "physical_max": 5.0 * scale,
                    "physical_min": -5.0 * scale,
                    "digital_max": 32767,
                    "digital_min": -32768,
                }
            )
        w.setSignalHeaders(headers)
        w.writeSamples([np.ascontiguousarray(rec.p_signal[:, i] * scale) for i in range(2)])
        for s, sym in zip(ann.sample.tolist(), ann.symbol, strict=True):
            w.writeAnnotation(s / 360.0, -1, sym)
        w.writeAnnotation(20.0, 10.0, "(AFIB")
        w.writeAnnotation(50.0, 2.0, "lead_off")
        w.writeAnnotation(5.0, -1, "recording note")
    finally:
        w.close()
    return rec.p_signal[:, 0] * 1000.0


@pytest.fixture(scope="module")
def edf_100(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    out = tmp_path_factory.mktemp("edf") / "100.edf"
    return out, write_edf_from_100(out)


def test_edf_plus_signal_beats_and_episodes(edf_100: tuple[Path, np.ndarray]) -> None:
    path, mlii = edf_100
    assert is_edf(path)
    rec = read_edf(path)
    assert rec.meta["lead"] == "MLII" and rec.meta["format"] == "edf"
    assert rec.rate(Stream.ECG) == pytest.approx(360.0)
    got = rec.data[Stream.ECG][1][:, 0]
    assert got.shape == mlii.shape
    np.testing.assert_allclose(got, mlii, atol=10000 / 65535 + 1e-3)  # one EDF quantum
    assert rec.beats is not None
    ref = wfdb.rdann(str(record_path("100")), "atr", sampto=360 * SECONDS)
    n_beats = sum(s in "NAV" for s in ref.symbol)
    assert len(rec.beats) == n_beats
    assert (20.0, 30.0, "af") in rec.labels and (50.0, 52.0, "lead_off") in rec.labels


def test_edf_lead_choice_units_and_unknown_lead(tmp_path: Path) -> None:
    mv = tmp_path / "mv.edf"
    mlii = write_edf_from_100(mv, seconds=10, unit="mV")
    rec = read_edf(mv, lead="v5")
    assert rec.meta["lead"] == "V5"
    rec = read_edf(mv)
    np.testing.assert_allclose(rec.data[Stream.ECG][1][:, 0], mlii, atol=1.0)  # mV -> µV
    with pytest.raises(RecordingError, match=r"mv\.edf: no lead 'II'; the record has 'MLII'"):
        read_edf(mv, lead="II")


@pytest.mark.parametrize(
    ("offset", "patch"),
    [
        (0, b"9"),  # version field
        (252, b"xx  "),  # number of signals
        (184, b"-1      "),  # header size
    ],
)
def test_corrupt_edf_header_names_the_file(
    edf_100: tuple[Path, np.ndarray], tmp_path: Path, offset: int, patch: bytes
) -> None:
    bad = tmp_path / "bad.edf"
    data = bytearray(edf_100[0].read_bytes())
    data[offset : offset + len(patch)] = patch
    bad.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=r"bad\.edf: not a readable EDF/BDF file"):
        read_edf(bad)


def test_truncated_edf_and_not_an_edf(edf_100: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    cut = tmp_path / "cut.edf"
    cut.write_bytes(edf_100[0].read_bytes()[:-5000])
    with pytest.raises(RecordingError, match=r"cut\.edf: not a readable EDF/BDF file.*filesize"):
        read_edf(cut)
    txt = tmp_path / "notes.edf"
    txt.write_text("hello")
    with pytest.raises(RecordingError, match=r"notes\.edf"):
        read_edf(txt)
    with pytest.raises(RecordingError, match="no such file"):
        read_edf(tmp_path / "absent.edf")


def test_edflib_messages_stay_off_stdout(
    edf_100: tuple[Path, np.ndarray], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """EDFlib's printf on a bad file goes into the error, not onto a --json answer."""
    cut = tmp_path / "cut.edf"
    cut.write_bytes(edf_100[0].read_bytes()[:-777])
    with pytest.raises(RecordingError):
        read_edf(cut)
    print("after")
    out, _ = capfd.readouterr()
    assert out == "after\n"


@settings(max_examples=80, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 767), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_any_header_corruption_reads_or_fails_with_a_recording_error(
    edf_100: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory,
    edits: list[tuple[int, int]], cut: float | None,
) -> None:  # fmt: skip
    data = bytearray(edf_100[0].read_bytes())
    for pos, value in edits:  # the fixed header and the first signal headers
        data[pos] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    bad = tmp_path_factory.mktemp("edf-fuzz") / "x.edf"
    bad.write_bytes(bytes(data))
    try:
        rec = read_edf(bad)
    except RecordingError as exc:
        assert "x.edf" in str(exc)
        return
    assert rec.meta["format"] == "edf"
