"""Stage 5: the federated round after each segment, through one of two round drivers.

:class:`MqttFederation` runs the real aggregator and one box client per hub over
the broker; :class:`MemoryFederation` runs the same SecAgg+ round, FedAvg step
and DP accountant in memory when there is no broker. Both implement
:class:`RoundDriver`, whose ``run_round`` is the one place that times a round,
notes each hub's trained windows and explains why boxes sat a round out, so a
round reads the same in the summary whichever driver ran it.
:func:`start_federation` picks the driver and says why.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgelab.demo.hubs import Hub
from edgelab.demo.options import (
    CLIP_NORM,
    FLEET,
    N_CAP,
    NOISE_MULTIPLIER,
    ROUND_TIMEOUT_S,
    STAGE_TIMEOUT_S,
    BrokerInfo,
    DemoOptions,
    ModelInfo,
    Part,
)

log = logging.getLogger(__name__)

Tick = Callable[[], None]

#: Why a box has nothing to send: the learner trains only on windows the personal
#: calibration accepted, and the calibration needs 40 windows first.
IDLE_ADVICE = "the personal calibration needs 40 windows first, use a longer --seconds"


@dataclass
class RoundResult:
    """One round as a driver saw it; both drivers fill the same fields."""

    status: str  # "completed", or why not: "aborted", "failed", "timeout", ...
    reason: str = ""
    participants: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    dropped: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, Any] = field(default_factory=dict)
    epsilon: float | None = None
    sum_n: float | None = None
    update_norm: float | None = None
    model_version: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    #: per hub: the global version it holds and what its lifecycle did with the model
    applied: dict[str, Any] = field(default_factory=dict)
    #: per hub: the box client's counters (over MQTT only)
    clients: dict[str, Any] = field(default_factory=dict)


class RoundDriver(ABC):
    """Runs one federated round on request and leaves every hub on the outcome.

    The demo's run loop knows only this interface. Subclasses implement
    :meth:`_round`; :meth:`run_round` wraps it into the round record.
    """

    #: "real" (over the broker) or "in-memory": the summary's parts list shows it
    how: ClassVar[str]

    def __init__(self, hubs: Sequence[Hub]) -> None:
        self.hubs = list(hubs)

    def wait_ready(self, timeout: float = 20.0) -> bool:
        """Block (bounded) until every hub can take part; True when they all can."""
        return True

    def run_round(self, r: int, on_tick: Tick | None = None) -> dict[str, Any]:
        """Round ``r`` as a plain record (``round``, ``status``, ``reason``, ``n_k``,
        ``seconds`` and the :class:`RoundResult` fields)."""
        t0 = time.monotonic()
        n_k = {h.name: int(h.learner.n_k) for h in self.hubs}
        res = self._round(r, n_k, on_tick)
        idle = sorted(n for n, k in n_k.items() if k < 1)
        if res.status != "completed" and idle:
            why = f"boxes with no trained windows sit rounds out ({', '.join(idle)}): {IDLE_ADVICE}"
            res.reason = "; ".join(x for x in (res.reason, why) if x)
        rec = {"round": r, **asdict(res), "n_k": n_k}
        rec["seconds"] = round(time.monotonic() - t0, 3)
        return rec

    @abstractmethod
    def _round(self, r: int, n_k: dict[str, int], on_tick: Tick | None) -> RoundResult:
        """Run round ``r`` given each hub's trained windows; apply its model on every hub."""

    def close(self) -> None:
        """Release what the driver holds (threads, links); nothing by default."""
        return None


