"""Read recording directories (docs/recording-format.md) and replay them as SampleBlocks.

A recording is one CSV per stream plus an optional ``labels.csv``. Files may
come from the simulator, a bench logger or a conversion of a public dataset,
so this reader is tolerant where tolerance is safe and loud where it is not:

* accepted as-is: any subset of streams, any sampling rate, ``#`` comment
  lines, blank lines, CRLF, a UTF-8 BOM, ``,`` ``;`` tab or space separators,
  header names in any case with surrounding spaces, quotes or a unit suffix
  (``"T (s)"``), a few common aliases (``time``, ``ecg``, ``bpm`` ...), extra
  columns (ignored, with a note);
* dropped and *counted* in ``Recording.rejected``: rows with NaN/inf or an
  empty value, duplicate or out-of-order timestamps, a header repeated
  mid-file (logger restart), a truncated last line, isolated malformed rows;
* refused with ``RecordingError`` naming the file, line and problem: not a
  directory, no stream files, binary or non-UTF-8 content, no header, a
  missing required column, or a file that is mostly unparseable.

It never imports ``firmware_sim``: it is an independent implementation of the
documented format, so a disagreement between writer and reader surfaces in
the round-trip tests instead of being shared by both.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeagent.annotations import BEATS_FILE, Beats, read_beats
from edgeagent.errors import RecordingError
from edgeagent.streams import CHANNELS, SampleBlock, Stream

LABELS_FILE = "labels.csv"

# Header aliases (normalised form) per canonical column. The time column may
# not be called "seconds": that is the RR stream's value column.
_T_ALIASES = ("t", "time", "timestamp", "time_s", "t_s", "ts")
_CHANNEL_ALIASES: dict[Stream, tuple[tuple[str, ...], ...]] = {
    Stream.ECG: (("uv", "ecg", "ecg_uv", "microvolts", "value"),),
    Stream.ACC: (
        ("x", "acc_x", "ax", "x_mg"),
        ("y", "acc_y", "ay", "y_mg"),
        ("z", "acc_z", "az", "z_mg"),
    ),
    Stream.SKIN_TEMP: (("celsius", "temp", "temperature", "skin_temp", "skin_temperature"),),
    Stream.ENV: (
        ("celsius", "temp", "temperature", "ambient", "ambient_c", "ambient_temp"),
        ("humidity", "rh", "humidity_pct", "relative_humidity"),
    ),
    Stream.HR: (("bpm", "hr", "heart_rate"),),
    Stream.RR: (("seconds", "rr", "rr_s", "interval", "rr_interval"),),
}
_LABEL_ALIASES = (
    ("start", "begin", "onset", "t0", "start_s"),
    ("end", "stop", "offset", "t1", "end_s"),
    ("kind", "label", "type", "event", "annotation", "class"),
)

# A file is "unreadable" rather than "has a few bad rows" past this share.
_MAX_MALFORMED_FRACTION = 0.5
_SNIFF_BYTES = 4096


_SECONDS = {"s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3,
            "msec": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}  # fmt: skip
_CELSIUS = {"c": (1.0, 0.0), "°c": (1.0, 0.0), "degc": (1.0, 0.0), "celsius": (1.0, 0.0),
            "f": (5 / 9, -32 * 5 / 9), "°f": (5 / 9, -32 * 5 / 9), "degf": (5 / 9, -32 * 5 / 9),
            "k": (1.0, -273.15)}  # fmt: skip
_MG = {"mg": 1.0, "milli-g": 1.0, "g": 1000.0, "m/s2": 1000 / 9.80665, "m/s^2": 1000 / 9.80665,
       "m/s²": 1000 / 9.80665}  # fmt: skip
# Units a header may state in brackets, per canonical column: value -> (scale, offset)
# into the canonical unit. A unit not listed is refused: guessing would corrupt data.
_UNITS: dict[str, dict[str, tuple[float, float]]] = {
    "t": {k: (v, 0.0) for k, v in _SECONDS.items()},
    "seconds": {k: (v, 0.0) for k, v in _SECONDS.items()},
    "uv": {
        "uv": (1.0, 0.0),
        "µv": (1.0, 0.0),
        "μv": (1.0, 0.0),
        "microvolts": (1.0, 0.0),
        "mv": (1e3, 0.0),
        "v": (1e6, 0.0),
    },
    "x": {k: (v, 0.0) for k, v in _MG.items()},
    "y": {k: (v, 0.0) for k, v in _MG.items()},
    "z": {k: (v, 0.0) for k, v in _MG.items()},
    "celsius": _CELSIUS,
    "humidity": {
        "%": (1.0, 0.0),
        "%rh": (1.0, 0.0),
        "rh": (1.0, 0.0),
        "pct": (1.0, 0.0),
        "percent": (1.0, 0.0),
    },
    "bpm": {"bpm": (1.0, 0.0), "1/min": (1.0, 0.0), "/min": (1.0, 0.0), "min^-1": (1.0, 0.0)},
}


def _unit(name: str) -> str:
    """The unit stated in a trailing ``(...)`` or ``[...]`` of a header cell, normalised."""
    m = re.search(r"[\(\[]([^\)\]]*)[\)\]]\s*$", name.strip().strip("\"'"))
    return re.sub(r"\s+", "", m.group(1).lower()) if m else ""


def _norm(name: str) -> str:
    """Normalise a header cell: case, spaces, quotes and a trailing unit like ``(s)``."""
    s = name.strip().strip("\"'").strip().lower()
    s = re.sub(r"\s*[\(\[][^\)\]]*[\)\]]\s*$", "", s)
    return re.sub(r"[\s\-]+", "_", s)


@dataclass
class Recording:
    """A loaded recording: per-stream samples, labels, and what was rejected and why.

    Arrays are read-only so blocks handed to consumers can be views without
    anyone corrupting the recording in place.
    """

    path: Path
    data: dict[Stream, tuple[np.ndarray, np.ndarray]]
    labels: list[tuple[float, float, str]] = field(default_factory=list)
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Reference beats (``beats.csv`` or a record's beat annotations), if any.
    beats: Beats | None = None
    #: Where the data came from: format, lead, rate, units (record readers).
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def streams(self) -> tuple[Stream, ...]:
        """Streams with at least one sample, in ``Stream`` declaration order."""
        return tuple(s for s in Stream if s in self.data and len(self.data[s][0]) > 0)

    @property
    def start(self) -> float:
        """Earliest sample time over all streams (0.0 for an empty recording)."""
        firsts = [float(self.data[s][0][0]) for s in self.streams]
        return min(firsts) if firsts else 0.0

    @property
    def end(self) -> float:
        """Latest sample time over all streams."""
        lasts = [float(self.data[s][0][-1]) for s in self.streams]
        return max(lasts) if lasts else 0.0

    @property
    def duration(self) -> float:
        """Seconds from the first to the last sample over all streams."""
        return self.end - self.start

    @property
    def total_rejected(self) -> int:
        """Rows dropped over all files."""
        return sum(sum(d.values()) for d in self.rejected.values())

    def rate(self, stream: Stream | str) -> float:
        """Median sampling rate of ``stream`` in Hz (NaN with fewer than two samples)."""
        t = self.data[Stream(stream)][0]
        if len(t) < 2:
            return math.nan
        return float(1.0 / np.median(np.diff(t)))

    def blocks(
        self,
        device: str = "replay",
        block_s: float = 1.0,
        streams: Iterable[Stream | str] | None = None,
    ) -> Iterator[SampleBlock]:
        """Yield the recording as SampleBlocks, merged in time order across streams.

        Time is cut into ``block_s`` bins from the recording's start; each
        stream's samples in a bin form one block, and blocks come bin by bin,
        within a bin in order of their last sample - the order in which a live
        source would have delivered them. Blocks hold read-only views.
        """
        if not (math.isfinite(block_s) and block_s > 0):
            raise ValueError(f"block_s must be > 0, got {block_s!r}")
        wanted = [Stream(s) for s in streams] if streams is not None else list(self.streams)
        order = {s: i for i, s in enumerate(Stream)}
        t0 = self.start
        pieces: list[tuple[int, float, int, Stream, int, int]] = []
        for s in wanted:
            if s not in self.data:
                continue
            t = self.data[s][0]
            if len(t) == 0:
                continue
            b = np.floor((t - t0) / block_s).astype(np.int64)
            cuts = np.flatnonzero(np.diff(b)) + 1
            starts = np.concatenate([[0], cuts])
            ends = np.concatenate([cuts, [len(t)]])
            for i0, i1 in zip(starts.tolist(), ends.tolist(), strict=True):
                pieces.append((int(b[i0]), float(t[i1 - 1]), order[s], s, i0, i1))
        pieces.sort(key=lambda p: (p[0], p[1], p[2]))
        for _, _, _, s, i0, i1 in pieces:
            t, v = self.data[s]
            yield SampleBlock(device=device, stream=s, t=t[i0:i1], values=v[i0:i1])


# --------------------------------------------------------------------------- reading


def read_recording(
    path: str | os.PathLike[str], streams: Iterable[Stream | str] | None = None
) -> Recording:
    """Load the recording directory at ``path`` (optionally only some ``streams``).

    Raises RecordingError for a directory that cannot be used; row-level
    problems are dropped and counted in ``Recording.rejected`` instead.
    """
    root = Path(path)
    if not root.exists():
        raise RecordingError(str(root), "no such directory")
    if not root.is_dir():
        raise RecordingError(str(root), "not a directory (a recording is a directory of CSV files)")
    wanted = {Stream(s) for s in streams} if streams is not None else set(Stream)
    files: dict[Stream, Path] = {}
    notes: list[str] = []
    label_file: Path | None = None
    beats_file: Path | None = None
    for entry in sorted(root.iterdir()):
        if not entry.is_file() or entry.suffix.lower() != ".csv":
            continue
        stem = entry.stem.strip().lower()
        if stem == Path(LABELS_FILE).stem:
            label_file = entry
            continue
        if stem == Path(BEATS_FILE).stem:
            beats_file = entry
            continue
        try:
            s = Stream(stem)
        except ValueError:
            notes.append(f"{entry.name}: not a stream name, ignored")
            continue
        if s in files:
            raise RecordingError(str(entry), f"two files for stream {s.value!r}: {files[s].name}")
        if s in wanted:
            files[s] = entry
    if not files:
        expected = ", ".join(f"{s.value}.csv" for s in Stream)
        raise RecordingError(str(root), f"no stream files found (expected any of {expected})")
    rec = Recording(path=root, data={}, notes=notes)
    for s, f in files.items():
        t, v, rejected, file_notes = _read_stream_file(f, s)
        t.flags.writeable = False
        v.flags.writeable = False
        rec.data[s] = (t, v)
        if rejected:
            rec.rejected[s.value] = rejected
        rec.notes.extend(file_notes)
        if len(t) == 0:
            rec.notes.append(f"{f.name}: no valid rows")
    if label_file is not None:
        rec.labels, rejected, file_notes = _read_labels(label_file)
        if rejected:
            rec.rejected["labels"] = rejected
        rec.notes.extend(file_notes)
    if beats_file is not None:
        rec.beats, dropped, file_notes = read_beats(beats_file)
        if dropped:
            rec.rejected["beats"] = {"malformed": dropped}
        rec.notes.extend(file_notes)
    rec.meta = {"format": "csv"}
    return rec


@dataclass
class _Header:
    line: int  # 1-based line number of the header
    delimiter: str | None  # None: runs of whitespace
    names: list[str]  # normalised
    raw: str
    units: list[str] = field(default_factory=list)  # stated unit per cell, "" if none


def _sniff_header(f: Path) -> _Header:
    try:
        with open(f, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise RecordingError(str(f), f"cannot read: {exc.strerror or exc}") from None
    if b"\x00" in head:
        raise RecordingError(str(f), "binary data, not a CSV text file")
    try:
        with open(f, encoding="utf-8-sig", newline="") as fh:
            for lineno, line in enumerate(fh, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                delim = next((d for d in (",", ";", "\t") if d in text), None)
                cells = text.split(delim) if delim else text.split()
                return _Header(
                    lineno, delim, [_norm(c) for c in cells], text, [_unit(c) for c in cells]
                )
    except UnicodeDecodeError as exc:
        raise RecordingError(str(f), f"not UTF-8 text (byte offset {exc.start})") from None
    raise RecordingError(str(f), "empty file: expected a header line such as 't,uv'")


def _looks_numeric(cells: list[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True


def _map_columns(
    f: Path, hdr: _Header, want: tuple[tuple[str, ...], ...], canonical: tuple[str, ...]
) -> tuple[list[int], list[str]]:
    """Indices of the wanted columns in header order; notes on anything ignored."""
    expected = ",".join(canonical)
    if _looks_numeric(hdr.names):
        raise RecordingError(
            str(f),
            f"line {hdr.line}: no header row (found data {hdr.raw!r}); expected '{expected}'",
        )
    idx: list[int] = []
    notes: list[str] = []
    for aliases, canon in zip(want, canonical, strict=True):
        hits = [i for i, n in enumerate(hdr.names) if n in aliases and i not in idx]
        if not hits:
            raise RecordingError(
                str(f),
                f"line {hdr.line}: missing column {canon!r} (header has {hdr.names}); "
                f"expected '{expected}'",
            )
        if hdr.names[hits[0]] != canon:
            notes.append(f"{f.name}: column {hdr.names[hits[0]]!r} read as {canon!r}")
        idx.append(hits[0])
    extra = [n for i, n in enumerate(hdr.names) if i not in idx]
    if extra:
        notes.append(f"{f.name}: extra columns ignored: {extra}")
    return idx, notes


def _conversion(
    f: Path, hdr: _Header, col: int, canon: str, notes: list[str]
) -> tuple[float, float]:
    """(scale, offset) from the header's stated unit to the canonical one; refuse unknown units."""
    unit = hdr.units[col] if col < len(hdr.units) else ""
    if not unit:
        return 1.0, 0.0
    table = _UNITS.get(canon, {})
    if unit not in table:
        raise RecordingError(
            str(f),
            f"line {hdr.line}: unit {unit!r} of column {hdr.names[col]!r} not understood; "
            f"use one of {sorted(table)} (or no unit for the canonical one)",
        )
    conv = table[unit]
    if conv != (1.0, 0.0):
        notes.append(f"{f.name}: column {hdr.names[col]!r} converted from {unit} to {canon} units")
    return conv


