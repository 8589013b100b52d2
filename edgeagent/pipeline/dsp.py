"""The few DSP primitives the ECG front end needs, in numpy alone.

Why not scipy: a box would install 143 MB (scipy and its bundled libraries) for a Butterworth
design, a zero-phase filter and a peak finder, and load scipy.signal into every daemon's
memory. These reproduce SciPy's results (``signal.butter``, ``sosfiltfilt`` with its default
odd padding, ``find_peaks`` with ``distance``) to within floating-point rounding, which the
tests check against SciPy itself, so features, and the models trained on them, do not move.

How the filter stays cheap without a compiled recursive loop: a stable IIR filter is its
impulse response, which decays below 1e-13 of its peak within a few time constants. Each
filter's response is computed once (a short Python recursion, cached per rate and band) and
applied with an FFT convolution. SciPy's initial state ``zi * x[0]`` is the filter's steady
state under a constant input ``x[0]``; prefixing the input with that constant for the
response's length reproduces it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: The impulse response is cut where its tail falls below this fraction of its peak.
TAIL = 1e-13
#: ... but never longer than this many seconds (a filter slower than that is a bug).
MAX_RESPONSE_S = 120.0


def butter(
    order: int, cutoff: float | tuple[float, float], btype: str, fs: float
) -> tuple[np.ndarray, np.ndarray]:
    """Digital Butterworth ``(b, a)``: analog prototype, pre-warped, bilinear transform.

    Same design as ``scipy.signal.butter(order, cutoff, btype, fs=fs)``; ``btype`` is
    ``"lowpass"`` (one cutoff) or ``"bandpass"`` (a (low, high) pair), in Hz.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    edges = np.atleast_1d(np.asarray(cutoff, np.float64))
    if np.any(edges <= 0) or np.any(edges >= fs / 2):
        raise ValueError(f"cutoff {cutoff} Hz must lie strictly between 0 and fs/2 = {fs / 2}")
    fs2 = 2.0 * fs
    warped = fs2 * np.tan(np.pi * edges / fs)  # pre-warp so the digital edges land right
    k = np.arange(-order + 1, order, 2)
    poles = -np.exp(1j * np.pi * k / (2 * order))  # unit-cutoff analog prototype
    gain = 1.0
    if btype == "lowpass" and edges.size == 1:
        zeros = np.zeros(0, complex)
        poles = poles * warped[0]
        gain = warped[0] ** order
    elif btype == "bandpass" and edges.size == 2:
        bw = warped[1] - warped[0]
        wo = np.sqrt(warped[0] * warped[1])
        lp = poles * bw / 2
        poles = np.concatenate((lp + np.sqrt(lp**2 - wo**2), lp - np.sqrt(lp**2 - wo**2)))
        zeros = np.zeros(order, complex)
        gain = bw**order
    else:
        raise ValueError(f"btype {btype!r} with cutoff {cutoff!r}: lowpass(f) or bandpass(lo, hi)")
    # bilinear transform; zeros at infinity map to z = -1
    zd = (fs2 + zeros) / (fs2 - zeros)
    pd = (fs2 + poles) / (fs2 - poles)
    zd = np.concatenate((zd, -np.ones(len(pd) - len(zd))))
    kd = gain * np.real(np.prod(fs2 - zeros) / np.prod(fs2 - poles))
    b = np.real(kd * np.poly(zd))
    a = np.real(np.poly(pd))
    return b, a


