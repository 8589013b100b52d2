"""Byzantine-robust aggregation rules, plaintext and grouped-secure, as pure functions.

Plaintext rules take a stacked matrix of updates (one row per box):

* ``coordinate_median`` and ``trimmed_mean`` (Yin et al. 2018, ICML): tolerate
  fewer than half (median) or a ``beta`` fraction (trimmed mean) of bad rows
  per coordinate.
* ``multi_krum`` (Blanchard et al. 2017, NeurIPS): keeps the ``m`` rows whose
  ``n - f - 2`` nearest neighbours are closest; needs ``n > 2f + 2``.
* ``norm_bound`` (Sun et al. 2019, "Can you really backdoor FL?"): clips every
  row to a norm then averages; limits, does not remove, a bad box's pull.
* ``cosine_cluster`` (the filtering and clipping of FLAME, Nguyen et al. 2022,
  USENIX Security, without its noise step): keeps the rows in the largest
  HDBSCAN cluster of cosine distances (at least a majority), clips them to the
  median row norm and averages them. Unlike the coordinate-wise rules it keeps
  whole honest updates, so hubs that hold rare classes are not cut away
  coordinate by coordinate; it removes rows that point elsewhere (sign
  flipping) but guarantees nothing about a bad row inside the majority cluster,
  whose pull the clip bounds.
* ``reputation_filter``: a box's reputation is the running sum, over the
  rounds it took part in, of the cosine between its update and the
  coordinate-wise median of the round's updates (the reference FLTrust, Cao
  et al. 2021, NDSS, takes from a server-side root data set, which an
  aggregator of patients' data does not have). Rows of boxes whose reputation
  is not positive are dropped, the rest clipped to the median norm of the
  non-zero rows and averaged. Why history: with non-IID boxes, one round's honest updates end
  up nearly orthogonal (the pilot measured their mean pairwise cosine fall
  from 0.34 in round 1 to about 0 by round 13), so a one-round direction test
  cannot tell a reversed update from an honest one late in training, while
  the small, consistent disagreement of a reversed box adds up over rounds.

Under secure aggregation the server never sees single rows, so robust rules run
over *group* means (``partition_groups`` + ``grouped_aggregate``): boxes are
split into groups of at least ``g`` boxes, each group is securely summed, and
the rule runs over the group means. Trade-off (``grouping_tradeoff``): a group
sum reveals the mean of ``g`` boxes (privacy grows with ``g``), while a robust
rule over ``G = n // g`` groups tolerates a bounded number of bad *groups*; in
the worst case every malicious box spoils a different group, so the tolerated
number of malicious boxes equals the tolerated number of bad groups (it shrinks
as ``g`` grows).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeagent.fl.constants import ROBUST_RULES

RULES: tuple[str, ...] = ROBUST_RULES


def _stack(updates: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    x = np.asarray(updates, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError("updates must be a non-empty (boxes, parameters) matrix")
    if not np.all(np.isfinite(x)):
        raise ValueError("updates contain NaN/inf; drop those rows before aggregating")
    return x


def coordinate_median(updates: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Coordinate-wise median."""
    return np.median(_stack(updates), axis=0)


def trimmed_mean(updates: np.ndarray | Sequence[np.ndarray], beta: float = 0.1) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``floor(beta * n)`` largest and smallest values."""
    x = _stack(updates)
    if not 0 <= beta < 0.5:
        raise ValueError("beta must be in [0, 0.5): trimming half from each side leaves nothing")
    k = math.floor(beta * x.shape[0])
    s = np.sort(x, axis=0)
    return s[k : x.shape[0] - k].mean(axis=0)


def krum_scores(updates: np.ndarray | Sequence[np.ndarray], f: int) -> np.ndarray:
    """Krum score per row: sum of squared distances to its ``n - f - 2`` nearest rows."""
    x = _stack(updates)
    n = x.shape[0]
    if f < 0 or n <= 2 * f + 2:
        raise ValueError(f"Krum needs n > 2f + 2; got n={n}, f={f}: invite more boxes or lower f")
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, np.inf)
    closest = np.sort(d2, axis=1)[:, : n - f - 2]
    return closest.sum(axis=1)


def multi_krum(
    updates: np.ndarray | Sequence[np.ndarray], f: int, m: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the ``m`` best-scored rows (default ``n - f``); returns ``(mean, chosen rows)``."""
    x = _stack(updates)
    scores = krum_scores(x, f)
    m = x.shape[0] - f if m is None else m
    if not 1 <= m <= x.shape[0]:
        raise ValueError("m must be in 1..n")
    chosen = np.sort(np.argsort(scores, kind="stable")[:m])
    return x[chosen].mean(axis=0), chosen