def _read_stream_file(
    f: Path, stream: Stream
) -> tuple[np.ndarray, np.ndarray, dict[str, int], list[str]]:
    hdr = _sniff_header(f)
    canonical = ("t", *CHANNELS[stream])
    idx, notes = _map_columns(f, hdr, (_T_ALIASES, *_CHANNEL_ALIASES[stream]), canonical)
    rejected: dict[str, int] = {}
    try:
        data = _fast_parse(f, hdr, idx)
    except (ValueError, IndexError) as exc:
        m = _ROW_RE.search(str(exc))
        data = _slow_parse(f, hdr, idx, rejected, notes, int(m.group(1)) if m else None)
    if data.size == 0:
        data = np.zeros((0, len(idx)))
    for j, (col, canon) in enumerate(zip(idx, canonical, strict=True)):
        scale, offset = _conversion(f, hdr, col, canon, notes)
        if (scale, offset) != (1.0, 0.0):
            data[:, j] = data[:, j] * scale + offset
    t, v = _clean_rows(data, rejected)
    with np.errstate(over="ignore"):  # overflow is detected and counted just below
        v32 = v.astype(np.float32)
    fits = np.isfinite(v32).all(axis=1)
    if not fits.all():
        # Finite in float64 but beyond float32: dropping beats storing inf silently.
        rejected["out_of_range"] = int((~fits).sum())
        t, v32 = t[fits], v32[fits]
    return t, np.ascontiguousarray(v32), rejected, notes


