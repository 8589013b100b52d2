"""The aggregator's DP accountant: (epsilon, delta) over rounds, with dp-accounting.

Why here and not in ``fl.privacy``: only the aggregator accounts; the box
clips and adds noise, and must not carry dp-accounting and scipy for it.
The unit of privacy is one box per round (see ``fl.privacy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import dp_accounting
from dp_accounting import pld, rdp

#: The sampling rate every round is composed with. The participants are every online box
#: (when at most ``max_boxes`` are online) or a fixed-size draw from them, and their list
#: is published retained: that is no Poisson sampling of the fleet, so no amplification by
#: sampling is claimed and each round counts as a full Gaussian release (q = 1).
SAMPLING_RATE = 1.0
#: How ``aggregator status`` and docs/security.md name that choice.
SAMPLING = "q = 1 (no amplification by sampling: participants are the online boxes, listed)"
#: Largest number of rounds ``rounds_within`` searches (a budget that allows more is "many").
MAX_PROJECTED_ROUNDS = 1_000_000


@dataclass
class DpAccountant:
    """Tracks (epsilon, delta) over rounds with dp-accounting (RDP or PLD).

    Each round is a Gaussian mechanism with noise multiplier ``z`` composed as
    Poisson-subsampled at rate ``q``; the aggregator passes ``SAMPLING_RATE``
    (q = 1, see there), which makes the subsampling a no-op. Rounds with
    different ``z`` or ``q`` (adaptive settings) compose as separate events.
    """

    target_delta: float
    method: str = "rdp"
    _events: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in ("rdp", "pld"):
            raise ValueError("method must be 'rdp' or 'pld'")
        if not 0 < self.target_delta < 1:
            raise ValueError("target_delta must be in (0, 1)")

    @property
    def rounds(self) -> int:
        """Rounds accounted so far."""
        return sum(n for _, _, n in self._events)

    def step(self, noise_multiplier: float, sampling_rate: float, rounds: int = 1) -> None:
        """Account ``rounds`` more rounds with the given noise multiplier and sampling rate."""
        if noise_multiplier <= 0:
            raise ValueError("a round without noise has no finite epsilon; use z > 0")
        if not 0 < sampling_rate <= 1 or rounds < 1:
            raise ValueError("sampling_rate must be in (0, 1] and rounds >= 1")
        if self._events and self._events[-1][:2] == (noise_multiplier, sampling_rate):
            z, q, n = self._events[-1]
            self._events[-1] = (z, q, n + rounds)
        else:
            self._events.append((noise_multiplier, sampling_rate, rounds))

    def copy(self) -> DpAccountant:
        """An independent accountant with the same events (for projections)."""
        return DpAccountant(self.target_delta, self.method, list(self._events))

    def epsilon_after(self, noise_multiplier: float, sampling_rate: float, rounds: int) -> float:
        """Epsilon once ``rounds`` more rounds at ``(z, q)`` are spent (this one unchanged)."""
        if rounds < 1:
            return self.epsilon()
        acc = self.copy()
        acc.step(noise_multiplier, sampling_rate, rounds)
        return acc.epsilon()

    def rounds_within(self, budget: float, noise_multiplier: float, sampling_rate: float) -> int:
        """How many more rounds at ``(z, q)`` keep epsilon within ``budget`` (0 if none).

        Epsilon only grows with rounds, so a doubling then a bisection finds
        the last round that fits; capped at ``MAX_PROJECTED_ROUNDS``.
        """
        if math.isinf(budget):
            return MAX_PROJECTED_ROUNDS
        if self.epsilon_after(noise_multiplier, sampling_rate, 1) > budget:
            return 0
        lo, hi = 1, 2
        while hi < MAX_PROJECTED_ROUNDS and (
            self.epsilon_after(noise_multiplier, sampling_rate, hi) <= budget
        ):
            lo, hi = hi, hi * 2
        if hi >= MAX_PROJECTED_ROUNDS:
            hi = MAX_PROJECTED_ROUNDS
            if self.epsilon_after(noise_multiplier, sampling_rate, hi) <= budget:
                return hi
        while hi - lo > 1:  # epsilon(lo) <= budget < epsilon(hi)
            mid = (lo + hi) // 2
            if self.epsilon_after(noise_multiplier, sampling_rate, mid) <= budget:
                lo = mid
            else:
                hi = mid
        return lo

    def epsilon(self) -> float:
        """Epsilon at ``target_delta`` for everything accounted so far (0 before any round)."""
        if not self._events:
            return 0.0
        events = [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), n
            )
            for z, q, n in self._events
        ]
        event = events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)
        if self.method == "rdp":
            acc: dp_accounting.PrivacyAccountant = rdp.RdpAccountant()
        else:
            acc = pld.PLDAccountant()
        acc.compose(event)
        return float(acc.get_epsilon(self.target_delta))
