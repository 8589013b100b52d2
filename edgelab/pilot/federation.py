"""Federated rounds in-process with the real pure protocol code (FedAvg, robust rules, SecAgg).

No broker: the accuracy experiments need the aggregation maths, not the transport,
and running them in one process keeps a run reproducible from its seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeagent.federation.accountant import DpAccountant
from edgeagent.fl import robust
from edgeagent.fl.aggregate import ClientUpdate, apply_update, sum_payloads, weighted_fedavg
from edgeagent.fl.privacy import add_gaussian_noise, fedavg_payload, gaussian_std, payload_bound
from edgeagent.model.meta import ModelMeta, init_params
from edgeagent.model.nn import Adam
from edgelab.attacks import AttackConfig, attack_update, choose_malicious, poison_labels
from edgelab.head_calibration import ClassMoments, calibrate_head, class_moments, robust_moments
from edgelab.pilot.config import MODES, PilotConfig
from edgelab.pilot.simulate import PatientData
from edgelab.pilot.train import Calibration, TrainSet, local_fit, train_arrays


@dataclass
class FedResult:
    """Final global weights and per-round notes of one federated run."""

    w: np.ndarray
    rounds: list[dict[str, Any]] = field(default_factory=list)
    clip: float | None = None
    epsilon: float | None = None


@dataclass
class Reputation:
    """The ``reputation`` rule's memory across rounds: each hub's score, and whom it kept last."""

    scores: dict[str, float] = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)


def aggregate(
    mode: str,
    nodes: Sequence[str],
    deltas: Sequence[np.ndarray],
    counts: Sequence[int],
    *,
    assumed_malicious: float,
    group_size: int = 2,
    clip: float = 1.0,
    n_cap: int = 2000,
    nonce: bytes = b"\0" * 16,
    round_id: int = 0,
    reputation: Reputation | None = None,
    update_bits: int | None = None,
) -> np.ndarray:
    """One round's mean update under the deployment's aggregation ``mode`` (pure except SecAgg).

    ``fedavg`` is n_k-weighted; order-statistic rules ignore n_k (a box must
    not buy influence by claiming samples); ``norm_bound`` clips to the
    round's median update norm; ``secure_grouped_median`` sums groups of
    ``group_size`` boxes with real in-memory SecAgg+ rounds (payloads clipped
    to ``clip`` with n_k capped at ``n_cap``) and takes the median of group means.
    ``reputation`` is the stateful rule's memory: the hubs' scores from earlier
    rounds, which this call updates in place with the hubs the rule kept (the
    aggregator service keeps the scores in its state file).
    ``update_bits`` with ``fedavg``: the mean comes from one real in-memory SecAgg+
    round over all boxes with updates of that many bits (8, 16 or 32), sized as the
    aggregator sizes it (``secure_fedavg``), so its accuracy can be compared at equal rounds.
    """
    n = len(nodes)
    f = max(0, min(math.ceil(assumed_malicious * n), (n - 3) // 2))
    if mode == "fedavg" and update_bits is not None:
        return secure_fedavg(nodes, deltas, counts, update_bits, clip=clip, n_cap=n_cap,
                             nonce=nonce, round_id=round_id)  # fmt: skip
    if mode == "fedavg":
        ups = [ClientUpdate(a, d, int(c)) for a, d, c in zip(nodes, deltas, counts, strict=True)]
        return weighted_fedavg(ups)
    x = np.stack([np.asarray(d, np.float64) for d in deltas])
    if mode == "median":
        return robust.robust_aggregate(x, "median")
    if mode == "trimmed_mean":
        return robust.robust_aggregate(x, "trimmed_mean", beta=min(0.49, assumed_malicious))
    if mode == "multi_krum":
        return robust.robust_aggregate(x, "multi_krum", f=f)
    if mode == "norm_bound":
        bound = float(np.median(np.linalg.norm(x, axis=1)))
        return robust.robust_aggregate(
            x, "norm_bound", weights=[float(c) for c in counts], max_norm=max(bound, 1e-12)
        )
    if mode == "cosine_cluster":
        return robust.robust_aggregate(x, "cosine_cluster")
    if mode == "reputation":
        memory = Reputation() if reputation is None else reputation
        mean, kept, scores = robust.reputation_by_box(x, nodes, memory.scores)
        memory.scores.update(scores)
        memory.kept = set(kept)
        return mean
    if mode == "secure_grouped_median":
        from edgeagent.fl.secagg import RoundConfig
        from edgeagent.fl.secagg.simulate import simulate_round

        by = dict(zip(nodes, zip(deltas, counts, strict=True), strict=True))
        totals = []
        for gi, group in enumerate(robust.partition_groups(list(nodes), group_size, nonce)):
            rc = RoundConfig(
                round_id=round_id * 1000 + gi,
                nonce=(nonce[:12] + gi.to_bytes(4, "little")),
                participants=group,
                dim=x.shape[1] + 1,
                bound=payload_bound(clip, n_cap),
                clip=clip,
                n_cap=n_cap,
            )
            pay = {b: fedavg_payload(by[b][0], max(1, int(by[b][1])), clip, n_cap) for b in group}
            rep = simulate_round(rc, pay)
            if rep.result is None:
                continue
            totals.append(rep.result.total)
        return robust.grouped_aggregate(totals, "median")
    raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {', '.join(MODES)}")


def secure_fedavg(
    nodes: Sequence[str],
    deltas: Sequence[np.ndarray],
    counts: Sequence[int],
    update_bits: int,
    *,
    clip: float,
    n_cap: int,
    nonce: bytes,
    round_id: int = 0,
) -> np.ndarray:
    """n_k-weighted mean of clipped updates through one SecAgg+ round at ``update_bits``.

    Bounds, field width, headroom and rotation as the aggregator sets them for
    ``[aggregator] update_bits`` (``secagg.state.field_terms``).
    """
    from edgeagent.fl.aggregate import mean_from_total
    from edgeagent.fl.secagg import RoundConfig
    from edgeagent.fl.secagg.simulate import simulate_round
    from edgeagent.fl.secagg.state import field_terms

    d = len(deltas[0])
    rc = RoundConfig(
        round_id=round_id,
        nonce=nonce,
        participants=tuple(nodes),
        dim=d + 1,
        clip=clip,
        n_cap=n_cap,
        **field_terms(update_bits, clip, n_cap, 0.0, d, len(nodes)),
    )
    pay = {
        b: fedavg_payload(np.asarray(d, np.float64), max(1, int(c)), clip, n_cap)
        for b, d, c in zip(nodes, deltas, counts, strict=True)
    }
    rep = simulate_round(rc, pay)
    if rep.result is None:
        raise RuntimeError(f"secure round {round_id} aborted: {rep.abort}")
    return mean_from_total(rep.result.total)


def run_federation(
    cfg: PilotConfig,
    meta: ModelMeta,
    hubs: Sequence[PatientData],
    *,
    mode: str = "fedavg",
    personal: bool = False,
    attack: AttackConfig | None = None,
    drop: str | None = None,
    dp: bool = False,
    rule: Calibration | None = None,
    update_bits: int | None = None,
) -> FedResult:
    """``cfg.rounds`` federated rounds from the shared initial weights; returns the global model.

    ``rule``: the hubs' personal calibration when ``personal`` (default ``Calibration.of(cfg)``).
    ``update_bits``: FedAvg through real SecAgg+ rounds at that width (see ``aggregate``).
    """
    pop_mu = np.asarray(meta.pop_mu, np.float32)
    pop_sigma = np.asarray(meta.pop_sigma, np.float32)
    rule = rule or Calibration.of(cfg)
    nodes = [d.id for d in hubs]
    bad = set(choose_malicious(nodes, attack.fraction, cfg.seed)) if attack else set()
    clinical = list(range(1, len(meta.classes) - 1))
    sets: dict[str, TrainSet] = {}
    for d in hubs:
        y = (
            poison_labels(d.y, clinical)
            if (d.id in bad and attack and attack.poisons_data)
            else None
        )
        sets[d.id] = train_arrays(d, pop_mu, pop_sigma, personal, drop, y, rule)
    w = init_params(meta.spec, cfg.seed)
    velocity = np.zeros_like(w)
    # A box keeps its optimiser between rounds, as it keeps its data: restarting Adam every
    # round makes its first steps sign-sized on every coordinate (bias correction), which
    # made the federated row swing by 8 points between training seeds.
    opts = {n: Adam(w.size, lr=cfg.lr) for n in nodes} if cfg.keep_local_optimizer else {}
    res = FedResult(w)
    clip = cfg.secure_clip or None
    acct = DpAccountant(cfg.dp_delta) if dp else None
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xD9]))
    reputation = Reputation()
    for r in range(cfg.rounds):
        deltas: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for i, node in enumerate(nodes):
            ts = sets[node]
            counts[node] = len(ts.y)
            if node in bad and attack is not None and attack.kind == "free_riding":
                deltas[node] = np.zeros_like(w)
                continue
            seed = cfg.seed * 7919 + r * 1009 + i
            deltas[node] = local_fit(cfg, meta, ts, w, cfg.local_epochs, seed, opts.get(node)) - w
        honest = [deltas[n] for n in nodes if n not in bad]
        if clip is None:
            clip = float(np.median([np.linalg.norm(d) for d in honest])) or 1.0
            res.clip = clip
        if attack is not None and bad:
            benign = np.stack(honest)
            for node in sorted(bad):
                deltas[node], counts[node] = attack_update(
                    attack, deltas[node], counts[node], benign, len(nodes), len(bad)
                )
        dl = [deltas[n] for n in nodes]
        cl = [counts[n] for n in nodes]
        if dp:
            assert acct is not None
            ups = [ClientUpdate(a, d, c) for a, d, c in zip(nodes, dl, cl, strict=True)]
            total = sum_payloads(ups, clip=clip, n_cap=cfg.n_cap)
            std = gaussian_std(cfg.dp_noise_multiplier, clip, cfg.n_cap)
            noisy = add_gaussian_noise(total, std, rng)
            # Fixed denominator (McMahan et al. 2018): the noisy count can be <= 0 with few
            # hubs, and dividing by the true count would leak it.
            mean = noisy[:-1] / float(cfg.n_cap * len(nodes))
            acct.step(cfg.dp_noise_multiplier, 1.0)
        else:
            nonce = np.random.default_rng([cfg.seed, r]).bytes(16)
            mean = aggregate(
                mode,
                nodes,
                dl,
                cl,
                assumed_malicious=cfg.assumed_malicious,
                group_size=cfg.group_size,
                clip=clip,
                n_cap=cfg.n_cap,
                nonce=nonce,
                round_id=r,
                reputation=reputation,
                update_bits=update_bits,
            )
        # FedAvgM: the server keeps a momentum of the aggregated update (post-processing of
        # the aggregate, so the robust rules and DP see exactly the same updates).
        velocity = cfg.server_momentum * velocity + np.asarray(mean, np.float32)
        w = apply_update(w, velocity, cfg.server_lr)
        res.rounds.append({"round": r, "update_norm": float(np.linalg.norm(mean))})
    if cfg.head_calibration and not dp:
        nonce = np.random.default_rng([cfg.seed, cfg.rounds]).bytes(16)  # one more round
        # the reputation rule's verdict carries over: hubs it dropped add no moments
        trusted = reputation.kept if mode == "reputation" else None
        w = _calibration_round(cfg, meta, w, sets, mode, attack, bad, nonce, trusted)
    res.w = w
    res.clip = clip
    if acct is not None:
        res.epsilon = acct.epsilon()
    return res


def _calibration_round(
    cfg: PilotConfig,
    meta: ModelMeta,
    w: np.ndarray,
    sets: dict[str, TrainSet],
    mode: str,
    attack: AttackConfig | None,
    bad: set[str],
    nonce: bytes,
    trusted: set[str] | None = None,
) -> np.ndarray:
    """One more round after training: the head re-fitted on the hubs' class moments (CCVR).

    Malicious hubs lie here too: their moments carry the label-poisoning flip,
    scaling boosts them like its update, free riders send no features with
    inflated counts. Plain FedAvg sums the moments; the robust modes combine
    them with ``robust_moments`` (per hub, or per SecAgg group for the grouped
    mode, whose server sees only group sums). ``trusted``: the hubs a rule that
    judges single boxes (``reputation``) still keeps after the last round;
    only they take part (all hubs if it is ``None`` or empty), with their
    counts capped but no class mean dropped.
    """
    clinical = list(range(1, len(meta.classes) - 1))
    per_hub: dict[str, ClassMoments] = {}
    for node, ts in sets.items():
        if trusted and node not in trusted:
            continue
        if attack is None or node not in bad:
            per_hub[node] = class_moments(meta.spec, w, ts.z, ts.m, ts.y, ts.zp)
            continue
        # (data-poisoning attackers' labels are flipped in their training set already)
        y = ts.y if attack.poisons_data else poison_labels(ts.y, clinical)
        mom = class_moments(meta.spec, w, ts.z, ts.m, y, ts.zp)
        if attack.kind == "free_riding":
            mom = mom.scaled(counts=attack.inflate, sums=0.0)
        elif attack.kind == "scaling":
            mom = mom.scaled(counts=attack.boost, sums=attack.boost)
        per_hub[node] = mom
    if mode == "fedavg":
        moments = sum(per_hub.values(), ClassMoments.zeros(meta.spec))
    else:
        parts = list(per_hub.values())
        if mode == "secure_grouped_median":
            groups = robust.partition_groups(list(per_hub), cfg.group_size, nonce)
            parts = [sum((per_hub[b] for b in g), ClassMoments.zeros(meta.spec)) for g in groups]
        # Trusted hubs have been judged one by one over the rounds; the per-class outlier
        # test on top dropped atypical honest patients' means and cost the reputation mode
        # ~3 points of clean accuracy (docs/pilot.md), so they only get the count cap.
        moments = robust_moments(parts, k_mad=None if trusted else 3.0)
    return refit_head(cfg, meta, w, moments)


def refit_head(
    cfg: PilotConfig, meta: ModelMeta, w: np.ndarray, moments: ClassMoments
) -> np.ndarray:
    """``calibrate_head`` as the pilot configures it (federated runs, centralised control)."""
    return calibrate_head(
        meta.spec,
        w,
        moments,
        per_class=cfg.calibration_samples,
        seed=cfg.seed,
        prior=cfg.calibration_prior,
    )