def _loadtxt(source: Path | list[str], hdr: _Header, idx: list[int], skip: int) -> np.ndarray:
    """numpy's C parser (~1M rows/s); raises ValueError on any row it cannot take."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
        return np.loadtxt(
            source,
            delimiter=hdr.delimiter,
            skiprows=skip,
            usecols=idx,
            comments="#",
            ndmin=2,
            encoding="utf-8-sig",
            quotechar='"',
            dtype=np.float64,
        ).reshape(-1, len(idx))


def _fast_parse(f: Path, hdr: _Header, idx: list[int]) -> np.ndarray:
    """The whole file in one C-parser pass: the common, clean case."""
    return _loadtxt(f, hdr, idx, hdr.line)


# numpy names the data row (0-based, comments and blank lines not counted) it failed on.
_ROW_RE = re.compile(r"at row (\d+)")


@dataclass
class _Tally:
    rows: int = 0
    malformed: int = 0
    first_bad: str | None = None


def _slow_parse(
    f: Path,
    hdr: _Header,
    idx: list[int],
    rejected: dict[str, int],
    notes: list[str],
    first_bad_row: int | None = None,
) -> np.ndarray:
    """Drop and count bad rows, keeping C-parser speed for the clean spans between them.

    The C parser runs up to the row it rejects (numpy names it); that row is
    handled alone, and parsing resumes after it. One bad row in a million
    costs one extra parser pass, not a pure-Python pass over the whole file.
    """
    with open(f, encoding="utf-8-sig", newline="") as fh:
        text = fh.read()
    body = text.splitlines()[hdr.line :]
    ends_clean = text.endswith(("\n", "\r"))
    lineno: list[int] = []
    lines: list[str] = []
    for i, ln in enumerate(body):
        stripped = ln.strip()
        if stripped and not stripped.startswith("#"):
            lineno.append(hdr.line + 1 + i)
            lines.append(ln)
    last_lineno = hdr.line + len(body)
    need = max(idx) + 1
    tally = _Tally()
    blocks: list[np.ndarray] = []

    def one_line(k: int) -> None:
        tally.rows += 1
        cells_text = lines[k].split("#", 1)[0].strip()
        cells = cells_text.split(hdr.delimiter) if hdr.delimiter else cells_text.split()
        problem = None
        if len(cells) < need:
            if lineno[k] == last_lineno and not ends_clean:
                rejected["truncated"] = rejected.get("truncated", 0) + 1
                return
            problem = f"{len(cells)} fields, need {need}"
        else:
            try:
                blocks.append(np.array([[_cell_float(cells[j]) for j in idx]]))
                return
            except ValueError as exc:
                if [_norm(c) for c in cells] == hdr.names:
                    rejected["repeated_header"] = rejected.get("repeated_header", 0) + 1
                    return
                problem = str(exc)
        tally.malformed += 1
        if tally.first_bad is None:
            tally.first_bad = f"line {lineno[k]}: {problem} in {cells_text[:60]!r}"

    def span(lo: int, hi: int) -> None:
        """Rows lo..hi-1 believed clean: C parser, or one by one if that fails after all."""
        if hi <= lo:
            return
        try:
            arr = _loadtxt(lines[lo:hi], hdr, idx, 0)
        except (ValueError, IndexError):
            for k in range(lo, hi):
                one_line(k)
            return
        tally.rows += len(arr)
        blocks.append(arr)

    pos = 0
    hint = first_bad_row  # from the whole-file attempt: saves re-parsing up to it
    while pos < len(lines):
        try:
            if hint is not None:
                raise ValueError(f"at row {hint}")
            arr = _loadtxt(lines[pos:], hdr, idx, 0)
        except (ValueError, IndexError) as exc:
            hint = None
            m = _ROW_RE.search(str(exc))
            bad = pos + (int(m.group(1)) if m else 0)
            span(pos, min(bad, len(lines)))
            if bad < len(lines):
                one_line(bad)
            pos = bad + 1
            if tally.malformed > 1000 and tally.malformed > _MAX_MALFORMED_FRACTION * tally.rows:
                break  # clearly unreadable: stop early, reported below
            continue
        tally.rows += len(arr)
        blocks.append(arr)
        break
    if tally.malformed:
        if tally.malformed > _MAX_MALFORMED_FRACTION * tally.rows:
            raise RecordingError(
                str(f),
                f"unreadable: {tally.malformed} of {tally.rows} rows malformed, "
                f"first at {tally.first_bad}",
            )
        rejected["malformed"] = tally.malformed
        notes.append(
            f"{f.name}: {tally.malformed} malformed rows dropped, first at {tally.first_bad}"
        )
    if not blocks:
        return np.zeros((0, len(idx)))
    return np.concatenate(blocks)


def _cell_float(cell: str) -> float:
    c = cell.strip().strip('"').strip()
    if c == "":
        return math.nan  # a missing value: counted as non-finite, not as garbage
    try:
        return float(c)
    except ValueError:
        raise ValueError(f"not a number: {c[:20]!r}") from None


def _clean_rows(data: np.ndarray, rejected: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Drop (and count) non-finite rows, duplicate and out-of-order timestamps."""

    def count(key: str, n: int) -> None:
        if n:
            rejected[key] = rejected.get(key, 0) + int(n)

    finite = np.isfinite(data).all(axis=1)
    count("non_finite", (~finite).sum())
    data = data[finite]
    t = data[:, 0]
    if len(t) > 1:
        # Consecutive exact duplicates: keep the first.
        dup = np.concatenate([[False], t[1:] == t[:-1]])
        count("duplicate", dup.sum())
        data, t = data[~dup], t[~dup]
    if len(t) > 2:
        # An isolated forward spike (t[i] above both neighbours, neighbours in
        # order) is one bad stamp; dropping it keeps the rows after it.
        spike = np.zeros(len(t), dtype=bool)
        spike[:-1] = t[:-1] > t[1:]
        spike[1:-1] &= t[:-2] < t[2:]
        count("out_of_order", spike.sum())
        data, t = data[~spike], t[~spike]
    if len(t) > 1:
        # Anything not above every earlier kept stamp (a clock stepping back).
        prev_max = np.maximum.accumulate(np.concatenate([[-np.inf], t[:-1]]))
        bad = t <= prev_max
        count("duplicate", (t == prev_max).sum())
        count("out_of_order", (t < prev_max).sum())
        data, t = data[~bad], t[~bad]
    return np.ascontiguousarray(t, dtype=np.float64), np.ascontiguousarray(data[:, 1:])