class MqttFederation(RoundDriver):
    """The real thing: ``federation.aggregator.Aggregator`` and one
    ``federation.client.FlClient`` per hub, over the broker with mTLS identities
    from the demo's fleet PKI.

    The aggregator loop runs on its own thread (it owns the round state); rounds
    are started on request after each segment instead of on its timer, so every
    round sees exactly one segment of new data.
    """

    how = "real"

    def __init__(
        self,
        hubs: Sequence[Hub],
        model: ModelInfo,
        broker: BrokerInfo,
        pki: Any,
        workdir: Path,
        noise_multiplier: float = NOISE_MULTIPLIER,
    ) -> None:
        from edgeagent.federation.aggregator import Aggregator
        from edgeagent.federation.client import FlClient
        from edgeagent.fl.identity import load_ca, load_identity
        from edgeagent.ops.config import parse_config
        from edgeagent.transport.mqtt import MqttLink

        assert broker.host is not None and broker.port is not None
        super().__init__(hubs)
        files = pki.client_files("aggregator")
        cfg = parse_config(
            {
                "agent": {
                    "box_id": "demo-aggregator",
                    "fleet": FLEET,
                    "state_dir": str(workdir / "aggregator"),
                },
                "federation": {
                    "enabled": True,
                    "broker_host": broker.host,
                    "broker_port": broker.port,
                    "ca_file": str(files.ca),
                    "cert_file": str(files.cert),
                    "key_file": str(files.key),
                    "clip_norm": CLIP_NORM,
                    "noise_multiplier": noise_multiplier,
                    "keepalive_s": 10,
                },
                "aggregator": {
                    "min_boxes": 2,
                    "max_boxes": max(2, len(hubs)),
                    "min_survivors": 2,
                    "stage_timeout_s": STAGE_TIMEOUT_S,
                    # rounds start on request only (after each segment), never on a timer
                    "round_interval_s": 86400,
                    "n_cap": N_CAP,
                    "initial_model": str(model.path),
                    # DP is off by default (3 hubs give no meaningful epsilon at any useful
                    # z: docs/security.md); a run with --noise-multiplier shows what DP buys
                    # and costs, its epsilon stated by options.privacy_statement (above the
                    # default budget: "no meaningful guarantee"), so no budget refuses it
                    "epsilon_budget": math.inf,
                },
            }
        )
        self.config = cfg
        self.agg = Aggregator(cfg)
        self.agg.start()
        self.agg.next_round_at = math.inf  # rounds start on request, after each segment
        self._want_round = threading.Event()
        self._stop = threading.Event()
        self.loop_error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="demo-aggregator", daemon=True)
        self._thread.start()
        ca = load_ca(files.ca)
        self.clients: dict[str, Any] = {}
        for h in hubs:
            tls = pki.client_files(h.name)
            link = MqttLink(
                h.name, broker.host, broker.port, tls, FLEET, identity=h.name, keepalive_s=10
            )
            client = FlClient(
                h.name,
                FLEET,
                load_identity(tls.cert, ca, h.name),
                ca,
                h.learner,
                link,
                manager=h.manager,
                global_sha256=model.sha256,
                min_samples=1,
                state_dir=h.state,
            )
            h.registry.require_signature = True  # from now on only signed global models
            client.start()
            self.clients[h.name] = client

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if self._want_round.is_set() and self.agg.round is None:
                    self._want_round.clear()
                    ready = self.agg.eligible()
                    if len(ready) >= 2:
                        self.agg.start_round(ready)
                self.agg.step()
        except BaseException as exc:  # reported in the summary, never hangs the demo
            self.loop_error = exc
            log.exception("aggregator loop failed")

    def wait_ready(self, timeout: float = 20.0) -> bool:
        """Wait until every hub's verified hello reached the aggregator."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.agg.eligible()) >= len(self.hubs):
                return True
            time.sleep(0.05)
        return False

    def _round(self, r: int, n_k: dict[str, int], on_tick: Tick | None) -> RoundResult:
        """Announce, SecAgg+ stages over MQTT, signed model, hot swap on each hub."""
        n_before = len(self.agg.state["rounds"])
        taken = {n: c.counters["models_taken"] for n, c in self.clients.items()}
        self._want_round.set()
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        while time.monotonic() < deadline and len(self.agg.state["rounds"]) <= n_before:
            if self.loop_error is not None:
                return RoundResult("failed", f"aggregator loop failed: {self.loop_error}")
            if on_tick is not None:
                on_tick()
            time.sleep(0.1)
        if len(self.agg.state["rounds"]) <= n_before:
            self._want_round.clear()
            return RoundResult("timeout", f"no result within {ROUND_TIMEOUT_S:.0f} s")
        rec = dict(self.agg.state["rounds"][-1])
        version = rec.get("model_version")
        applied: dict[str, Any] = {}
        if rec.get("status") == "completed" and version is not None:
            wait_until = time.monotonic() + 20.0
            # models_taken counts after the lifecycle decided (hot swap or rollback)
            while time.monotonic() < wait_until and any(
                c.global_version < version or c.counters["models_taken"] <= taken[n]
                for n, c in self.clients.items()
            ):
                time.sleep(0.05)
            for name, c in self.clients.items():
                applied[name] = {
                    "global_version": c.global_version,
                    "result": (c.last_apply or {}).get("reason"),
                }
        return RoundResult(
            str(rec.get("status")),
            str(rec.get("reason", "")),
            participants=list(rec.get("participants", [])),
            survivors=list(rec.get("survivors", [])),
            dropped=rec.get("dropped", {}),
            refused=rec.get("refused", {}),
            epsilon=rec.get("epsilon"),
            sum_n=rec.get("sum_n"),
            update_norm=rec.get("update_norm"),
            model_version=version,
            bytes_in=rec.get("bytes_in"),
            bytes_out=rec.get("bytes_out"),
            applied=applied,
            clients={n: dict(c.counters) for n, c in self.clients.items()},
        )

    def close(self) -> None:
        """Stop the aggregator loop, the box clients and the aggregator link."""
        self._stop.set()
        self._thread.join(5.0)
        for c in self.clients.values():
            with contextlib.suppress(Exception):
                c.stop()
        with contextlib.suppress(Exception):
            self.agg.close()


class MemoryFederation(RoundDriver):
    """The same SecAgg+ round, DP accounting and FedAvg step, run in memory with no broker
    (``fl.secagg.simulate_round``: real signed envelopes, no network)."""

    how = "in-memory"

    def __init__(
        self, hubs: Sequence[Hub], model: ModelInfo, noise_multiplier: float = NOISE_MULTIPLIER
    ) -> None:
        from edgeagent.federation.accountant import DpAccountant

        super().__init__(hubs)
        self.noise_multiplier = noise_multiplier
        self.model_bytes = model.data
        self.version = 0
        self.accountant = DpAccountant(1e-5)

    def _round(self, r: int, n_k: dict[str, int], on_tick: Tick | None) -> RoundResult:
        """One in-memory round; every hub validates and hot-swaps (or rolls back) the result."""
        import secrets

        from edgeagent.fl.aggregate import apply_update, mean_from_total
        from edgeagent.fl.constants import NONCE_BYTES
        from edgeagent.fl.privacy import (
            distributed_std,
            fedavg_payload,
            gaussian_std,
            payload_bound,
        )
        from edgeagent.fl.secagg import RoundConfig
        from edgeagent.fl.secagg.simulate import simulate_round
        from edgeagent.model.graph import get_params, parse_model, set_params, to_bytes

        ready = [h for h in self.hubs if n_k[h.name] >= 1]
        if len(ready) < 2:
            return RoundResult(
                "aborted", f"only {len(ready)} hub(s) had trained windows, a round needs 2"
            )
        model = parse_model(self.model_bytes)
        w = get_params(model)
        box_std = distributed_std(gaussian_std(self.noise_multiplier, CLIP_NORM, N_CAP), 2)
        cfg = RoundConfig(
            round_id=r,
            nonce=secrets.token_bytes(NONCE_BYTES),
            participants=tuple(h.name for h in ready),
            dim=int(w.size) + 1,
            bound=payload_bound(CLIP_NORM, N_CAP, box_std),
            min_survivors=2,
            clip=CLIP_NORM,
            n_cap=N_CAP,
            noise_std=box_std,
        )
        payloads = {
            h.name: fedavg_payload(
                np.asarray(h.learner.delta(), np.float64), int(h.learner.n_k), CLIP_NORM, N_CAP
            )
            for h in ready
        }
        rep = simulate_round(cfg, payloads)
        if rep.result is None:
            return RoundResult("aborted", str(rep.abort) if rep.abort else "unknown")
        total = np.asarray(rep.result.total, np.float64)
        mean = mean_from_total(total)
        data = to_bytes(set_params(model, apply_update(w, mean)))
        self.model_bytes = data
        self.version += 1
        eps: float | None = None
        if self.noise_multiplier > 0:
            self.accountant.step(self.noise_multiplier, 1.0)
            eps = float(self.accountant.epsilon())
        applied: dict[str, Any] = {}
        w_new = get_params(parse_model(data))
        for h in self.hubs:
            h.learner.reset_global(w_new)
            res = h.manager.apply(data, f"in-memory:round-{r}")
            applied[h.name] = {"global_version": self.version, "result": res.reason}
        return RoundResult(
            "completed",
            participants=list(cfg.participants),
            survivors=list(rep.result.survivors),
            dropped={},
            refused=dict(rep.refused),
            epsilon=eps,
            sum_n=float(total[-1]),
            update_norm=float(np.linalg.norm(mean)),
            model_version=self.version,
            bytes_in=int(sum(rep.bytes_up.values())),
            bytes_out=int(sum(rep.bytes_down.values())),
            applied=applied,
        )


def start_federation(
    opts: DemoOptions,
    hubs: Sequence[Hub],
    model: ModelInfo,
    broker: BrokerInfo,
    pki: Any,
    workdir: Path,
) -> tuple[RoundDriver, dict[str, Any], list[Part]]:
    """The round driver for this run, the federation's ``how``/``reason`` and the parts
    list entries saying what runs: over MQTT when there is a broker and every hub said
    hello, otherwise in memory (and why)."""
    parts: list[Part] = []
    if broker.how == "real":
        parts.append(Part("MQTT broker", True, "real", broker.reason))
        fed: RoundDriver | None = None
        try:
            fed = MqttFederation(hubs, model, broker, pki, workdir, opts.noise_multiplier)
            if not fed.wait_ready():
                raise TimeoutError("not every hub said hello to the aggregator within 20 s")
            parts.append(
                Part(
                    "aggregator + box clients",
                    True,
                    "real",
                    "federation.aggregator + federation.client over MQTT (mTLS, signed SecAgg+ "
                    "stages, signed models)",
                )
            )
            return fed, {"how": fed.how, "reason": ""}, parts
        except Exception as exc:
            log.exception("MQTT federation failed to start")
            if fed is not None:
                fed.close()
            why = f"MQTT federation failed to start ({exc}): rounds ran in memory"
            parts.append(Part("aggregator + box clients", True, "in-memory", why))
            mem = MemoryFederation(hubs, model, opts.noise_multiplier)
            return mem, {"how": mem.how, "reason": why}, parts
    parts.append(Part("MQTT broker", False, "skipped", broker.reason))
    if opts.hubs < 2:
        parts.append(Part("aggregator + box clients", False, "skipped", broker.reason))
    else:
        parts.append(
            Part(
                "aggregator + box clients",
                True,
                "in-memory",
                "fl.secagg.simulate_round (signed envelopes, no network): " + broker.reason,
            )
        )
    mem = MemoryFederation(hubs, model, opts.noise_multiplier)
    return mem, {"how": mem.how, "reason": broker.reason}, parts
