"""Shadow scoring: what a candidate model would have alerted on, beside the running one.

Why a module of its own: the lifecycle judges a candidate on the live alert rate,
so the count must follow the detector's own episode rule (open after ``k_on``
windows, hold down to ``off_ratio``, close after ``k_off``, re-open the same
kind within ``cooldown_s`` as the same alert) without an alert id or a sink.
The detector (``Detector.set_shadow``) feeds both models' decisions through
these, window by window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from edgeagent.model.meta import FAULT, NORMAL


class Episodes(Protocol):
    """The episode settings of ``DetectorConfig`` the count follows."""

    k_on: int
    k_off: int
    cooldown_s: float


@dataclass
class ShadowTally:
    """What a shadow model would have done next to what the active one did, window by window.

    Both sides are counted by the same rule (``WouldBe``, the detector's hysteresis and
    de-duplication without a sink), so the comparison is like for like: the active
    model's real alert count also depends on episodes opened before the shadow began.
    """

    label: str
    windows: int = 0
    active_alerts: int = 0
    shadow_alerts: int = 0
    #: Windows whose clinical decision was "on" (finer-grained than alert episodes).
    active_flagged: int = 0
    shadow_flagged: int = 0
    #: Windows whose verdicts (normal, sensor fault or a clinical kind) differ.
    disagreed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class WouldBe:
    """One patient's episode state for counting would-be alerts (no alert ids, no sink)."""

    open: bool = False
    above: int = 0
    below: int = 0
    last_end: float = float("-inf")
    last_kind: str = ""

    def step(
        self, on: bool, hold: bool, kind: str, start: float, end: float, cfg: Episodes
    ) -> bool:
        """Advance one window; True when a new alert would open (``Detector._step``'s rule)."""
        if self.open:
            if hold:
                self.below, self.last_end = 0, end
            else:
                self.below += 1
                if self.below >= cfg.k_off:
                    self.open, self.above = False, 0
            return False
        self.above = self.above + 1 if on else 0
        if self.above < cfg.k_on:
            return False
        self.open, self.below = True, 0
        resumed = start - self.last_end <= cfg.cooldown_s and self.last_kind == kind
        self.last_end, self.last_kind = end, kind
        return not resumed


@dataclass(frozen=True)
class Decision:
    """One model's decision on one window, before episodes."""

    score: float
    p_fault: float
    kind: str
    fault: bool
    clin_on: bool
    clin_hold: bool
    fault_hold: bool

    @property
    def verdict(self) -> str:
        """What the window is called: the fault class, the clinical kind, or normal."""
        return FAULT if self.fault else self.kind if self.clin_on else NORMAL
