"""Beat symbols -> AAMI classes, rhythm notes -> episode kinds, beats.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeagent.annotations import (
    Beats,
    aami_class,
    read_beats,
    rhythm_code,
    rhythm_kind,
    rhythm_labels,
    write_beats,
)
from edgeagent.errors import RecordingError


@pytest.mark.parametrize(
    ("symbols", "aami"),
    [
        ("NLRej", "N"),
        ("AaJS", "S"),
        ("VE", "V"),
        ("F", "F"),
        ("/fQ", "Q"),
    ],
)
def test_aami_classes_of_beat_symbols(symbols: str, aami: str) -> None:
    assert {aami_class(s) for s in symbols} == {aami}


@pytest.mark.parametrize("symbol", ["+", "~", "|", "x", "[", "]", "!", '"', "p", "t"])
def test_non_beat_annotations_are_not_beats(symbol: str) -> None:
    assert aami_class(symbol) is None


@pytest.mark.parametrize(
    ("note", "code", "kind"),
    [
        ("(AFIB\x00", "AFIB", "af"),
        ("(AFL", "AFL", "af"),
        ("(VT", "VT", "tachycardia"),
        ("(SVTA", "SVTA", "tachycardia"),
        ("(SBR", "SBR", "bradycardia"),
        ("(B", "B", "pvc"),
        ("(T", "T", "pvc"),
        ("(N", "N", None),
        ("(P", "P", None),
        ("(NOD", "NOD", "rhythm_nod"),
        ("(PREX", "PREX", "rhythm_prex"),
    ],
)
def test_rhythm_notes_to_kinds(note: str, code: str, kind: str | None) -> None:
    assert rhythm_code(note) == code
    assert rhythm_kind(code) == kind


@pytest.mark.parametrize("note", ["", "\x00", "AFIB", "(", "MISSB"])
def test_notes_that_are_not_rhythm_changes(note: str) -> None:
    assert rhythm_code(note) is None


def test_rhythm_labels_run_to_the_next_change() -> None:
    times = [0.0, 10.0, 12.0, 30.0, 40.0, 45.0]
    notes = ["(N", "(AFIB", "", "(N", "(VT", "(VT"]
    assert rhythm_labels(times, notes, end_s=60.0) == [
        (10.0, 30.0, "af"),
        (40.0, 60.0, "tachycardia"),  # a repeated note extends, not splits
    ]
    assert rhythm_labels([], [], 10.0) == []


def test_beats_keep_beats_only_sorted() -> None:
    b = Beats.from_symbols([2.0, 0.5, 1.0, 1.5], ["N", "+", "V", "A"])
    assert b.t.tolist() == [1.0, 1.5, 2.0]
    assert b.symbol.tolist() == ["V", "A", "N"] and b.aami.tolist() == ["V", "S", "N"]
    assert b.counts() == {"N": 1, "S": 1, "V": 1, "F": 0, "Q": 0}


def test_beats_csv_round_trip_and_bad_rows(tmp_path: Path) -> None:
    b = Beats.from_symbols([0.1234567, 1.0, 2.5], ["N", "V", "/"])
    write_beats(tmp_path / "beats.csv", b)
    back, dropped, notes = read_beats(tmp_path / "beats.csv")
    assert dropped == 0 and not notes
    np.testing.assert_allclose(back.t, b.t, atol=1e-6)
    assert back.aami.tolist() == ["N", "V", "Q"]
    # No aami column: recomputed from the symbol; a bad time or class is dropped and counted.
    (tmp_path / "b2.csv").write_text("t,symbol\n# comment\n1.0,A\nx,N\n2.0,+\n3.0,F\n")
    back, dropped, notes = read_beats(tmp_path / "b2.csv")
    assert back.aami.tolist() == ["S", "F"] and dropped == 2
    assert "line 4" in notes[0]


def test_beats_csv_refused_without_its_columns(tmp_path: Path) -> None:
    (tmp_path / "beats.csv").write_text("time,label\n1,N\n")
    with pytest.raises(RecordingError, match=r"beats\.csv.*'t' and 'symbol'"):
        read_beats(tmp_path / "beats.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(RecordingError, match="empty"):
        read_beats(tmp_path / "empty.csv")
