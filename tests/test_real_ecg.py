"""The ECG front end and the shipped detector on real recordings (../shared/real-ecg).

These are the issue's targets, checked on every CI run: QRS detection scored
beat by beat the EC57 way, beat-level anomaly AUROC on annotated abnormal
beats, false alarms and time in alert on normal rhythm, and silence (or
"signal quality") on real ICU alarms that experts judged false. The records
are not in the repository; without them the tests skip and say why.
Bounded: about a minute on one core (record 100 is replayed once per session).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edgeagent import metrics
from edgeagent.pipeline import beats, ecg

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_real_ecg", ROOT / "bench" / "real_ecg.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench()
DATA = BENCH.real_dir()
pytestmark = pytest.mark.skipif(
    DATA is None,
    reason="real ECG records absent: expected ../shared/real-ecg/100.hea beside the repository "
    "(or EDGEAGENT_REAL_ECG); they are kept out of the repo",
)
MODEL = ROOT / "models" / "baseline.onnx"


@pytest.fixture(scope="module")
def record_100() -> dict[str, Any]:
    assert DATA is not None
    r = BENCH.replay(DATA / "100", MODEL.read_bytes())
    return {"replay": r, "figures": BENCH.figures(r)}


def _record(name: str) -> tuple[np.ndarray, float, np.ndarray]:
    from edgeagent.sources.records import open_recording
    from edgeagent.streams import Stream

    assert DATA is not None
    rec = open_recording(DATA / name)
    t, v = rec.data[Stream.ECG]
    ref = rec.beats.t if rec.beats is not None else np.zeros(0)
    return v[:, 0].astype(np.float64), rec.rate(Stream.ECG), ref - t[0]


@pytest.mark.parametrize("gain", [1.0, -1.0, -0.2, 3.0])
def test_qrs_detection_on_record_100_meets_ec57_target_at_any_polarity_and_gain(
    gain: float,
) -> None:
    x, fs, ref = _record("100")
    peaks = ecg.detect_r_peaks(gain * x, fs)
    got = metrics.beat_detection(ref, peaks / fs)
    assert got["sensitivity"] >= 0.995, got
    assert got["positive_predictivity"] >= 0.995, got


def test_streaming_beats_match_the_reference(record_100: dict[str, Any]) -> None:
    q = record_100["figures"]["qrs"]["streaming_tracker"]
    assert q["sensitivity"] >= 0.995 and q["positive_predictivity"] >= 0.995, q


def test_beat_anomaly_auroc_on_annotated_abnormal_beats(record_100: dict[str, Any]) -> None:
    b = record_100["figures"]["beats"]["tracker"]
    assert b["positives"] >= 30  # 33 atrial premature beats and 1 PVC
    assert b["auroc"] >= 0.95, b


def test_record_100_stays_quiet(record_100: dict[str, Any]) -> None:
    a = record_100["figures"]["alerts"]
    assert a["false_alarms_per_hour"] <= 1.0, a
    assert a["time_in_clinical_alert"] < 0.01, a
    assert record_100["figures"]["quality"]["poor_sqi_frac"] < 0.01


@pytest.mark.parametrize("name", ["a103l", "v102s"])
def test_false_icu_alarms_raise_no_clinical_alert(name: str) -> None:
    assert DATA is not None
    f = BENCH.figures(BENCH.replay(DATA / name, MODEL.read_bytes()))
    assert f["alerts"]["clinical"] == 0, f["alerts"]
    if name == "v102s":  # a noisy lead: said as such
        assert f["alerts"]["signal_quality"] >= 1
        assert f["quality"]["poor_sqi_frac"] > 0.9


@pytest.mark.parametrize("name", ["s0010_re", "03700181"])
def test_other_leads_and_rates_read_as_good_signal(name: str) -> None:
    x, fs, _ = _record(name)
    n = round(10 * fs)
    sq = [beats.signal_quality(x[s : s + n], fs).sqi for s in range(0, len(x) - n + 1, n)]
    assert np.mean(np.asarray(sq) >= beats.SQI_MIN) >= 0.9, sq
