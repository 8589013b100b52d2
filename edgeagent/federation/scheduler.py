"""When the aggregator's rounds open and close, and who takes part (pure: no I/O, no clock).

The round lifecycle is a transition table in the style of h11: ``TRANSITIONS``
maps ``(phase, event)`` to the next phase and ``transition`` refuses anything
else with ``ProtocolError('out_of_order')``, so a stage closed twice or a
round opened over another is a loud error, not a corrupted state file.

* ``IDLE`` -> ``START`` -> ``RUNNING``: enough verified, online boxes and the
  pause since the last round is over;
* ``RUNNING`` -> ``ADVANCE`` -> ``RUNNING``: a stage closed (all replies in or
  its deadline passed) and the next one went out; in a SecAgg+ round the
  first two stages are the round seed's COMMIT and REVEAL
  (``fl.secagg.beacon``), each with its own ``stage_timeout_s``; a committed
  box silent at REVEAL ends the round there (``FINISH``, aborted);
* ``RUNNING`` -> ``DRAIN`` -> ``DRAINING``: COLLECT_MASKED's deadline passed
  with boxes missing while intake workers may still hold some of them; the
  stage stays open ``CLOSE_GRACE_S`` longer for their last partial sums;
* ``RUNNING``/``DRAINING`` -> ``FINISH`` -> ``IDLE``: the round concluded
  (completed, aborted or rejected) and the next one waits ``round_interval_s``.

The service passes ``now`` from its injectable clock, so tests step through
deadlines without sleeping.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edgeagent.errors import ProtocolError
from edgeagent.federation.partials import CLOSE_GRACE_S
from edgeagent.ops.config import AggregatorSection

#: Upper bound of one wait in the loop: how fast a deadline or stop is noticed.
MAX_WAIT_S = 0.25
#: Shortest wait handed to the inbox (a zero timeout would spin).
MIN_WAIT_S = 0.001


class Phase(StrEnum):
    """Where the aggregator is in its round lifecycle."""

    IDLE = "idle"
    RUNNING = "running"
    DRAINING = "draining"


class Event(StrEnum):
    """What moves the lifecycle on."""

    START = "start"
    ADVANCE = "advance"
    DRAIN = "drain"
    FINISH = "finish"


#: Every allowed move; anything else is refused.
TRANSITIONS: Mapping[tuple[Phase, Event], Phase] = {
    (Phase.IDLE, Event.START): Phase.RUNNING,
    (Phase.RUNNING, Event.ADVANCE): Phase.RUNNING,
    (Phase.RUNNING, Event.DRAIN): Phase.DRAINING,
    (Phase.RUNNING, Event.FINISH): Phase.IDLE,
    (Phase.DRAINING, Event.ADVANCE): Phase.RUNNING,
    (Phase.DRAINING, Event.FINISH): Phase.IDLE,
}


def transition(phase: Phase, event: Event) -> Phase:
    """The phase after ``event``; ``ProtocolError('out_of_order')`` if the table has no move."""
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise ProtocolError("out_of_order", f"{event} cannot happen while {phase}") from None


@dataclass
class BoxInfo:
    """A box the aggregator may invite: its verified signing key and its last known status."""

    key: Any
    online: bool = True
    hello_t: float = 0.0
    cert: bytes = b""  # its identity certificate (DER) from the verified hello


def eligible(boxes: Mapping[str, BoxInfo]) -> list[str]:
    """Boxes with a verified identity that are online now, in name order."""
    return sorted(n for n, b in boxes.items() if b.online)


def choose(ready: Iterable[str], max_boxes: int, rng: Any = None) -> list[str]:
    """Up to ``max_boxes`` of the ready boxes, drawn uniformly (a fresh system RNG by default)
    so no box can predict or steer whether it is invited; returned sorted."""
    pool = list(ready)
    rng = rng or secrets.SystemRandom()
    return sorted(rng.sample(pool, min(len(pool), max_boxes)))


class Scheduler:
    """The round lifecycle of one aggregator: phase, next start, stage deadlines."""

    def __init__(self, policy: AggregatorSection, now: float) -> None:
        self.policy = policy
        self.phase = Phase.IDLE
        self.next_round_at = now
        self.deadline = now

    def apply(self, event: Event) -> Phase:
        self.phase = transition(self.phase, event)
        return self.phase

    def limit_reached(self, completed: int) -> bool:
        """True once ``aggregator.rounds`` rounds completed (0: run forever)."""
        limit = self.policy.rounds
        return bool(limit) and completed >= limit

    def due(self, now: float, n_ready: int) -> bool:
        """A round may open: idle, the pause is over and enough boxes are ready."""
        return (
            self.phase is Phase.IDLE
            and now >= self.next_round_at
            and n_ready >= self.policy.min_boxes
        )

    def stage_closes(self, now: float, pending: bool) -> bool:
        """The open stage closes: every reply is in, or its deadline passed."""
        return self.phase is not Phase.IDLE and (not pending or now >= self.deadline)

    def start(self, now: float) -> None:
        self.apply(Event.START)
        self.deadline = now + self.policy.stage_timeout_s

    def advance(self, now: float) -> None:
        self.apply(Event.ADVANCE)
        self.deadline = now + self.policy.stage_timeout_s

    def drain(self, now: float) -> None:
        self.apply(Event.DRAIN)
        self.deadline = now + CLOSE_GRACE_S

    def finish(self, now: float) -> None:
        self.apply(Event.FINISH)
        self.next_round_at = now + self.policy.round_interval_s

    def wait(self, now: float) -> float:
        """How long the loop may block on its inbox before something is due."""
        wait = MAX_WAIT_S
        if self.phase is not Phase.IDLE:
            wait = min(wait, max(0.0, self.deadline - now))
        return max(wait, MIN_WAIT_S)
