"""Robust rules resist a minority of bad updates; grouped secure aggregation states its costs."""

from __future__ import annotations

import numpy as np
import pytest

from edgeagent.fl.robust import (
    RULES,
    coordinate_median,
    cosine_cluster,
    grouped_aggregate,
    grouping_tradeoff,
    krum_scores,
    min_groups,
    multi_krum,
    norm_bound,
    partition_groups,
    reputation_by_box,
    reputation_filter,
    robust_aggregate,
    trimmed_mean,
)

TRUE = np.array([1.0, -2.0, 0.5])


def honest_and_attackers(n_honest: int = 16, n_bad: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    honest = TRUE + rng.normal(0, 0.1, (n_honest, 3))
    bad = np.full((n_bad, 3), 1000.0)
    return np.vstack([honest, bad])


@pytest.mark.parametrize(
    ("rule", "params"),
    [("median", {}), ("trimmed_mean", {"beta": 0.2}), ("multi_krum", {"f": 3})],
)
def test_rules_resist_minority_attack(rule: str, params: dict) -> None:
    x = honest_and_attackers()
    assert np.linalg.norm(x.mean(axis=0) - TRUE) > 100  # plain mean is ruined
    assert np.linalg.norm(robust_aggregate(x, rule, **params) - TRUE) < 0.15


def test_norm_bound_limits_pull() -> None:
    x = honest_and_attackers()
    out = norm_bound(x, max_norm=3.0)
    assert np.linalg.norm(out - TRUE) < 3.0 * 3 / 19 + 0.2
    w = norm_bound(np.array([[1.0, 0.0], [0.0, 10.0]]), 1.0, weights=[3, 1])
    np.testing.assert_allclose(w, [0.75, 0.25])


def _skewed_honest(n: int, seed: int = 0) -> np.ndarray:
    """Honest updates as label-skewed hubs send them: a shared part plus a large own part."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 1, 40)
    return np.stack([shared + rng.normal(0, 1.2, 40) for _ in range(n)])


def test_cosine_cluster_drops_sign_flipped_rows() -> None:
    honest = _skewed_honest(16)
    x = np.vstack([honest, -honest[:4]])  # 20 % sign flipping
    ref = honest.mean(0)
    cos = honest @ ref / np.linalg.norm(honest, axis=1) / np.linalg.norm(ref)
    assert cos.max() < 0.8  # the honest rows are far from identical
    mean, kept = cosine_cluster(x)
    # only honest rows, at least a majority of all rows (HDBSCAN may call outliers noise)
    assert set(kept) <= set(range(16)) and len(kept) >= 20 // 2 + 1
    bound = np.median(np.linalg.norm(x, axis=1))
    rows = x[kept] * np.minimum(1, bound / np.linalg.norm(x[kept], axis=1))[:, None]
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-12)
    # closer to the honest mean than the coordinate-wise median or the plain mean
    assert np.linalg.norm(mean - ref) < np.linalg.norm(coordinate_median(x) - ref)
    assert np.linalg.norm(mean - ref) < np.linalg.norm(x.mean(0) - ref)


def test_cosine_cluster_bounds_boosted_rows_and_ignores_zero_rows_with_big_counts() -> None:
    honest = _skewed_honest(8, seed=1)
    boosted = 100 * honest[0]  # same direction, so it stays in the cluster: the clip bounds it
    x = np.vstack([honest, boosted, np.zeros(40)])
    counts = [10.0] * 9 + [1000.0]  # a free rider claiming 100x the samples
    mean, kept = cosine_cluster(x, counts)
    assert 9 not in kept and 8 in kept
    bound = np.median(np.linalg.norm(x, axis=1))
    assert np.linalg.norm(mean) <= bound * (1 + 1e-12)
    assert np.linalg.norm(robust_aggregate(x, "cosine_cluster", weights=counts) - mean) == 0
    with pytest.raises(ValueError, match="weights"):
        cosine_cluster(x, [1.0] * 3)


def test_cosine_cluster_without_a_majority_cluster_falls_back_to_the_clipped_mean() -> None:
    x = np.eye(5) * np.arange(1, 6)[:, None]  # five unrelated directions
    mean, kept = cosine_cluster(x)
    assert list(kept) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(mean, np.minimum(np.arange(1, 6), 3.0) / 5)
    assert min_groups("cosine_cluster") == 3


def _late_round(n_honest: int, n_bad: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A late round on label-skewed hubs: a faint shared part under large own parts.

    The honest rows are nearly orthogonal (as the pilot measured after ~13
    rounds); the attackers send their own honest update reversed.
    """
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 1, 200)
    own = rng.normal(0, 1, (n_honest + n_bad, 200))
    honest = 0.35 * shared + own
    return np.vstack([honest[:n_honest], -honest[n_honest:]]), shared


