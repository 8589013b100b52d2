"""Where a simulated BLE peripheral gets its samples: physiology, a recording, or a test signal.

A feed is anything with ``advance(seconds) -> dict[str, (t, values)]`` whose
time stamps continue across calls (the physiology ``Generator`` contract,
interface A). The peripheral only ever asks a feed for "the next ``dt``
seconds", so a device that is disconnected keeps its clock running and the
agent sees a real hole in the data, as with real hardware.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from firmware_sim import gatt

StreamData = dict[str, tuple[np.ndarray, np.ndarray]]
#: The strap's ECG rate as its PMD service announces it (a Polar H10's 130 Hz).
PMD_ECG_HZ = float(gatt.PMD_CAPABILITIES[gatt.PMD_ECG][gatt.PMD_SETTING_SAMPLE_RATE][0])


class Feed(Protocol):
    """A source of continuous, time-stamped samples (seconds from the device's start)."""

    def advance(self, seconds: float) -> StreamData:
        """Return the samples of the next ``seconds`` of signal, per stream name."""
        ...


def _grid(start: float, end: float, hz: float) -> np.ndarray:
    """Sample instants k/hz with start <= t < end, exact across consecutive calls."""
    k0 = math.ceil(start * hz - 1e-9)
    k1 = math.ceil(end * hz - 1e-9)
    return np.arange(k0, k1, dtype=np.float64) / hz


class SyntheticFeed:
    """A deterministic test signal: ECG-like beats, gravity + motion, skin temperature.

    Used when the physiology model is not wanted (benchmarks, codec tests) or not
    installed; it is not physiologically faithful, only shaped like the real
    streams (units, rates, beat-to-beat RR variation).
    """

    def __init__(
        self,
        seed: int = 0,
        ecg_hz: float = 130.0,
        acc_hz: float = 50.0,
        temp_hz: float = 1.0,
        hr_bpm: float = 70.0,
    ) -> None:
        self._rng = np.random.default_rng(seed)
        self.ecg_hz, self.acc_hz, self.temp_hz = ecg_hz, acc_hz, temp_hz
        self._hr = hr_bpm
        self._t = 0.0
        self._next_beat = 60.0 / hr_bpm
        self._last_beat = 0.0
        self._beats: list[float] = [0.0]

    def _beats_until(self, end: float) -> None:
        while self._next_beat < end + 2.0:
            self._beats.append(self._next_beat)
            rr = 60.0 / self._hr * (1.0 + 0.05 * float(self._rng.normal()))
            self._next_beat += max(0.3, rr)

    def advance(self, seconds: float) -> StreamData:
        """Next ``seconds`` of every stream (see class doc)."""
        start, end = self._t, self._t + max(0.0, seconds)
        self._t = end
        self._beats_until(end)
        beats = np.asarray(self._beats)
        out: StreamData = {}
        t = _grid(start, end, self.ecg_hz)
        # sum of narrow Gaussians at each beat: an R wave of ~1 mV
        d = t[:, None] - beats[None, :]
        ecg = 1000.0 * np.exp(-0.5 * (d / 0.012) ** 2).sum(axis=1)
        ecg += 150.0 * np.exp(-0.5 * ((d - 0.25) / 0.05) ** 2).sum(axis=1)
        out["ecg"] = (t, ecg.astype(np.float32)[:, None])
        t = _grid(start, end, self.acc_hz)
        acc = np.stack(
            [
                50.0 * np.sin(2 * np.pi * 0.3 * t),
                20.0 * np.cos(2 * np.pi * 0.2 * t),
                1000.0 + 10.0 * np.sin(2 * np.pi * 1.1 * t),
            ],
            axis=1,
        )
        out["acc"] = (t, acc.astype(np.float32))
        t = _grid(start, end, self.temp_hz)
        out["skin_temp"] = (
            t,
            (33.5 + 0.2 * np.sin(2 * np.pi * t / 600.0)).astype(np.float32)[:, None],
        )
        ended = beats[(beats > start) & (beats <= end)]
        idx = np.searchsorted(beats, ended)
        rr = ended - beats[np.maximum(idx - 1, 0)]
        keep = idx > 0
        out["rr"] = (ended[keep], rr[keep].astype(np.float32)[:, None])
        out["hr"] = (ended[keep], (60.0 / rr[keep]).astype(np.float32)[:, None])
        self._beats = [b for b in self._beats if b > end - 5.0] or [self._beats[-1]]
        return out


class PhysiologyFeed:
    """Adapter over ``firmware_sim.physiology.Generator`` (interface A)."""

    def __init__(
        self, patient_index: int, seed: int = 0, ecg_hz: float = 130.0, acc_hz: float = 50.0
    ) -> None:
        from firmware_sim import physiology  # imported lazily: another area's module

        profile = physiology.make_patient(patient_index, seed=seed)
        config = physiology.SimConfig(ecg_hz=ecg_hz, acc_hz=acc_hz)
        self._gen = physiology.Generator(profile, config=config)
        self.ecg_hz, self.acc_hz = ecg_hz, acc_hz

    def advance(self, seconds: float) -> StreamData:
        """Next ``seconds`` from the physiology generator."""
        chunk = self._gen.advance(seconds)
        return {
            k: (np.asarray(t, np.float64), np.asarray(v, np.float32))
            for k, (t, v) in chunk.streams.items()
        }


class RecordingFeed:
    """Replays a recording directory (docs/recording-format.md) or a WFDB / EDF record.

    Rows are served by their ``t`` relative to the first sample of the
    recording; when the recording ends the feed goes quiet (no looping, so no
    duplicated data). ``lead`` picks a record's ECG lead; with ``ecg_hz`` the
    ECG is resampled to the rate the link announces (a BLE strap's 130 Hz),
    as the real device would have sampled it.
    """

    _COLS: ClassVar[dict[str, int]] = {
        "ecg": 1,
        "acc": 3,
        "skin_temp": 1,
        "env": 2,
        "hr": 1,
        "rr": 1,
    }

    def __init__(
        self, path: str | Path, *, lead: str | None = None, ecg_hz: float | None = None
    ) -> None:
        self._data: StreamData = {}
        root = Path(path)
        t0 = math.inf
        from firmware_sim import formats

        if formats.record_kind(root) is not None:
            t, v = formats.read_record(root, lead).streams["ecg"]
            if len(t):
                self._data["ecg"] = (t, v)
                t0 = float(t[0])
        for name, ncol in self._COLS.items() if root.is_dir() else ():
            f = root / f"{name}.csv"
            if not f.exists():
                continue
            rows = []
            with f.open(newline="") as fh:
                for row in csv.reader(fh):
                    try:
                        vals = [float(x) for x in row[: ncol + 1]]
                    except ValueError:
                        continue  # header or a bad row: a device would not send it
                    if len(vals) == ncol + 1 and all(math.isfinite(v) for v in vals):
                        rows.append(vals)
            if rows:
                arr = np.asarray(rows, dtype=np.float64)
                arr = arr[np.argsort(arr[:, 0], kind="stable")]
                self._data[name] = (arr[:, 0], arr[:, 1:].astype(np.float32))
                t0 = min(t0, float(arr[0, 0]))
        if not self._data:
            raise ValueError(f"{root}: no readable stream CSV files")
        self._data = {k: (t - t0, v) for k, (t, v) in self._data.items()}
        if ecg_hz is not None and "ecg" in self._data:
            self._data["ecg"] = formats.resample(*self._data["ecg"], ecg_hz)
        self._t = 0.0

    def advance(self, seconds: float) -> StreamData:
        """Rows with start <= t < start + seconds, per stream."""
        start, end = self._t, self._t + max(0.0, seconds)
        self._t = end
        out: StreamData = {}
        for name, (t, v) in self._data.items():
            i0, i1 = np.searchsorted(t, [start, end], side="left")
            out[name] = (t[i0:i1], v[i0:i1])
        return out
