"""A malicious aggregator's workbench: the real SecAggServer and real boxes, driven by hand.

The attacks below rewrite what the server sends between stages, as an
aggregator (or anyone holding its key) could; the boxes are the real
``SecAggClient`` with fleet-style signing identities.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeagent.fl.constants import Stage
from edgeagent.fl.privacy import fedavg_payload, payload_bound
from edgeagent.fl.secagg import RoundConfig, SecAggClient, SecAggServer
from edgeagent.fl.secagg.auth import RoundSigner, lab_signers

CLIP, N_CAP = 1.0, 100


@dataclass
class Rig:
    config: RoundConfig
    server: SecAggServer
    clients: dict[str, SecAggClient]
    inputs: dict[str, np.ndarray]
    out: dict[str, dict[str, Any]]

    def handle(self, node: str, stage: Stage, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.clients[node].handle(self.config.round_id, self.config.nonce, stage, body)

    def run_stage(self) -> None:
        """Every box answers what the server sent; the server closes the stage."""
        stage = self.server.stage
        assert stage is not None
        for node, body in self.out.items():
            self.server.receive(node, stage, self.handle(node, stage, body))
        self.out = self.server.advance()

    def run_to(self, stage: Stage) -> None:
        while self.server.stage is not stage:
            self.run_stage()


def rig(
    n: int,
    *,
    signers: Mapping[str, RoundSigner] | None = None,
    seed: int = 0,
    dim: int = 8,
    **cfg: Any,
) -> Rig:
    nodes = tuple(f"box{i:03d}" for i in range(n))
    rng = np.random.default_rng(seed)
    config = RoundConfig(
        round_id=1,
        nonce=os.urandom(16),
        participants=nodes,
        dim=dim + 1,
        **({"bound": payload_bound(CLIP, N_CAP), "clip": CLIP, "n_cap": N_CAP} | cfg),
    )
    signers = signers or lab_signers(nodes)
    clients = {b: SecAggClient(b, signers[b]) for b in nodes}
    inputs = {}
    for b, c in clients.items():
        c.expect_participants(nodes)
        inputs[b] = fedavg_payload(rng.normal(0, 0.3, dim), int(rng.integers(5, 50)), CLIP, N_CAP)
        c.set_input(inputs[b])
    server = SecAggServer(config)
    return Rig(config, server, clients, inputs, server.start())
