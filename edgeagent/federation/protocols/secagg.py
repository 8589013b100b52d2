"""SecAgg+ rounds: one masked-sum instance per group, run in lock-step, unmasked at the end.

Every round opens with the commit-reveal stages (COMMIT, REVEAL,
``fl.secagg.beacon``): the seed that decides groups and neighbour graph comes
from every participant's contribution, so the aggregator cannot pick it; a
participant silent before the seed is drawn aborts the round. Without a
robust rule there is one group holding every participant and the mean comes
from its unmasked sum (FedAvg). With ``aggregator.robust`` set to a rule the
participants are split into groups from the seed
(``robust.partition_groups``), one SecAgg+ instance per group, all in
lock-step (one body per box per stage, on the same topics, same round id and
nonce; each box derives its group from the announcement and the seed). A group that
cannot finish is dropped and recorded; if fewer groups remain than the rule
needs, the others are stopped before anything more is unmasked and the round
aborts. Otherwise the rule runs over the group means
(``robust.grouped_aggregate``) in place of FedAvg.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeagent.errors import ProtocolError, RoundAborted
from edgeagent.federation.partials import PartialCollector
from edgeagent.federation.protocols.base import (
    Bodies,
    IntakeOpen,
    RoundProtocol,
    RoundTerms,
    StageClose,
)
from edgeagent.fl import robust
from edgeagent.fl.aggregate import mean_from_total
from edgeagent.fl.constants import Key, Stage
from edgeagent.fl.identity import known_key_verifier
from edgeagent.fl.privacy import add_gaussian_noise, distributed_std, gaussian_std
from edgeagent.fl.secagg import RoundConfig, SecAggServer
from edgeagent.fl.secagg.auth import CertBook
from edgeagent.fl.secagg.beacon import BeaconServer
from edgeagent.fl.secagg.state import field_terms
from edgeagent.ops.config import AggregatorSection

log = logging.getLogger(__name__)


class SecAggProtocol(RoundProtocol):
    """A SecAgg+ round over ``groups`` (one group unless a robust rule is set).

    ``intake_key`` set means intake workers take the masked vectors: the round
    then folds their signed partial sums (``partials``) into its one instance.
    """

    inputs = "sum"
    first_stage = Stage.COMMIT

    def __init__(
        self,
        *,
        round_id: int,
        nonce: bytes,
        participants: tuple[str, ...],
        params: int,
        policy: AggregatorSection,
        clip: float,
        noise_multiplier: float,
        intake_key: Ed25519PublicKey | None = None,
        box_keys: dict[str, Ed25519PublicKey] | None = None,
        cert_book: CertBook | None = None,
        box_certs: dict[str, bytes] | None = None,
    ) -> None:
        p = self.policy = policy
        self.round_id, self.nonce = round_id, nonce
        self.participants = tuple(participants)
        self.params = params
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.box_keys = box_keys
        self.cert_book = cert_book
        self.box_certs = box_certs  # the boxes' certificates from their hellos
        self.grouped = p.robust != "none"
        # the seed of groups and graph: commit-reveal over every participant's contribution
        # fewer committed boxes than the round can use end it before anything is revealed
        need = (
            p.group_size * robust.min_groups(p.robust, **p.rule_params())
            if self.grouped
            else p.min_survivors
        )
        self.beacon = BeaconServer(round_id, nonce, self.participants, need)
        self.beacon_abort: RoundAborted | None = None
        self.groups: list[tuple[str, ...]] = []
        self.servers: list[SecAggServer] = []
        self.group_of: dict[str, int] = {}
        self.intake_key = intake_key
        self.intake_closing = False
        #: boxes silent at the last stage closed
        self.silent: dict[str, list[str]] = {}
        #: group index -> (stage, boxes silent when that group's instance aborted at its close)
        self.abort_silent: dict[int, tuple[str, list[str]]] = {}

    def _build(self, seed: bytes) -> None:
        """Groups and one SecAgg+ instance per group, all keyed by the beacon seed."""
        p = self.policy
        committed = self.beacon.committed  # who committed in time: the seed's set
        self.groups = (
            robust.partition_groups(committed, p.group_size, seed) if self.grouped else [committed]
        )
        total_std = gaussian_std(self.noise_multiplier, self.clip, p.n_cap)
        for group in self.groups:
            # grouped: a group sum is unmasked only with >= group_size survivors (the
            # anonymity set); each group sum carries the full DP noise on its own
            floor = p.group_size if self.grouped else min(p.min_survivors, len(group))
            box_std = distributed_std(total_std, floor) if p.noise == "distributed" else 0.0
            cfg = RoundConfig(
                round_id=self.round_id,
                nonce=self.nonce,
                participants=group,
                dim=self.params + 1,  # the payload: n_k * clipped update, then n_k
                **field_terms(p.update_bits, self.clip, p.n_cap, box_std, self.params, len(group)),
                min_survivors=floor,
                clip=self.clip,
                n_cap=p.n_cap,
                noise_std=box_std,
                seed=seed,
            )
            # with the boxes' verified identity keys the server checks their key and
            # survivor-set signatures itself: a box that signs badly is dropped here
            # instead of making its honest neighbours refuse the round
            verify = known_key_verifier(self.box_keys) if self.box_keys is not None else None
            self.servers.append(SecAggServer(cfg, verify, self.cert_book, self.box_certs))
        self.group_of = {b: i for i, g in enumerate(self.groups) for b in g}

    def terms(self) -> RoundTerms:
        return RoundTerms(
            secure_aggregation=True, group_size=self.policy.group_size if self.grouped else 0
        )

    def describe(self) -> str:
        rule = self.policy.robust if self.grouped else "fedavg"
        n = len(self.participants) // self.policy.group_size if self.grouped else 1
        return f"{n} group(s) (rule {rule}), seeded by commit-reveal"

    def recorded_groups(self) -> list[list[str]] | None:
        # the groups exist once the seed does (after REVEAL); the round record has them
        return [list(g) for g in self.groups] if self.grouped and self.groups else None

    def live(self) -> list[SecAggServer]:
        """The instances still running (not yet at RESULT); they share one stage."""
        return [s for s in self.servers if s.stage is not Stage.RESULT]

    def start(self) -> Bodies:
        return self.beacon.start()

    @property
    def in_beacon(self) -> bool:
        """True while the round's seed is still being drawn (COMMIT, REVEAL)."""
        return self.beacon_abort is None and self.beacon.stage in (Stage.COMMIT, Stage.REVEAL)

    def receive(self, node: str, stage: Stage, body: Any) -> None:
        if stage is Stage.UPDATE:
            raise ProtocolError("wrong_mode", "a plaintext update in a SecAgg+ round")
        if stage in (Stage.COMMIT, Stage.REVEAL) or self.in_beacon:
            self.beacon.receive(node, stage, body)
            return
        self.servers[self.group_of[node]].receive(node, stage, body)

    def pending(self) -> frozenset[str]:
        if self.in_beacon:
            return self.beacon.pending()
        return frozenset().union(*(s.pending() for s in self.live()))

    def _close_beacon(self) -> StageClose:
        """COMMIT -> REVEAL requests; REVEAL -> seed, groups, instances and their SETUP bodies.

        A participant silent at either stage aborts the round: the seed is never
        drawn from a subset (that subset would be the aggregator's choice).
        """
        closing = self.beacon.stage
        assert closing is not None
        self.silent = {str(closing): sorted(self.beacon.pending())}
        try:
            bodies = self.beacon.advance()
        except RoundAborted as exc:
            self.beacon_abort = exc
            log.warning("%s", exc)
            aborted = {Key.STATUS.value: "aborted", Key.REASON.value: exc.reason}
            sends = {Stage.RESULT: {n: dict(aborted) for n in self.participants}}
            return StageClose(closed=closing, sends=sends, finished=True)
        if closing is Stage.COMMIT:
            return StageClose(closed=closing, sends={Stage.REVEAL: bodies})
        self._build(self.beacon.seed)
        reveals = self.beacon.reveals_field()
        setup: Bodies = {}
        for server in self.servers:
            for node, body in server.start().items():
                setup[node] = {**body, **reveals}
        return StageClose(closed=closing, sends={Stage.SETUP: setup})

    def close_stage(self) -> StageClose:
        if self.in_beacon:
            return self._close_beacon()
        if self.partials is not None and not self.intake_closing and self.pending():
            # COLLECT_MASKED deadline with boxes missing: the workers may still hold
            # some of them in an unflushed partial; ask for it, wait a moment
            self.intake_closing = True
            return StageClose(drain=True, close_intake=True)
        closing = self.live()[0].stage  # lock-step: every live instance is in the same stage
        assert closing is not None
        self.silent = {str(closing): sorted(self.pending())}
        per_group: dict[int, tuple[Stage, Bodies]] = {}
        for i, server in enumerate(self.servers):
            if server.stage is Stage.RESULT:
                continue
            silent = sorted(server.pending())
            bodies = server.advance()
            assert server.stage is not None
            if server.abort is not None and silent:
                self.abort_silent[i] = (str(closing), silent)
            per_group[i] = (server.stage, bodies)
        if self.grouped:
            need = robust.min_groups(self.policy.robust, **self.policy.rule_params())
            ok = [s for s in self.servers if s.abort is None]
            if len(ok) < need:
                # the rule cannot run: stop the rest before their sums are unmasked; their
                # boxes get RESULT instead of the next stage (no replies into a closed round)
                reason = f"too_few_groups: {len(ok)} of {len(self.servers)} left < {need}"
                for i, server in enumerate(self.servers):
                    if server.stage is not Stage.RESULT:
                        per_group[i] = (Stage.RESULT, server.cancel(reason))
        out: dict[Stage, Bodies] = {}
        for stage, bodies in per_group.values():
            out.setdefault(stage, {}).update(bodies)
        close = StageClose(closed=closing, sends=out, finished=not self.live())
        if (
            self.partials is not None
            and closing is Stage.COLLECT_MASKED
            and not self.intake_closing
        ):
            self.intake_closing = True
            close.close_intake = True
        if self.intake_key is not None and Stage.COLLECT_MASKED in out:
            server = self.servers[0]
            c = server.config
            close.open_intake = IntakeOpen(dim=c.dim, participants=c.participants, bits=c.bits)
            self.partials = PartialCollector(server, self.intake_key)
        return close

    def tally(self, rec: dict[str, Any]) -> bool:
        p = self.policy
        dropped: dict[str, list[str]] = {}
        refused = Counter(rec["refused"])
        if self.beacon.stage is not Stage.COMMIT:
            # announced boxes that never committed: left out before the seed was drawn
            left_out = sorted(set(self.participants) - set(self.beacon.committed))
            if left_out:
                dropped[str(Stage.COMMIT)] = left_out
        if self.beacon_abort is not None and self.beacon_abort.stage == str(Stage.REVEAL):
            dropped[str(Stage.REVEAL)] = self.silent.get(str(Stage.REVEAL), [])
        for server in self.servers:
            for stage, nodes in server.dropped().items():
                if nodes:
                    dropped.setdefault(str(stage), []).extend(nodes)
            refused += server.rejected
        for stage_name, silent in self.abort_silent.values():
            # an instance that aborts at a stage's close never records who went silent
            have = dropped.setdefault(stage_name, [])
            have.extend(b for b in silent if b not in have)
        rec["dropped"] = {k: sorted(v) for k, v in dropped.items()}
        rec["refused"] = dict(refused)
        if self.partials is not None:
            rec["intake"] = {
                "workers": p.intake_workers,
                "boxes_by_worker": dict(sorted(self.partials.by_worker.items())),
                "refused_partials": {
                    k: v for k, v in self.partials.counters.items() if k != "absorbed"
                },
            }
        done = self._done()
        need = self._need()
        if self.grouped:
            used = [i for i, _ in done]
            rec["robust"] = {
                "rule": p.robust,
                "params": {k: v for k, v in p.rule_params().items() if v is not None},
                "group_size": p.group_size,
                "groups": [list(g) for g in self.groups],
                "used_groups": used,
                "dropped_groups": [
                    {
                        "group": i,
                        "boxes": list(self.groups[i]),
                        "stage": s.abort.stage,
                        "reason": s.abort.reason,
                    }
                    for i, s in enumerate(self.servers)
                    if s.abort is not None
                ],
                "min_groups": need,
                "tolerated_bad_groups": (
                    robust.grouping_tradeoff(
                        len(used) * p.group_size, p.group_size, p.robust, **p.rule_params()
                    )["tolerated_bad_groups"]
                    if used
                    else 0
                ),
            }
        if not done or len(done) < need:
            rec.update(status="aborted", reason=self._abort_reason(len(done), need), survivors=[])
            if not rec["dropped"]:
                rec["dropped"] = {k: v for k, v in self.silent.items() if v}
        else:
            rec["survivors"] = sorted(b for _, res in done for b in res.survivors)
        # something was unmasked (even if a grouped round then aborts): it counts
        return bool(done)

    def mean(self, rec: dict[str, Any]) -> tuple[np.ndarray, float]:
        p = self.policy
        totals = [np.asarray(res.total, dtype=np.float64) for _, res in self._done()]
        if p.noise == "central" and self.noise_multiplier > 0:
            # one noised release per group: disjoint groups compose in parallel
            std = gaussian_std(self.noise_multiplier, self.clip, p.n_cap)
            totals = [add_gaussian_noise(t, std) for t in totals]
        if self.grouped:
            mean = robust.grouped_aggregate(totals, p.robust, **p.rule_params())
        else:
            mean = mean_from_total(totals[0])
        return mean, float(sum(t[-1] for t in totals))

    def _done(self) -> list[tuple[int, Any]]:
        return [(i, s.result) for i, s in enumerate(self.servers) if s.result is not None]

    def _need(self) -> int:
        if not self.grouped:
            return 1
        return robust.min_groups(self.policy.robust, **self.policy.rule_params())

    def _abort_reason(self, n_done: int, need: int) -> str:
        if self.beacon_abort is not None:
            return self.beacon_abort.reason
        if not self.grouped:
            ab = self.servers[0].abort
            return ab.reason if ab else "unknown"
        aborts = [s.abort.reason for s in self.servers if s.abort is not None]
        cancelled = [a for a in aborts if a.startswith("too_few_groups")]
        if cancelled:
            return cancelled[0]
        return f"too_few_groups: {n_done} of {len(self.servers)} finished < {need}"
