"""SecAgg+ round configuration, neighbour graph and stage table (no I/O, no crypto).

The stage table is data: ``NEXT_STAGE`` says which stage may follow which, and
``check_stage`` refuses anything else, so a message for the wrong stage is a
counted protocol error rather than a state corruption.

Parameter choice follows Bell et al. 2020 ("Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead", CCS'20): each box shares its secrets with
``k = O(log n)`` neighbours on a graph derived from public round randomness,
with threshold ``t`` a fixed fraction (> 1/2) of its ``k + 1`` share holders.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeagent.errors import ProtocolError
from edgeagent.fl.constants import MAX_DEGREE, NONCE_BYTES, STAGE_ORDER, Stage
from edgeagent.fl.privacy import payload_bound
from edgeagent.fl.quantize import ROTATED_SIGMAS, field_bits

#: Degree factor c in k = c * log2(n): c = 3 keeps, for 10% dropouts and
#: t > (k+1)/2, the chance that some box loses more than half its neighbourhood
#: well under 1e-3 for n <= 10^4 (binomial tail), in line with Bell 2020 Table 1.
DEFAULT_DEGREE_FACTOR = 3.0

#: Corrupt boxes tolerated per neighbourhood, as a fraction of its k + 1 share
#: holders (at least one). A malicious aggregator colluding with c of a box's
#: share holders gets t shares of both of its secrets only if the honest holders
#: it shows "survived" and those it shows "dropped" each reach t - c, i.e. only
#: if 2t <= k + 1 + c. So t = floor((k + 1 + c) / 2) + 1 (Bonawitz 2017 Thm 6.3,
#: per neighbourhood as in Bell 2020).
DEFAULT_CORRUPT_FRACTION = 0.1

#: Which stage may follow which (RESULT may end the round from anywhere).
NEXT_STAGE: Mapping[Stage | None, frozenset[Stage]] = {
    None: frozenset({Stage.SETUP}),
    Stage.SETUP: frozenset({Stage.SHARE_KEYS, Stage.RESULT}),
    Stage.SHARE_KEYS: frozenset({Stage.COLLECT_MASKED, Stage.RESULT}),
    Stage.COLLECT_MASKED: frozenset({Stage.CONSISTENCY, Stage.RESULT}),
    Stage.CONSISTENCY: frozenset({Stage.UNMASK, Stage.RESULT}),
    Stage.UNMASK: frozenset({Stage.RESULT}),
    Stage.RESULT: frozenset({Stage.SETUP}),
}


def check_stage(current: Stage | None, incoming: Stage) -> None:
    """Raise ``ProtocolError('out_of_order')`` unless ``incoming`` may follow ``current``."""
    if incoming not in NEXT_STAGE[current]:
        raise ProtocolError("out_of_order", f"stage {incoming} cannot follow {current}")


def choose_degree(n: int, factor: float = DEFAULT_DEGREE_FACTOR) -> int:
    """Neighbour degree k for n boxes: even, about ``factor * log2(n)``, at most n - 1."""
    if n < 2:
        raise ValueError("secure aggregation needs at least 2 boxes")
    k = math.ceil(factor * math.log2(n))
    k += k % 2
    return min(n - 1, k, MAX_DEGREE)


def corrupt_tolerated(degree: int, fraction: float = DEFAULT_CORRUPT_FRACTION) -> int:
    """Corrupt share holders c tolerated in a neighbourhood of ``degree + 1`` (at least 1)."""
    if not 0.0 <= fraction < 0.5:
        raise ValueError("corrupt fraction must be in [0, 0.5)")
    return max(1, math.ceil(fraction * (degree + 1)))


def choose_threshold(degree: int, corrupt: int | None = None) -> int:
    """Shamir threshold t > (k + 1 + c) / 2 for k = ``degree`` and c corrupt holders.

    ``corrupt`` defaults to ``corrupt_tolerated(degree)``. Where k + 1 holders
    cannot meet that bound with t <= k + 1 the neighbourhood is too small for c.
    """
    c = corrupt_tolerated(degree) if corrupt is None else corrupt
    t = (degree + 1 + c) // 2 + 1
    if c < 0 or t > degree + 1:
        raise ValueError(f"{degree + 1} share holders cannot tolerate {c} corrupt ones")
    return t


def min_safe_threshold(degree: int) -> int:
    """The smallest t a box accepts for ``degree`` neighbours (its own floor, c as default)."""
    return min(degree + 1, choose_threshold(degree, min(corrupt_tolerated(degree), degree - 1)))


def ring_order(nodes: Iterable[str], nonce: bytes) -> list[str]:
    """The nonce-keyed pseudo-random order of the boxes that the neighbour graph is a ring over."""
    return sorted(set(nodes), key=lambda n: hashlib.sha256(nonce + n.encode()).digest())


def ring_neighbours(order: list[str], index: int, degree: int) -> frozenset[str]:
    """Neighbours of ``order[index]`` in the Harary ring of ``degree`` (all others if dense).

    What one box needs of the public graph (its own and its neighbours'
    neighbourhoods) without building the whole graph: O(k) per box, not O(n k).
    """
    n = len(order)
    if degree >= n - 1:
        return frozenset(order) - {order[index]}
    if degree % 2:
        raise ValueError("a sparse neighbour graph needs an even degree")
    half = degree // 2
    return frozenset(order[(index + off) % n] for off in range(-half, half + 1) if off)


def neighbour_graph(nodes: Iterable[str], degree: int, nonce: bytes) -> dict[str, frozenset[str]]:
    """Symmetric k-regular graph (Harary ring) over a nonce-keyed pseudo-random node order.

    Every box can check its own neighbourhood from public data (node list and
    round nonce), and the ring keeps the graph connected and exactly k-regular
    (k even), which bounds Shamir work per box to one t-of-(k+1) split.
    """
    order = ring_order(nodes, nonce)
    return {a: ring_neighbours(order, i, degree) for i, a in enumerate(order)}


@dataclass(frozen=True, slots=True)
class RoundConfig:
    """Everything the aggregator fixes for one SecAgg+ round (announced to boxes in SETUP).

    ``dim`` is the length of the payload vector, i.e. model parameters + 1 for
    the sample count n_k. ``bound`` caps |coordinate| of one box's payload
    (n_cap * max(clip, 1) for FedAvg payloads); quantisation is sized so that
    ``len(participants)`` such payloads plus noise sum without wrapping.
    ``min_survivors`` is the smallest number of masked inputs the aggregator
    may unmask: below it the round aborts (privacy floor and DP noise floor).
    ``seed`` is the round's commit-reveal seed (``beacon``): the graph is keyed
    by it, and boxes bind it into their signed round keys. Empty, the graph is
    keyed by the nonce, which only in-memory tools (simulator, tests) do: the
    aggregator's rounds always carry a beacon seed.
    """

    round_id: int
    nonce: bytes
    participants: tuple[str, ...]
    dim: int
    bound: float
    degree: int = -1
    threshold: int = -1
    min_survivors: int = 2
    clip: float = 1.0
    n_cap: int = 1000
    noise_std: float = 0.0
    headroom_bits: int = 1
    #: Width of the modular sum: 32, or ``quantize.field_bits(value_bits, n)`` for
    #: quantised updates (each box sends ``bits`` bits per coordinate).
    bits: int = 32
    #: > 0: bound of the payload's last coordinate (n_k); ``bound`` then covers the update
    #: coordinates only (``n_cap * clip``), which is what gives 8-bit values their resolution.
    count_bound: float = 0.0
    #: The update coordinates (all but the last) are rotated (``quantize.rotate``, seeded by
    #: the round nonce) before quantisation and the sum rotated back after unmasking.
    rotate: bool = False
    seed: bytes = b""
    graph: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.participants)
        if len(set(self.participants)) != n:
            raise ValueError("participants must be unique")
        if n < 2:
            raise ValueError("secure aggregation needs at least 2 participants")
        if len(self.nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        if self.dim < 1:
            raise ValueError("dim must be >= 1")
        if self.degree < 0:
            object.__setattr__(self, "degree", choose_degree(n))
        if not 1 <= self.degree <= min(n - 1, MAX_DEGREE):
            raise ValueError(f"degree must be in 1..{min(n - 1, MAX_DEGREE)}")
        if self.threshold < 0:
            object.__setattr__(self, "threshold", choose_threshold(self.degree))
        if not 2 <= self.threshold <= self.degree + 1:
            raise ValueError(
                f"threshold {self.threshold} must be in 2..degree+1 ({self.degree + 1}); "
                "t = 1 would hand any single neighbour a box's secrets"
            )
        if not 1 <= self.min_survivors <= n:
            raise ValueError("min_survivors must be in 1..len(participants)")
        if not 2 <= self.bits <= 32:
            raise ValueError("bits must be in 2..32")
        if self.noise_std < 0 or self.clip <= 0 or self.n_cap < 1:
            raise ValueError("noise_std must be >= 0, clip > 0 and n_cap >= 1")
        if not self.graph:
            object.__setattr__(
                self, "graph", neighbour_graph(self.participants, self.degree, self.graph_seed)
            )

    @property
    def graph_seed(self) -> bytes:
        """What keys the graph (and the boxes' key signatures): the beacon seed, else the nonce."""
        return self.seed or self.nonce


@dataclass(frozen=True, slots=True)
class RoundResult:
    """Outcome of a completed SecAgg+ round: the unmasked sum and who contributed.

    ``total`` is the dequantised sum of the survivors' payloads (float64).
    ``dropped`` maps the stage a box went silent in to the boxes that did.
    """

    round_id: int
    total: np.ndarray
    survivors: tuple[str, ...]
    dropped: Mapping[Stage, tuple[str, ...]]


def stage_index(stage: Stage) -> int:
    """Position of ``stage`` in the protocol order."""
    return STAGE_ORDER.index(stage)


def field_terms(
    update_bits: int, clip: float, n_cap: int, noise_std: float, params: int, boxes: int
) -> dict[str, Any]:
    """``RoundConfig`` fields for FedAvg payloads at ``update_bits`` (8, 16 or 32).

    32: the full field over ``payload_bound`` with one bit of headroom. 8 or 16:
    stochastic rounding into ``field_bits(update_bits, boxes)`` bits with no
    headroom (the clamp to each bound keeps every value in range, so the sum never
    wraps), the update rotated so that its coordinates are bounded by
    ``ROTATED_SIGMAS * n_cap * clip / sqrt(params)``, and n_k bounded by ``n_cap``;
    each bound plus six standard deviations of the box's DP noise.
    """
    if update_bits == 32:
        return {"bound": payload_bound(clip, n_cap, noise_std), "headroom_bits": 1}
    spread = ROTATED_SIGMAS * n_cap * clip / math.sqrt(max(params, 1))
    return {
        "bound": min(spread, n_cap * clip * math.sqrt(2.0)) + 6.0 * noise_std,
        "count_bound": float(n_cap) + 6.0 * noise_std,
        "headroom_bits": 0,
        "bits": field_bits(update_bits, boxes),
        "rotate": True,
    }
