"""Fleet simulator at scale: full SecAgg+ rounds for 100 / 1,000 / 5,000 boxes over Mosquitto.

What runs (all on this machine, 127.0.0.1 only):
- a real Mosquitto broker with the shipped TLS + ACL config;
- the coordinator (``fl.coordinator.Coordinator``, this process) owning the
  ``SecAggServer``, and ``--workers`` intake worker processes
  (``python -m edgeagent.federation.intake``) sharing the masked-vector intake via
  ``$share/intake/.../node/+/collect_masked`` and sending partial sums;
- ``--procs`` simulator processes (``fl.fleetsim``), each driving its share of
  the boxes: one mTLS MQTT connection, one Ed25519 identity, one real
  ``SecAggClient`` per box, multiplexed over one thread per process.

Two modes, each over every size, so the growth from 100 to 1,000 boxes is
read without the early-close wait:

- ``all-in``: no box drops out; every stage closes the moment the last
  expected reply is in, so a round's time is the protocol's work and nothing
  else;
- ``dropout``: ``--dropout`` of the boxes go silent, spread over the four
  stages; a stage closes once 80 % of its replies are in and nothing arrived
  for ``max(--idle-close, a quarter of the stage's time so far)``, so part of
  each stage is waiting for boxes that never answer.

Each round checks the unmasked sum against the survivors' payloads.
``--train-fraction`` makes that share of the boxes train for real between
rounds (``edgelab.fleetsim.TrainingBox``: the agent's LocalLearner on simulated
windows, from models/baseline.onnx) and send their real update; their CPU time
and the memory their learners add are reported per training box.

Reported per fleet size: round wall time (first SETUP to last RESULT
published), per-stage times, aggregator CPU (coordinator process + workers)
and peak resident memory, bytes per box per round (envelopes up and down),
and growth ratios against the smallest size measured in the same run. The
boxes' own CPU is reported too: on this 2-core machine they compete with the
aggregator and the broker for the same cores, so round wall times here are
an upper bound for a real fleet whose boxes bring their own CPUs.

Run: python bench/fleet.py [--sizes 100 1000] [--dim 10000] [--rounds 1] [--procs 2]
     [--modes all-in dropout] [--idle-close 0.2] [--train-fraction 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeagent.federation.intake import raw_public  # noqa: E402
from edgeagent.fl.constants import AGGREGATOR, STAGE_ORDER, Stage  # noqa: E402
from edgeagent.fl.identity import load_ca, load_identity  # noqa: E402
from edgeagent.fl.privacy import payload_bound  # noqa: E402
from edgeagent.fl.secagg import RoundConfig  # noqa: E402
from edgeagent.ops.pki import Pki  # noqa: E402
from edgeagent.transport.mqtt import MqttLink  # noqa: E402
from edgelab.broker import Broker  # noqa: E402
from edgelab.coordinator import Coordinator  # noqa: E402
from edgelab.fleetsim import FleetProcess, SimSpec, default_payload, issue_boxes  # noqa: E402

FLEET = "scale"
MODEL = ROOT / "models" / "baseline.onnx"
CLIP, N_CAP, N_K = 1.0, 100, 50
RESULTS = ROOT / "bench" / "results" / "fleet.json"


class RssPeak:
    """Samples the resident memory of some processes every 200 ms; keeps the peak of each."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {k: psutil.Process(p) for k, p in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, p in self.procs.items():
                with contextlib.suppress(psutil.Error):
                    self.peak[k] = max(self.peak[k], p.memory_info().rss)
            self._stop.wait(0.2)

    def __enter__(self) -> RssPeak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def start_workers(pki: Pki, broker: Broker, n: int, tmp: Path) -> list[subprocess.Popen]:
    agg = pki.client_files(AGGREGATOR)
    procs = []
    for i in range(n):
        ready = tmp / f"worker{i}.ready"
        files = pki.client_files(f"intake-{i}")  # each worker connects as itself
        if not files.cert.exists():
            pki.issue_intake(i)
        cmd = [sys.executable, "-m", "edgeagent.federation.intake", "--port", str(broker.port),
               "--fleet", FLEET, "--ca", str(files.ca), "--cert", str(files.cert),
               "--key", str(files.key), "--identity", str(agg.cert), "--worker", str(i),
               "--ready-file", str(ready)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT))
    end = time.monotonic() + 30
    while not all((tmp / f"worker{i}.ready").exists() for i in range(n)):
        if time.monotonic() > end:
            raise RuntimeError("intake workers did not start")
        time.sleep(0.05)
    return procs


