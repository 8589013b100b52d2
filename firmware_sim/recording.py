"""Device-side recordings: write simulator sessions to disk, read them back, replay them.

The format (docs/recording-format.md) is deliberately plain - one CSV per
stream plus ``labels.csv`` - so recordings made by other tools (a bench
logger, a PhysioNet export) can be replayed through the simulated devices and
read by the agent alike. This module writes the canonical form only and reads
it strictly; tolerance of foreign variations is the agent reader's job
(``edgeagent.recording``), which is an independent implementation: the two
meet only through the documented format and the shared round-trip tests.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np

from firmware_sim.physiology import (
    STREAM_COLUMNS,
    Chunk,
    Generator,
    Label,
    PatientProfile,
    SimConfig,
)

STREAM_ORDER: tuple[str, ...] = ("ecg", "acc", "skin_temp", "env", "hr", "rr")
LABELS_FILE = "labels.csv"
META_FILE = "meta.json"

# Decimal places written per stream column (after ``t``): enough for the
# sensors' own resolution (ECG 0.01 uV, ACC 0.1 mg, ...), no more, so files stay small.
_DECIMALS: dict[str, tuple[int, ...]] = {
    "ecg": (2,),
    "acc": (1, 1, 1),
    "skin_temp": (3,),
    "env": (3, 2),
    "hr": (2,),
    "rr": (4,),
}
_T_DECIMALS = 6


class ChunkLike(Protocol):
    """Anything shaped like ``physiology.Chunk``: per-stream (t, values) and labels."""

    streams: dict[str, tuple[np.ndarray, np.ndarray]]
    labels: list[Label]


class RecordingFormatError(ValueError):
    """A file does not follow the canonical recording format (device-side reader)."""


def _row_format(stream: str) -> str:
    cols = [f"%.{_T_DECIMALS}f"] + [f"%.{d}f" for d in _DECIMALS[stream]]
    return ",".join(cols) + "\n"


class RecordingWriter:
    """Appends chunks to a recording directory; ``close()`` writes labels and metadata.

    Streaming chunk by chunk keeps memory flat for long sessions. Labels are
    de-duplicated (a chunk repeats the episodes it intersects) and clipped to
    the span actually recorded, because a label must never claim data that
    is not in the files.
    """

    def __init__(self, out_dir: str | os.PathLike[str], meta: dict[str, object] | None = None):
        self.path = Path(out_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, TextIO] = {}
        self._labels: dict[tuple[float, float, str], Label] = {}
        self._meta = dict(meta or {})
        self._t_min = math.inf
        self._t_max = -math.inf
        self.rows: dict[str, int] = {}
        self._closed = False

    def write(self, chunk: ChunkLike) -> None:
        """Append every stream of ``chunk``; streams must arrive in time order."""
        if self._closed:
            raise RuntimeError("RecordingWriter is closed")
        for name in STREAM_ORDER:
            if name not in chunk.streams:
                continue
            t, v = chunk.streams[name]
            if len(t) == 0 and name in self._files:
                continue
            fh = self._files.get(name)
            if fh is None:
                fh = open(self.path / f"{name}.csv", "w", encoding="utf-8", newline="\n")  # noqa: SIM115
                fh.write(",".join(("t", *STREAM_COLUMNS[name])) + "\n")
                self._files[name] = fh
                self.rows[name] = 0
            if len(t) == 0:
                continue
            arr = np.column_stack([np.asarray(t, np.float64), np.asarray(v, np.float64)])
            fh.write((_row_format(name) * len(arr)) % tuple(arr.ravel().tolist()))
            self.rows[name] += len(arr)
            self._t_min = min(self._t_min, float(t[0]))
            self._t_max = max(self._t_max, float(t[-1]))
        for lab in chunk.labels:
            self._labels[(lab.start, lab.end, lab.kind)] = lab

    def close(self, span: tuple[float, float] | None = None) -> list[Label]:
        """Flush files and write ``labels.csv`` (clipped to ``span`` or the data) and meta."""
        if self._closed:
            return []
        self._closed = True
        for fh in self._files.values():
            fh.close()
        lo, hi = span if span is not None else (self._t_min, self._t_max)
        labels = []
        for lab in sorted(self._labels.values(), key=lambda x: (x.start, x.end)):
            s, e = max(lab.start, lo), min(lab.end, hi)
            if e > s:
                labels.append(Label(s, e, lab.kind))
        with open(self.path / LABELS_FILE, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("start,end,kind\n")
            for lab in labels:
                fh.write(f"{lab.start:.3f},{lab.end:.3f},{lab.kind}\n")
        self._meta.setdefault("streams", sorted(self._files))
        self._meta.setdefault("rows", dict(self.rows))
        with open(self.path / META_FILE, "w", encoding="utf-8") as fh:
            json.dump(self._meta, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        return labels

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RecordSummary:
    """What ``record`` wrote: rows per stream and the labels kept."""

    path: Path
    seconds: float
    rows: dict[str, int]
    labels: list[Label] = field(default_factory=list)


def record(
    out_dir: str | os.PathLike[str],
    profile: PatientProfile,
    seconds: float,
    config: SimConfig | None = None,
    *,
    chunk_s: float = 60.0,
    streams: Iterable[str] | None = None,
) -> RecordSummary:
    """Simulate ``seconds`` of ``profile`` from t = 0 and write it as a recording."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    cfg = config if config is not None else SimConfig()
    keep = set(streams) if streams is not None else set(STREAM_ORDER)
    unknown = keep - set(STREAM_ORDER)
    if unknown:
        raise ValueError(f"unknown streams {sorted(unknown)}; known: {STREAM_ORDER}")
    meta: dict[str, object] = {
        "source": "firmware_sim.physiology",
        "profile": asdict(profile),
        "config": {k: v for k, v in asdict(cfg).items() if k != "episodes"},
        "seconds": seconds,
    }
    gen = Generator(profile, cfg)
    writer = RecordingWriter(out_dir, meta)
    done = 0.0
    while done < seconds:
        step = min(chunk_s, seconds - done)
        chunk = gen.advance(step)
        chunk.streams = {k: v for k, v in chunk.streams.items() if k in keep}
        writer.write(chunk)
        done = gen.now
    labels = writer.close(span=(0.0, seconds))
    return RecordSummary(Path(out_dir), seconds, dict(writer.rows), labels)