def test_reputation_finds_reversed_boxes_over_rounds_that_one_round_cannot() -> None:
    n_honest, n_bad = 16, 4
    bad = set(range(n_honest, n_honest + n_bad))
    one_round_misses = 0
    scores = np.zeros(n_honest + n_bad)
    for r in range(12):
        x, shared = _late_round(n_honest, n_bad, seed=r)
        _, kept_alone, _ = reputation_filter(x)
        one_round_misses += len(bad & set(kept_alone.tolist()))
        mean, kept, scores = reputation_filter(x, scores)
    # one round alone keeps reversed rows (their cosine to the median is barely negative)
    assert one_round_misses > 0
    # with the history every reversed box is dropped by the end and every honest one kept
    assert set(kept.tolist()) == set(range(n_honest))
    assert scores[sorted(bad)].max() < 0 < scores[:n_honest].min()
    bound = np.median(np.linalg.norm(x, axis=1))
    rows = x[kept] * np.minimum(1, bound / np.linalg.norm(x[kept], axis=1))[:, None]
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-12)
    assert mean @ shared > 0 > x.mean(0) @ shared - mean @ shared  # it helps the shared part


def test_reputation_drops_zero_rows_without_shrinking_the_clip() -> None:
    honest = _skewed_honest(8, seed=2)
    x = np.vstack([honest, np.zeros((3, 40))])
    mean, kept, scores = reputation_filter(x, [0.5] * 8 + [9.0] * 3)
    assert set(kept.tolist()) <= set(range(8))
    np.testing.assert_allclose(scores[8:], 9.0)  # a zero row earns nothing (and loses nothing)
    bound = np.median(np.linalg.norm(honest, axis=1))  # the zero rows do not lower it
    rows = x[kept] * np.minimum(1, bound / np.linalg.norm(x[kept], axis=1))[:, None]
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-12)
    again = robust_aggregate(x, "reputation", scores=[0.5] * 8 + [9.0] * 3)
    np.testing.assert_allclose(again, mean)
    # keyed by box: unknown boxes start at 0, the kept rows come back as names
    names = [f"box{i}" for i in range(11)]
    book = {n: 0.5 for n in names[:8]} | {n: 9.0 for n in names[8:]}
    by_box, kept_names, new = reputation_by_box(x, names, book)
    np.testing.assert_array_equal(by_box, mean)
    assert kept_names == [names[i] for i in kept] and new == dict(zip(names, scores, strict=True))
    assert reputation_by_box(x, names, {})[2] == dict(
        zip(names, reputation_filter(x)[2].tolist(), strict=True)
    )
    # nothing positive: every non-zero row kept, clipped; nothing live: zeros
    _, kept_all, _ = reputation_filter(honest, [-100.0] * 8)
    assert kept_all.tolist() == list(range(8))
    assert not reputation_filter(np.zeros((3, 4)))[0].any()
    with pytest.raises(ValueError, match="scores"):
        reputation_filter(honest, [0.0] * 3)
    with pytest.raises(ValueError, match="scores"):
        reputation_filter(honest, [np.nan] * 8)
    assert min_groups("reputation") == 3


def test_median_and_trimmed_mean_exact() -> None:
    x = np.array([[1.0], [2.0], [100.0], [3.0], [-50.0]])
    assert coordinate_median(x)[0] == 2.0
    assert trimmed_mean(x, 0.2)[0] == pytest.approx(2.0)
    assert trimmed_mean(x, 0.0)[0] == pytest.approx(x.mean())


def test_multi_krum_selects_honest_rows() -> None:
    x = honest_and_attackers()
    _, chosen = multi_krum(x, f=3)
    assert set(chosen) == set(range(16))
    scores = krum_scores(x, f=3)
    assert scores[16:].min() > scores[:16].max()
    with pytest.raises(ValueError, match="n > 2f"):
        krum_scores(x[:5], f=2)


def test_bad_inputs_refused() -> None:
    with pytest.raises(ValueError, match="unknown robust rule"):
        robust_aggregate(np.ones((3, 2)), "magic")
    with pytest.raises(ValueError):
        coordinate_median(np.array([[np.nan]]))
    with pytest.raises(ValueError):
        trimmed_mean(np.ones((4, 2)), 0.5)
    with pytest.raises(ValueError, match="max_norm"):
        robust_aggregate(np.ones((3, 2)), "norm_bound")
    assert set(RULES) >= {"median", "trimmed_mean", "multi_krum", "norm_bound"}


