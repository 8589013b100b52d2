"""Plaintext rounds (``aggregator.secure_aggregation = false``): one stage of sealed updates.

The announcement says ``secagg: false`` with the clip, ``n_cap`` and the
round's sealing key; each invited box that allows it
(``federation.allow_plaintext``) answers with one signed UPDATE envelope
holding its clipped update and ``n_k`` sealed to that key (``fl.seal``: the
broker cannot read them; the key lives only as long as the round). At the
deadline (or when all are in) the rule runs over the single updates
(``robust.unweighted_aggregate``; n_k-weighted FedAvg for ``robust = "none"``;
``reputation`` also reads and updates each box's score in the state file)
with central DP noise scaled to what that rule can move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeagent.errors import ProtocolError
from edgeagent.federation.protocols.base import Bodies, RoundProtocol, RoundTerms, StageClose
from edgeagent.federation.round_record import RoundTraffic
from edgeagent.fl import robust, seal
from edgeagent.fl.aggregate import mean_from_total
from edgeagent.fl.constants import Key, Stage
from edgeagent.fl.privacy import add_gaussian_noise, fedavg_payload, gaussian_std, l2_clip
from edgeagent.ops.config import AggregatorSection


class PlaintextProtocol(RoundProtocol):
    """Collects each invited box's ``(update, n_k)`` and runs the rule over them."""

    inputs = "updates"

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
        traffic: RoundTraffic,
        reputation: Callable[[], dict[str, float]],
    ) -> None:
        self.round_id = round_id
        self.nonce = nonce
        self.participants = participants
        #: model parameters: an UPDATE must carry exactly this many float32
        self.params = params
        self.policy = policy
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.traffic = traffic
        self._reputation = reputation
        #: this round's key updates are sealed to (``fl.seal``; never stored)
        self.seal_key, self.enc_pk = seal.round_key()
        #: box -> (update as sent, capped n_k)
        self.updates: dict[str, tuple[np.ndarray, int]] = {}

    def terms(self) -> RoundTerms:
        return RoundTerms(
            secure_aggregation=False, clip=self.clip, n_cap=self.policy.n_cap, enc_pk=self.enc_pk
        )

    def describe(self) -> str:
        rule = self.policy.robust if self.policy.robust != "none" else "fedavg"
        return f"plaintext (rule {rule})"

    def start(self) -> Bodies:
        return {}  # the boxes answer the announcement itself

    def receive(self, node: str, stage: Stage, body: Any) -> None:
        """Check one plaintext UPDATE body; keep ``(update, n_k)`` for the tally."""
        if stage is not Stage.UPDATE:
            raise ProtocolError("wrong_mode", f"{stage} in a plaintext round")
        if node in self.updates:
            raise ProtocolError("replay", "a second update in the same round")
        sealed = body.get(Key.UPDATE.value)
        if not isinstance(sealed, bytes):
            raise ProtocolError("bad_body", "update must be a sealed byte string")
        info = seal.info(self.round_id, self.nonce, node)
        u, n = seal.open_update(sealed, self.seal_key, info, self.params)
        if not 1 <= n <= self.policy.n_cap:
            raise ProtocolError("bad_body", f"n must be in 1..{self.policy.n_cap}, got {n}")
        if not np.all(np.isfinite(u)):
            raise ProtocolError("bad_body", "update contains NaN or infinity")
        if float(np.linalg.norm(u)) > self.clip * (1 + 1e-5):
            # an honest box clips; the aggregator clips again below, so DP holds either way
            self.traffic.refused["over_clip"] += 1
        self.updates[node] = (u, n)

    def pending(self) -> frozenset[str]:
        return frozenset(self.participants) - self.updates.keys()

    def close_stage(self) -> StageClose:
        return StageClose(closed=Stage.UPDATE, finished=True)

    def tally(self, rec: dict[str, Any]) -> bool:
        p = self.policy
        got = sorted(self.updates)
        silent = sorted(self.pending())
        rec["dropped"] = {str(Stage.UPDATE): silent} if silent else {}
        rec["secure_aggregation"] = False
        params = p.rule_params()
        need = p.min_survivors
        if p.robust != "none":
            need = max(need, robust.min_groups(p.robust, **params))
            rec["robust"] = {
                "rule": p.robust,
                "mode": "plaintext",
                "params": {k: v for k, v in params.items() if v is not None},
                "updates": len(got),
                "min_updates": need,
                "tolerated_bad_boxes": robust.tolerated_rows(p.robust, len(got), **params),
            }
        if len(got) < need:
            rec.update(status="aborted", reason=f"too_few_updates: {len(got)} < {need}",
                       survivors=[])  # fmt: skip
            return False
        rec["survivors"] = got
        return True

    def mean(self, rec: dict[str, Any]) -> tuple[np.ndarray, float]:
        """The rule over the single updates, with central noise.

        FedAvg (``robust = "none"``) sums the boxes' ``fedavg_payload`` vectors and
        noises the sum exactly as a central-noise SecAgg+ round does (sensitivity
        ``n_cap * sqrt(clip^2 + 1)``). A robust rule's output has no such per-box
        bound that shrinks with the fleet, so its noise covers the rule's whole output
        range: std ``z * 2 * robust.output_radius(rule, clip)`` on the mean update.
        Either way one Gaussian release at multiplier ``z`` per round, which is what
        the accountant composes.
        """
        p = self.policy
        z = self.noise_multiplier
        params = p.rule_params()
        got = sorted(self.updates)
        t0 = time.perf_counter()
        if p.robust == "none":
            total = np.sum(
                [fedavg_payload(u, n, self.clip, p.n_cap) for u, n in self.updates.values()],
                axis=0,
            )
            total = add_gaussian_noise(total, gaussian_std(z, self.clip, p.n_cap))
            mean = mean_from_total(total)
        else:
            rows = [l2_clip(self.updates[b][0], self.clip)[0] for b in got]
            if p.robust == "reputation":
                mean = self._reputation_mean(got, rows, rec)
            else:
                mean = robust.unweighted_aggregate(rows, p.robust, **params)
            std = z * 2.0 * robust.output_radius(p.robust, self.clip, **params)
            mean = add_gaussian_noise(mean, std)
            rec["noise_std"] = std
        self.traffic.server_seconds += time.perf_counter() - t0
        rec["server_seconds"] = round(self.traffic.server_seconds, 4)
        return mean, float(sum(n for _, n in self.updates.values()))

    def _reputation_mean(
        self, boxes: list[str], rows: list[np.ndarray], rec: dict[str, Any]
    ) -> np.ndarray:
        """The ``reputation`` rule over single updates, remembering each box's score.

        The scores live in the state file, so a restart does not hand a box
        that earned distrust a clean slate; the round record names the boxes
        dropped, which is what an operator needs to go and look at them.
        """
        book = self._reputation()
        mean, kept, scores = robust.reputation_by_box(rows, boxes, book)
        book.update(scores)
        rec["robust"]["dropped"] = [b for b in boxes if b not in kept]
        return mean

    def results(self, rec: dict[str, Any]) -> Bodies:
        """RESULT to each box whose update was taken, once the outcome is known."""
        status = str(rec.get("status", "completed"))
        reason = str(rec.get("reason", ""))
        return {
            b: {Key.STATUS.value: status, Key.REASON.value: reason} for b in sorted(self.updates)
        }