def read_recording(path: str | os.PathLike[str]) -> Chunk:
    """Read a canonical recording (as written here) back into one ``Chunk``.

    Strict on purpose: the device side replays what it (or a tool following
    the documented format) wrote; any deviation raises RecordingFormatError.
    """
    root = Path(path)
    if not root.is_dir():
        raise RecordingFormatError(f"{root}: not a directory")
    streams: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in STREAM_ORDER:
        f = root / f"{name}.csv"
        if not f.exists():
            continue
        with open(f, encoding="utf-8") as fh:
            header = [c.strip().lower() for c in fh.readline().strip().split(",")]
        want = ["t", *STREAM_COLUMNS[name]]
        if header[: len(want)] != want:
            raise RecordingFormatError(f"{f}: header {header} does not start with {want}")
        try:
            data = np.loadtxt(
                f, delimiter=",", skiprows=1, usecols=range(len(want)), ndmin=2, comments="#"
            )
        except ValueError as exc:
            raise RecordingFormatError(f"{f}: {exc}") from None
        streams[name] = (data[:, 0].copy(), data[:, 1:].astype(np.float32))
    if not streams:
        raise RecordingFormatError(f"{root}: no stream files ({', '.join(STREAM_ORDER)}.csv)")
    labels: list[Label] = []
    lf = root / LABELS_FILE
    if lf.exists():
        with open(lf, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
        for i, ln in enumerate(lines[1:], start=2):
            parts = [p.strip() for p in ln.split(",")]
            try:
                labels.append(Label(float(parts[0]), float(parts[1]), parts[2]))
            except (ValueError, IndexError):
                raise RecordingFormatError(f"{lf}: bad label row {i}: {ln!r}") from None
    start = min(float(t[0]) for t, _ in streams.values() if len(t))
    end = max(float(t[-1]) for t, _ in streams.values() if len(t))
    return Chunk(streams=streams, labels=labels, start=start, end=end)


class RecordingPlayer:
    """Serves a recording through ``advance(seconds)``, like ``physiology.Generator``.

    This is what lets ``serialdev.PtyDevice`` (and anything else that pulls
    chunks from a generator) replay recorded data unchanged. With ``rebase``
    the recording's first sample is moved to t = 0 (``offset`` says by how
    much), so a recording that starts at t = 86400 does not stall a device
    for a day.
    """

    def __init__(self, recording: Chunk, *, rebase: bool = True) -> None:
        self.recording = recording
        nonempty = [t for t, _ in recording.streams.values() if len(t)]
        first = min(float(t[0]) for t in nonempty) if nonempty else 0.0
        last = max(float(t[-1]) for t in nonempty) if nonempty else 0.0
        self.offset = math.floor(first) if rebase else 0.0
        self.streams: tuple[str, ...] = tuple(recording.streams)
        self.duration = last - self.offset + 1e-6
        self._now = 0.0
        self._pos = dict.fromkeys(recording.streams, 0)

    @property
    def labels(self) -> list[Label]:
        """Recording labels on the player's (rebased) clock."""
        return [
            Label(lab.start - self.offset, lab.end - self.offset, lab.kind)
            for lab in self.recording.labels
        ]

    @property
    def now(self) -> float:
        """Player time reached so far."""
        return self._now

    def advance(self, seconds: float) -> Chunk:
        """Samples with ``now <= t - offset < now + seconds``, every stream."""
        end = self._now + seconds
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, (t, v) in self.recording.streams.items():
            i0 = self._pos[name]
            i1 = int(np.searchsorted(t, end + self.offset, side="left"))
            i1 = max(i0, i1)
            out[name] = (t[i0:i1] - self.offset, v[i0:i1])
            self._pos[name] = i1
        labels = [lab for lab in self.labels if lab.end >= self._now and lab.start < end]
        chunk = Chunk(streams=out, labels=labels, start=self._now, end=end)
        self._now = end
        return chunk


def open_player(src: str | os.PathLike[str], lead: str | None = None) -> RecordingPlayer:
    """A player for a recording directory, a WFDB record or an EDF file (``lead`` for records).

    Raises ``RecordingFormatError`` or ``formats.RecordFileError`` (both
    ValueError) naming the file and the problem.
    """
    from firmware_sim import formats

    if formats.record_kind(src) is not None:
        return RecordingPlayer(formats.read_record(src, lead))
    return RecordingPlayer(read_recording(src))