def test_partition_groups_deterministic_and_covering() -> None:
    nodes = [f"b{i}" for i in range(23)]
    groups = partition_groups(nodes, 5, b"n" * 16)
    assert len(groups) == 4 and all(len(g) >= 5 for g in groups)
    assert sorted(b for g in groups for b in g) == sorted(nodes)
    assert groups == partition_groups(list(reversed(nodes)), 5, b"n" * 16)
    assert groups != partition_groups(nodes, 5, b"m" * 16)
    with pytest.raises(ValueError):
        partition_groups(nodes, 1, b"n" * 16)


def test_grouped_secure_rule_survives_one_bad_group() -> None:
    rng = np.random.default_rng(2)
    totals = []
    for g in range(5):
        n = rng.integers(10, 50, 4)
        deltas = TRUE + rng.normal(0, 0.05, (4, 3))
        if g == 1:
            deltas[0] = -500.0  # one malicious box spoils its whole group mean
        totals.append(np.concatenate([(n[:, None] * deltas).sum(axis=0), [n.sum()]]))
    out = grouped_aggregate(totals, "median")
    assert np.linalg.norm(out - TRUE) < 0.2
    assert np.linalg.norm(grouped_aggregate(totals, "mean") - TRUE) > 10
    with pytest.raises(ValueError):
        grouped_aggregate([np.array([1.0, 0.0])], "median")


def test_grouping_tradeoff_stated() -> None:
    t = grouping_tradeoff(100, 10, "median")
    assert t["groups"] == 10 and t["tolerated_malicious_boxes"] == 4
    bigger = grouping_tradeoff(100, 25, "median")
    assert bigger["tolerated_malicious_boxes"] < t["tolerated_malicious_boxes"]
    assert grouping_tradeoff(100, 10, "multi_krum")["tolerated_bad_groups"] == 3
    assert grouping_tradeoff(100, 10, "multi_krum", f=1)["tolerated_bad_groups"] == 1
    assert grouping_tradeoff(100, 10, "multi_krum", f=5)["tolerated_bad_groups"] == 3
    assert grouping_tradeoff(100, 10, "mean")["tolerated_malicious_boxes"] == 0


def test_grouped_secure_aggregation_end_to_end() -> None:
    """Groups run real SecAgg+ rounds in memory; the median of group means resists an attacker."""
    import os

    from edgeagent.fl.privacy import fedavg_payload, payload_bound
    from edgeagent.fl.secagg import RoundConfig
    from edgeagent.fl.secagg.simulate import simulate_round

    rng = np.random.default_rng(4)
    nodes = [f"box{i:02d}" for i in range(25)]
    deltas = {b: TRUE / 4 + rng.normal(0, 0.01, 3) for b in nodes}  # norms < clip
    deltas["box07"] = np.array([-50.0, 50.0, -50.0])  # malicious; clipped but still harmful
    nonce = os.urandom(16)
    totals = []
    for i, group in enumerate(partition_groups(nodes, 5, nonce)):
        cfg = RoundConfig(
            round_id=i,
            nonce=os.urandom(16),
            participants=group,
            dim=4,
            bound=payload_bound(1.0, 100),
            clip=1.0,
            n_cap=100,
        )
        pay = {b: fedavg_payload(deltas[b], 20, 1.0, 100) for b in group}
        report = simulate_round(cfg, pay)
        assert report.result is not None
        totals.append(report.result.total)
    robust = grouped_aggregate(totals, "median")
    plain = grouped_aggregate(totals, "mean")
    robust_err, plain_err = np.linalg.norm(robust - TRUE / 4), np.linalg.norm(plain - TRUE / 4)
    assert plain_err > 0.03  # one clipped attacker still drags the plain mean of groups
    assert robust_err < plain_err / 3


def test_min_groups_is_where_each_rule_stops_being_the_plain_mean() -> None:
    assert min_groups("median") == 3
    assert min_groups("multi_krum", f=1) == 5 and min_groups("multi_krum", f=2) == 7
    for beta in (0.1, 0.2, 0.25, 0.3, 0.49):
        g = min_groups("trimmed_mean", beta=beta)
        assert int(beta * g) == 1 and int(beta * (g - 1)) == 0  # the first G that trims one
    assert min_groups("norm_bound", max_norm=1.0) == 1 and min_groups("norm_bound") == 3
    for g in range(min_groups("multi_krum", f=2), 12):  # computable at the minimum and above
        multi_krum(np.random.default_rng(g).normal(size=(g, 3)), f=2)
    with pytest.raises(ValueError, match="f >= 1"):
        min_groups("multi_krum", f=0)
    with pytest.raises(ValueError, match="beta"):
        min_groups("trimmed_mean", beta=0.0)
    with pytest.raises(ValueError, match="unknown robust rule"):
        min_groups("krum")


