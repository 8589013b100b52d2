"""Reference annotations of real ECG: beat symbols -> AAMI classes, rhythms -> episode kinds.

Public databases (MIT-BIH via WFDB ``.atr`` files, EDF+ annotation
channels) label each beat with a symbol and each change of rhythm with a
note such as ``(AFIB``. The agent scores beats by AAMI EC57 class
(N, S, V, F, Q, see ``edgeagent.metrics``) and raises alerts by episode
kind (the simulator's ``tachycardia``, ``bradycardia``, ``af``, ``pvc`` ...),
so both vocabularies are mapped here once, as tables; docs/recording-format.md
shows the same tables. Beats also travel in a recording directory as
``beats.csv`` (``t,symbol,aami``), read and written here.

No I/O but the ``beats.csv`` pair; no third-party reader: the WFDB and EDF
readers in ``edgeagent.sources`` feed plain arrays in.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeagent.errors import RecordingError

BEATS_FILE = "beats.csv"

#: WFDB beat symbol -> AAMI EC57 class (de Chazal et al. 2004, EC57 table 1).
AAMI_OF_SYMBOL: dict[str, str] = {
    # N: normal and bundle-branch-block beats, atrial and nodal escape beats
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N", "B": "N", "n": "N",
    # S: supraventricular ectopic (atrial / aberrated atrial / nodal / SV premature)
    "A": "S", "a": "S", "J": "S", "S": "S",
    # V: ventricular ectopic (premature ventricular contraction, ventricular escape, R-on-T)
    "V": "V", "E": "V", "r": "V",
    # F: fusion of ventricular and normal
    "F": "F",
    # Q: paced, fusion of paced and normal, unclassifiable
    "/": "Q", "f": "Q", "Q": "Q", "?": "Q",
}  # fmt: skip

#: Rhythm code (the note after ``(``, upper case) -> project episode kind;
#: ``None`` for a rhythm that is no episode (normal sinus, paced).
KIND_OF_RHYTHM: dict[str, str | None] = {
    "N": None,  # normal sinus rhythm
    "P": None,  # paced rhythm
    "AFIB": "af",  # atrial fibrillation
    "AFL": "af",  # atrial flutter: irregular atrial activity, alerted as AF
    "VT": "tachycardia",  # ventricular tachycardia
    "VFL": "tachycardia",  # ventricular flutter
    "VF": "tachycardia",  # ventricular fibrillation
    "SVTA": "tachycardia",  # supraventricular tachyarrhythmia
    "SBR": "bradycardia",  # sinus bradycardia
    "BII": "bradycardia",  # second-degree heart block
    "IVR": "bradycardia",  # idioventricular rhythm (20-40 bpm)
    "B": "pvc",  # ventricular bigeminy
    "T": "pvc",  # ventricular trigeminy
}
#: Kind given to any other rhythm (nodal, pre-excitation, atrial bigeminy ...):
#: it stays a labelled span, so an alert there is not counted as false.
OTHER_RHYTHM_PREFIX = "rhythm_"


def aami_class(symbol: str) -> str | None:
    """AAMI class of a beat symbol; ``None`` for a non-beat annotation (``+``, ``~``, ``|`` ...)."""
    return AAMI_OF_SYMBOL.get(symbol.strip())


def rhythm_code(note: str) -> str | None:
    """``"(AFIB\\x00"`` -> ``"AFIB"``; ``None`` when the note is not a rhythm change."""
    s = note.replace("\x00", "").strip()
    if not s.startswith("(") or len(s) < 2:
        return None
    return s[1:].strip().upper()


def rhythm_kind(code: str) -> str | None:
    """Episode kind of a rhythm code (table above; unknown codes get ``rhythm_<code>``)."""
    if code in KIND_OF_RHYTHM:
        return KIND_OF_RHYTHM[code]
    return OTHER_RHYTHM_PREFIX + "".join(c if c.isalnum() else "_" for c in code.lower())


def rhythm_labels(
    times: np.ndarray | list[float], notes: list[str], end_s: float
) -> list[tuple[float, float, str]]:
    """Rhythm-change notes at ``times`` -> ``(start, end, kind)`` spans.

    A rhythm lasts from its note to the next rhythm note (or ``end_s``);
    normal rhythms give no span, consecutive notes of one kind merge.
    """
    changes = [
        (float(t), code)
        for t, n in zip(np.asarray(times, np.float64).tolist(), notes, strict=True)
        if (code := rhythm_code(n)) is not None
    ]
    changes.sort(key=lambda c: c[0])
    out: list[tuple[float, float, str]] = []
    for i, (t, code) in enumerate(changes):
        stop = changes[i + 1][0] if i + 1 < len(changes) else end_s
        kind = rhythm_kind(code)
        if kind is None or stop <= t:
            continue
        if out and out[-1][2] == kind and out[-1][1] >= t:
            out[-1] = (out[-1][0], stop, kind)
        else:
            out.append((t, min(stop, end_s), kind))
    return out


@dataclass(frozen=True)
class Beats:
    """Annotated beats: time (s, recording clock), source symbol and AAMI class per beat."""

    t: np.ndarray  # float64, ascending
    symbol: np.ndarray  # str
    aami: np.ndarray  # str, one of edgeagent.metrics.AAMI_CLASSES

    def __post_init__(self) -> None:
        if not (len(self.t) == len(self.symbol) == len(self.aami)):
            raise ValueError("Beats: t, symbol and aami must have the same length")

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def from_symbols(cls, t: np.ndarray | list[float], symbols: list[str]) -> Beats:
        """Keep the beat annotations among ``symbols`` (non-beats dropped), sorted by time."""
        tt = np.asarray(t, np.float64)
        keep = [i for i, s in enumerate(symbols) if aami_class(s) is not None]
        order = sorted(keep, key=lambda i: tt[i])
        return cls(
            t=tt[order] if order else np.zeros(0),
            symbol=np.asarray([symbols[i].strip() for i in order], dtype=str),
            aami=np.asarray([aami_class(symbols[i]) for i in order], dtype=str),
        )

    def counts(self) -> dict[str, int]:
        """Beats per AAMI class (every class present, zeros included)."""
        return {c: int((self.aami == c).sum()) for c in ("N", "S", "V", "F", "Q")}


def write_beats(path: str | os.PathLike[str], beats: Beats) -> None:
    """Write ``beats.csv``: ``t,symbol,aami`` with times to the microsecond."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("t,symbol,aami\n")
        for t, s, a in zip(
            beats.t.tolist(), beats.symbol.tolist(), beats.aami.tolist(), strict=True
        ):
            fh.write(f"{t:.6f},{s},{a}\n")


