"""Beat-level scoring and signal quality on signals with known beats (pipeline.beats)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeagent.evaluate import auroc
from edgeagent.pipeline import beats, ecg
from tests.pipeline_synth import beat_times, synth_ecg

FS = 250.0


def _ectopic_ecg(
    n: int = 60, every: int = 7, wide: bool = False, fs: float = FS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sinus rhythm at 0.8 s with every ``every``-th beat 35 % early, followed by a pause.

    Returns (t, x, beat times, abnormal flag per beat); ``wide`` draws the
    ectopic beats with a 3x wider QRS (ventricular-like), else with the normal
    shape (supraventricular-like).
    """
    rng = np.random.default_rng(seed)
    rr = 0.8 + rng.normal(0, 0.01, n)
    ab = np.zeros(n, bool)
    for i in range(every, n - 1, every):
        rr[i - 1] = 0.52
        rr[i] = 1.08
        ab[i] = True
    bt = beat_times(rr)
    dur = bt[-1] + 0.8
    t, x = synth_ecg(bt[~ab], dur, fs, seed=seed)
    _, xe = synth_ecg(bt[ab], dur, fs, qrs_scale=3.0 if wide else 1.0, noise_uv=0.0, wander_uv=0.0)
    return t, x + xe, bt, ab


def test_cut_beats_is_invariant_to_polarity_and_gain() -> None:
    _, x, _, _ = _ectopic_ecg(every=1000)
    peaks = ecg.detect_r_peaks(x, FS)
    a = beats.cut_beats(x, FS, peaks)
    b = beats.cut_beats(-0.25 * x, FS, peaks)
    assert a.polarity == 1.0 and b.polarity == -1.0
    assert b.gain_uv == pytest.approx(0.25 * a.gain_uv, rel=1e-6)
    np.testing.assert_allclose(a.waves, b.waves, atol=1e-9)
    # The dominant deflection reads about +1 in gain units whichever way the lead points.
    assert 0.6 < float(np.max(np.median(b.waves, axis=0))) <= 1.0


def test_cut_beats_drops_beats_too_close_to_the_edges() -> None:
    _, x, _, _ = _ectopic_ecg(n=10, every=1000)
    peaks = np.array([5, 200, len(x) - 5])
    bs = beats.cut_beats(x, FS, peaks)
    assert bs.peaks.tolist() == [200]


@pytest.mark.parametrize("wide", [False, True])
def test_segment_beats_flags_premature_and_wide_beats(wide: bool) -> None:
    t, x, bt, ab = _ectopic_ecg(wide=wide)
    peaks = ecg.detect_r_peaks(x, FS)
    bs, bf = beats.segment_beats(x, FS, peaks)
    tb = t[bs.peaks]
    truth = np.array([ab[np.argmin(np.abs(bt - v))] for v in tb])
    assert auroc(truth, bf.score) > 0.99
    labels = bf.label[truth]
    assert set(labels) == ({"V"} if wide else {"S"})
    assert np.mean(bf.label[~truth] == "N") > 0.95
    # The beat after each ectopic one sits after a compensatory pause.
    assert np.nanmin(bf.pause[truth]) > beats.PAUSE_RATIO


def test_signal_quality_separates_ecg_from_noise_and_lead_off() -> None:
    _, x, _, _ = _ectopic_ecg(n=14, every=1000)
    rng = np.random.default_rng(1)
    clean = beats.signal_quality(x, FS)
    assert clean.sqi > 0.9 and clean.detector_agreement > 0.95
    muscle = beats.signal_quality(x + rng.normal(0, 400.0, x.shape), FS)
    assert muscle.sqi < beats.SQI_MIN
    noise = beats.signal_quality(rng.normal(0, 300.0, x.shape), FS)
    assert noise.sqi < beats.SQI_MIN
    assert beats.signal_quality(np.zeros_like(x), FS).sqi == 0.0
    clipped = np.clip(x, -200.0, 200.0)
    assert beats.signal_quality(clipped, FS).sqi < beats.SQI_MIN
    # Gain and polarity do not move the index.
    assert beats.signal_quality(-0.1 * x, FS).sqi == pytest.approx(clean.sqi, abs=1e-6)


def test_tracker_scores_each_beat_once_across_overlapping_windows() -> None:
    t, x, bt, ab = _ectopic_ecg(n=120, wide=True, seed=3)
    tr = beats.BeatTracker()
    n, hop = round(10 * FS), round(2 * FS)
    for s in range(0, len(x) - n + 1, hop):
        tr.update(t[s : s + n], x[s : s + n], FS)
    et = np.array([e.t for e in tr.events])
    assert np.all(np.diff(et) > 0.3)  # no beat twice
    assert tr.ready
    # Every ectopic beat after the template settled is named ventricular.
    late = bt[ab & (bt > 20.0) & (bt < t[-1] - 1.0)]
    named = et[[e.label == "V" for e in tr.events]]
    assert all(np.min(np.abs(named - v)) < 0.05 for v in late)
    # ... and nothing else is.
    assert all(np.min(np.abs(bt[ab] - v)) < 0.05 for v in named)


def test_tracker_keeps_a_bigeminal_patients_template_normal() -> None:
    """With every other beat ectopic the window median is ambiguous; the tracker's is not."""
    t, x, _, _ = _ectopic_ecg(n=40, every=1000, seed=4)  # 30 s of normal beats first
    t2, x2, _, _ = _ectopic_ecg(n=60, every=2, wide=True, seed=5)
    tr = beats.BeatTracker()
    n = round(10 * FS)
    for s in range(0, len(x) - n + 1, n // 2):
        tr.update(t[s : s + n], x[s : s + n], FS)
    off = t[-1] + 1.0
    for s in range(0, len(x2) - n + 1, n // 2):
        tr.update(t2[s : s + n] + off, x2[s : s + n], FS)
    later = [e for e in tr.events if e.t > off + 2.0]
    labs = np.array([e.label for e in later])
    assert 0.3 < np.mean(labs == "V") < 0.7


def test_describe_names_the_beats() -> None:
    evs = [
        beats.BeatEvent(3723.0, "V", 5.0, 0.6, 1.4, 2.0),
        beats.BeatEvent(3724.5, "V", 5.0, 0.6, 1.4, 2.0),
        beats.BeatEvent(3726.0, "N", 0.1, 1.0, 1.0, 0.1),
        beats.BeatEvent(3727.0, "S", 2.0, 0.7, 1.3, 0.1),
    ]
    assert beats.describe(evs) == (
        "2 ventricular beats at 01:02:03; 1 premature supraventricular beat at 01:02:07"
    )
    assert beats.describe([]) == ""
