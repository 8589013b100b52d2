"""A box's whole SecAgg+ round: the seed's commit-reveal, then the masking stages (pure).

``SeededClient`` puts ``beacon.BeaconBox`` in front of ``SecAggClient``: it
answers COMMIT and REVEAL itself, and at SETUP checks every contribution,
derives the round seed, computes the box's own instance over the committed
set (its robust group, ``robust.partition_groups`` keyed by the seed) and
hands participants and
seed to ``SecAggClient``, which then checks the neighbour list against the
graph keyed by that seed. The box daemon (``federation.client``), the fleet
simulator and the tests drive boxes through this one class, so they all
check the seed the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgeagent.errors import ProtocolError
from edgeagent.fl.constants import Stage
from edgeagent.fl.robust import partition_groups
from edgeagent.fl.secagg.beacon import BeaconBox
from edgeagent.fl.secagg.client import SecAggClient


class SeededClient:
    """One box: commit-reveal of the round seed, then SecAgg+ keyed by that seed."""

    def __init__(self, client: SecAggClient) -> None:
        self.client = client
        self.beacon = BeaconBox(client.node_id)
        self.participants: tuple[str, ...] = ()
        self.group_size = 0

    def announce(self, participants: Sequence[str], group_size: int = 0) -> None:
        """The signed announcement's participant list and group size (0: one group)."""
        self.participants = tuple(participants)
        self.group_size = group_size
        self.client.expect_participants(None)  # the graph waits for the seed

    def handle(
        self, round_id: int, nonce: bytes, stage: Stage, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Answer one aggregator message of this round (``ProtocolError`` if refused)."""
        if stage is Stage.COMMIT:
            return self.beacon.commit(round_id, nonce, self.participants)
        if stage is Stage.REVEAL:
            return self.beacon.reveal(round_id, nonce, body)
        if stage is Stage.RESULT and self.client.round_id != round_id:
            return {}  # the round ended before SETUP: nothing of SecAgg+ to clear
        if stage is Stage.SETUP:
            seed = self.beacon.seed(round_id, nonce, body)
            self.client.expect_participants(self.instance(seed), seed)
        return self.client.handle(round_id, nonce, stage, body)

    def instance(self, seed: bytes) -> tuple[str, ...]:
        """The boxes of this box's SecAgg+ instance: its robust group, or every participant."""
        committed = self.beacon.committed  # the set the seed was drawn over
        if not self.group_size:
            return committed
        try:
            groups = partition_groups(committed, self.group_size, seed)
        except ValueError as exc:
            raise ProtocolError("bad_groups", str(exc)) from exc
        return next(g for g in groups if self.client.node_id in g)

    @property
    def revealed(self) -> bool:
        """This box disclosed its contribution in the current round."""
        return self.beacon.revealed
