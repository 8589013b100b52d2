"""One round in flight on the aggregator, as a record with its fields grouped by concern.

``Round`` holds what every mode shares: who and which round (identity), the
signed-envelope channel, the clock readings (timing) and what was counted
(traffic). The mode's own state (SecAgg+ instances and groups, or the
plaintext updates and the round's sealing key) lives in the round's
``protocol`` (``federation.protocols``), so nothing here branches on the mode.
Built with keyword arguments only: eleven positional values of four types
are too easy to pass in the wrong order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeagent.fl.messages import EnvelopeReceiver, Sequencer

if TYPE_CHECKING:
    from edgeagent.federation.protocols.base import RoundProtocol


@dataclass(kw_only=True)
class RoundTiming:
    """Clock readings: monotonic (``clock``) for durations, wall time for the record.

    Deadlines belong to the scheduler (``federation.scheduler``), not here.
    """

    started: float
    started_wall: float
    stage_started: float
    #: stage name -> seconds it was open
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def close_stage(self, stage: str, now: float) -> None:
        """Record how long ``stage`` was open; the next stage starts at ``now``."""
        self.stage_seconds[stage] = round(now - self.stage_started, 4)
        self.stage_started = now


@dataclass(kw_only=True)
class RoundTraffic:
    """What the round cost and what it refused, per box where an operator needs that."""

    refused: Counter[str] = field(default_factory=Counter)
    bytes_in: Counter[str] = field(default_factory=Counter)
    bytes_out: Counter[str] = field(default_factory=Counter)
    #: CPU seconds in the protocol's pure parts (SecAgg+ server, envelopes, the rule)
    server_seconds: float = 0.0


@dataclass(kw_only=True)
class Round:
    """One round in flight (the I/O side; the protocol state is in ``protocol``)."""

    # identity
    round_id: int
    nonce: bytes
    participants: tuple[str, ...]
    # the signed-envelope channel to the participants
    receiver: EnvelopeReceiver
    seq: Sequencer = field(default_factory=Sequencer)
    # concerns grouped
    timing: RoundTiming
    traffic: RoundTraffic = field(default_factory=RoundTraffic)
    protocol: RoundProtocol

    def pending(self) -> frozenset[str]:
        """Boxes whose reply to the current stage has not arrived."""
        return self.protocol.pending()

    def base_record(self) -> dict[str, Any]:
        """The fields every round record carries, whatever the mode and outcome."""
        t = self.traffic
        return {
            "round": self.round_id,
            "participants": list(self.participants),
            "started": self.timing.started_wall,
            "stage_seconds": self.timing.stage_seconds,
            "dropped": {},
            "refused": dict(t.refused),
            "bytes_in": sum(t.bytes_in.values()),
            "bytes_out": sum(t.bytes_out.values()),
            "server_seconds": round(t.server_seconds, 4),
        }
