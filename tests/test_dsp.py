"""The numpy DSP primitives against SciPy itself (a test dependency, not a box one)."""

import numpy as np
import pytest
from scipy import signal

from edgeagent.pipeline import dsp


@pytest.mark.parametrize("fs", [125.0, 130.0, 250.0, 360.0, 500.0, 1000.0])
@pytest.mark.parametrize(("btype", "cut"), [("bandpass", (5.0, 15.0)), ("lowpass", 40.0),
                                            ("lowpass", 1.0)])  # fmt: skip
def test_butter_and_filtfilt_match_scipy(fs: float, btype: str, cut) -> None:
    cut = cut if btype == "bandpass" else min(cut, 0.45 * fs)
    b, a = dsp.butter(2, cut, btype, fs)
    b_ref, a_ref = signal.butter(2, cut, btype=btype, fs=fs)
    np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(a, a_ref, rtol=1e-10, atol=1e-14)
    rng = np.random.default_rng(int(fs))
    t = np.arange(int(10 * fs)) / fs
    x = 1000 * np.sin(2 * np.pi * 1.2 * t) + 200 * rng.standard_normal(t.size) + 3000
    sos = signal.butter(2, cut, btype=btype, fs=fs, output="sos")
    ref = signal.sosfiltfilt(sos, x)
    got = dsp.filtfilt(b, a, x, fs)
    assert np.max(np.abs(got - ref)) < 1e-6 * np.max(np.abs(x))


def test_filtfilt_refuses_a_signal_shorter_than_its_padding() -> None:
    b, a = dsp.butter(2, (5.0, 15.0), "bandpass", 250.0)
    with pytest.raises(ValueError, match="padlen"):
        dsp.filtfilt(b, a, np.zeros(dsp.padlen(b, a)), 250.0)


def test_butter_refuses_a_cutoff_at_or_above_nyquist() -> None:
    with pytest.raises(ValueError, match="fs/2"):
        dsp.butter(2, 70.0, "lowpass", 130.0)


@pytest.mark.parametrize("distance", [None, 1, 5, 36.5, 72])
def test_find_peaks_matches_scipy_with_plateaus_and_distance(distance) -> None:
    rng = np.random.default_rng(7)
    x = np.round(rng.standard_normal(5000) * 3)  # rounding makes many flat tops
    x[100:110] = 50.0  # a wide plateau
    x[-3:] = 60.0  # a plateau running into the end is no peak
    ref, _ = signal.find_peaks(x, distance=distance)
    np.testing.assert_array_equal(dsp.find_peaks(x, distance=distance), ref)


def test_find_peaks_edge_cases() -> None:
    assert dsp.find_peaks(np.array([])).size == 0
    assert dsp.find_peaks(np.array([3.0, 1.0, 2.0])).size == 0  # ends are never peaks
    np.testing.assert_array_equal(dsp.find_peaks(np.array([0.0, 2, 2, 2, 0])), [2])
    with pytest.raises(ValueError):
        dsp.find_peaks(np.arange(5.0), distance=0.5)
