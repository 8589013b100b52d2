"""MIT-format annotation bytes: the pure parser, as tables and against wfdb on the real file."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgeagent.sources.wfdb_annotations import parse_annotations
from tests.real_ecg import record_path


def _w(code: int, step: int) -> bytes:
    return struct.pack("<H", (code << 10) | step)


def _aux(text: bytes) -> bytes:
    return _w(63, len(text)) + text + (b"\x00" if len(text) % 2 else b"")


def _skip(step: int) -> bytes:
    v = step & 0xFFFFFFFF
    return _w(59, 0) + struct.pack("<HH", v >> 16, v & 0xFFFF)


END = b"\x00\x00"


@pytest.mark.parametrize(
    ("data", "samples", "symbols", "aux", "fs", "problem"),
    [
        (_w(1, 10) + _w(5, 300) + END, [10, 310], ["N", "V"], ["", ""], None, None),
        # a note belongs to the annotation before it; NUM/SUB/CHN are skipped
        (_w(28, 5) + _aux(b"(AFIB") + _w(60, 3) + _w(1, 7) + END, [5, 12], ["+", "N"],
         ["(AFIB", ""], None, None),
        # SKIP for steps beyond 1023 samples, negative ones too
        (_skip(100_000) + _w(1, 3) + _skip(-50) + _w(1, 0) + END, [100_003, 99_953], ["N", "N"],
         ["", ""], None, None),
        # definitions at sample 0 are not annotations; the time resolution is read
        (_w(22, 0) + _aux(b"## time resolution: 250") + _w(1, 9) + END, [9], ["N"], [""],
         250.0, None),
        # "not an annotation" steps time; unknown codes are reported
        (_w(0, 4) + _w(1, 1) + _w(50, 2) + END, [5], ["N"], [""], None, "outside the standard"),
        # cut short: what came before is kept and the cut said
        (_w(1, 10) + _w(63, 40) + b"(AF", [10], ["N"], [""], None, "cut short inside a note"),
        (_w(1, 10) + _w(59, 0) + b"\x01", [10], ["N"], [""], None, "odd length"),
        (_w(1, 10), [10], ["N"], [""], None, "no end marker"),
    ],
)  # fmt: skip
def test_parse_table(
    data: bytes,
    samples: list[int],
    symbols: list[str],
    aux: list[str],
    fs: float | None,
    problem: str | None,
) -> None:
    a = parse_annotations(data)
    assert a.sample.tolist() == samples and a.symbol == symbols and a.aux == aux
    assert a.fs == fs
    if problem is None:
        assert a.problems == []
    else:
        assert any(problem in p for p in a.problems), a.problems


def test_a_damaged_definition_note_does_not_hang() -> None:
    """The note that sends ``wfdb.rdann`` into an endless loop parses at once."""
    data = _w(22, 0) + _aux(b"## time resolution: 360") + _w(22, 0) + _aux(b"## garbage") + END
    assert parse_annotations(data).sample.size == 0


def test_matches_wfdb_on_record_100() -> None:
    wfdb = pytest.importorskip("wfdb")
    base = record_path("100")
    ref = wfdb.rdann(str(base), "atr")
    a = parse_annotations(base.with_suffix(".atr").read_bytes())
    assert np.array_equal(a.sample, ref.sample) and a.symbol == list(ref.symbol)
    assert a.aux == [(x or "").rstrip("\x00") for x in ref.aux_note]
    assert a.problems == []