def norm_bound(
    updates: np.ndarray | Sequence[np.ndarray],
    max_norm: float,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """(Weighted) mean after clipping each row to L2 norm ``max_norm``."""
    x = _stack(updates)
    if not max_norm > 0:
        raise ValueError("max_norm must be > 0")
    norms = np.linalg.norm(x, axis=1)
    factor = np.minimum(1.0, max_norm / np.maximum(norms, 1e-300))
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (x.shape[0],) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be one non-negative number per row, not all zero")
    return (w[:, None] * factor[:, None] * x).sum(axis=0) / w.sum()


def cosine_cluster(
    updates: np.ndarray | Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the majority cosine cluster's rows, each clipped to the median row norm.

    Returns ``(mean, kept rows)``. Cosine, not Euclidean, distance because a
    boosted copy of an honest direction is a size problem (the clip handles
    it) while a reversed or foreign direction is a direction problem. HDBSCAN
    with ``min_cluster_size = n // 2 + 1`` can only find a cluster holding a
    majority; rows it calls noise are dropped, and if it finds none (every row
    unlike every other) all rows are kept, clipped, so the rule falls back to
    ``norm_bound``. All-zero rows have no direction and are dropped.
    """
    from sklearn.cluster import HDBSCAN  # imported here: heavy, and only the aggregator needs it

    x = _stack(updates)
    n = x.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or np.any(w < 0):
        raise ValueError("weights must be one non-negative number per row, not all zero")
    norms = np.linalg.norm(x, axis=1)
    live = norms > 0
    if not live.any():
        return np.zeros(x.shape[1]), np.flatnonzero(live)
    unit = x / np.maximum(norms, 1e-300)[:, None]
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    dist[~live, :] = 2.0
    dist[:, ~live] = 2.0
    np.fill_diagonal(dist, 0.0)
    keep = live
    if n >= 3:
        labels = (
            HDBSCAN(
                min_cluster_size=n // 2 + 1,
                min_samples=1,
                metric="precomputed",
                allow_single_cluster=True,
                copy=True,
            )
            .fit(dist)
            .labels_
        )
        if (labels >= 0).any():
            keep = (labels == np.bincount(labels[labels >= 0]).argmax()) & live
    chosen = np.flatnonzero(keep)
    # the bound is the median over every row, the kept ones are clipped to it and averaged
    bound = max(float(np.median(norms)), 1e-300)
    return norm_bound(x[chosen], bound, w[chosen]), chosen


def reputation_filter(
    updates: np.ndarray | Sequence[np.ndarray], scores: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of the clipped rows whose reputation stays positive.

    ``scores`` are the rows' boxes' reputations from earlier rounds (0 for a
    new box; ``None``: no history, as for group means, whose groups change
    every round). Returns ``(mean, kept rows, new scores)``; the caller keeps
    the new scores for the next round. All-zero rows (free riders) have no
    direction: they earn nothing, are dropped, and do not lower the clip,
    which is the median norm of the non-zero rows. If no row has a positive
    reputation every non-zero row is kept, clipped (``norm_bound``).

    Limits, stated in docs/security.md: a box that agrees with the median for
    many rounds banks reputation it can then spend attacking; a dropped box
    is readmitted once its sum turns positive again; a bad row that keeps a
    positive cosine (the "little is enough" attack, scaling) stays in, its
    pull bounded by the clip; and the median reference needs an honest
    majority.
    """
    x = _stack(updates)
    n = x.shape[0]
    prior = np.zeros(n) if scores is None else np.asarray(scores, dtype=np.float64)
    if prior.shape != (n,) or not np.all(np.isfinite(prior)):
        raise ValueError("scores must be one finite reputation per row")
    norms = np.linalg.norm(x, axis=1)
    live = norms > 0
    if not live.any():
        return np.zeros(x.shape[1]), np.flatnonzero(live), prior.copy()
    ref = np.median(x[live], axis=0)
    ref_norm = float(np.linalg.norm(ref))
    cos = np.zeros(n)
    if ref_norm > 0:
        cos[live] = (x[live] @ ref) / (norms[live] * ref_norm)
    new = prior + cos
    keep = live & (new > 0)
    if not keep.any():
        keep = live
    chosen = np.flatnonzero(keep)
    bound = max(float(np.median(norms[live])), 1e-300)
    return norm_bound(x[chosen], bound), chosen, new


def reputation_by_box(
    updates: np.ndarray | Sequence[np.ndarray], boxes: Sequence[str], book: Mapping[str, float]
) -> tuple[np.ndarray, list[str], dict[str, float]]:
    """``reputation_filter`` keyed by box name, as a server that remembers boxes runs it.

    ``book`` holds the scores of earlier rounds (a box it has never seen
    starts at 0). Returns ``(mean, kept boxes, these boxes' new scores)``; the
    caller merges the scores into its book.
    """
    mean, kept, scores = reputation_filter(updates, [float(book.get(b, 0.0)) for b in boxes])
    return mean, [boxes[i] for i in kept], dict(zip(boxes, scores.tolist(), strict=True))


def robust_aggregate(
    updates: np.ndarray | Sequence[np.ndarray],
    rule: str,
    *,
    weights: Sequence[float] | None = None,
    **params: Any,
) -> np.ndarray:
    """Apply the rule named ``rule`` (one of ``RULES``) with its parameters.

    ``weights`` are used by ``mean``, ``norm_bound`` and ``cosine_cluster``
    only: order statistics and Krum must not let a box buy influence by
    claiming a large ``n_k``. ``reputation`` takes ``scores=`` (earlier
    rounds' reputations); without it the rule judges this round alone.
    """
    x = _stack(updates)
    if rule == "mean":
        w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
        return (w[:, None] * x).sum(axis=0) / w.sum()
    if rule == "median":
        return coordinate_median(x)
    if rule == "trimmed_mean":
        return trimmed_mean(x, beta=float(params.get("beta", 0.1)))
    if rule == "multi_krum":
        return multi_krum(x, f=int(params.get("f", 1)), m=params.get("m"))[0]
    if rule == "norm_bound":
        if "max_norm" not in params:
            raise ValueError("norm_bound needs max_norm=<L2 bound>")
        return norm_bound(x, float(params["max_norm"]), weights)
    if rule == "cosine_cluster":
        return cosine_cluster(x, weights)[0]
    if rule == "reputation":
        return reputation_filter(x, params.get("scores"))[0]
    raise ValueError(f"unknown robust rule {rule!r}; choose one of {', '.join(RULES)}")


def partition_groups(nodes: Sequence[str], group_size: int, nonce: bytes) -> list[tuple[str, ...]]:
    """Split boxes into ``n // group_size`` groups of >= ``group_size``, order keyed by the nonce.

    The order comes from public round randomness, so neither boxes nor the
    aggregator choose who lands together (a malicious aggregator that could
    would isolate a victim with sybils; see docs/security.md).
    """
    uniq = sorted(set(nodes))
    if group_size < 2:
        raise ValueError("group_size must be >= 2: a group of one reveals that box's update")
    if len(uniq) < group_size:
        raise ValueError(f"{len(uniq)} boxes cannot fill one group of {group_size}")
    order = sorted(uniq, key=lambda n: hashlib.sha256(nonce + n.encode()).digest())
    g = len(order) // group_size
    return [tuple(sorted(order[i::g])) for i in range(g)]


def grouped_aggregate(group_totals: Sequence[np.ndarray], rule: str, **params: Any) -> np.ndarray:
    """Robust rule over the weighted means of securely summed groups.

    Each entry is one group's unmasked sum ``[sum n_k delta_k, sum n_k]``.
    Group means are combined unweighted by order-statistic rules, so a group
    cannot gain weight by inflating its counts. ``norm_bound`` with
    ``max_norm=None`` bounds each group mean by the median group-mean norm
    (adaptive, as in the pilot; needs an honest majority of groups).
    """
    if not group_totals:
        raise ValueError("no group finished its secure sum this round")
    means = []
    for i, t in enumerate(group_totals):
        t = np.asarray(t, dtype=np.float64)
        if t.ndim != 1 or t.size < 2 or not t[-1] > 0.5:
            raise ValueError(f"group {i}: summed payload is empty or has no samples")
        means.append(t[:-1] / t[-1])
    return unweighted_aggregate(means, rule, **params)


def unweighted_aggregate(
    rows: np.ndarray | Sequence[np.ndarray], rule: str, **params: Any
) -> np.ndarray:
    """``rule`` over rows (group means, or single updates in plaintext mode), no weights.

    No row gains influence by claiming a large ``n_k``. ``norm_bound`` with
    ``max_norm=None`` bounds each row by the median row norm (adaptive; needs
    an honest majority of rows).
    """
    x = _stack(rows)
    if rule == "norm_bound" and params.get("max_norm") is None:
        params = {**params, "max_norm": max(float(np.median(np.linalg.norm(x, axis=1))), 1e-12)}
    return robust_aggregate(x, rule, **params)


def output_radius(rule: str, clip: float, **params: Any) -> float:
    """Largest L2 norm ``rule`` can output when every row has norm <= ``clip``.

    Any two outputs (neighbouring fleets included) then lie within
    ``2 * output_radius`` of each other: that is the sensitivity central DP
    noise must cover when a rule runs over single plaintext updates. Per rule:
    a mean of rows (``mean``, ``multi_krum``, ``norm_bound``,
    ``cosine_cluster``, ``reputation``) stays within
    ``clip`` (``norm_bound`` within ``max_norm`` if smaller); a coordinate is
    the median only if at least half the rows are as large in it, so
    ``|med|^2 <= (2/n) sum |x_i|^2 <= 2 clip^2``; a trimmed mean keeps
    ``n - 2 floor(beta n) >= (1 - 2 beta) n`` rows, so by Jensen
    ``|tm|^2 <= clip^2 / (1 - 2 beta)``. Unlike the mean's, these bounds do
    not shrink with the number of boxes (see docs/security.md).
    """
    if not clip > 0:
        raise ValueError("clip must be > 0")
    if rule == "median":
        return math.sqrt(2.0) * clip
    if rule == "trimmed_mean":
        beta = float(params.get("beta", 0.1))
        if not 0 <= beta < 0.5:
            raise ValueError("beta must be in [0, 0.5)")
        return clip / math.sqrt(1.0 - 2.0 * beta)
    if rule == "norm_bound" and params.get("max_norm") is not None:
        return min(clip, float(params["max_norm"]))
    if rule in ("mean", "multi_krum", "norm_bound", "cosine_cluster", "reputation"):
        return clip
    raise ValueError(f"unknown robust rule {rule!r}; choose one of {', '.join(RULES)}")


def min_groups(rule: str, **params: Any) -> int:
    """Fewest group means for which ``rule`` removes (or bounds) what it promises.

    Below it the rule is either undefined (Multi-Krum needs ``G > 2f + 2``) or
    degenerates to the plain mean (a median of two, a trimmed mean that trims
    nothing), so a grouped round with fewer finished groups must abort rather
    than publish an unprotected mean. ``norm_bound`` with a fixed ``max_norm``
    works on one group; with ``max_norm`` unset the bound is the median of the
    group-mean norms, which needs an honest majority of three.
    """
    if rule == "median":
        return 3
    if rule == "trimmed_mean":
        beta = float(params.get("beta", 0.1))
        if not 0 < beta < 0.5:
            raise ValueError("beta must be in (0, 0.5) for trimmed_mean to trim anything")
        g = max(1, math.ceil(1.0 / beta))
        while math.floor(beta * g) < 1:
            g += 1
        return g
    if rule == "multi_krum":
        f = int(params.get("f", 1))
        if f < 1:
            raise ValueError("multi_krum needs f >= 1 (f = 0 keeps every group: the plain mean)")
        return 2 * f + 3
    if rule == "norm_bound":
        return 1 if params.get("max_norm") is not None else 3
    if rule in ("cosine_cluster", "reputation"):
        return 3  # a majority cluster, a median reference and a median norm need three rows
    if rule == "mean":
        return 1
    raise ValueError(f"unknown robust rule {rule!r}; choose one of {', '.join(RULES)}")


def tolerated_rows(rule: str, rows: int, **params: Any) -> int:
    """How many bad rows (group means, or single plaintext updates) ``rule`` removes."""
    if rule == "median":
        return (rows - 1) // 2
    if rule == "trimmed_mean":
        return math.floor(float(params.get("beta", 0.1)) * rows)
    if rule == "multi_krum":
        bad = max(0, (rows - 3) // 2)  # largest f with rows > 2f + 2
        if "f" in params:  # the rule removes the f it is configured with, not more
            bad = min(bad, int(params["f"]))
        return bad
    # mean and norm_bound only bound a bad row's pull; cosine_cluster removes the rows
    # outside its majority cluster but promises nothing for one inside it, reputation
    # those pointing away from the median over time but nothing for one agreeing with it.
    return 0


def grouping_tradeoff(n: int, group_size: int, rule: str, **params: Any) -> dict[str, Any]:
    """State what grouping buys and costs: groups, the privacy floor, tolerated bad boxes."""
    if group_size < 2 or n < group_size:
        raise ValueError("need 2 <= group_size <= n")
    g = n // group_size
    bad_groups = tolerated_rows(rule, g, **params)
    return {
        "groups": g,
        "min_group_size": group_size,
        "privacy": f"aggregator sees means of >= {group_size} boxes, never one box",
        "tolerated_bad_groups": bad_groups,
        "tolerated_malicious_boxes": bad_groups,
        "tolerated_malicious_fraction": bad_groups / n,
    }