def read_beats(path: str | os.PathLike[str]) -> tuple[Beats, int, list[str]]:
    """Read ``beats.csv``; returns the beats, the rows dropped and notes on them.

    The AAMI column is recomputed from the symbol when it is missing or
    empty; a row whose class is not an AAMI class, or whose time is not a
    finite number, is dropped and counted. A file without the ``t`` and
    ``symbol`` columns is refused.
    """
    f = Path(path)
    try:
        with open(f, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            rows = [
                (reader.line_num, r)
                for r in reader
                if r and "".join(r).strip() and not r[0].lstrip().startswith("#")
            ]
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(str(f), f"cannot read beats: {exc}") from None
    if not rows:
        raise RecordingError(str(f), "empty file: expected a header 't,symbol,aami'")
    head = [c.strip().lower() for c in rows[0][1]]
    if "t" not in head or "symbol" not in head:
        raise RecordingError(
            str(f), f"header {head} lacks 't' and 'symbol' (expected 't,symbol,aami')"
        )
    it, isym = head.index("t"), head.index("symbol")
    iaami = head.index("aami") if "aami" in head else None
    t: list[float] = []
    sym: list[str] = []
    cls: list[str] = []
    dropped = 0
    first_bad = ""
    for lineno, r in rows[1:]:
        try:
            tv = float(r[it])
            s = r[isym].strip()
            a = r[iaami].strip().upper() if iaami is not None and iaami < len(r) else ""
        except (ValueError, IndexError):
            tv, s, a = math.nan, "", ""
        a = a or (aami_class(s) or "")
        if not math.isfinite(tv) or a not in ("N", "S", "V", "F", "Q"):
            dropped += 1
            first_bad = first_bad or f"line {lineno}: {','.join(r)[:60]!r}"
            continue
        t.append(tv)
        sym.append(s)
        cls.append(a)
    order = np.argsort(np.asarray(t), kind="stable")
    beats = Beats(
        t=np.asarray(t, np.float64)[order],
        symbol=np.asarray(sym, dtype=str)[order] if sym else np.zeros(0, dtype=str),
        aami=np.asarray(cls, dtype=str)[order] if cls else np.zeros(0, dtype=str),
    )
    notes = [f"{f.name}: {dropped} beat rows dropped, first at {first_bad}"] if dropped else []
    return beats, dropped, notes