@lru_cache(maxsize=64)
def _response(b_key: bytes, a_key: bytes, fs: float) -> np.ndarray:
    """Impulse response of ``b/a`` until its tail is negligible (see ``TAIL``)."""
    b = np.frombuffer(b_key)
    a = np.frombuffer(a_key)
    b, a = b / a[0], a / a[0]
    order = len(a) - 1
    limit = int(MAX_RESPONSE_S * fs)
    y: list[float] = []
    x_hist = [0.0] * len(b)
    y_hist = [0.0] * order
    peak, quiet = 0.0, 0
    hold = max(1, int(0.05 * fs))  # the tail must stay small for this long, not just cross 0
    for n in range(limit):
        x_hist = [1.0 if n == 0 else 0.0, *x_hist[:-1]]
        v = sum(bi * xi for bi, xi in zip(b, x_hist, strict=True)) - sum(
            ai * yi for ai, yi in zip(a[1:], y_hist, strict=True)
        )
        y.append(v)
        y_hist = [v, *y_hist[:-1]]
        peak = max(peak, abs(v))
        quiet = quiet + 1 if abs(v) < TAIL * peak else 0
        if quiet >= hold and n > order:
            return np.asarray(y[: n + 1 - quiet + 1], np.float64)
    raise ValueError("filter response does not decay: the design is unstable")


def _fftconvolve(u: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(u) + len(h) - 1
    size = 1 << max(0, (n - 1).bit_length())
    return np.fft.irfft(np.fft.rfft(u, size) * np.fft.rfft(h, size), size)[:n]


def _steady_filter(h: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Filter ``u`` starting in the steady state of the constant input ``u[0]``."""
    pad = len(h)
    full = _fftconvolve(np.concatenate((np.full(pad, u[0]), u)), h)
    return full[pad : pad + len(u)]


def padlen(b: np.ndarray, a: np.ndarray) -> int:
    """SciPy's default odd-padding length for ``filtfilt``/``sosfiltfilt`` of this filter."""
    return 3 * max(len(np.trim_zeros(a, "b")), len(np.trim_zeros(b, "b")))


def filtfilt(b: np.ndarray, a: np.ndarray, x: np.ndarray, fs: float) -> np.ndarray:
    """Zero-phase filtering with SciPy's default odd padding (``sosfiltfilt(sos, x)``).

    ``fs`` only sizes the cache key and the response's length limit.
    """
    x = np.asarray(x, np.float64)
    edge = padlen(b, a)
    if x.shape[0] <= edge:
        raise ValueError(
            f"The length of the input vector x must be greater than padlen, which is {edge}."
        )
    h = _response(np.ascontiguousarray(b, np.float64).tobytes(),
                  np.ascontiguousarray(a, np.float64).tobytes(), float(fs))  # fmt: skip
    ext = np.concatenate((2 * x[0] - x[edge:0:-1], x, 2 * x[-1] - x[-2 : -(edge + 2) : -1]))
    y = _steady_filter(h, ext)
    y = _steady_filter(h, y[::-1])
    return y[::-1][edge:-edge]


def find_peaks(x: np.ndarray, distance: float | None = None) -> np.ndarray:
    """Indices of local maxima, as ``scipy.signal.find_peaks(x, distance=distance)[0]``.

    A flat top counts once, at its middle sample (rounded down); the first and last samples
    are never peaks. With ``distance``, higher peaks win and suppress lower ones closer than
    ``distance`` samples, in SciPy's order (its argsort of the heights).
    """
    x = np.asarray(x)
    if distance is not None and distance < 1:
        raise ValueError("`distance` must be greater or equal to 1")
    d = np.diff(x)
    nz = np.flatnonzero(d != 0)
    if len(nz) < 2:
        return np.zeros(0, np.intp)
    s = d[nz]
    rise = np.flatnonzero((s[:-1] > 0) & (s[1:] < 0))
    peaks = ((nz[rise] + 1 + nz[rise + 1]) // 2).astype(np.intp)
    if distance is None or len(peaks) < 2:
        return peaks
    dist = np.ceil(distance)
    keep = np.ones(len(peaks), bool)
    order = np.argsort(x[peaks])
    for j in order[::-1]:
        if not keep[j]:
            continue
        k = j - 1
        while k >= 0 and peaks[j] - peaks[k] < dist:
            keep[k] = False
            k -= 1
        k = j + 1
        while k < len(peaks) and peaks[k] - peaks[j] < dist:
            keep[k] = False
            k += 1
    return peaks[keep]
