"""WFDB (MIT format) annotation files, parsed from their bytes: a pure function, no I/O.

Why not ``wfdb.rdann``: on a damaged file (a note at sample 0 that starts
with ``## `` but is not a definition) its definition scan loops forever, and
an agent that hangs on a bad file is worse than one that refuses it. The
format is small and documented (WFDB Programmer's Guide, annot(5)): a stream
of little-endian 16-bit words, each a 6-bit code ``A`` and a 10-bit field
``I``:

* ``A`` 1-49: an annotation ``I`` samples after the previous one (0 with
  ``I`` > 0: "not an annotation", a time step only);
* ``A`` 59 SKIP: the next two words are a signed 32-bit time step (high
  word first), for gaps beyond 1023 samples;
* ``A`` 60/61/62 NUM/SUB/CHN: fields of the annotation just read (ignored
  here);
* ``A`` 63 AUX: ``I`` bytes of text for the annotation just read, padded to
  an even length (rhythm notes such as ``(AFIB``);
* word 0: end of file.

Notes at sample 0 starting with ``## `` are definitions (``## time
resolution: 360``), not annotations. The parse is tolerant where a file was
cut short (it keeps what came before and says so) and returns the codes; the
symbol table is WFDB's standard one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

#: WFDB's standard annotation codes -> symbols (``ecgcodes.h``).
SYMBOL_OF_CODE: dict[int, str] = {
    1: "N", 2: "L", 3: "R", 4: "a", 5: "V", 6: "F", 7: "J", 8: "A", 9: "S", 10: "E",
    11: "j", 12: "/", 13: "Q", 14: "~", 16: "|", 18: "s", 19: "T", 20: "*", 21: "D",
    22: '"', 23: "=", 24: "p", 25: "B", 26: "^", 27: "t", 28: "+", 29: "u", 30: "?",
    31: "!", 32: "[", 33: "]", 34: "e", 35: "n", 36: "@", 37: "x", 38: "f", 39: "(",
    40: ")", 41: "r",
}  # fmt: skip
_SKIP, _NUM, _SUB, _CHN, _AUX, _NOTE = 59, 60, 61, 62, 63, 22
_RESOLUTION = re.compile(r"time resolution:\s*([0-9.eE+-]+)")


@dataclass
class Annotations:
    """Parsed annotations: sample index, symbol and note of each (standard codes only)."""

    sample: np.ndarray
    symbol: list[str]
    aux: list[str]
    #: Samples per second the file states (``## time resolution``), if any.
    fs: float | None = None
    #: What was odd about the file (cut short, unknown codes), for ``Recording.notes``.
    problems: list[str] = field(default_factory=list)


def parse_annotations(data: bytes) -> Annotations:
    """Parse an MIT-format annotation file's bytes (module docstring)."""
    problems: list[str] = []
    n = len(data) // 2
    if len(data) % 2:
        problems.append("odd length: the last byte is cut off")
    t = 0
    samples: list[int] = []
    codes: list[int] = []
    aux: list[str] = []
    i = 0
    ended = False
    while i < n:
        w = data[2 * i] | (data[2 * i + 1] << 8)
        a, d = w >> 10, w & 0x3FF
        if w == 0:
            ended = True
            break
        if a == _SKIP:
            if i + 2 >= n:
                problems.append("cut short inside a SKIP")
                break
            b = data[2 * i + 2 : 2 * i + 6]
            step = (b[0] << 16) | (b[1] << 24) | b[2] | (b[3] << 8)
            t += step - (1 << 32) if step >= 1 << 31 else step
            i += 3
            continue
        if a in (_NUM, _SUB, _CHN):
            i += 1
            continue
        if a == _AUX:
            words = (d + 1) // 2
            if i + 1 + words > n:
                problems.append("cut short inside a note")
                break
            if codes:
                raw = data[2 * (i + 1) : 2 * (i + 1) + d]
                aux[-1] = raw.split(b"\x00", 1)[0].decode("latin-1")
            i += 1 + words
            continue
        t += d
        samples.append(t)
        codes.append(a)
        aux.append("")
        i += 1
    if not ended and not any("cut short" in p for p in problems):
        problems.append("no end marker: the file is cut short")
    fs: float | None = None
    keep = []
    unknown = 0
    for k, (s, c, note) in enumerate(zip(samples, codes, aux, strict=True)):
        if c == _NOTE and s == 0 and note.startswith("## "):
            m = _RESOLUTION.search(note)
            if m and fs is None:
                try:
                    fs = float(m.group(1))
                except ValueError:
                    problems.append(f"unreadable time resolution {note!r}")
            continue
        if c == 0 or s < 0:
            continue
        if c not in SYMBOL_OF_CODE:
            unknown += 1
            continue
        keep.append(k)
    if unknown:
        problems.append(f"{unknown} annotations with codes outside the standard table ignored")
    return Annotations(
        sample=np.asarray([samples[k] for k in keep], np.int64),
        symbol=[SYMBOL_OF_CODE[codes[k]] for k in keep],
        aux=[aux[k] for k in keep],
        fs=fs if fs is not None and fs > 0 else None,
        problems=problems,
    )
