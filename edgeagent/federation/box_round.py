"""A box's part in one round as a transition table, h11 style (no I/O, no crypto).

The box client (``federation.client``) asks this table before it acts on a
round message: ``TRANSITIONS`` maps ``(phase, event)`` to the next phase and
``transition`` refuses anything else with a ``ProtocolError`` whose reason
says what went wrong (``REFUSALS``: ``wrong_mode`` for a message of the other
mode, ``out_of_order`` otherwise). Refusing leaves the phase as it was, so a
stray message is counted and the round goes on.

* ``IDLE``: no round; an announcement that passes the client's checks joins
  one (``JOIN_SECAGG`` -> ``COMMITTING``, ``JOIN_PLAIN`` -> ``SENDING_UPDATE``);
* ``COMMITTING`` -> ``COMMIT`` -> ``COMMITTED`` -> ``REVEAL`` -> ``REVEALED``:
  the round seed's commit-reveal (``fl.secagg.beacon``): the box commits to
  its contribution, and reveals it only once the aggregator has signed the
  digest of every commitment; from ``REVEALED`` on, a round that ends
  without a result counts against the aggregator (possible grinding);
* ``REVEALED``/``MASKING``: SecAgg+ stage bodies are answered (``STAGE``,
  SETUP first; the SecAgg+ stage order itself is ``fl.secagg.state``'s
  table) until ``RESULT``;
* ``SENDING_UPDATE`` -> ``UPDATE_SENT`` -> ``AWAITING_RESULT``: a plaintext
  round's one sealed update went out; only ``RESULT`` may follow;
* from any round: ``RESULT`` (the aggregator's outcome), ``WITHDRAWN`` (its
  announcement was cleared) and ``REFUSED`` (this box cannot take part
  safely and goes silent, a dropout) end it; a newer round's announcement
  supersedes the round in flight (the aggregator restarted and never ends
  the old one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from edgeagent.errors import ProtocolError
from edgeagent.fl.constants import Stage
from edgeagent.fl.messages import EnvelopeReceiver, Sequencer


class BoxPhase(StrEnum):
    """Where this box is in a round."""

    IDLE = "idle"
    COMMITTING = "committing"  # joined; waits for the COMMIT request
    COMMITTED = "committed"  # committed; waits for the digest of all commitments
    REVEALED = "revealed"  # revealed; waits for SETUP (which carries every contribution)
    MASKING = "masking"
    SENDING_UPDATE = "sending_update"
    AWAITING_RESULT = "awaiting_result"


class BoxEvent(StrEnum):
    """What happened to the box's round."""

    JOIN_SECAGG = "join_secagg"  # a SecAgg+ announcement passed every check
    JOIN_PLAIN = "join_plain"  # a plaintext announcement passed every check
    UPDATE_SENT = "update_sent"  # the plaintext update went out
    COMMIT = "commit"  # the COMMIT request of the round seed
    REVEAL = "reveal"  # the REVEAL request (digest of every commitment)
    STAGE = "stage"  # a SecAgg+ stage body (SETUP .. UNMASK) for this round
    UPDATE = "update"  # an UPDATE-stage body routed to the box (boxes send those)
    RESULT = "result"  # the aggregator's outcome of the round
    WITHDRAWN = "withdrawn"  # the round's announcement was cleared
    REFUSED = "refused"  # the box cannot take part safely: silent for this round


P, E = BoxPhase, BoxEvent
_SECAGG = (P.COMMITTING, P.COMMITTED, P.REVEALED, P.MASKING)
_IN_ROUND = (*_SECAGG, P.SENDING_UPDATE, P.AWAITING_RESULT)

#: (phase, event) -> next phase; anything not listed is refused.
TRANSITIONS: Mapping[tuple[BoxPhase, BoxEvent], BoxPhase] = {
    **{(p, E.JOIN_SECAGG): P.COMMITTING for p in BoxPhase},
    **{(p, E.JOIN_PLAIN): P.SENDING_UPDATE for p in BoxPhase},
    (P.SENDING_UPDATE, E.UPDATE_SENT): P.AWAITING_RESULT,
    (P.COMMITTING, E.COMMIT): P.COMMITTED,
    (P.COMMITTED, E.REVEAL): P.REVEALED,
    (P.REVEALED, E.STAGE): P.MASKING,
    (P.MASKING, E.STAGE): P.MASKING,
    **{(p, E.RESULT): P.IDLE for p in _SECAGG},
    (P.AWAITING_RESULT, E.RESULT): P.IDLE,
    **{(p, E.WITHDRAWN): P.IDLE for p in _IN_ROUND},
    **{(p, E.REFUSED): P.IDLE for p in _IN_ROUND},
}

#: Reasons for refusals that have a more precise name than ``out_of_order``.
REFUSALS: Mapping[tuple[BoxPhase, BoxEvent], str] = {
    **{(p, E.UPDATE): "wrong_mode" for p in _IN_ROUND},
    **{
        (p, e): "wrong_mode"
        for p in (P.SENDING_UPDATE, P.AWAITING_RESULT)
        for e in (E.STAGE, E.COMMIT, E.REVEAL)
    },
}


def transition(phase: BoxPhase, event: BoxEvent) -> BoxPhase:
    """The phase after ``event``; ``ProtocolError`` (reason from ``REFUSALS``) if not allowed."""
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        reason = REFUSALS.get((phase, event), "out_of_order")
        raise ProtocolError(reason, f"{event} does not belong in {phase}") from None


def stage_event(stage: Stage) -> BoxEvent:
    """The event a stage body routed to this box is."""
    if stage is Stage.RESULT:
        return E.RESULT
    if stage is Stage.UPDATE:
        return E.UPDATE
    if stage is Stage.COMMIT:
        return E.COMMIT
    if stage is Stage.REVEAL:
        return E.REVEAL
    return E.STAGE


@dataclass
class BoxRound:
    """The round this box takes part in: its envelopes, phase and traffic."""

    round_id: int
    nonce: bytes
    receiver: EnvelopeReceiver
    seq: Sequencer
    phase: BoxPhase = BoxPhase.IDLE
    bytes_up: int = 0
    bytes_down: int = 0