def _read_labels(f: Path) -> tuple[list[tuple[float, float, str]], dict[str, int], list[str]]:
    hdr = _sniff_header(f)
    idx, notes = _map_columns(f, hdr, _LABEL_ALIASES, ("start", "end", "kind"))
    s_scale, s_off = _conversion(f, hdr, idx[0], "t", notes)
    e_scale, e_off = _conversion(f, hdr, idx[1], "t", notes)
    rejected: dict[str, int] = {}
    labels: list[tuple[float, float, str]] = []
    delim = hdr.delimiter or " "
    with open(f, encoding="utf-8-sig", newline="") as fh:
        lines = fh.read().splitlines()
    body = [(n, ln) for n, ln in enumerate(lines[hdr.line :], start=hdr.line + 1)]
    body = [(n, ln) for n, ln in body if ln.strip() and not ln.lstrip().startswith("#")]
    for lineno, line in body:
        # One reader per line: an unbalanced quote must not swallow the rows after it.
        cells = next(csv.reader([line], delimiter=delim, skipinitialspace=True), [])
        if hdr.delimiter is None:
            cells = [c for c in cells if c]
        try:
            start = float(cells[idx[0]]) * s_scale + s_off
            end = float(cells[idx[1]]) * e_scale + e_off
            kind = cells[idx[2]].strip().lower()
        except (ValueError, IndexError):
            rejected["malformed"] = rejected.get("malformed", 0) + 1
            notes.append(f"{f.name}: line {lineno}: malformed label row dropped")
            continue
        if not (math.isfinite(start) and math.isfinite(end)):
            rejected["non_finite"] = rejected.get("non_finite", 0) + 1
        elif end < start or not kind:
            rejected["bad_interval"] = rejected.get("bad_interval", 0) + 1
            notes.append(f"{f.name}: line {lineno}: end before start or empty kind, dropped")
        else:
            labels.append((start, end, kind))
    labels.sort()
    return labels, rejected, notes