def test_grouped_norm_bound_without_a_bound_uses_the_median_group_norm() -> None:
    means = np.array([[1.0, 0.0], [0.0, 2.0], [300.0, 400.0]])  # norms 1, 2, 500
    totals = [np.append(10 * m, 10.0) for m in means]
    got = grouped_aggregate(totals, "norm_bound")
    want = (means[0] + means[1] + means[2] * (2.0 / 500.0)) / 3
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(grouped_aggregate(totals, "norm_bound", max_norm=None), want)
    assert np.linalg.norm(got) < 1.5  # the outlier group's pull is bounded by the median norm


def test_cancelled_secagg_instance_unmasks_nothing_and_tells_its_boxes() -> None:
    import os

    from edgeagent.errors import ProtocolError
    from edgeagent.fl.constants import Stage
    from edgeagent.fl.secagg import RoundConfig, SecAggClient, SecAggServer
    from edgeagent.fl.secagg.auth import lab_signers

    nonce = os.urandom(16)
    nodes = ("a", "b", "c")
    server = SecAggServer(RoundConfig(1, nonce, nodes, dim=3, bound=10.0))
    signers = lab_signers(nodes)
    clients = {n: SecAggClient(n, signers[n]) for n in nodes}
    for c in clients.values():
        c.expect_participants(nodes)
    for n, body in server.start().items():
        server.receive(n, Stage.SETUP, clients[n].handle(1, nonce, Stage.SETUP, body))
    server.advance()
    bodies = server.cancel("too_few_groups: 1 of 3 left < 3")
    assert set(bodies) == set(nodes)
    assert all(b["status"] == "aborted" for b in bodies.values())
    assert server.stage is Stage.RESULT and server.result is None
    assert server.abort is not None and server.abort.stage == "share_keys"
    with pytest.raises(ProtocolError):
        server.cancel("again")


@pytest.mark.parametrize(
    ("rule", "params"),
    [
        ("median", {}),
        ("trimmed_mean", {"beta": 0.1}),
        ("trimmed_mean", {"beta": 0.4}),
        ("multi_krum", {"f": 1}),
        ("norm_bound", {}),
        ("norm_bound", {"max_norm": 0.3}),
        ("cosine_cluster", {}),
        ("reputation", {}),
        ("mean", {}),
    ],
)
def test_output_radius_bounds_every_rule_over_clipped_rows(rule: str, params: dict) -> None:
    """Central DP noise in plaintext mode is scaled to this bound, so it must really hold.

    Sparse rows (each box loud in a few coordinates, as with boosted or sign-flipped
    updates) are where a coordinate-wise median leaves the rows' ball; the bound is
    checked on them and on dense ones, and the median's is nearly reached.
    """
    from edgeagent.fl.privacy import l2_clip
    from edgeagent.fl.robust import output_radius, unweighted_aggregate

    clip = 2.0
    rng = np.random.default_rng(5)
    worst = 0.0
    for trial in range(300):
        n, d = int(rng.integers(5, 12)), int(rng.integers(2, 9))
        x = rng.normal(0, 1, (n, d)) * (rng.random((n, d)) < (0.5 if trial % 2 else 1.0))
        x[np.all(x == 0, axis=1), 0] = 1.0
        rows = [l2_clip(r * 10, clip)[0] for r in x]
        worst = max(worst, float(np.linalg.norm(unweighted_aggregate(rows, rule, **params))))
    assert worst <= output_radius(rule, clip, **params) * (1 + 1e-9)
    # the median leaves the rows' ball: each box loud in 2 of 3 coordinates, each
    # coordinate loud in 2 of 3 boxes gives sqrt(3/2) * clip (sqrt(2) as boxes grow)
    v = clip / np.sqrt(2.0)
    rows = [np.array([v, v, 0.0]), np.array([v, 0.0, v]), np.array([0.0, v, v])]
    med = float(np.linalg.norm(unweighted_aggregate(rows, "median")))
    assert med == pytest.approx(np.sqrt(1.5) * clip) and clip < med <= output_radius("median", clip)
