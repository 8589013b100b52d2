"""The aggregator's DP accountant: (epsilon, delta) over rounds, with dp-accounting.

Why here and not in ``fl.privacy``: only the aggregator accounts; the box
clips and adds noise, and must not carry dp-accounting and scipy for it.
The unit of privacy is one box per round (see ``fl.privacy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dp_accounting
from dp_accounting import pld, rdp


@dataclass
class DpAccountant:
    """Tracks (epsilon, delta) over rounds with dp-accounting (RDP or PLD).

    Each round is a Poisson-subsampled Gaussian mechanism with sampling rate
    ``q`` (boxes invited / fleet size) and noise multiplier ``z``. Rounds with
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
