"""One backoff function for every link that reconnects: wearables and the broker.

Why one place: the serial and BLE sources and the MQTT link all wait the same
way between attempts (exponential steps, a cap, "equal jitter"), and two
copies of that drift apart. Pure: the caller passes the random source and does
the sleeping.
"""

from __future__ import annotations

import random

#: Half of each delay is random so that many boxes (or many sources on one box)
#: restarting together do not retry in lock-step, and half is fixed so none spins.
DEFAULT_JITTER = 0.5


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    jitter_rng: random.Random | None,
    jitter: float = DEFAULT_JITTER,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 = first retry).

    Exponential ``base * 2**attempt`` capped at ``cap``; a fraction ``jitter``
    of it is replaced by a uniform random draw from ``jitter_rng`` ("equal
    jitter"), so the delay never falls below ``(1 - jitter)`` of the ladder step
    (no hammering) yet peers spread out. ``jitter_rng=None`` gives the
    deterministic ladder, which tests and docs use.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base <= 0 or cap <= 0:
        raise ValueError(f"base and cap must be > 0, got base={base} cap={cap}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {jitter}")
    # 2**attempt overflows float quickly; the cap is reached long before 64.
    step = min(cap, base * (2.0 ** min(attempt, 64)))
    if jitter_rng is None or jitter == 0.0:
        return step
    return step * (1.0 - jitter) + jitter_rng.random() * step * jitter
