"""The small interface a round protocol offers the aggregator service, and its outcomes.

A protocol holds one round's mode-specific state and does no I/O: it turns
verified reply bodies into state, says which boxes it still waits for, and
when a stage closes returns the bodies to send (``StageClose``); at the end it
fills the round record and computes the mean the service applies to the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeagent.federation.partials import PartialCollector
from edgeagent.fl.constants import Stage

Bodies = dict[str, dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class RoundTerms:
    """What the round's announcement promises about the mode (``fl.wire.Announcement``)."""

    secure_aggregation: bool
    group_size: int = 0
    clip: float = 0.0
    n_cap: int = 0
    enc_pk: bytes = b""


@dataclass(frozen=True, kw_only=True)
class IntakeOpen:
    """COLLECT_MASKED opens with intake workers: the round size they check partials against."""

    dim: int
    participants: tuple[str, ...]
    bits: int = 32  # width of the round's modular sum (``quantize.field_bits``)


@dataclass(kw_only=True)
class StageClose:
    """What closing the open stage asks of the service (in this order).

    ``drain``: nothing closed yet; ask the intake workers to flush and wait
    ``CLOSE_GRACE_S`` more. Otherwise ``closed`` names the stage that closed,
    ``close_intake``/``open_intake`` say what to tell the workers, ``sends``
    maps each next stage to its per-box bodies, and ``finished`` says the round
    has nothing more to wait for.
    """

    drain: bool = False
    closed: Stage | None = None
    close_intake: bool = False
    open_intake: IntakeOpen | None = None
    sends: dict[Stage, Bodies] = field(default_factory=dict)
    finished: bool = False


class RoundProtocol(ABC):
    """One round's mode: SecAgg+ groups over masked sums, or plaintext sealed updates."""

    #: says how the mean is named in logs ("sum" of masked inputs, single "updates")
    inputs = "sum"
    #: the stage of the per-box bodies ``start`` returns
    first_stage = Stage.SETUP
    #: intake workers' partial sums, when this round takes them
    partials: PartialCollector | None = None

    @abstractmethod
    def describe(self) -> str:
        """How the round runs, for the log line that announces it."""

    @abstractmethod
    def terms(self) -> RoundTerms:
        """The mode's fields of the round announcement."""

    @abstractmethod
    def start(self) -> Bodies:
        """Per-box bodies of the first stage sent after the announcement (may be none)."""

    @abstractmethod
    def receive(self, node: str, stage: Stage, body: Any) -> None:
        """Take one verified reply; raise ``ProtocolError`` to refuse it (counted)."""

    @abstractmethod
    def pending(self) -> frozenset[str]:
        """Boxes whose reply to the open stage has not arrived."""

    @abstractmethod
    def close_stage(self) -> StageClose:
        """The open stage is complete or past its deadline: close it."""

    @abstractmethod
    def tally(self, rec: dict[str, Any]) -> bool:
        """Fill the mode's part of the round record; True if anything was released.

        Marks ``rec`` aborted (``status``/``reason``) when no mean may be applied.
        """

    @abstractmethod
    def mean(self, rec: dict[str, Any]) -> tuple[np.ndarray, float]:
        """The update to apply and the summed sample count; ``ValueError`` if unusable."""

    def recorded_groups(self) -> list[list[str]] | None:
        """The round's groups as the state file records them (None: one group, not recorded)."""
        return None

    def results(self, rec: dict[str, Any]) -> Bodies:
        """RESULT bodies the service sends once the outcome is known (none by default)."""
        return {}