def drops_for(nodes: list[str], fraction: float, rng: np.random.Generator) -> dict[str, Stage]:
    """``fraction`` of the boxes go silent, spread over SETUP..UNMASK.

    Never at COMMIT or REVEAL: a box silent there is left out of the seed's set
    (COMMIT) or aborts the round (REVEAL), which is not the dropout this measures.
    """
    gone = rng.choice(nodes, size=round(fraction * len(nodes)), replace=False)
    skip = (Stage.COMMIT, Stage.REVEAL, Stage.CONSISTENCY, Stage.RESULT)
    stages = [s for s in STAGE_ORDER if s not in skip]
    return {str(b): stages[i % len(stages)] for i, b in enumerate(sorted(gone))}


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def run_size(
    n: int,
    mode: str,
    args: argparse.Namespace,
    pki: Pki,
    broker: Broker,
    coord: Coordinator,
    workers: list[psutil.Process],
    round_id: int,
) -> dict[str, Any]:
    names = [f"sim{n}-{i:05d}" for i in range(n)]
    t0 = time.perf_counter()
    specs = issue_boxes(pki, names)
    issue_s = time.perf_counter() - t0
    agg_pub = raw_public(coord.pub)
    per = -(-n // args.procs)
    sims = [
        FleetProcess(
            SimSpec(
                broker.host,
                broker.port,
                FLEET,
                str(pki.ca_cert),
                tuple(specs[i : i + per]),
                agg_pub,
                seed=args.seed,
                clip=CLIP,
                n_k=N_K,
                train_fraction=args.train_fraction,
                train_windows=args.train_windows,
                model=str(MODEL),
            )
        ).start()
        for i in range(0, n, per)
    ]
    t0 = time.perf_counter()
    for s in sims:
        s.wait_ready()
    connect_s = time.perf_counter() - t0
    keys = {k: v for s in sims for k, v in s.pubs.items()}
    rng = np.random.default_rng(args.seed + n)
    rounds = []
    sim_ps = [psutil.Process(s.proc.pid) for s in sims]
    dropout = 0.0 if mode == "all-in" else args.dropout
    for r in range(args.rounds):
        if r:
            for s in sims:
                s.train()  # the training boxes' next update, between rounds
        drops = drops_for(names, dropout, rng)
        for s in sims:
            s.set_drops(drops, tuple(names))
        cfg = RoundConfig(round_id=round_id + r, nonce=secrets.token_bytes(16),
                          participants=tuple(names), dim=args.dim + 1,
                          bound=payload_bound(CLIP, N_CAP), clip=CLIP, n_cap=N_CAP,
                          min_survivors=max(2, n // 2))  # fmt: skip
        w0, s0 = cpu_of(workers), cpu_of(sim_ps)
        b0 = broker_cpu(broker)
        with RssPeak({"coordinator": os.getpid(), **{f"w{i}": p.pid for i, p in
                      enumerate(workers)}}) as rss:  # fmt: skip
            rep = coord.run_round(cfg, keys)
        w1, s1 = cpu_of(workers), cpu_of(sim_ps)
        row: dict[str, Any] = {
            "mode": mode,
            "boxes": n,
            "round": cfg.round_id,
            "degree": cfg.degree,
            "threshold": cfg.threshold,
            "status": "completed" if rep.result is not None else f"aborted: {rep.abort}",
            "wall_s": round(rep.wall_s, 3),
            "stage_s": rep.stage_s,
            "coordinator_cpu_s": round(rep.server_cpu_s, 3),
            "workers_cpu_s": round(w1 - w0, 3),
            "aggregator_cpu_s": round(rep.server_cpu_s + w1 - w0, 3),
            "broker_cpu_s": round(broker_cpu(broker) - b0, 3),
            "boxes_cpu_s": round(s1 - s0, 3),
            "coordinator_peak_rss_mb": round(rss.peak["coordinator"] / 2**20, 1),
            "workers_peak_rss_mb": [
                round(rss.peak[f"w{i}"] / 2**20, 1) for i in range(len(workers))
            ],
            "coordinator_bytes_out": rep.bytes_out,
            "coordinator_bytes_in": rep.bytes_in,
            "partials_by_worker": dict(rep.partials),
            "dropped_planned": len(drops),
            "refused": dict(rep.refused),
        }
        if rep.result is not None:
            surv = rep.result.survivors
            want = np.zeros(args.dim + 1)
            trained = {k: v for s in sims for k, v in s.payloads().items()}
            for b in surv:
                got = trained.get(b)
                want += (
                    got
                    if got is not None
                    else default_payload(args.seed, b, N_K)(args.dim, CLIP, N_CAP)
                )
            err = float(np.max(np.abs(rep.result.total - want)))
            row["survivors"] = len(surv)
            row["max_abs_error"] = err
            row["sum_correct"] = bool(err <= len(surv) / quant_scale(cfg))
        rounds.append(row)
        print(f"  n={n} round {cfg.round_id}: {row['status']} wall {row['wall_s']} s, "
              f"aggregator CPU {row['aggregator_cpu_s']} s, boxes CPU {row['boxes_cpu_s']} s, "
              f"stages {rep.stage_s}", flush=True)  # fmt: skip
    stats = [s.stop() for s in sims]
    up = sum(s.get("bytes_up", 0) for s in stats)
    down = sum(s.get("bytes_down", 0) for s in stats)
    n_train = sum(s.get("training_boxes", 0) for s in stats)
    train_rounds = sum(s.get("train_rounds", 0) for s in stats)
    training = None
    if n_train:
        training = {
            "boxes": n_train,
            "windows_per_round": args.train_windows,
            "cpu_s_per_box_round": round(
                sum(s.get("train_cpu_s", 0.0) for s in stats) / max(train_rounds, 1), 5
            ),
            "rss_added_mb_per_box": round(
                sum(s.get("train_rss_added_bytes", 0) for s in stats) / n_train / 2**20, 3
            ),
            "learner_arrays_mb_per_box": round(
                max(s.get("learner_bytes", 0) for s in stats) / 2**20, 3
            ),
            "mean_n_k": round(float(np.mean([k for s in stats for k in s["train_n_k"]])), 1),
        }
    return {
        "mode": mode,
        "training": training,
        "boxes": n,
        "issue_certs_s": round(issue_s, 2),
        "connect_s": round(connect_s, 2),
        "rounds": rounds,
        "bytes_up_per_box_round": round(up / n / args.rounds),
        "bytes_down_per_box_round": round(down / n / args.rounds),
        "sim_processes": len(sims),
        "sim_peak_rss_mb_per_process": [round(s.get("maxrss_kb", 0) / 1024, 1) for s in stats],
        "sim_counters": [s.get("counters", {}) for s in stats],
    }


def quant_scale(cfg: RoundConfig) -> float:
    from edgeagent.fl.quantize import Quantizer

    return Quantizer(cfg.bound, len(cfg.participants), cfg.headroom_bits).scale


def broker_cpu(broker: Broker) -> float:
    pid = broker.pid
    return cpu_of([psutil.Process(pid)]) if pid else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--procs", type=int, default=2, help="simulator processes")
    ap.add_argument("--workers", type=int, default=2, help="intake worker processes")
    ap.add_argument("--dropout", type=float, default=0.05, help="share silent (dropout mode)")
    ap.add_argument("--modes", nargs="+", default=["all-in", "dropout"],
                    choices=["all-in", "dropout"])  # fmt: skip
    ap.add_argument("--train-fraction", type=float, default=0.0,
                    help="share of the boxes that train for real between rounds")  # fmt: skip
    ap.add_argument("--train-windows", type=int, default=64, help="windows per round per box")
    ap.add_argument("--stage-timeout", type=float, default=120.0)
    ap.add_argument(
        "--idle-close",
        type=float,
        default=0.2,
        help="dropout mode: close a stage after this long without replies once 80%% are in",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp_s:
        tmp = Path(tmp_s)
        pki = Pki.init(tmp / "pki", fleet=FLEET)
        pki.issue_aggregator()
        broker = Broker(pki, tmp / "broker").start()
        wprocs = start_workers(pki, broker, args.workers, tmp)
        files = pki.client_files(AGGREGATOR)
        ident = load_identity(files.cert, load_ca(pki.ca_cert), AGGREGATOR)
        coord = Coordinator(
            FLEET, ident.key, stage_timeout_s=args.stage_timeout, idle_close_s=args.idle_close
        )
        link = MqttLink("aggregator-coordinator", broker.host, broker.port, files, FLEET,
                        identity=AGGREGATOR, status=False, on_message=coord.enqueue,
                        clean_start=True, keepalive_s=120)  # fmt: skip
        coord.start(link)
        workers = [psutil.Process(p.pid) for p in wprocs]
        rows = []
        try:
            round_id = 1
            for mode in args.modes:
                for n in args.sizes:
                    print(f"fleet of {n} boxes, {mode} ...", flush=True)
                    load = os.getloadavg()
                    row = run_size(n, mode, args, pki, broker, coord, workers, round_id)
                    row["load_average_before"] = [round(x, 2) for x in load]
                    row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
                    rows.append(row)
                    round_id += args.rounds
        finally:
            link.close()
            for p in wprocs:
                p.terminate()
            for p in wprocs:
                p.wait(10)
            broker.stop()
    summary = []
    for row in rows:
        base = next(b for b in rows if b["mode"] == row["mode"])  # smallest size of its mode
        b_r = base["rounds"][-1]
        r = row["rounds"][-1]
        summary.append({
            "mode": row["mode"],
            "boxes": row["boxes"],
            "wall_s": r["wall_s"],
            "aggregator_cpu_s": r["aggregator_cpu_s"],
            "coordinator_peak_rss_mb": r["coordinator_peak_rss_mb"],
            "bytes_per_box_round": row["bytes_up_per_box_round"] + row["bytes_down_per_box_round"],
            "wall_growth_vs_smallest": round(r["wall_s"] / b_r["wall_s"], 2),
            "aggregator_cpu_growth_vs_smallest": round(
                r["aggregator_cpu_s"] / max(b_r["aggregator_cpu_s"], 1e-9), 2),
            "boxes_growth_vs_smallest": row["boxes"] / base["boxes"],
            "sum_correct": r.get("sum_correct"),
            "load_average_before": row["load_average_before"],
            "training": row["training"],
        })  # fmt: skip
    doc = {
        "bench": "fleet",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "dim": args.dim,
        "dropout": args.dropout,
        "idle_close_s": args.idle_close,
        "train_fraction": args.train_fraction,
        "workers": args.workers,
        "sim_processes": args.procs,
        "rows": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"\n{'mode':>8} {'boxes':>6} {'wall s':>8} {'agg CPU s':>10} {'coord RSS MB':>12} "
          f"{'B/box/round':>12} {'wall x':>7} {'CPU x':>7} ok  load (1/5/15 min)")  # fmt: skip
    for s in summary:
        print(f"{s['mode']:>8} {s['boxes']:>6} {s['wall_s']:>8.2f} {s['aggregator_cpu_s']:>10.2f} "
              f"{s['coordinator_peak_rss_mb']:>12.1f} {s['bytes_per_box_round']:>12} "
              f"{s['wall_growth_vs_smallest']:>7} {s['aggregator_cpu_growth_vs_smallest']:>7} "
              f"{s['sum_correct']}  {s['load_average_before']}")  # fmt: skip
    for s in summary:
        t = s["training"]
        if t:
            print(f"{s['mode']} {s['boxes']} boxes: {t['boxes']} trained for real "
                  f"({t['windows_per_round']} windows/round, mean n_k {t['mean_n_k']}): "
                  f"{t['cpu_s_per_box_round'] * 1e3:.1f} ms CPU per box per round, "
                  f"{t['rss_added_mb_per_box']:.3f} MB RSS added per box "
                  f"(learner arrays {t['learner_arrays_mb_per_box']:.3f} MB)")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
