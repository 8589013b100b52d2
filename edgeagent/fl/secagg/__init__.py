"""SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020) as sans-I/O state machines.

``SecAggClient`` (box) and ``SecAggServer`` (aggregator) exchange stage bodies;
the caller wraps them in signed envelopes (``edgeagent.fl.messages``) and moves
them over whatever transport it has. ``simulate_round`` runs a whole round in
memory, which is what the tests and the in-memory benchmark use.
"""

from edgeagent.fl.secagg.client import SecAggClient
from edgeagent.fl.secagg.server import MaskedSum, SecAggServer
from edgeagent.fl.secagg.state import (
    NEXT_STAGE,
    RoundConfig,
    RoundResult,
    check_stage,
    choose_degree,
    choose_threshold,
    neighbour_graph,
)

__all__ = [
    "NEXT_STAGE",
    "MaskedSum",
    "RoundConfig",
    "RoundResult",
    "SecAggClient",
    "SecAggServer",
    "check_stage",
    "choose_degree",
    "choose_threshold",
    "neighbour_graph",
]
