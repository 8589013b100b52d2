"""Partial sums from intake workers, folded into the aggregator's SecAgg server.

With intake workers (``federation.intake``) taking the masked vectors through a
shared subscription, the process that owns the ``SecAggServer`` never sees a
masked vector itself: it receives the workers' signed partial sums and folds
them in with ``SecAggServer.absorb``. Masked vectors are additive mod 2^32, so
the combined partial sums are exactly the masked sum a single aggregator
would have built, and unmasking is unchanged.

A partial that names a box already counted (a QoS 1 redelivery that reached
another worker), a box not expected, or that arrives after COLLECT_MASKED
closed is refused whole and counted; the boxes in it are then treated as
dropouts, which SecAgg+ recovers from by reconstructing their mask keys, so a
refused partial can cost accuracy of one round but never correctness or
privacy. No I/O here: the aggregator service feeds ``receive`` from MQTT.
"""

from __future__ import annotations

import logging
from collections import Counter

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeagent.errors import ProtocolError
from edgeagent.federation.intake import decode_partial
from edgeagent.fl.constants import Stage
from edgeagent.fl.secagg import SecAggServer

log = logging.getLogger(__name__)

#: After asking the workers to flush (deadline of COLLECT_MASKED), wait this
#: long for their last partials before treating the missing boxes as dropped.
CLOSE_GRACE_S = 1.0


class PartialCollector:
    """Folds verified partial sums from intake workers into a ``SecAggServer``."""

    def __init__(self, server: SecAggServer, aggregator_key: Ed25519PublicKey) -> None:
        self.server = server
        self._key = aggregator_key
        self.counters: Counter[str] = Counter()
        self.by_worker: Counter[str] = Counter()  # boxes absorbed per worker
        self._seen: set[tuple[str, int]] = set()

    def receive(self, data: bytes) -> int:
        """Absorb one partial; returns how many boxes it added (0 if refused, counted)."""
        c = self.server.config
        try:
            p = decode_partial(data, self._key, c.round_id, c.nonce, c.dim, c.bits)
            if (p.worker, p.part) in self._seen:
                raise ProtocolError("duplicate_partial", f"{p.worker} part {p.part} again")
            if self.server.stage is not Stage.COLLECT_MASKED:
                raise ProtocolError("late_partial", f"arrived in {self.server.stage}")
            self.server.absorb(p.total)
        except ProtocolError as exc:
            self.counters[exc.reason] += 1
            log.warning("round %d: refused partial sum: %s", c.round_id, exc)
            return 0
        self._seen.add((p.worker, p.part))
        self.counters["absorbed"] += 1
        self.by_worker[p.worker] += len(p.total.nodes)
        return len(p.total.nodes)
